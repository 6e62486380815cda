"""Agent configuration: TOML (tomllib) into frozen dataclasses, strictly validated.

Every setting has a default, so a missing default file means "all defaults". Unknown keys and
wrong types are errors that name the dotted key (`schedule.jitter: expected a number`), and TOML
syntax errors name the line, so `sshklm-agent check-config` can print them all at once.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = "/etc/sshklm-agent/agent.toml"
DEFAULT_STATE_DIR = "/var/lib/sshklm-agent"


class ConfigError(Exception):
    """One or more configuration problems; `problems` lists them, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ConfigFileError(ConfigError):
    """The configuration file itself cannot be read (missing, a directory, not UTF-8)."""


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _fraction(value: Any) -> str | None:
    return None if 0 <= value < 1 else "must be at least 0 and less than 1"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(choices)

    return check


def _long_poll_wait(value: Any) -> str | None:
    return None if 0 <= value <= 60 else "must be 0 (no long-poll) to 60"


def _url(value: Any) -> str | None:
    if value == "" or value.startswith(("https://", "http://")):
        return None
    return "must be an http(s) URL or empty"


def _absolute(value: Any) -> str | None:
    # The daemon runs with / as its working directory: a relative path would name another file
    # there than for the command that checked it.
    return None if value.startswith("/") else "must be an absolute path"


def _absolute_or_empty(value: Any) -> str | None:
    return None if value == "" else _absolute(value)


def _textfile(value: Any) -> str | None:
    # node_exporter's textfile collector reads only *.prom files of its directory.
    if value == "":
        return None
    if not value.startswith("/"):
        return "must be an absolute path (or empty: no metrics file)"
    if not value.rsplit("/", 1)[1].endswith(".prom") or value.rsplit("/", 1)[1] == ".prom":
        return "must name a file ending in .prom (node_exporter's textfile collector reads only those)"
    return None


def _check(fn: Callable[[Any], str | None]) -> dict[str, Any]:
    return {"check": fn}


@dataclass(frozen=True)
class ServerConfig:
    # Empty url: standalone mode (watch, scan and log changes; no network).
    url: str = field(default="", metadata=_check(_url))
    ca_file: str = field(default="", metadata=_check(_absolute_or_empty))
    api_key_file: str = field(default="", metadata=_check(_absolute_or_empty))
    host_id: str = ""
    connect_timeout_s: float = field(default=5.0, metadata=_check(_positive))
    read_timeout_s: float = field(default=30.0, metadata=_check(_positive))
    # Total time of one attempt of a call, connect to last byte (an upload: plus 1 s per 64 KiB).
    deadline_s: float = field(default=120.0, metadata=_check(_positive))
    max_connections: int = field(default=4, metadata=_check(_positive))
    max_attempts: int = field(default=5, metadata=_check(_positive))
    # Lets tests and the README demo talk plain http to the reference control plane on loopback.
    allow_plain_http_loopback: bool = False


@dataclass(frozen=True)
class DiscoveryConfig:
    sshd_config: str = field(default="/etc/ssh/sshd_config", metadata=_check(_absolute))
    sshd_binary: str = "/usr/sbin/sshd"
    max_file_bytes: int = field(default=1 << 20, metadata=_check(_positive))
    host_keys: bool = True
    identity_keys: bool = True
    # Also look at homes' parent directories for homes with no account (orphaned keys).
    orphan_homes: bool = True
    skip_users: tuple[str, ...] = ()


@dataclass(frozen=True)
class WatchConfig:
    enabled: bool = True
    debounce_ms: int = field(default=250, metadata=_check(_non_negative))
    poll_interval_s: float = field(default=30.0, metadata=_check(_positive))


@dataclass(frozen=True)
class ScheduleConfig:
    heartbeat_s: float = field(default=60.0, metadata=_check(_positive))
    # Seconds the server may hold each instruction request (contract §6.1); 0: poll every heartbeat_s.
    long_poll_s: int = field(default=60, metadata=_check(_long_poll_wait))
    rescan_s: float = field(default=900.0, metadata=_check(_positive))
    full_report_s: float = field(default=3600.0, metadata=_check(_positive))
    ephemeral_sweep_s: float = field(default=60.0, metadata=_check(_positive))
    jitter: float = field(default=0.2, metadata=_check(_fraction))
    startup_splay_s: float = field(default=30.0, metadata=_check(_non_negative))


@dataclass(frozen=True)
class StateConfig:
    dir: str = field(default=DEFAULT_STATE_DIR, metadata=_check(_absolute))
    outbox_max_events: int = field(default=50_000, metadata=_check(_positive))


@dataclass(frozen=True)
class ApplyConfig:
    enabled: bool = True
    backups_per_file: int = field(default=10, metadata=_check(_non_negative))


@dataclass(frozen=True)
class InstructionsConfig:
    public_keys: tuple[str, ...] = ()
    require_signature: bool = True
    leeway_s: float = field(default=30.0, metadata=_check(_non_negative))


