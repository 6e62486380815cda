"""The enrolled link at stop time: a call waiting to retry gives up at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.config import parse_config_text
from agent.control.connect import api_client
from agent.control.errors import ApiError
from agent.daemon.server_link import ServerLink


def test_a_retry_wait_is_cut_short_by_the_stop(tmp_path: Path) -> None:
    config = parse_config_text(f'[server]\nurl = "https://cp.invalid"\n[state]\ndir = "{tmp_path}"\n')
    link = ServerLink(config)
    threading.Timer(0.1, link.stop).start()
    started = time.monotonic()
    with pytest.raises(ApiError, match="stopping"):
        link._pause(300.0)  # a backoff wait of five minutes
    assert time.monotonic() - started < 5.0


def test_configured_attempts_reach_the_client(tmp_path: Path) -> None:
    text = f'[server]\nurl = "https://cp.invalid"\nmax_attempts = 2\n[state]\ndir = "{tmp_path}"\n'
    config = parse_config_text(text)
    with api_client(config, config.server.url) as client:
        assert client.backoff.max_attempts == 2
