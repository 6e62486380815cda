"""The daemon's scheduler: APScheduler behind the few calls the daemon makes.

One BackgroundScheduler in UTC with a pool of two job workers; every job coalesces missed runs, never
runs twice at once, and varies its interval by +/- `jitter` (so a fleet does not call in lockstep).
A job that raises is logged and runs again at its next time: the scheduler lives on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from agent.control.errors import ApiError
from agent.inventory.model import rfc3339

log = logging.getLogger("sshklm.daemon")

JobFn = Callable[[], object]


class Jobs:
    def __init__(
        self,
        *,
        jitter: Callable[[], float],
        note_error: Callable[[str], None],
        stopping: Callable[[], bool],
    ) -> None:
        """`jitter()`: the configured fraction, read at each (re)scheduling (a reload changes it);
        `note_error(message)`: a job failed; `stopping()`: failures are expected now (not noted)."""
        self._jitter = jitter
        self._note_error = note_error
        self._stopping = stopping
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )

    def start(self) -> None:
        self._scheduler.start()

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def shutdown(self) -> None:
        """Stop at once: jobs in flight finish on their own (their waits are cut by the stop)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def every(self, job_id: str, fn: JobFn, seconds: float, first: datetime | None = None) -> None:
        """Every `seconds` (jittered); the first run at `first`, or one interval from now."""
        # APScheduler 3 adds a job *paused* when next_run_time=None is passed explicitly.
        extra = {"next_run_time": first} if first is not None else {}
        self._scheduler.add_job(
            self._guard(job_id, fn),
            self._interval(seconds),
            id=job_id,
            name=job_id,
            replace_existing=True,
            **extra,
        )

    def once(self, job_id: str, fn: JobFn, when: datetime) -> None:
        """A one-off job (an ephemeral grant's expiry, the server link's next duty, which re-arms
        itself when it ends). Late runs still run: expiry must happen."""
        self._scheduler.add_job(
            self._guard(job_id, fn),
            DateTrigger(run_date=when, timezone=UTC),
            id=job_id,
            name=job_id,
            replace_existing=True,
            misfire_grace_time=None,
        )

    def exactly_every(self, job_id: str, fn: JobFn, seconds: float) -> None:
        """Every `seconds` from now, no jitter (the systemd watchdog ping: a late one restarts us)."""
        self._scheduler.add_job(
            fn,
            IntervalTrigger(seconds=seconds, timezone=UTC),
            id=job_id,
            replace_existing=True,
            next_run_time=datetime.now(UTC),
        )

    def next_runs(self) -> dict[str, str | None]:
        """Each job's next run time (RFC 3339), for `status`; empty when not running."""
        if not self._scheduler.running:
            return {}
        return {
            job.id: rfc3339(job.next_run_time) if job.next_run_time else None
            for job in self._scheduler.get_jobs()
        }

    def _interval(self, seconds: float) -> IntervalTrigger:
        jitter = seconds * self._jitter()
        return IntervalTrigger(seconds=seconds, jitter=jitter or None, timezone=UTC)

    def _guard(self, job_id: str, fn: JobFn) -> Callable[[], None]:
        """A job that raises is logged and runs again at its next time; the scheduler lives on."""

        def run() -> None:
            try:
                fn()
            except Exception as exc:
                if self._stopping():
                    # The job outlived the stop (its client or database closed under it): expected.
                    log.debug("job %s ended by the stop: %s", job_id, type(exc).__name__)
                elif isinstance(exc, ApiError):
                    # Expected conversation failures (outage, auth, limits): no traceback; the link's
                    # LinkHealth logs them (once, then at growing intervals) and status has the detail.
                    self._note_error(f"job {job_id}: {exc}")
                    log.debug("job %s: %s", job_id, exc)
                else:
                    self._note_error(f"job {job_id} failed: {type(exc).__name__}: {exc}")
                    log.exception("job %s failed", job_id)

        run.__name__ = job_id
        return run
