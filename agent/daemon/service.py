"""The daemon: wiring of discovery, watcher, outbox, sender, scheduler and systemd.

Threads (bounded, whatever the number of users): main (signals), the watcher's reader,
dispatcher and poller, the sender, APScheduler's scheduler thread and a pool of two job
workers, and the usage-log follower — at most 9.

Every change goes the same way: watcher -> LiveDiscovery (re-read the changed files, diff)
-> events -> outbox (durable) -> sender (woken at once) -> control plane, or the log in
standalone mode. Scheduled jobs are the safety nets and the server conversation.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from agent import __version__
from agent.commands.scan import local_zone, open_host, policy_from, settings_from, sshd_version
from agent.config import Config, ConfigError, load_config
from agent.control.errors import ApiError
from agent.daemon.discovery import LiveDiscovery
from agent.daemon.memory import release_free_memory, tune_allocator
from agent.daemon.notify import Notifier, monotonic_usec
from agent.daemon.sender import LogDestination, Sender
from agent.daemon.watcher import Watcher
from agent.host.scan import ScanContext
from agent.inventory.diff import Change, to_events
from agent.inventory.evaluate import Policy
from agent.inventory.model import Inventory, KeyRecord, rfc3339
from agent.store.db import Database, open_database
from agent.store.outbox import Outbox
from agent.store.state import StateStore

if TYPE_CHECKING:
    from agent.daemon.server_link import ServerLink

log = logging.getLogger("sshklm.daemon")

STATUS_EVERY_S = 10.0


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        root: str | None = None,
        config_path: str | None = None,
        notifier: Notifier | None = None,
        rng: random.Random | None = None,
        install_signals: bool = True,
    ) -> None:
        self.config = config
        self.root = root
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.rng = rng or random.Random()
        self.install_signals = install_signals
        self.started_at = datetime.now(UTC)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._emit_lock = threading.Lock()
        self._last_used_lock = threading.Lock()  # the usage follower adds while a scan re-keys
        self.last_error: str | None = None
        # Reloads applied since start (0: the file read at start) and the outcome of the last one.
        self.config_generation = 0
        self.last_reload: dict[str, Any] | None = None
        # Anything changed since the last full inventory report (the first report always goes).
        self.changed_since_report = True
        self.stopping = False  # set by stop(): what fails after it is expected, not an error
        # Changes emitted since the restart baseline (the last full scan's inventory) was saved.
        self._baseline_stale = False
        self.last_scan_at: datetime | None = None
        self.policy: Policy = policy_from(config)
        self._first_seen: dict[FirstSeenKey, datetime] = {}
        self._last_used: dict[LastUsedKey, datetime] = {}
        self._managed: dict[tuple[str, str | None, str], tuple[str, datetime | None]] = {}
        self._sshd_version: str | None = None
        self.db: Database | None = None
        self.watcher: Watcher | None = None
        self.sender: Sender | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.link: ServerLink | None = None
        self.extensions: list[Any] = []  # instruction applier, usage follower: started and stopped with us

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        tune_allocator()
        self.db = open_database(cfg.state.dir)
        self.store = StateStore(self.db)
        self.outbox = Outbox(self.db)
        self._first_seen = dict(self.store.first_seen_map())
        self._last_used = dict(self.store.last_used_map())
        self._sshd_version = None if self.root else sshd_version(cfg.discovery.sshd_binary)
        fs, users = open_host(cfg, self.root)
        self.fs, self.users = fs, users
        self.discovery = LiveDiscovery(fs, users, settings_from(cfg), self._context)
        if cfg.server.url:
            # Imported only with a server: httpx costs ~10 MB that a standalone agent never uses.
            from agent.daemon.server_link import ServerLink

            self.link = ServerLink(self, cfg)
            destination: Any = self.link
        else:
            log.info("standalone mode (no server.url): changes are logged, nothing is sent")
            destination = LogDestination()
        for ext in self.extensions:
            ext.prepare()
        self.sender = Sender(self.outbox, destination, rng=self.rng, on_error=self._note_error)
        self.sender.start()
        if cfg.watch.enabled:
            self.watcher = Watcher(
                on_changes=self._on_changes,
                on_rescan=self._on_rescan,
                debounce_s=cfg.watch.debounce_ms / 1000.0,
                poll_interval_s=cfg.watch.poll_interval_s,
                root=self.root or "/",
            )
            # Watch first, then read: a change during the first scan is seen either way.
            ws = self.discovery.plan_watch_set()
            self.watcher.set_targets(ws.files, ws.dirs)
            self.watcher.start()
        self._emit(self.discovery.full_scan(load_previous=self._load_previous))
        self._after_scan(full=True)
        self.scheduler = self._build_scheduler()
        self.scheduler.start()
        for ext in self.extensions:
            ext.start()
        self.sender.wake()
        self.publish_status()
        self.notifier.ready(self.status_line())
        log.info("agent %s ready: %s", __version__, self.status_line())

    def run(self) -> int:
        if self.install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
            signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        self.start()
        while not self._stop.is_set():
            self._stop.wait(0.5)
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
        self.stop()
        return 0

    def stop(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        self.stopping = True
        if self.link is not None:
            self.link.begin_stop()
        # Each part gets a bounded wait so the whole stop stays well inside systemd's 10 s.
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.watcher is not None:
            self.watcher.stop(2.0)
        for ext in self.extensions:
            ext.stop()
        if self.sender is not None:
            self.sender.stop(3.0)
        self._save_baseline_if_changed()
        self.publish_status(running=False)
        if self.link is not None:
            self.link.close()
        if self.db is not None:
            self.db.close()

    def _save_baseline_if_changed(self) -> None:
        """On a clean stop, keep what changed since the last full scan as the restart baseline, so
        the next start does not report those changes again (only a crash leaves that window)."""
        inventory = self.discovery.inventory
        if not self._baseline_stale or inventory is None:
            return
        try:
            self.store.save_inventory(inventory.to_json_text())
            self._baseline_stale = False
        except Exception as exc:  # the stop goes on; at worst the next start reports them again
            log.warning("restart baseline not saved at stop: %s", type(exc).__name__)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration; a bad one keeps the old and says why.

        Applied at once: discovery settings (with a full rescan), local policy, schedule
        intervals, log level. Read only at start (restart to change): [server], [state],
        [watch] and [apply], which own connections, files and threads.

        The outcome is published in the status before READY=1 (`last_reload`, with the
        CLOCK_MONOTONIC time the file was read, and `config_generation`): `sshklm-agent reload`,
        the unit's ExecReload, waits for it, so `systemctl reload` returns once the new
        configuration is in force, or fails when it was refused."""
        started_usec = monotonic_usec()
        self.notifier.reloading()
        try:
            try:
                new, _ = load_config(self.config_path)
            except ConfigError as exc:
                refused = "reload refused, keeping the running configuration: " + "; ".join(exc.problems)
                self._note_error(refused)
                log.error("%s", refused)
                self._finish_reload(started_usec, "refused", refused)
                return
            self.config = new
            self.policy = policy_from(new)
            logging.getLogger().setLevel(new.logging.level.upper())
            previous = self.discovery.inventory
            self.discovery = LiveDiscovery(self.fs, self.users, settings_from(new), self._context)
            self._emit(self.discovery.full_scan(previous))
            self._after_scan(full=True)
            if self.scheduler is not None:
                self._schedule_jobs(self.scheduler, first_delay=0.0)
        except Exception as exc:  # the daemon goes on with what was applied; the caller is told
            failed = f"reload failed: {type(exc).__name__}: {exc}"
            self._note_error(failed)
            log.exception("reload failed")
            self._finish_reload(started_usec, "failed", failed)
            return
        self.config_generation += 1
        log.info("configuration reloaded (generation %d)", self.config_generation)
        self._finish_reload(started_usec, "applied", None)

    def _finish_reload(self, started_usec: int, result: str, detail: str | None) -> None:
        self.last_reload = {
            "started_usec": started_usec,
            "finished_at": rfc3339(datetime.now(UTC)),
            "result": result,
            "detail": detail,
            "generation": self.config_generation,
        }
        self.publish_status()
        self.notifier.ready(self.status_line())

    # -- discovery and events --------------------------------------------------------------

    def _context(self) -> ScanContext:
        return ScanContext(
            now=datetime.now(UTC),
            local_tz=local_zone(),
            host_id=self.host_id,
            sshd_version=self._sshd_version,
            policy=self.policy,
            first_seen=self._first_seen,
            last_used=self._last_used,
            managed=self._managed,
        )

    @property
    def host_id(self) -> str | None:
        return self.link.host_id if self.link is not None else None

    def _load_previous(self) -> Inventory | None:
        data = self.store.load_inventory()
        if not data:
            return None
        try:
            return Inventory.from_json(data)
        except (KeyError, TypeError, ValueError):
            log.warning("saved inventory unreadable; starting without a baseline")
            return None

    def _on_changes(self, paths: set[str]) -> None:
        generation, watch_version = self.discovery.plan_generation, self.discovery.watch_version
        changes = self.discovery.changed_paths(paths)
        self._emit(changes)
        self._after_scan(full=False)
        if (generation, watch_version) != (self.discovery.plan_generation, self.discovery.watch_version):
            # Re-planned (users, sshd_config) or a symlink re-pointed: watch what is read now.
            self._update_watch_targets()
        if changes:
            self.publish_status()

    def _on_rescan(self, reason: str) -> None:
        log.warning("full rescan: %s", reason)
        self.rescan()

    def rescan(self) -> None:
        self._emit(self.discovery.full_scan())
        self._after_scan(full=True)

    def _after_scan(self, *, full: bool) -> None:
        self.last_scan_at = datetime.now(UTC)
        if full:
            # Before taking the inventory: a change after this point marks the baseline stale again.
            self._baseline_stale = False
        inventory = self.discovery.inventory
        if inventory is None:
            return
        now = datetime.now(UTC)
        if full:
            # Only keys present are remembered, keyed by the records' own strings: maps loaded
            # from the store hold a copy of every string (~4 MB at 10,000 keys).
            self._first_seen, fresh = first_seen_of(inventory.keys, self._first_seen, now)
            with self._last_used_lock:
                self._last_used = last_used_of(inventory.keys, self._last_used)
        else:
            fresh = [
                (k.fingerprint, k.user, k.path)
                for k in inventory.keys
                if (k.fingerprint, k.user, k.path) not in self._first_seen
            ]
            for ident in fresh:
                self._first_seen[ident] = now
        if fresh:
            self.store.record_seen(fresh, now)
        if full:
            self.store.retain_seen(self._first_seen)  # a key removed and re-added is new again
            self.store.save_inventory(inventory.to_json_text())
            if self.watcher is not None:
                self._update_watch_targets()
            release_free_memory()

    def _update_watch_targets(self) -> None:
        if self.watcher is None:
            return
        ws = self.discovery.watch_set()
        self.watcher.set_targets(ws.files, ws.dirs)

    def _emit(self, changes: Sequence[Change]) -> None:
        """Changes -> events -> outbox (durable before anything is sent) -> wake the sender."""
        if not changes:
            return
        self.changed_since_report = True
        self._baseline_stale = True
        events = to_events(changes, at=datetime.now(UTC), new_id=lambda: str(uuid.uuid4()))
        with self._emit_lock:
            self.outbox.append([e.to_json() for e in events])
            self.outbox.collapse_if_over(
                self.config.state.outbox_max_events,
                lambda dropped: {"reason": "outbox bound", "dropped": dropped},
            )
        if self.sender is not None:
            self.sender.wake()

    def emit_events(self, events: Sequence[dict[str, Any]]) -> None:
        """For other parts (usage follower, instruction applier) that build their own events."""
        with self._emit_lock:
            self.outbox.append(list(events))
        if self.sender is not None:
            self.sender.wake()

    def note_managed(
        self, fingerprint: str, user: str | None, path: str, managed_by: str, expires_at: datetime | None
    ) -> None:
        self._managed[(fingerprint, user, path)] = (managed_by, expires_at)

    def note_used(self, fingerprint: str, user: str | None, at: datetime) -> None:
        with self._last_used_lock:
            self._last_used[(fingerprint, user)] = at
        self.store.record_used(fingerprint, user, at)

    def _note_error(self, message: str) -> None:
        if self.stopping:
            return  # calls abandoned by the stop are not the agent's last error
        self.last_error = f"{rfc3339(datetime.now(UTC))} {message}"

    # -- scheduling ------------------------------------------------------------------------

    def _build_scheduler(self) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )
        splay = self.rng.uniform(0, self.config.schedule.startup_splay_s)
        self._schedule_jobs(scheduler, first_delay=splay)
        return scheduler

    def _interval(self, seconds: float) -> IntervalTrigger:
        jitter = seconds * self.config.schedule.jitter
        return IntervalTrigger(seconds=seconds, jitter=jitter or None, timezone=UTC)

    def _schedule_jobs(self, scheduler: BackgroundScheduler, *, first_delay: float) -> None:
        s = self.config.schedule
        now = datetime.now(UTC)
        first_contact = now + timedelta(seconds=first_delay)

        def add(job_id: str, fn: Callable[[], None], seconds: float, first: datetime | None) -> None:
            # APScheduler 3 adds a job *paused* when next_run_time=None is passed explicitly.
            extra = {"next_run_time": first} if first is not None else {}
            scheduler.add_job(
                self._guard(job_id, fn),
                self._interval(seconds),
                id=job_id,
                name=job_id,
                replace_existing=True,
                **extra,
            )

        add("rescan", self.rescan, s.rescan_s, None)
        add("status", self.publish_status, STATUS_EVERY_S, now + timedelta(seconds=STATUS_EVERY_S))
        if self.link is not None:
            add("heartbeat", self.link.heartbeat, self.link.heartbeat_interval(s.heartbeat_s), first_contact)
            add(
                "full_report",
                self.link.report_if_changed,
                s.full_report_s,
                first_contact + timedelta(seconds=1),
            )
            add("token_refresh", self.link.refresh_token, 60.0, first_contact + timedelta(seconds=2))
        for ext in self.extensions:
            for job_id, fn, seconds, first in ext.jobs():
                if seconds is None:
                    self.schedule_once(job_id, fn, first or now, scheduler)
                else:
                    add(job_id, fn, seconds, first)
        interval = self.notifier.watchdog_interval()
        if interval:
            # Half the watchdog interval, no jitter: a late ping restarts the agent.
            scheduler.add_job(
                self._watchdog_tick,
                IntervalTrigger(seconds=max(interval / 2, 0.5), timezone=UTC),
                id="watchdog",
                replace_existing=True,
                next_run_time=now,
            )

    def schedule_once(
        self,
        job_id: str,
        fn: Callable[[], None],
        when: datetime,
        scheduler: BackgroundScheduler | None = None,
    ) -> None:
        """A one-off job (an ephemeral grant's expiry). Late runs still run: expiry must happen."""
        target = scheduler or self.scheduler
        if target is None:
            return
        target.add_job(
            self._guard(job_id, fn),
            DateTrigger(run_date=when, timezone=UTC),
            id=job_id,
            name=job_id,
            replace_existing=True,
            misfire_grace_time=None,
        )

    def reschedule(self, job_id: str, seconds: float) -> None:
        if self.scheduler is not None and self.scheduler.get_job(job_id) is not None:
            self.scheduler.reschedule_job(job_id, trigger=self._interval(seconds))

    def _guard(self, job_id: str, fn: Callable[[], None]) -> Callable[[], None]:
        """A job that raises is logged and runs again at its next time; the scheduler lives on."""

        def run() -> None:
            try:
                fn()
            except Exception as exc:
                if self.stopping:
                    # The job outlived the stop (its client or database closed under it): expected.
                    log.debug("job %s ended by the stop: %s", job_id, type(exc).__name__)
                elif isinstance(exc, ApiError):
                    # Expected conversation failures (outage, auth, limits): one line, no traceback.
                    self._note_error(f"job {job_id}: {exc}")
                    log.warning("job %s: %s", job_id, exc)
                else:
                    self._note_error(f"job {job_id} failed: {type(exc).__name__}: {exc}")
                    log.exception("job %s failed", job_id)

        run.__name__ = job_id
        return run

    def healthy(self) -> tuple[bool, str]:
        if self.watcher is not None and not self.watcher.is_alive():
            return False, "watcher thread died"
        if self.sender is not None and not self.sender.is_alive():
            return False, "sender thread died"
        if self.scheduler is None or not self.scheduler.running:
            return False, "scheduler stopped"
        return True, "ok"

    def _watchdog_tick(self) -> None:
        ok, why = self.healthy()
        if ok:
            self.notifier.watchdog()
        else:
            # No ping: systemd's WatchdogSec restarts us, which is the cure for a dead thread.
            log.error("health check failed (%s); withholding the watchdog ping", why)

    # -- status ----------------------------------------------------------------------------

    def status(self, *, running: bool = True) -> dict[str, Any]:
        inventory = self.discovery.inventory if hasattr(self, "discovery") else None
        watch: dict[str, Any] = {}
        if self.watcher is not None:
            watch = dataclasses.asdict(self.watcher.stats())
        next_jobs: dict[str, str | None] = {}
        if self.scheduler is not None and self.scheduler.running:
            for job in self.scheduler.get_jobs():
                next_jobs[job.id] = rfc3339(job.next_run_time) if job.next_run_time else None
        link = self.link.status() if self.link is not None else {}
        return {
            "running": running,
            "pid": os.getpid(),
            "version": __version__,
            "mode": "enrolled" if self.link is not None else "standalone",
            "started_at": rfc3339(self.started_at),
            "updated_at": rfc3339(datetime.now(UTC)),
            "last_scan_at": rfc3339(self.last_scan_at),
            "keys": len(inventory.keys) if inventory else 0,
            "problems": len(inventory.errors) if inventory else 0,
            "outbox": self.outbox.depth() if self.db is not None else None,
            "watch": _jsonable(watch),
            "last_error": self.last_error,
            "config_generation": self.config_generation,
            "last_reload": self.last_reload,
            "next_jobs": next_jobs,
            **link,
        }

    def publish_status(self, running: bool = True) -> None:
        status = self.status(running=running)
        self.store.set_status(status)
        self.notifier.status(self.status_line(status))

    def status_line(self, status: dict[str, Any] | None = None) -> str:
        st = status or self.status()
        watch = st.get("watch") or {}
        watched = watch.get("targets_inotify", 0) + watch.get("targets_polled", 0) if watch else 0
        parts = [f"{watched} files watched", f"{st['keys']} keys", f"outbox {st['outbox']}"]
        if st.get("last_report_at"):
            parts.append(f"last report {st['last_report_at']}")
        if st.get("last_error"):
            parts.append(f"last error: {st['last_error']}")
        return "; ".join(parts)


