"""The mount table (/proc/self/mountinfo), pure: which filesystem holds a path.

Used by the safe file layer (FileInfo.fstype) and the watcher (network and user-space
filesystems are polled: inotify does not see other clients' changes there).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

# Filesystems whose changes by other hosts (or by a user-space server) inotify does not see.
NETWORK_FSTYPES = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre",
        "gpfs", "davfs", "virtiofs", "gfs2", "ocfs2", "fuse", "fuseblk", "sshfs",
    }
)  # fmt: skip


def is_network_fstype(fstype: str) -> bool:
    return fstype in NETWORK_FSTYPES or fstype.startswith("fuse.")


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    dev: int = 0


def _unescape_mountinfo(field_text: str) -> str:
    # The kernel escapes space, tab, newline and backslash in mountinfo as \ooo octal.
    out: list[str] = []
    i = 0
    while i < len(field_text):
        chunk = field_text[i : i + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and all(c in "01234567" for c in chunk[1:]):
            out.append(chr(int(chunk[1:], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Mount points, fs types and device numbers from mountinfo text, in file order.
    Malformed lines are skipped rather than failing the caller."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            major, minor = (int(x) for x in fields[2].split(":"))
            mounts.append(Mount(_unescape_mountinfo(fields[4]), fields[sep + 1], os.makedev(major, minor)))
        except (ValueError, IndexError):
            continue
    return mounts


def fstype_of(path: str, mounts: Iterable[Mount]) -> str | None:
    """Fs type of the longest mount point containing ``path`` (later mounts shadow earlier ones)."""
    best: Mount | None = None
    for mount in mounts:
        mp = mount.mount_point
        inside = path == mp or mp == "/" or path.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = mount
    return best.fstype if best is not None else None
