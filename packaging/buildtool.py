"""Helpers of packaging/build.sh that are easier in Python than in sh (run by the build host's python3).

  buildtool.py split DIR...            DIR = one selection per target CPython (the files pip picked for
                                      it from the wheelhouse). Prints `common FILE` for each file every
                                      selection holds, `only DIR FILE` for the others (version-specific
                                      extension wheels), and fails if a file that is not tagged for one
                                      CPython version (cpXY-cpXY) differs between versions.
  buildtool.py hoist COMMON DIR...     after unpacking: a top-level entry (module or package directory) that
                                      every DIR holds byte for byte is moved to COMMON, so that each DIR
                                      keeps only what differs per CPython version (the extension modules
                                      and the *.dist-info, which stay whole with their wheel's RECORD).
                                      Whole entries only: a package split over two sys.path entries breaks.
  buildtool.py relock LOCK DIR         rewrite LOCK's hashes from the files in DIR: every file of a pinned
                                      name==version gets a --hash (several when the wheels differ per
                                      CPython version), sorted so that a relock without changes is a no-op.
"""

from __future__ import annotations

import filecmp
import hashlib
import re
import shutil
import sys
from pathlib import Path

_DIST = re.compile(r"^(?P<name>.+?)-(?P<version>\d[^-]*?)(?:-(?P<tags>.+)\.whl|\.tar\.gz|\.zip)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version_specific(filename: str) -> bool:
    """A wheel built for one CPython minor version: python tag cpXY with the same ABI (not abi3/none)."""
    m = _DIST.match(filename)
    if m is None or not m.group("tags"):
        return False
    python_tag, abi_tag = m.group("tags").split("-")[:2]
    return re.fullmatch(r"cp3\d+", python_tag) is not None and abi_tag == python_tag


def split(dirs: list[Path]) -> int:
    selections = [{p.name for p in d.iterdir() if p.is_file()} for d in dirs]
    common = set.intersection(*selections)
    for name in sorted(common):
        print(f"common {name}")
    bad = False
    for d, files in zip(dirs, selections, strict=True):
        for name in sorted(files - common):
            if not _version_specific(name):
                print(f"buildtool: {name} is not version-specific but not chosen for every target", file=sys.stderr)
                bad = True
            print(f"only {d} {name}")
    return 1 if bad else 0


def _same_tree(a: Path, b: Path) -> bool:
    if a.is_symlink() or b.is_symlink():
        return False
    if a.is_file() and b.is_file():
        return filecmp.cmp(a, b, shallow=False)
    if not (a.is_dir() and b.is_dir()):
        return False
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all(_same_tree(a / n, b / n) for n in names)


def hoist(common: Path, dirs: list[Path]) -> int:
    first, rest = dirs[0], dirs[1:]
    for entry in sorted(first.iterdir()):
        name = entry.name
        if name.endswith(".dist-info") or name == "__pycache__":
            continue
        if not all(_same_tree(entry, d / name) for d in rest):
            continue
        if (common / name).exists():
            print(f"buildtool: {name} is both shared and version-specific", file=sys.stderr)
            return 1
        shutil.move(str(entry), str(common / name))
        for d in rest:
            target = d / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        print(f"hoisted {name}")
    return 0


def relock(lock: Path, dl: Path) -> int:
    hashes: dict[tuple[str, str], list[str]] = {}
    for f in sorted(dl.iterdir()):
        m = _DIST.match(f.name)
        if m:
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            hashes.setdefault((_norm(m.group("name")), m.group("version")), []).append(digest)
    text = lock.read_text()
    out = [line + "\n" for line in text.splitlines() if line.startswith("#")]
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if not m:
            continue
        found = hashes.get((_norm(m.group(1)), m.group(2)))
        if not found:
            print(f"buildtool: no file downloaded for {m.group(1)}=={m.group(2)}", file=sys.stderr)
            return 1
        lines = [f"{m.group(1)}=={m.group(2)}"] + [f"    --hash=sha256:{h}" for h in sorted(set(found))]
        out.append(" \\\n".join(lines) + "\n")
    lock.write_text("".join(out))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "split":
        return split([Path(a) for a in argv[1:]])
    if len(argv) >= 3 and argv[0] == "hoist":
        return hoist(Path(argv[1]), [Path(a) for a in argv[2:]])
    if len(argv) == 3 and argv[0] == "relock":
        return relock(Path(argv[1]), Path(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
