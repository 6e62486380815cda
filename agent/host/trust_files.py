"""The agent's own files for sshd: the key revocation list, the trusted CA keys and the accounts'
authorized principals, in one root-owned directory (`trust.dir`, /etc/ssh/sshklm-agent):

    /etc/ssh/sshklm-agent/              root:root 0755
        revoked_keys                    root:root 0644   sshd's RevokedKeys (a KRL)
        trusted_user_ca_keys            root:root 0644   sshd's TrustedUserCAKeys
        principals/                     root:root 0755
            <user>                      root:root 0644   sshd's AuthorizedPrincipalsFile .../principals/%u

Why these modes: sshd reads RevokedKeys and TrustedUserCAKeys as root, but an authorized principals
file as the user (`match_principals_file` switches to the user's uid) and, under StrictModes, checks
that the file and every directory above it are owned by root or the user and writable by no one
else. So the principals must be world-readable and the directories traversable; the files hold
public data only (CA public keys, principal names, revoked fingerprints). Root owns everything:
a user can read their principals but never add one.

Every access goes through the safe file layer: directories opened by descriptor (`open_dir`, a
symlink below the directory's parent refused, owners and modes checked), files replaced with THE
atomic write (temp file, owner and mode on its descriptor, fsync, rename, fsync of the directory)
guarded by the stat of the read the new bytes are based on, so sshd never sees a partial file and
a file changed between our read and our write is not overwritten blindly.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Final

from agent.host.safefs import CreateSpec, DirHandle, FileInfo, HostFS, UnsafePath

DIR_MODE: Final = 0o755
FILE_MODE: Final = 0o644
REVOKED_KEYS: Final = "revoked_keys"
TRUSTED_USER_CA_KEYS: Final = "trusted_user_ca_keys"
PRINCIPALS: Final = "principals"
# Our own files, read whole: a KRL of many explicit RSA keys is larger than discovery's cap.
MAX_FILE_BYTES: Final = 64 << 20
_ROOT: Final = CreateSpec(0, 0, DIR_MODE)


@dataclass(frozen=True)
class TrustLayout:
    """Where the agent's files are (paths inside the host root)."""

    directory: str = "/etc/ssh/sshklm-agent"

    @property
    def revoked_keys(self) -> str:
        return posixpath.join(self.directory, REVOKED_KEYS)

    @property
    def trusted_user_ca_keys(self) -> str:
        return posixpath.join(self.directory, TRUSTED_USER_CA_KEYS)

    @property
    def principals_dir(self) -> str:
        return posixpath.join(self.directory, PRINCIPALS)

    @property
    def principals_template(self) -> str:
        """The AuthorizedPrincipalsFile value that points sshd at our principals files."""
        return posixpath.join(self.principals_dir, "%u")

    def principals_file(self, user: str) -> str:
        return posixpath.join(self.principals_dir, user)

    def path_of(self, name: str) -> str:
        """The path of `name`, relative to the directory ("revoked_keys", "principals/alice")."""
        return posixpath.join(self.directory, name)


@dataclass(frozen=True)
class Current:
    """A file as read: its bytes and the stat a later write is guarded by."""

    data: bytes
    info: FileInfo


class AgentTrustFiles:
    """Reads and atomically replaces the agent's files (see the module docstring)."""

    def __init__(self, fs: HostFS, layout: TrustLayout) -> None:
        self.fs = fs
        self.layout = layout

    def path(self, name: str) -> str:
        return self.layout.path_of(name)

    def read(self, name: str) -> Current | None:
        """The file's bytes and stat; None when it (or its directory) does not exist."""
        path = self.path(name)
        try:
            result = self.fs.read(path, confine=self.layout.directory, max_bytes=MAX_FILE_BYTES)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if result.truncated:
            raise UnsafePath("larger than the agent writes", path)
        return Current(result.data, result.info)

    def list_principals(self) -> list[str]:
        """The names in principals/ (accounts with a principals file), sorted; [] when absent."""
        try:
            return sorted(self.fs.listdir(self.layout.principals_dir, confine=self.layout.directory))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def ensure_dirs(self) -> None:
        """Create the directory and principals/ (root, 0755) when absent; give back o+rx if taken."""
        for path in (self.layout.directory, self.layout.principals_dir):
            self._open(path).close()

    def write(self, name: str, data: bytes, *, expect: Current | None) -> None:
        """Atomically replace (or create) `name` with `data`, root:root 0644. `expect`: the read
        the new bytes are based on (None: the file must not exist... or is overwritten when it
        appeared meanwhile; our own directory, so there is no one to race but root)."""
        directory, base = posixpath.split(self.path(name))
        with self._open(directory) as dirh:
            self.fs.atomic_replace(
                dirh, base, data, uid=0, gid=0, mode=FILE_MODE, expect=expect.info if expect else None
            )

    def remove(self, name: str, *, expect: Current) -> None:
        directory, base = posixpath.split(self.path(name))
        with self._open(directory) as dirh:
            self.fs.remove_at(dirh, base, expect=expect.info)

    def _open(self, path: str) -> DirHandle:
        """Our directory `path`, created root 0755 when missing (its parent must exist)."""
        dirh = self.fs.open_dir(path, create=_ROOT, confine=posixpath.dirname(path), user_uid=0)
        try:
            mode = stat.S_IMODE(dirh.info.mode)
            if dirh.info.uid != 0:
                raise UnsafePath("not owned by root", path)
            if mode & 0o005 != 0o005:  # sshd reads principals as the user: keep it traversable
                os.fchmod(dirh.fd, mode | 0o555)
        except BaseException:
            dirh.close()
            raise
        return dirh
