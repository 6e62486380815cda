"""`sshklm-agent run`: the daemon systemd starts, and the composition root that builds it.

`build_daemon` is the one place where the daemon's parts are chosen, built and wired to each
other: the server link (only with `server.url`: httpx costs ~10 MB that a standalone agent never
uses), the usage tracker, and the instruction handler (only with a server: instructions only ever
come from the control plane). The daemon knows its parts only through agent/daemon/parts.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.config import Config
from agent.log import setup_logging

if TYPE_CHECKING:
    from agent.daemon.parts import Part
    from agent.daemon.service import Daemon

log = logging.getLogger("sshklm.run")


def build_daemon(
    config: Config, *, root: str | None, config_path: str | None, install_signals: bool = True
) -> Daemon:
    from agent.daemon.service import Daemon

    parts: list[Part] = []
    link = None
    if config.server.url:
        from agent.daemon.server_link import ServerLink

        link = ServerLink(config)
    if config.usage.enabled and config.usage.source != "none":
        from agent.daemon.extensions import UsageTracker

        parts.append(UsageTracker(config.usage))
    if config.apply.enabled and link is not None:
        from agent.daemon.extensions import InstructionHandler

        handler = InstructionHandler(config, link, root=root)
        link.handle_instructions_with(handler.handle)
        parts.append(handler)
    return Daemon(
        config,
        root=root,
        config_path=config_path,
        link=link,
        parts=parts,
        install_signals=install_signals,
        check_config=_config_errors(root),
    )


def _config_errors(root: str | None) -> Callable[[Config], list[str]]:
    """What `check-config` calls an error: `run` refuses it at start, a reload refuses it too."""
    from agent.commands.preflight import check_config, errors

    def problems(config: Config) -> list[str]:
        return [str(finding) for finding in errors(check_config(config, root=root))]

    return problems


def cmd_run(config: Config, *, root: str | None, log_format: str | None, config_path: str | None) -> int:
    from agent.commands import UsageError
    from agent.commands.preflight import check_config, errors

    # The checks `check-config` prints: a setting the daemon cannot use stops it here, in one line
    # each, before anything starts; a warning (e.g. not enrolled yet) is logged once.
    findings = check_config(config, root=root)
    if errors(findings):
        raise UsageError(*(f"configuration: {f}" for f in errors(findings)))
    setup_logging(config.logging.level, log_format or config.logging.format)  # type: ignore[arg-type]
    from agent.store.db import StoreError

    for finding in findings:
        log.warning("%s", finding)
    if not config.instructions.require_signature:
        log.warning(
            "!!! instructions.require_signature = false: UNSIGNED instructions will be applied. "
            "Anyone who can answer as the control plane can change authorized keys on this host. !!!"
        )
    daemon = build_daemon(config, root=root, config_path=config_path)
    try:
        return daemon.run()
    except StoreError as exc:
        log.error("state directory %s unusable: %s", config.state.dir, exc)
        return 1
