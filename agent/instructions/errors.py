"""The applier's two failures besides `verify.Rejected` (an instruction that must not be applied)."""

from __future__ import annotations


class ApplyFailed(Exception):
    """The instruction was valid but could not be carried out. Message: paths and reasons only."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RollbackRefused(Exception):
    """A rollback that would not restore exactly what the rotation found; nothing was restored."""
