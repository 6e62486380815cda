"""The daemon: discovery, watcher, outbox, sender, scheduler and systemd, and the parts it drives.

Threads (bounded, whatever the number of users): main (signals), the watcher's reader,
dispatcher and poller, the sender, APScheduler's scheduler thread and a pool of two job
workers, the usage-log follower and the server link's instruction channel — at most 10.

Every change goes the same way: watcher -> LiveDiscovery (re-read the changed files, diff)
-> events -> outbox (durable) -> sender (woken at once) -> control plane, or the log in
standalone mode. Scheduled jobs are the safety nets and the server conversation.

The parts (the server link, the usage tracker, the instruction handler) are built by the
composition root (agent/commands/run.py) and known here only through agent/daemon/parts.py:
they see the daemon as a `Core`, and this module imports none of them.

(Over 500 lines: one class, the Daemon, whose methods are the steps of that one path and the
scheduled jobs around it; the decisions it calls are pure and live elsewhere - LiveDiscovery,
link_schedule, the status document - and splitting the sequencing itself would scatter it.)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from agent import __version__
from agent.config import Config, ConfigError, load_config
from agent.daemon.counters import Counters
from agent.daemon.discovery import LiveDiscovery
from agent.daemon.history import KeyHistory
from agent.daemon.link_health import LinkHealth
from agent.daemon.link_schedule import startup_splay
from agent.daemon.memory import release_free_memory, tune_allocator
from agent.daemon.metrics_file import MetricsFile
from agent.daemon.notify import Notifier, monotonic_usec
from agent.daemon.parts import Core, Link, Part, Vitals
from agent.daemon.scheduling import Jobs
from agent.daemon.sender import Destination, LogDestination, Sender
from agent.daemon.status import status_document, summary_line
from agent.daemon.watcher import Watcher
from agent.host.scan import ScanContext
from agent.host.setup import local_zone, open_host, policy_from, settings_from, sshd_version
from agent.inventory.diff import Change, to_events
from agent.inventory.evaluate import Policy
from agent.inventory.model import Event, Inventory, rfc3339
from agent.store.db import Database, open_database
from agent.store.outbox import Outbox
from agent.store.state import StateStore

log = logging.getLogger("sshklm.daemon")

STATUS_EVERY_S = 10.0
DEFERRED_REREAD_JOB = "deferred-reread"  # re-reads a user over the re-read budget (discovery.py)
CHANGE_LINES = 20  # at most this many log lines per burst of changes; the rest are counted


def log_changes(changes: Sequence[Change]) -> None:
    """One INFO line per detected change: type, user, file, fingerprint (never key material)."""
    for change in changes[:CHANGE_LINES]:
        log.info(
            "change detected: %s user=%s path=%s fingerprint=%s",
            change.type,
            change.user,
            change.path,
            change.fingerprint,
        )
    if len(changes) > CHANGE_LINES:
        log.info(
            "change detected: %d more in this burst (every one goes to the outbox)",
            len(changes) - CHANGE_LINES,
        )


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        root: str | None = None,
        config_path: str | None = None,
        link: Link | None = None,
        parts: Sequence[Part] = (),
        notifier: Notifier | None = None,
        rng: random.Random | None = None,
        install_signals: bool = True,
        check_config: Callable[[Config], list[str]] = lambda _config: [],
    ) -> None:
        """`link`: the control-plane link (enrolled mode), None in standalone mode; `parts`: the
        others (usage tracker, instruction handler). Both are driven here (see parts.py)."""
        self.config = config
        self.root = root
        self.config_path = config_path
        self.link = link
        self.parts: tuple[Part, ...] = (*((link,) if link is not None else ()), *parts)
        self.notifier = notifier or Notifier()
        self.rng = rng or random.Random()
        self.install_signals = install_signals
        # The errors `check-config` would report (the composition root passes its checks): a reload
        # refuses what `run` would refuse at start.
        self.check_config = check_config
        self.started_at = datetime.now(UTC)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._emit_lock = threading.Lock()
        self.last_error: str | None = None
        # Discovery changes emitted so far (the link reports an inventory when this moved).
        self._changes = 0
        # Reloads applied since start (0: the file read at start) and the outcome of the last one.
        self.config_generation = 0
        self.last_reload: dict[str, Any] | None = None
        self.stopping = False  # set by stop(): what fails after it is expected, not an error
        # Changes emitted since the restart baseline (the last full scan's inventory) was saved.
        self._baseline_stale = False
        self.last_scan_at: datetime | None = None
        # The local policy is in force until (and unless) the control plane sends one.
        self._local_policy: Policy = policy_from(config)
        self._server_policy: Policy | None = None
        self._sshd_version: str | None = None
        self.db: Database | None = None
        self.watcher: Watcher | None = None
        self.sender: Sender | None = None
        self.jobs: Jobs | None = None
        # The server conversation as status shows it (the link records into it through Core).
        self.health = LinkHealth()
        self.health.on_change = self._publish_soon
        # What the metrics count (requests, instructions), kept across restarts like the above.
        self.counters = Counters()
        self.metrics_file = MetricsFile(config.metrics.textfile) if config.metrics.textfile else None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        tune_allocator()
        self.db = open_database(cfg.state.dir)
        self.store = StateStore(self.db)
        self.outbox = Outbox(self.db)
        self.history = KeyHistory(self.store)
        previous = self.store.get_status()
        if isinstance(previous, dict):
            self.health.restore(previous.get("reporting"))  # deliveries survive a restart
            self.counters.restore(previous.get("counters"))
        self._sshd_version = None if self.root else sshd_version(cfg.discovery.sshd_binary)
        self.fs, self.users = open_host(cfg, self.root)
        self.discovery = LiveDiscovery(self.fs, self.users, settings_from(cfg), self._context)
        destination: Destination
        if self.link is not None:
            destination = self.link
        else:
            log.info("standalone mode (no server.url): changes are logged, nothing is sent")
            destination = LogDestination()
        core = self._core()
        for part in self.parts:
            part.prepare(core)
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
        self.jobs = Jobs(
            jitter=lambda: self.config.schedule.jitter,
            note_error=self._note_error,
            stopping=lambda: self.stopping,
        )
        self._schedule_jobs(self.jobs, first_delay=startup_splay(cfg.schedule.startup_splay_s, self.rng))
        self.jobs.start()
        self._schedule_deferred()  # a change deferred before the scheduler existed
        for part in self.parts:
            part.start()
        self.sender.wake()
        self.publish_status()
        self.notifier.ready(self.status_line())
        log.info("agent %s ready: %s", __version__, self.status_line())

    def _core(self) -> Core:
        return Core(
            fs=self.fs,
            users=self.users,
            store=self.store,
            host_id=lambda: self.host_id,
            policy=lambda: self.policy,
            inventory=lambda: self.discovery.inventory,
            vitals=self._vitals,
            changes=lambda: self._changes,
            rescan=self.rescan,
            emit=self.emit_events,
            adopt_policy=self._adopt_policy,
            note_used=self.history.note_used,
            note_managed=self.history.note_managed,
            schedule_once=self._schedule_once,
            health=self.health,
            counters=self.counters,
        )

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
        # First the parts: the link abandons retries in progress, the follower ends its thread.
        for part in self.parts:
            part.stop()
        # Each part gets a bounded wait so the whole stop stays well inside systemd's 10 s.
        if self.jobs is not None:
            self.jobs.shutdown()
        if self.watcher is not None:
            self.watcher.stop(2.0)
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

        Applied at once: discovery settings (with a full rescan), the local policy (in force
        unless the control plane sent one), schedule intervals, log level. Read only at start
        (restart to change): [server], [state], [watch], [usage], [apply], [instructions] and
        [metrics], which own connections, files and threads.

        The outcome is published in the status before READY=1 (`last_reload`, with the
        CLOCK_MONOTONIC time the file was read, and `config_generation`): `sshklm-agent reload`,
        the unit's ExecReload, waits for it, so `systemctl reload` returns once the new
        configuration is in force, or fails when it was refused."""
        started_usec = monotonic_usec()
        self.notifier.reloading()
        try:
            try:
                new, _ = load_config(self.config_path)
                problems = self.check_config(new)
                if problems:
                    raise ConfigError(problems)
            except ConfigError as exc:
                refused = "reload refused, keeping the running configuration: " + "; ".join(exc.problems)
                self._note_error(refused)
                log.error("%s", refused)
                self._finish_reload(started_usec, "refused", refused)
                return
            self.config = new
            self._local_policy = policy_from(new)
            logging.getLogger().setLevel(new.logging.level.upper())
            previous = self.discovery.inventory
            self.discovery = LiveDiscovery(self.fs, self.users, settings_from(new), self._context)
            self._emit(self.discovery.full_scan(previous))
            self._after_scan(full=True)
            if self.jobs is not None:
                self._schedule_jobs(self.jobs, first_delay=0.0)
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
            first_seen=self.history.first_seen,
            last_used=self.history.last_used,
            managed=self.history.managed,
        )

    @property
    def host_id(self) -> str | None:
        return self.link.host_id if self.link is not None else None

    @property
    def policy(self) -> Policy:
        return self._server_policy or self._local_policy

    def _adopt_policy(self, policy: Policy) -> None:
        """The control plane's policy, in force from the next scan on (a reload keeps it)."""
        self._server_policy = policy

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
        self._schedule_deferred()

    def _schedule_deferred(self) -> None:
        """A user over the re-read budget is re-read when the budget allows: never lost."""
        delay = self.discovery.deferred_delay_s()
        if delay is None or self.jobs is None:
            return
        when = datetime.now(UTC) + timedelta(seconds=delay + 0.05)
        self.jobs.once(DEFERRED_REREAD_JOB, lambda: self._on_changes(set()), when)

    def _on_rescan(self, reason: str) -> None:
        log.warning("full rescan: %s", reason)
        self.rescan()

    def rescan(self) -> Inventory | None:
        """A full scan now (a scheduled safety net, a queue overflow, a server's scan request)."""
        self._emit(self.discovery.full_scan())
        self._after_scan(full=True)
        return self.discovery.inventory

    def _after_scan(self, *, full: bool) -> None:
        self.last_scan_at = datetime.now(UTC)
        if full:
            # Before taking the inventory: a change after this point marks the baseline stale again.
            self._baseline_stale = False
        inventory = self.discovery.inventory
        if inventory is None:
            return
        self.history.after_scan(inventory, datetime.now(UTC), full=full)
        if full:
            self.store.save_inventory(inventory.to_json_text())
            self._update_watch_targets()
            release_free_memory()

    def _update_watch_targets(self) -> None:
        if self.watcher is None:
            return
        ws = self.discovery.watch_set()
        self.watcher.set_targets(ws.files, ws.dirs)

    def _emit(self, changes: Sequence[Change]) -> None:
        """Discovery's changes -> events -> outbox (durable before anything is sent, collapsed past
        the bound into one full inventory) -> wake the sender."""
        if not changes:
            return
        self._changes += 1
        self._baseline_stale = True
        if self.link is not None:  # standalone: the log is the destination, it writes each change
            log_changes(changes)
        events = to_events(changes, at=datetime.now(UTC), new_id=lambda: str(uuid.uuid4()))
        self._queue(events)

    def emit_events(self, events: Sequence[Event]) -> None:
        """Events of the other parts (key use, instruction results): into the outbox, bounded too."""
        self._queue(events)

    def _queue(self, events: Sequence[Event]) -> None:
        """Into the outbox (durable), kept within `state.outbox_max_events` whatever the event
        type (store/outbox.py, "Collapse"): past it, room is made down to 90 % of the bound, so
        the work is done once per tenth of the bound, not on every event."""
        bound = self.config.state.outbox_max_events
        with self._emit_lock:
            removed = self.outbox.append_bounded(
                [e.to_json() for e in events],
                bound,
                lambda dropped: {"reason": "outbox bound", "dropped": dropped},
                low_water=bound * 9 // 10,
            )
        if removed:
            dropped = self.outbox.dropped()
            log.warning(
                "outbox over its bound (%d events): %d events merged or dropped "
                "(lost so far: %d, by type %s); a full inventory follows",
                bound,
                removed,
                dropped["total"],
                dropped["by_type"],
            )
        if self.sender is not None:
            self.sender.wake()

    def _note_error(self, message: str) -> None:
        if self.stopping:
            return  # calls abandoned by the stop are not the agent's last error
        if self.link is not None and self.link.host_id is None:
            return  # not connected (not enrolled...): status's link_problem says why, once
        self.last_error = f"{rfc3339(datetime.now(UTC))} {message}"

    # -- scheduling ------------------------------------------------------------------------

    def _schedule_jobs(self, jobs: Jobs, *, first_delay: float) -> None:
        s = self.config.schedule
        now = datetime.now(UTC)
        first_contact = now + timedelta(seconds=first_delay)
        jobs.every("rescan", self.rescan, s.rescan_s)
        jobs.every("status", self.publish_status, STATUS_EVERY_S, now + timedelta(seconds=STATUS_EVERY_S))
        for part in self.parts:
            for job_id, fn, seconds, first in part.jobs(s, first_contact):
                if seconds is None:
                    jobs.once(job_id, fn, first or now)
                else:
                    jobs.every(job_id, fn, seconds, first)
        interval = self.notifier.watchdog_interval()
        if interval:
            # Half the watchdog interval: a late ping restarts the agent.
            jobs.exactly_every("watchdog", self._watchdog_tick, max(interval / 2, 0.5))

    def _schedule_once(self, job_id: str, fn: Callable[[], None], when: datetime) -> None:
        """A one-off job (an ephemeral grant's expiry); nothing before the scheduler exists."""
        if self.jobs is not None:
            self.jobs.once(job_id, fn, when)

    # -- health ----------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        if self.watcher is not None and not self.watcher.is_alive():
            return False, "watcher thread died"
        if self.sender is not None and not self.sender.is_alive():
            return False, "sender thread died"
        if self.jobs is None or not self.jobs.running:
            return False, "scheduler stopped"
        return True, "ok"

    def _watchdog_tick(self) -> None:
        ok, why = self.healthy()
        if ok:
            self.notifier.watchdog()
        else:
            # No ping: systemd's WatchdogSec restarts us, which is the cure for a dead thread.
            log.error("health check failed (%s); withholding the watchdog ping", why)

    def _vitals(self) -> Vitals:
        inventory = self.discovery.inventory
        return Vitals(
            healthy=self.healthy()[0],
            uptime_s=int((datetime.now(UTC) - self.started_at).total_seconds()),
            last_scan_at=self.last_scan_at,
            keys=len(inventory.keys) if inventory else 0,
            outbox=self.outbox.depth(),
        )

    # -- status ----------------------------------------------------------------------------

    def status(self, *, running: bool = True) -> dict[str, Any]:
        retry_at = self.sender.retry_at if self.sender is not None else None
        return status_document(
            running=running,
            pid=os.getpid(),
            now=datetime.now(UTC),
            started_at=self.started_at,
            last_scan_at=self.last_scan_at,
            inventory=self.discovery.inventory if hasattr(self, "discovery") else None,
            outbox=self.outbox.depth() if self.db is not None else None,
            outbox_oldest_at=self.outbox.oldest_at() if self.db is not None else None,
            outbox_dropped=self.outbox.dropped() if self.db is not None else None,
            watch=dataclasses.asdict(self.watcher.stats()) if self.watcher is not None else {},
            last_error=self.last_error,
            next_jobs=self.jobs.next_runs() if self.jobs is not None else {},
            link=self.link.status() if self.link is not None else None,
            reporting=self.health.snapshot() if self.link is not None else None,
            retry_at=datetime.fromtimestamp(retry_at, UTC) if retry_at is not None else None,
            config_generation=self.config_generation,
            last_reload=self.last_reload,
            counters=self.counters.snapshot(),
        )

    def _publish_soon(self) -> None:
        """The server conversation changed (first delivery, failing, recovered): status now."""
        if self.stopping or self.db is None:
            return
        try:
            self.publish_status()
        except Exception as exc:  # never fail the call that was recorded
            log.debug("status not published: %s", type(exc).__name__)

    def publish_status(self, running: bool = True) -> None:
        status = self.status(running=running)
        self.store.set_status(status)
        # After the document: a counter the file showed is never lost to a crash (counters.py).
        if self.metrics_file is not None:
            self.metrics_file.write(status)
        self.notifier.status(summary_line(status))

    def status_line(self) -> str:
        return summary_line(self.status())
