"""`sshklm-agent run`: the daemon systemd starts."""

from __future__ import annotations

import logging

from agent.config import Config
from agent.log import setup_logging

log = logging.getLogger("sshklm.run")


def cmd_run(config: Config, *, root: str | None, log_format: str | None, config_path: str | None) -> int:
    setup_logging(config.logging.level, log_format or config.logging.format)  # type: ignore[arg-type]
    from agent.daemon.service import Daemon
    from agent.store.db import StoreError

    if not config.instructions.require_signature:
        log.warning(
            "!!! instructions.require_signature = false: UNSIGNED instructions will be applied. "
            "Anyone who can answer as the control plane can change authorized keys on this host. !!!"
        )
    daemon = Daemon(config, root=root, config_path=config_path)
    try:
        from agent.daemon.extensions import attach_extensions

        attach_extensions(daemon)
        return daemon.run()
    except StoreError as exc:
        log.error("state directory %s unusable: %s", config.state.dir, exc)
        return 1
