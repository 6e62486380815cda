"""The daemon's parts and what they see of it: one small typed interface each way.

A part (the server link, the usage tracker, the instruction handler) is built by the composition
root (`agent/commands/run.py`) and handed to the Daemon, which drives it:

    prepare(core)    once the state store and the host are open, before anything runs
    jobs(schedule, first_contact)
                     its scheduled jobs (asked again after a reload, with the new schedule)
    start()          after the first full scan, once the scheduler runs
    stop()           when the agent stops: end threads, abandon waits; no new work

`Core` is everything a part sees of the daemon: what it may read, and the calls through which
data flows back (events into the outbox, a key's use, a policy from the server, a one-off job).
A part never holds the daemon, and the daemon imports no part: service.py knows only these types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from agent.config import ScheduleConfig
from agent.daemon.counters import Counters
from agent.daemon.link_health import LinkHealth
from agent.daemon.sender import Destination
from agent.host.safefs import HostFS
from agent.host.users import UserSource
from agent.inventory.evaluate import Policy
from agent.inventory.model import Event, Inventory
from agent.store.state import StateStore

JSON = dict[str, Any]

# (job id, function, interval in seconds or None for a one-off, first run or None for "now + interval")
Job = tuple[str, Callable[[], None], float | None, datetime | None]


@dataclass(frozen=True)
class Vitals:
    """The daemon's health and size, as a heartbeat reports them."""

    healthy: bool
    uptime_s: int
    last_scan_at: datetime | None
    keys: int
    outbox: int


@dataclass(frozen=True)
class Core:
    """What the daemon gives its parts at prepare(): open resources, readings, and sinks."""

    fs: HostFS
    users: UserSource
    store: StateStore
    # Readings (each call answers for now).
    host_id: Callable[[], str | None]
    policy: Callable[[], Policy]
    inventory: Callable[[], Inventory | None]
    vitals: Callable[[], Vitals]
    # How many discovery changes were emitted so far: a part that reports inventories compares it
    # with the count at its last report to know whether anything changed since.
    changes: Callable[[], int]
    # Sinks and actions.
    rescan: Callable[[], Inventory | None]  # a full scan now; its inventory
    emit: Callable[[Sequence[Event]], None]  # durable in the outbox before it returns
    adopt_policy: Callable[[Policy], None]  # the control plane's policy, in force from now
    note_used: Callable[[str, str | None, datetime], None]  # (fingerprint, user, at)
    # (fingerprint, user, path, managed_by, expires_at) of a line the agent wrote itself
    note_managed: Callable[[str, str | None, str, str, datetime | None], None]
    # A one-off job (replacing one of the same id): a grant's expiry, the link's next duty.
    schedule_once: Callable[[str, Callable[[], None], datetime], None]
    # Where the link records each call to the control plane (`with health.call(kind): ...`): the
    # deliveries, failures and the server's last answer that `status` shows; it logs outages.
    health: LinkHealth = field(default_factory=LinkHealth)
    # What the metrics count: the client's attempts (its on_attempt hook), instructions decided.
    counters: Counters = field(default_factory=Counters)


class Part(Protocol):
    def prepare(self, core: Core) -> None: ...

    def jobs(self, schedule: ScheduleConfig, first_contact: datetime) -> list[Job]:
        """`first_contact`: when the first server call may go (after the start-up splay)."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Link(Part, Destination, Protocol):
    """The control-plane link (enrolled mode): a part that is also the sender's destination."""

    @property
    def host_id(self) -> str | None: ...

    def status(self) -> JSON:
        """Fields merged into the daemon's status (no secrets)."""
        ...

    def close(self) -> None:
        """Release the connection; called after the sender and the scheduler stopped."""
        ...