FirstSeenKey = tuple[str, str | None, str]
LastUsedKey = tuple[str, str | None]


def first_seen_of(
    keys: Iterable[KeyRecord], known: Mapping[FirstSeenKey, datetime], now: datetime
) -> tuple[dict[FirstSeenKey, datetime], list[FirstSeenKey]]:
    """(first_seen of every key in `keys`, the ones not in `known`, which get `now`). Pure."""
    out: dict[FirstSeenKey, datetime] = {}
    fresh: list[FirstSeenKey] = []
    for k in keys:
        ident = (k.fingerprint, k.user, k.path)
        at = known.get(ident)
        if at is None:
            fresh.append(ident)
            at = now
        out[ident] = at
    return out, fresh


def last_used_of(
    keys: Iterable[KeyRecord], known: Mapping[LastUsedKey, datetime]
) -> dict[LastUsedKey, datetime]:
    """`known` again, keyed by the records' strings where a record has that key (entries of keys
    not present stay: such a key may come back, and its last use with it). Pure."""
    out = dict(known)
    if known:
        for k in keys:
            ident = (k.fingerprint, k.user)
            at = out.pop(ident, None)
            if at is not None:
                out[ident] = at
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def uptime_s(started: datetime) -> int:
    return int((datetime.now(UTC) - started).total_seconds())
