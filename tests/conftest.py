"""Fixtures shared across test files, and the `root` marker.

`@pytest.mark.root(reason="...")` marks a test that needs root (chown to other uids, a real sshd,
adding users). Run as root, it runs; run by anyone else it is skipped with "needs root: <reason>",
so an unprivileged `make unit` passes and says why each of those tests did not run. The reason is
mandatory: a `root` marker without one is a collection error.
"""

from __future__ import annotations

import os

import pytest

# The applier's fixtures (host, signer, applier) and the daemon's (fr, agents); a test file's own
# fixture of the same name wins. pytester: the tests of the `root` marker run small pytest sessions.
pytest_plugins = ["tests.integration.apply_support", "tests.integration.daemon_support", "pytester"]


def root_reason(marker: pytest.Mark) -> str | None:
    """The reason given to a `root` marker, as keyword or as the only positional argument."""
    reason = marker.kwargs.get("reason")
    if reason is None and len(marker.args) == 1:
        reason = marker.args[0]
    return reason if isinstance(reason, str) and reason.strip() else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    is_root = os.geteuid() == 0
    missing: list[str] = []
    for item in items:
        markers = list(item.iter_markers("root"))
        if not markers:
            continue
        reasons = [root_reason(marker) for marker in markers]
        given = [reason for reason in reasons if reason is not None]
        if len(given) != len(reasons):
            missing.append(item.nodeid)
            continue
        if not is_root and given:
            item.add_marker(pytest.mark.skip(reason=f"needs root: {given[0]}"))
    if missing:
        raise pytest.UsageError(
            "@pytest.mark.root needs a reason (root(reason=...)): " + ", ".join(sorted(missing))
        )
