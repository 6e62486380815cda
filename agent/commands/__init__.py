"""One module per CLI command: the thin shell that wires config, host and core together."""

from __future__ import annotations


class UsageError(Exception):
    """A user mistake (a path that is not there, a setting run cannot use): each line names the
    problem and the fix; the command exits 2 without a traceback (agent/cli.py prints it)."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
