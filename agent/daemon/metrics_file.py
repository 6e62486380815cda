"""The metrics file for node_exporter's textfile collector (`metrics.textfile`, off by default).

The daemon hands it each status document it publishes (every 10 seconds, on a change of the
server conversation, and at stop, when `sshklm_agent_running` becomes 0); it renders the metrics
(agent/metrics.py) and replaces the file atomically through the safe file layer
(`write_readable_file`: a temp file in the same directory, fsync, rename), so node_exporter reads
either the previous text or the new one, never a part. Mode 0644: node_exporter runs as its own
user. The directory must exist, be root's and be writable by no one else (docs/status.md).

A failure to write never disturbs the daemon: it is logged once, then at growing intervals
(agent.log.LogThrottle), and once when writing works again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from agent.host.safefs import UnsafePath, write_readable_file
from agent.log import LogThrottle
from agent.metrics import render

log = logging.getLogger("sshklm.metrics")

FILE_MODE = 0o644
FAILING = "metrics-file"


class MetricsFile:
    def __init__(self, path: str, *, throttle: LogThrottle | None = None) -> None:
        self.path = path
        self.directory, self.name = os.path.split(path)
        self._throttle = throttle or LogThrottle()

    def write(self, status: Mapping[str, Any]) -> bool:
        """Render `status` and replace the file; False (logged, throttled) when it could not be."""
        try:
            text = render(status, datetime.now(UTC))
            write_readable_file(self.directory, self.name, text.encode("utf-8"), FILE_MODE)
        except (OSError, UnsafePath) as exc:
            verdict = self._throttle.allow(FAILING)
            if verdict.log:
                reason = str(exc) if isinstance(exc, UnsafePath) else f"{exc.strerror or type(exc).__name__}"
                log.warning(
                    "metrics file %s not written: %s (metrics.textfile; %d failed writes)",
                    self.path,
                    reason,
                    verdict.occurrences,
                )
            return False
        ended = self._throttle.end(FAILING)
        if ended is not None:
            log.info("metrics file %s written again", self.path)
        return True
