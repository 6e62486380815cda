"""The watcher's targets as values: host-path helpers and the index of targets and needed directories.

Pure (no filesystem access, no locks): the watcher builds a ``Targets`` in ``set_targets`` and asks it,
under its own lock, which targets and needed directories lie at or below a name that an event or a
poll reported. Sorted lists and bisect rather than sets or trees: 10,000 users' paths, each string
held once (see ``build_targets``).
"""

from __future__ import annotations

import posixpath
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


def normalize_host_path(path: str) -> str:
    """``path`` without ``//``, ``.``, ``..`` and trailing ``/``: the same object when already normal
    (the daemon passes ~20,000 paths; a copy of each would cost ~2 MB)."""
    if not path.startswith("/"):
        raise ValueError(f"target path must be absolute: {path!r}")
    if _is_normal(path):
        return path
    norm = posixpath.normpath(path)
    return "/" + norm.lstrip("/")


def _is_normal(path: str) -> bool:
    if path == "/":
        return True
    return not ("//" in path or "/./" in path or "/../" in path or path.endswith(("/", "/.", "/..")))


def parent_of(path: str) -> str:
    return posixpath.dirname(path) if path != "/" else "/"


def join_path(parent: str, name: str) -> str:
    return parent + name if parent == "/" else parent + "/" + name


def below(sorted_paths: list[str], path: str) -> Iterator[str]:
    """The entries of ``sorted_paths`` strictly below ``path`` (a bisect, then a contiguous run)."""
    prefix = "/" if path == "/" else path + "/"
    i = bisect_left(sorted_paths, prefix)
    while i < len(sorted_paths) and sorted_paths[i].startswith(prefix):
        yield sorted_paths[i]
        i += 1


def child_toward(ancestor: str, path: str) -> str:
    """The entry of directory ``ancestor`` on the way down to ``path`` (a descendant of it)."""
    start = 1 if ancestor == "/" else len(ancestor) + 1
    end = path.find("/", start)
    return path if end == -1 else path[:end]


@dataclass(frozen=True, slots=True)
class Targets:
    """Target files, target directories (every entry is a target) and the *needed dirs*: the
    directories that hold target files, and the target directories themselves."""

    # Dicts used as sets (values None): a 10,000-path frozenset costs 512 KB, a dict 200 KB.
    files: dict[str, None]
    dir_targets: dict[str, None]
    sorted_targets: list[str]  # files and target dirs
    sorted_dirs: list[str]  # needed dirs

    def targets_under(self, path: str) -> set[str]:
        """Targets at or below ``path`` (a target dir stands for all its entries)."""
        out = set(below(self.sorted_targets, path))
        if path in self.files or path in self.dir_targets:
            out.add(path)
        return out

    def is_needed(self, path: str) -> bool:
        i = bisect_left(self.sorted_dirs, path)
        return i < len(self.sorted_dirs) and self.sorted_dirs[i] == path

    def dirs_at_or_under(self, path: str) -> list[str]:
        """Needed dirs at or below ``path``."""
        out = list(below(self.sorted_dirs, path))
        if self.is_needed(path):
            out.append(path)
        return out

    def count_by_dir(self) -> Counter[str]:
        """Needed dir -> the number of targets it covers (its target files, or 1 for a target dir)."""
        by_dir = Counter(parent_of(f) for f in self.files)
        by_dir.update(self.dir_targets.keys())  # keys: a dict would be read as counts
        return by_dir


NO_TARGETS = Targets({}, {}, [], [])


def build_targets(files: Iterable[str], dirs: Iterable[str], held_dirs: Iterable[str]) -> Targets:
    """Normalized targets with one string object per path: a needed dir reuses the string in
    ``held_dirs`` (the needed dirs the watcher already covers) or the target dir's string (the parents
    of 10,000 authorized_keys files would otherwise be 10,000 more copies)."""
    held = {d: d for d in held_dirs}  # dicts do not hand out their keys: a transient map
    new_files = dict.fromkeys(normalize_host_path(p) for p in files)
    new_dirs = dict.fromkeys(held.setdefault(d, d) for d in map(normalize_host_path, dirs))
    needed = set(new_dirs)
    for f in new_files:
        parent = parent_of(f)
        needed.add(held.setdefault(parent, parent))
    return Targets(new_files, new_dirs, sorted([*new_files, *new_dirs]), sorted(needed))
