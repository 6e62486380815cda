"""The parsed configuration (files, directives, Match and Include lines), who is connecting,
and what sshd applies to them."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from agent.ssh.sshd_config.keywords import DEFAULT_AUTHORIZED_KEYS_FILES, DEFAULT_HOST_KEYS


@dataclass(frozen=True)
class ConfigError:
    """A line sshd would refuse (it would not start). `reason` is a fixed phrase."""

    file: str
    line: int
    reason: str


@dataclass(frozen=True)
class Directive:
    keyword: str  # canonical lower-case keyword
    value: object  # pre-parsed value; None when the line is invalid (then ignored)
    file: str
    line: int

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class MatchLine:
    criteria: tuple[tuple[str, str], ...]  # (lower-case attribute, pattern list); ("all", "")
    valid: bool
    file: str
    line: int


@dataclass(frozen=True)
class IncludeLine:
    patterns: tuple[str, ...]  # absolute glob patterns
    files: tuple[ConfigFile, ...]  # every match of every pattern, in order
    file: str
    line: int


Item = Directive | MatchLine | IncludeLine


@dataclass(frozen=True)
class ConfigFile:
    path: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class MatchContext:
    """Who is connecting. `groups` must include the user's primary group (getgrouplist)."""

    user: str
    groups: Collection[str]


@dataclass(frozen=True)
class ParsedSshdConfig:
    root: ConfigFile
    included_files: tuple[str, ...]  # every file read, main file first (for the watcher)
    include_patterns: tuple[str, ...]  # absolute glob patterns (watch their directories)
    unknown_keywords: tuple[str, ...]
    errors: tuple[ConfigError, ...]
    # Pass 1 (the global configuration) does not depend on the user: computed once at parse.
    global_pass: PassState | None = field(default=None, compare=False, repr=False)
    # Without any Match line every user gets the global configuration: resolve() answers from
    # this one-entry cache instead of running a pass per user (10,000 users: ~0.3 s saved).
    has_match: bool = True
    _global_effective: dict[str, EffectiveSshdConfig] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class EffectiveSshdConfig:
    authorized_keys_files: tuple[str, ...] = DEFAULT_AUTHORIZED_KEYS_FILES  # raw templates
    conditional_authorized_keys_files: tuple[str, ...] = ()
    authorized_keys_command: str | None = None
    authorized_keys_command_user: str | None = None
    authorized_principals_file: str | None = None  # raw template
    authorized_principals_command: str | None = None
    authorized_principals_command_user: str | None = None
    trusted_user_ca_keys: str | None = None
    revoked_keys: str | None = None
    strict_modes: bool = True
    pubkey_authentication: bool = True
    password_authentication: bool = True
    permit_root_login: str = "prohibit-password"
    host_keys: tuple[str, ...] = DEFAULT_HOST_KEYS
    host_certificates: tuple[str, ...] = ()
    pubkey_accepted_algorithms: str | None = None
    included_files: tuple[str, ...] = ()
    include_patterns: tuple[str, ...] = ()
    unknown_keywords: tuple[str, ...] = ()
    # (field name, "file:line") for every field a config line set
    sources: tuple[tuple[str, str], ...] = field(default=())

    def source_of(self, field_name: str) -> str | None:
        for name, where in self.sources:
            if name == field_name:
                return where
        return None


@dataclass
class PassState:
    """What one pass over the configuration set (first value wins; host keys accumulate)."""

    values: dict[str, tuple[object, str]] = field(default_factory=dict)  # field -> (value, source)
    host_keys: list[tuple[str, str]] = field(default_factory=list)
    host_certificates: list[tuple[str, str]] = field(default_factory=list)
    conditional_akf: list[str] = field(default_factory=list)

    def set_first(self, name: str, value: object, source: str) -> None:
        if name not in self.values:
            self.values[name] = (value, source)