@dataclass(frozen=True)
class TrustConfig:
    """Revocation (sshd's RevokedKeys) and CA trust (TrustedUserCAKeys, AuthorizedPrincipalsFile):
    the agent's files, the tools it runs, and whether it points sshd at them itself."""

    dir: str = field(default="/etc/ssh/sshklm-agent", metadata=_check(_absolute))
    ssh_keygen: str = field(default="/usr/bin/ssh-keygen", metadata=_check(_absolute))
    check_s: float = field(default=10.0, metadata=_check(_positive))
    install_sshd_dropin: bool = False
    sshd_dropin_dir: str = field(default="/etc/ssh/sshd_config.d", metadata=_check(_absolute))
    sshd_reload_command: tuple[str, ...] = ("systemctl", "reload", "sshd.service")


@dataclass(frozen=True)
class PolicyConfig:
    """The local policy used until (and unless) the control plane sends one."""

    min_rsa_bits: int = field(default=2048, metadata=_check(_positive))
    allowed_types: tuple[str, ...] = (
        "ssh-ed25519",
        "sk-ssh-ed25519@openssh.com",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "ssh-rsa",
    )
    max_key_age_days: int = field(default=365, metadata=_check(_positive))
    require_from_for_root: bool = False
    ephemeral_max_ttl_s: int = field(default=86_400, metadata=_check(_positive))


@dataclass(frozen=True)
class UsageConfig:
    enabled: bool = True
    source: str = field(default="auto", metadata=_check(_one_of("auto", "journal", "file", "none")))
    log_file: str = field(default="", metadata=_check(_absolute_or_empty))
    journal_unit: str = ""


@dataclass(frozen=True)
class MetricsConfig:
    # The Prometheus text file for node_exporter's textfile collector, rewritten atomically on the
    # status cadence (docs/status.md, "Metrics"). Empty: none is written.
    textfile: str = field(default="", metadata=_check(_textfile))


@dataclass(frozen=True)
class LoggingConfig:
    level: str = field(default="info", metadata=_check(_one_of("debug", "info", "warning", "error")))
    format: str = field(default="auto", metadata=_check(_one_of("auto", "plain", "json", "journal")))


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    watch: WatchConfig = WatchConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    state: StateConfig = StateConfig()
    apply: ApplyConfig = ApplyConfig()
    instructions: InstructionsConfig = InstructionsConfig()
    trust: TrustConfig = TrustConfig()
    policy: PolicyConfig = PolicyConfig()
    usage: UsageConfig = UsageConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @property
    def standalone(self) -> bool:
        return not self.server.url


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return "a list of strings"


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """TOML value -> field value, or (False, None) when the type is wrong."""
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else None
    if tp is str:
        return isinstance(value, str), value
    if typing.get_origin(tp) is tuple:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return ok, tuple(value) if ok else None
    raise TypeError(f"unsupported config field type {tp!r}")


def _build_section(name: str, cls: type[Any], table: Mapping[str, Any], problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        dotted = f"{name}.{key}"
        if key not in fields:
            problems.append(f"{dotted}: unknown key")
            continue
        tp = hints[key]
        ok, value = _coerce(raw, tp)
        if not ok:
            problems.append(f"{dotted}: expected {_type_name(tp)}")
            continue
        check = fields[key].metadata.get("check")
        reason = check(value) if check else None
        if reason:
            problems.append(f"{dotted}: {reason}")
            continue
        values[key] = value
    return cls(**values)


def config_from_mapping(data: Mapping[str, Any]) -> Config:
    """Validate a parsed TOML document. Raises ConfigError listing every problem."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for name, table in data.items():
        if name not in hints:
            problems.append(f"{name}: unknown section")
            continue
        if not isinstance(table, dict):
            problems.append(f"{name}: expected a table ([{name}])")
            continue
        sections[name] = _build_section(name, hints[name], table, problems)
    if problems:
        raise ConfigError(problems)
    return Config(**sections)


def parse_config_text(text: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message carries "(at line N, column M)" and no value content worth hiding.
        raise ConfigError([f"TOML syntax error: {exc}"]) from None
    return config_from_mapping(data)


def load_config(path: str | None) -> tuple[Config, str | None]:
    """Load `path` (or the default path). Returns the config and the file actually read.

    A missing *default* file means all defaults; a missing file named explicitly is an error.
    """
    explicit = path is not None
    target = Path(path or DEFAULT_CONFIG_PATH)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigFileError([f"{target}: no such file"]) from None
        return Config(), None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "cannot be read"
        raise ConfigFileError([f"{target}: {reason}"]) from None
    return parse_config_text(text), str(target)


def describe_defaults() -> dict[str, dict[str, Any]]:
    """Every section and key with its default, for docs and the example file test."""
    out: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        out[section.name] = {
            f.name: list(f.default) if isinstance(f.default, tuple) else f.default
            for f in dataclasses.fields(cls)
        }
    return out
