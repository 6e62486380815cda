"""Per-user resolution: the configuration sshd applies to a user's connections.

Pass 1 (global) and pass 2 (Match blocks for this user) as servconf.c runs them, Include files
keeping or restoring the includer's Match state, and the file paths sshd derives from the
AuthorizedKeysFile / AuthorizedPrincipalsFile templates for a user.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from agent.ssh.sshd_config.keywords import (
    DEFAULT_AUTHORIZED_KEYS_FILES,
    DEFAULT_HOST_KEYS,
    FLAG_KEYWORDS,
    GLOBAL_ONLY,
    MATCH_COPIED_FIELDS,
    SINGLE_ARG_KEYWORDS,
    SSHD_HOME,
)
from agent.ssh.sshd_config.model import (
    ConfigError,
    ConfigFile,
    Directive,
    EffectiveSshdConfig,
    IncludeLine,
    MatchContext,
    MatchLine,
    ParsedSshdConfig,
    PassState,
)
from agent.ssh.sshd_config.syntax import match_groups, match_pattern_list, percent_expand, tilde_expand


class _Active(Enum):
    OFF = 0
    ON = 1
    CONDITIONAL = 2  # would be ON if the (unknown) connection criteria matched


_NEVERMATCH = 0x04
_MATCH_ONLY = 0x08


def _evaluate_match(line: MatchLine, ctx: MatchContext | None) -> _Active:
    if not line.valid:
        return _Active.OFF
    if line.criteria == (("all", ""),):
        return _Active.ON
    if ctx is None:  # pass 1: only "all" matches
        return _Active.OFF
    unknown = False
    for name, patterns in line.criteria:
        if name == "user":
            if match_pattern_list(ctx.user, patterns) != 1:
                return _Active.OFF
        elif name == "group":
            if not match_groups(sorted(ctx.groups), patterns):
                return _Active.OFF
        else:
            unknown = True
    return _Active.CONDITIONAL if unknown else _Active.ON


def _apply(d: Directive, state: PassState, match_pass: bool) -> None:
    if d.value is None:
        return
    kw = d.keyword
    if kw == "hostkey":
        state.host_keys.append((str(d.value), d.source))
        return
    if kw == "hostcertificate":
        state.host_certificates.append((str(d.value), d.source))
        return
    name: str | None = None
    if kw in FLAG_KEYWORDS:
        name = FLAG_KEYWORDS[kw]
    elif kw == "permitrootlogin":
        name = "permit_root_login"
    elif kw == "authorizedkeysfile":
        if not d.value:  # a line holding only a comment sets nothing
            return
        name = "authorized_keys_files"
    elif kw == "authorizedkeyscommand":
        name = "authorized_keys_command"
    elif kw == "authorizedprincipalscommand":
        # servconf.c 9.2 tests authorized_keys_command (not its own field) before storing:
        # once AuthorizedKeysCommand is set in a pass, AuthorizedPrincipalsCommand is
        # ignored, and until then the LAST AuthorizedPrincipalsCommand wins.
        if "authorized_keys_command" not in state.values:
            state.values["authorized_principals_command"] = (d.value, d.source)
        return
    elif kw in SINGLE_ARG_KEYWORDS:
        name = SINGLE_ARG_KEYWORDS[kw]
    if name is None or (match_pass and name not in MATCH_COPIED_FIELDS):
        return
    state.set_first(name, d.value, d.source)


def _walk(
    f: ConfigFile,
    state: PassState,
    ctx: MatchContext | None,
    flags: int,
    active: _Active,
    cap_conditional: bool,
    match_pass: bool,
    misplaced: list[ConfigError] | None,
) -> None:
    for item in f.items:
        if isinstance(item, MatchLine):
            if flags & _NEVERMATCH:
                active = _Active.OFF
            else:
                active = _evaluate_match(item, ctx)
                if cap_conditional and active is _Active.ON:
                    active = _Active.CONDITIONAL
            flags &= ~_MATCH_ONLY  # MATCH_ONLY applies until the first Match of the file
        elif isinstance(item, IncludeLine):
            saved = active
            for sub in item.files:
                if flags & _MATCH_ONLY:
                    sub_flags = _MATCH_ONLY
                elif saved is _Active.OFF:
                    sub_flags = _NEVERMATCH
                else:
                    sub_flags = 0
                sub_cap = cap_conditional or saved is _Active.CONDITIONAL
                _walk(sub, state, ctx, sub_flags, saved, sub_cap, match_pass, misplaced)
        elif active is _Active.ON:
            _apply(item, state, match_pass)
        else:
            if misplaced is not None and item.keyword in GLOBAL_ONLY:
                misplaced.append(
                    ConfigError(item.file, item.line, "keyword not allowed within a Match block")
                )
            if (
                active is _Active.CONDITIONAL
                and item.keyword == "authorizedkeysfile"
                and isinstance(item.value, tuple)
                and "authorized_keys_files" not in state.values
            ):
                state.conditional_akf.extend(str(v) for v in item.value)


def run_pass(
    parsed: ParsedSshdConfig, ctx: MatchContext | None, misplaced: list[ConfigError] | None = None
) -> PassState:
    state = PassState()
    if ctx is None:
        _walk(parsed.root, state, None, 0, _Active.ON, False, False, misplaced)
    else:
        _walk(parsed.root, state, ctx, _MATCH_ONLY, _Active.OFF, False, True, None)
    return state


def _none_to_null(value: object) -> str | None:
    text = str(value)
    return None if text.lower() == "none" else text


def resolve(parsed: ParsedSshdConfig, ctx: MatchContext | None) -> EffectiveSshdConfig:
    """The configuration sshd applies to `ctx`'s connections; None = the global configuration."""
    if ctx is None or not parsed.has_match:
        cached = parsed._global_effective.get("")
        if cached is None:
            cached = parsed._global_effective[""] = _resolve(parsed, None)
        return cached
    return _resolve(parsed, ctx)


