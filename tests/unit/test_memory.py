"""glibc allocator tuning: applied on glibc, and large freed buffers go back to the OS."""

from __future__ import annotations

import platform

import pytest

from agent.daemon.memory import release_free_memory, tune_allocator


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_tuning_applies_and_freed_buffers_leave_no_resident_pages() -> None:
    # What the tuning saves in the daemon (~5 MB at 10,000 keys) depends on its allocation
    # history and is measured by benchmarks/bench_idle.py; here: it applies, and what a burst
    # freed is not resident afterwards.
    assert tune_allocator() is True
    big = bytearray(16 << 20)  # a freed mapped block: glibc would raise its threshold to 16 MB
    del big
    before = _rss_kb()
    buffers = [bytearray(4 << 20) for _ in range(8)]  # 32 MB, touched
    assert _rss_kb() - before > 30_000
    del buffers
    release_free_memory()
    assert _rss_kb() - before < 4_000