def _resolve(parsed: ParsedSshdConfig, ctx: MatchContext | None) -> EffectiveSshdConfig:
    global_pass = parsed.global_pass if parsed.global_pass is not None else run_pass(parsed, None)
    values = dict(global_pass.values)
    conditional: list[str] = []
    if ctx is not None:
        match_pass = run_pass(parsed, ctx)
        values.update(match_pass.values)
        conditional = match_pass.conditional_akf

    sources = [(name, src) for name, (_, src) in values.items()]

    def get(name: str) -> object | None:
        entry = values.get(name)
        return None if entry is None else entry[0]

    akf_raw = get("authorized_keys_files")
    if akf_raw is None:
        akf: tuple[str, ...] = DEFAULT_AUTHORIZED_KEYS_FILES
    else:
        assert isinstance(akf_raw, tuple)
        akf = tuple(str(v) for v in akf_raw if str(v).lower() != "none")
    conditional_akf = tuple(dict.fromkeys(v for v in conditional if v.lower() != "none" and v not in akf))

    if global_pass.host_keys:
        host_keys = tuple(p for p, _ in global_pass.host_keys if p.lower() != "none")
        sources.append(("host_keys", global_pass.host_keys[0][1]))
    else:
        host_keys = DEFAULT_HOST_KEYS
    host_certs = tuple(p for p, _ in global_pass.host_certificates if p.lower() != "none")
    if global_pass.host_certificates:
        sources.append(("host_certificates", global_pass.host_certificates[0][1]))

    def opt(name: str) -> str | None:
        value = get(name)
        return None if value is None else _none_to_null(value)

    def flag(name: str, default: bool) -> bool:
        value = get(name)
        return default if value is None else bool(value)

    prl = get("permit_root_login")
    pka = get("pubkey_accepted_algorithms")
    return EffectiveSshdConfig(
        authorized_keys_files=akf,
        conditional_authorized_keys_files=conditional_akf,
        authorized_keys_command=opt("authorized_keys_command"),
        authorized_keys_command_user=opt("authorized_keys_command_user"),
        authorized_principals_file=opt("authorized_principals_file"),
        authorized_principals_command=opt("authorized_principals_command"),
        authorized_principals_command_user=opt("authorized_principals_command_user"),
        trusted_user_ca_keys=opt("trusted_user_ca_keys"),
        revoked_keys=opt("revoked_keys"),
        strict_modes=flag("strict_modes", True),
        pubkey_authentication=flag("pubkey_authentication", True),
        password_authentication=flag("password_authentication", True),
        permit_root_login="prohibit-password" if prl is None else str(prl),
        host_keys=host_keys,
        host_certificates=host_certs,
        pubkey_accepted_algorithms=None if pka is None else str(pka),
        included_files=parsed.included_files,
        include_patterns=parsed.include_patterns,
        unknown_keywords=parsed.unknown_keywords,
        sources=tuple(sources),
    )


# --------------------------------------------------------------------------- user paths


def expand_user_path(
    template: str,
    *,
    user: str,
    uid: int,
    home: str,
    sshd_home: str = SSHD_HOME,
    home_of: Callable[[str], str | None] | None = None,
) -> str | None:
    """The file sshd opens for an AuthorizedKeysFile/AuthorizedPrincipalsFile template.

    As sshd 9.2: '~' was expanded when the config was loaded, with sshd's own uid
    (so '~/x' is '/root/x', not the user's home; `home_of` resolves '~user'); then
    %% %h %u %U are expanded; a relative result is relative to the user's home.
    "none" -> None. Raises ValueError for an unknown token (sshd would fail too).
    """
    if template.lower() == "none":
        return None
    if "%" not in template and not template.startswith("~"):
        expanded = template  # the common ".ssh/authorized_keys": nothing to expand
    else:
        expanded = percent_expand(
            tilde_expand(template, sshd_home, home_of), {"h": home, "u": user, "U": str(uid)}
        )
    if expanded.startswith("/"):
        return expanded
    return f"{home.rstrip('/')}/{expanded}"
