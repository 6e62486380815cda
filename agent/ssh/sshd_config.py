"""sshd_config as OpenSSH 9.2's sshd reads it (servconf.c), and per-user resolution.

Pure: the caller reads files and hands in `load_include`, which expands an absolute glob
pattern into `[(path, text), ...]` sorted lexically (what glob(3) returns).

How sshd really resolves its configuration, reproduced here:

* Pass 1, at startup: only lines outside Match blocks (and inside `Match all`) count,
  first value wins, across Includes too. A few keywords take the arguments of their first
  line (AuthorizedKeysFile); HostKey and HostCertificate accumulate.
* Pass 2, per connection: the whole text is parsed again with the connection's details;
  now ONLY lines inside matching Match blocks count (first value wins among them), and
  what they set overrides the pass-1 value.
* An included file starts with the including line's Match state; a Match inside an
  included file lasts until the end of that file, after which the includer's state is
  restored. A Match inside a file included from a non-matching block never matches.

At scan time the connection (client host/address, local address/port, routing domain)
is unknown: a block that needs any of these does not match (as `sshd -T -C user=...`
without those values), but its AuthorizedKeysFile values are reported as conditional
when its user/group criteria match, so discovery can still read those files.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from enum import Enum

SSHDIR = "/etc/ssh"
MAX_INCLUDE_DEPTH = 16  # SERVCONF_MAX_DEPTH
# sshd fails on runaway include trees; we stop expanding instead of growing without bound.
MAX_INCLUDED_FILE_INSTANCES = 1024
# sshd runs with "/" as its working directory (systemd, and after daemonising), so a relative
# HostKey/TrustedUserCAKeys is relative to "/"; "~" in a path is expanded at load time with
# sshd's own uid, i.e. root's home.
SSHD_CWD = "/"
SSHD_HOME = "/root"

DEFAULT_AUTHORIZED_KEYS_FILES = (".ssh/authorized_keys", ".ssh/authorized_keys2")
DEFAULT_HOST_KEYS = (
    "/etc/ssh/ssh_host_rsa_key",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_ed25519_key",
)

_WHITESPACE = " \t\r\n"

# --------------------------------------------------------------------------- keywords


def _words(text: str) -> list[str]:
    return text.split()


# Keywords allowed only in the global section (SSHCFG_GLOBAL) of OpenSSH 9.2 as built by
# Debian 12 (GSSAPI key exchange and DebianBanner patches included).
_GLOBAL_ONLY = frozenset(
    _words(
        """
    usepam pamauthenticationviakbdint port hostkey hostdsakey hostkeyagent pidfile modulifile
    serverkeybits logingracetime keyregenerationinterval syslogfacility rhostsauthentication
    hostkeyalgorithms dsaauthentication kerberosorlocalpasswd kerberosticketcleanup
    kerberosgetafstoken kerberostgtpassing afstokenpassing gssapicleanupcredentials
    gssapistrictacceptorcheck gssapikeyexchange gssapistorecredentialsonrekey gssapikexalgorithms
    checkmail listenaddress addressfamily printmotd printlastlog ignoreuserknownhosts
    xauthlocation strictmodes permituserenvironment uselogin compression tcpkeepalive keepalive
    ciphers macs protocol subsystem maxstartups persourcemaxstartups persourcenetblocksize usedns
    verifyreversemapping reversemappingcheck useprivilegeseparation hostcertificate kexalgorithms
    versionaddendum fingerprinthash securitykeyprovider debianbanner
    """
    )
)
# Keywords allowed in the global section and in Match blocks (SSHCFG_ALL).
_MATCH_ALLOWED = frozenset(
    _words(
        """
    permitrootlogin loglevel logverbose rhostsrsaauthentication hostbasedauthentication
    hostbasedusesnamefrompacketonly hostbasedacceptedalgorithms hostbasedacceptedkeytypes
    rsaauthentication pubkeyauthentication pubkeyacceptedalgorithms pubkeyacceptedkeytypes
    pubkeyauthoptions kerberosauthentication gssapiauthentication passwordauthentication
    kbdinteractiveauthentication challengeresponseauthentication skeyauthentication ignorerhosts
    x11forwarding x11displayoffset x11uselocalhost permitemptypasswords rekeylimit
    allowtcpforwarding allowagentforwarding allowusers denyusers allowgroups denygroups
    gatewayports maxauthtries maxsessions banner clientaliveinterval clientalivecountmax
    authorizedkeysfile authorizedkeysfile2 acceptenv setenv permittunnel permittty permituserrc
    match permitopen permitlisten forcecommand chrootdirectory revokedkeys trustedusercakeys
    authorizedprincipalsfile include ipqos authorizedkeyscommand authorizedkeyscommanduser
    authorizedprincipalscommand authorizedprincipalscommanduser authenticationmethods
    streamlocalbindmask streamlocalbindunlink allowstreamlocalforwarding disableforwarding
    exposeauthinfo rdomain casignaturealgorithms requiredrsasize channeltimeout
    unusedconnectiontimeout
    """
    )
)
_KNOWN = _GLOBAL_ONLY | _MATCH_ALLOWED

# Aliases sshd maps onto the same option.
_ALIASES = {
    "hostdsakey": "hostkey",
    "pubkeyacceptedkeytypes": "pubkeyacceptedalgorithms",
    "dsaauthentication": "pubkeyauthentication",
}

_FLAG_KEYWORDS = {
    "pubkeyauthentication": "pubkey_authentication",
    "passwordauthentication": "password_authentication",
    "strictmodes": "strict_modes",
}
_SINGLE_ARG_KEYWORDS = {
    "authorizedkeyscommanduser": "authorized_keys_command_user",
    "authorizedprincipalscommanduser": "authorized_principals_command_user",
    "authorizedprincipalsfile": "authorized_principals_file",
    "trustedusercakeys": "trusted_user_ca_keys",
    "pubkeyacceptedalgorithms": "pubkey_accepted_algorithms",
}
_COMMAND_KEYWORDS = {
    "authorizedkeyscommand": "authorized_keys_command",
    "authorizedprincipalscommand": "authorized_principals_command",
}
_PERMIT_ROOT_LOGIN = {
    "without-password": "prohibit-password",
    "prohibit-password": "prohibit-password",
    "forced-commands-only": "forced-commands-only",
    "yes": "yes",
    "no": "no",
}
# Fields a matching Match block can override (copy_set_server_options + COPY_MATCH_STRING_OPTS).
_MATCH_COPIED_FIELDS = frozenset(
    {
        "pubkey_authentication",
        "password_authentication",
        "permit_root_login",
        "authorized_keys_files",
        "authorized_keys_command",
        "authorized_keys_command_user",
        "authorized_principals_file",
        "authorized_principals_command",
        "authorized_principals_command_user",
        "trusted_user_ca_keys",
        "pubkey_accepted_algorithms",
    }
)

_USER_CRITERIA = frozenset({"user", "group"})
_CONNECTION_CRITERIA = frozenset({"host", "address", "localaddress", "localport", "rdomain"})


# --------------------------------------------------------------------------- data model


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
    global_pass: _PassState | None = field(default=None, compare=False, repr=False)
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


# --------------------------------------------------------------------------- tokenising


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WHITESPACE:
        i += 1
    return i


def strdelim(s: str | None) -> tuple[str | None, str | None]:
    """misc.c strdelim(): next token (split on whitespace or one '='; '"' quotes) and the rest.

    Returns (None, None) on an unterminated quote; rest is None when nothing follows.
    """
    if s is None:
        return None, None
    i = next((k for k, ch in enumerate(s) if ch in _WHITESPACE or ch in '"='), -1)
    if i < 0:
        return s, None
    if s[i] == '"':
        s = s[:i] + s[i + 1 :]
        j = s.find('"', i)
        if j < 0:
            return None, None
        return s[:j], s[_skip_ws(s, j + 1) :]
    saw_equals = s[i] == "="
    token = s[:i]
    k = _skip_ws(s, i + 1)
    if not saw_equals and k < len(s) and s[k] == "=":
        k = _skip_ws(s, k + 1)
    return token, s[k:]


class _QuoteError(ValueError):
    pass


def argv_split(s: str) -> list[str]:
    """misc.c argv_split(terminate_on_comment=1): quotes, backslash escapes, '#' comments."""
    args: list[str] = []
    i, n = 0, len(s)
    while i < n:
        if s[i] in " \t":
            i += 1
            continue
        if s[i] == "#":
            break
        quote = ""
        out: list[str] = []
        while i < n:
            ch = s[i]
            if ch == "\\":
                nxt = s[i + 1] if i + 1 < n else "\0"
                if nxt in ("'", '"', "\\") or (not quote and nxt == " "):
                    i += 1
                    out.append(s[i])
                else:
                    out.append(ch)
            elif not quote and ch in " \t":
                break
            elif not quote and ch in "\"'":
                quote = ch
            elif quote and ch == quote:
                quote = ""
            else:
                out.append(ch)
            i += 1
        if i >= n and quote:
            raise _QuoteError("invalid quotes")
        args.append("".join(out))
    return args


# --------------------------------------------------------------------------- patterns


@functools.lru_cache(maxsize=4096)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.DOTALL)


def match_pattern(string: str, pattern: str) -> bool:
    """match.c match_pattern(): '*' and '?' wildcards, everything else literal."""
    return _pattern_regex(pattern).fullmatch(string) is not None


def match_pattern_list(string: str, patterns: str) -> int:
    """match.c match_pattern_list(): 1 positive, 0 none, -1 a negated entry matched (wins)."""
    got_positive = 0
    for sub in patterns.split(","):
        negated = sub.startswith("!")
        if negated:
            sub = sub[1:]
        if len(sub) >= 1023:  # sshd's sub[1024] buffer: an overlong entry fails the list
            return 0
        if match_pattern(string, sub):
            if negated:
                return -1
            got_positive = 1
    return got_positive


def _match_groups(groups: Iterable[str], patterns: str) -> bool:
    """groupaccess.c ga_match_pattern_list(): any group matches, a negated match vetoes."""
    found = False
    for group in groups:
        result = match_pattern_list(group, patterns)
        if result == -1:
            return False
        if result == 1:
            found = True
    return found


# --------------------------------------------------------------------------- parsing


class _Parser:
    def __init__(self, load_include: Callable[[str], list[tuple[str, str]]]) -> None:
        self._load_include = load_include
        self._cache: dict[str, list[tuple[str, str]]] = {}
        self.errors: list[ConfigError] = []
        self.unknown: list[str] = []
        self.files: list[str] = []
        self.patterns: list[str] = []
        self._instances = 0

    def error(self, file: str, line: int, reason: str) -> None:
        self.errors.append(ConfigError(file, line, reason))

    def parse_file(self, path: str, text: str, depth: int, stack: tuple[str, ...]) -> ConfigFile:
        if path not in self.files:
            self.files.append(path)
        items: list[Item] = []
        for number, raw in enumerate(text.split("\n"), start=1):
            item = self._parse_line(raw, path, number, depth, (*stack, path))
            if item is not None:
                items.append(item)
        return ConfigFile(path, tuple(items))

    def _parse_line(
        self, raw: str, path: str, number: int, depth: int, stack: tuple[str, ...]
    ) -> Item | None:
        # load_server_config strips leading " \t\r"; the line parser strips trailing whitespace/\f.
        line = raw.lstrip(" \t\r").rstrip(_WHITESPACE + "\f")
        keyword, rest = strdelim(line)
        if keyword == "":
            keyword, rest = strdelim(rest)
        if not keyword or keyword.startswith("#"):
            return None
        if not rest:
            self.error(path, number, "no argument after keyword")
            return None
        kw = keyword.lower()
        try:
            args = argv_split(rest)
        except _QuoteError:
            self.error(path, number, "invalid quotes")
            return None
        if kw not in _KNOWN:
            self.unknown.append(kw)
            self.error(path, number, "unknown keyword")
            return None
        if kw == "match":
            return self._parse_match(rest, path, number)
        if kw == "include":
            return self._parse_include(args, path, number, depth, stack)
        kw = _ALIASES.get(kw, kw)
        return Directive(kw, self._parse_value(kw, args, rest, path, number), path, number)

    def _parse_value(self, kw: str, args: list[str], rest: str, path: str, number: int) -> object:
        def single() -> str | None:
            if not args or args[0] == "":
                self.error(path, number, "missing argument")
                return None
            if len(args) > 1:
                self.error(path, number, "extra arguments at end of line")
            return args[0]

        if kw in _FLAG_KEYWORDS:
            arg = single()
            if arg is None:
                return None
            if arg.lower() not in ("yes", "no"):
                self.error(path, number, "unsupported option value")
                return None
            return arg.lower() == "yes"
        if kw == "permitrootlogin":
            arg = single()
            if arg is None:
                return None
            if arg.lower() not in _PERMIT_ROOT_LOGIN:
                self.error(path, number, "unsupported option value")
                return None
            return _PERMIT_ROOT_LOGIN[arg.lower()]
        if kw == "authorizedkeysfile":
            if any(a == "" for a in args):
                self.error(path, number, "empty argument")
                return None
            return tuple(args)  # may be empty (only a comment): sshd then sets nothing
        if kw in _COMMAND_KEYWORDS:
            # The command is the rest of the line verbatim (quotes and even a trailing '#...').
            command = rest.lstrip(_WHITESPACE)
            if not command.startswith("/") and command.lower() != "none":
                self.error(path, number, "command must be an absolute path")
                return None
            return command
        if kw in ("hostkey", "hostcertificate", "trustedusercakeys"):
            arg = single()
            return None if arg is None else _derelativise(arg)
        if kw in _SINGLE_ARG_KEYWORDS:
            return single()
        return tuple(args)  # a keyword we do not model: kept for completeness only

    def _parse_match(self, rest: str, path: str, number: int) -> MatchLine:
        criteria: list[tuple[str, str]] = []
        valid = True
        cp: str | None = rest
        while True:
            attrib, cp = strdelim(cp)
            if not attrib:
                break
            if attrib.startswith("#"):
                break
            name = attrib.lower()
            if name == "all":
                arg, _ = strdelim(cp)
                if criteria or (arg and not arg.startswith("#")):
                    self.error(path, number, "'all' cannot be combined with other Match attributes")
                    valid = False
                criteria.append(("all", ""))
                break
            arg, cp = strdelim(cp)
            if not arg or arg.startswith("#"):
                self.error(path, number, "missing Match criteria")
                valid = False
                break
            if name not in _USER_CRITERIA and name not in _CONNECTION_CRITERIA:
                self.error(path, number, "unsupported Match attribute")
                valid = False
                break
            if name == "localport" and not _valid_port(arg):
                self.error(path, number, "invalid Match LocalPort")
                valid = False
            criteria.append((name, arg))
        if not criteria and valid:
            self.error(path, number, "Match needs one or more attributes")
            valid = False
        return MatchLine(tuple(criteria), valid, path, number)

    def _parse_include(
        self, args: list[str], path: str, number: int, depth: int, stack: tuple[str, ...]
    ) -> IncludeLine | None:
        if not args:
            self.error(path, number, "Include missing filename argument")
            return None
        patterns: list[str] = []
        files: list[ConfigFile] = []
        for arg in args:
            if arg == "":
                self.error(path, number, "empty argument")
                return None
            # Relative patterns are under /etc/ssh; sshd's glob() has no GLOB_TILDE, so a
            # leading '~' is a literal directory name relative to sshd's working directory.
            if arg.startswith("/"):
                pattern = arg
            elif arg.startswith("~"):
                pattern = SSHD_CWD.rstrip("/") + "/" + arg
            else:
                pattern = f"{SSHDIR}/{arg}"
            patterns.append(pattern)
            if pattern not in self.patterns:
                self.patterns.append(pattern)
            if pattern not in self._cache:
                self._cache[pattern] = list(self._load_include(pattern))
            for sub_path, sub_text in self._cache[pattern]:
                if depth + 1 > MAX_INCLUDE_DEPTH:
                    self.error(path, number, "too many recursive configuration includes")
                    continue
                if sub_path in stack:
                    self.error(path, number, "recursive include")
                    continue
                if self._instances >= MAX_INCLUDED_FILE_INSTANCES:
                    self.error(path, number, "too many included files")
                    continue
                self._instances += 1
                files.append(self.parse_file(sub_path, sub_text, depth + 1, stack))
        return IncludeLine(tuple(patterns), tuple(files), path, number)


def _valid_port(text: str) -> bool:
    return text.isdigit() and 0 < int(text) <= 65535


def _tilde_expand(path: str, sshd_home: str, home_of: Callable[[str], str | None] | None) -> str:
    """misc.c tilde_expand(): '~' and '~/x' use sshd's own home, '~user/x' that user's."""
    if not path.startswith("~"):
        return path
    copy = path[1:]
    rest: str | None
    if copy == "" or copy.startswith("/"):
        home = sshd_home
        rest = copy.lstrip("/") or None
    else:
        user, slash, tail = copy.partition("/")
        if home_of is None:
            raise ValueError("cannot expand ~user without a user lookup")
        looked_up = home_of(user)
        if looked_up is None:
            raise ValueError("no such user in ~user path")
        home = looked_up
        rest = tail.lstrip("/") or None if slash else None
    sep = "" if home.endswith("/") else "/"
    return f"{home}{sep}{rest or ''}"


def _derelativise(path: str) -> str:
    """servconf.c derelativise_path(): 'none' kept, '~' expanded, relative -> sshd's cwd."""
    if path.lower() == "none":
        return "none"
    if path.startswith("~/") or path == "~":
        path = _tilde_expand(path, SSHD_HOME, None)
    if path.startswith("/") or path.startswith("~"):
        return path  # '~user/...' needs a user lookup: left as written
    return SSHD_CWD.rstrip("/") + "/" + path


def parse_sshd_config(
    text: str, path: str, load_include: Callable[[str], list[tuple[str, str]]]
) -> ParsedSshdConfig:
    """Parse sshd_config `text` (read from `path`) and everything it includes."""
    parser = _Parser(load_include)
    root = parser.parse_file(path, text, 0, ())
    parsed = ParsedSshdConfig(
        root=root,
        included_files=tuple(parser.files),
        include_patterns=tuple(parser.patterns),
        unknown_keywords=tuple(dict.fromkeys(parser.unknown)),
        errors=tuple(parser.errors),
    )
    # sshd refuses a global-only keyword wherever pass 1 is not active (inside a Match block).
    misplaced: list[ConfigError] = []
    global_pass = _run_pass(parsed, None, misplaced)
    return ParsedSshdConfig(
        root=parsed.root,
        included_files=parsed.included_files,
        include_patterns=parsed.include_patterns,
        unknown_keywords=parsed.unknown_keywords,
        # a cached Include can be walked twice: report each line once
        errors=parsed.errors + tuple(dict.fromkeys(misplaced)),
        global_pass=global_pass,
        has_match=_has_match(parsed.root),
    )


def _has_match(config: ConfigFile) -> bool:
    for item in config.items:
        if isinstance(item, MatchLine):
            return True
        if isinstance(item, IncludeLine) and any(_has_match(f) for f in item.files):
            return True
    return False


# --------------------------------------------------------------------------- resolution


class _Active(Enum):
    OFF = 0
    ON = 1
    CONDITIONAL = 2  # would be ON if the (unknown) connection criteria matched


_NEVERMATCH = 0x04
_MATCH_ONLY = 0x08


@dataclass
class _PassState:
    values: dict[str, tuple[object, str]] = field(default_factory=dict)  # field -> (value, source)
    host_keys: list[tuple[str, str]] = field(default_factory=list)
    host_certificates: list[tuple[str, str]] = field(default_factory=list)
    conditional_akf: list[str] = field(default_factory=list)

    def set_first(self, name: str, value: object, source: str) -> None:
        if name not in self.values:
            self.values[name] = (value, source)


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
            if not _match_groups(sorted(ctx.groups), patterns):
                return _Active.OFF
        else:
            unknown = True
    return _Active.CONDITIONAL if unknown else _Active.ON


def _apply(d: Directive, state: _PassState, match_pass: bool) -> None:
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
    if kw in _FLAG_KEYWORDS:
        name = _FLAG_KEYWORDS[kw]
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
    elif kw in _SINGLE_ARG_KEYWORDS:
        name = _SINGLE_ARG_KEYWORDS[kw]
    if name is None or (match_pass and name not in _MATCH_COPIED_FIELDS):
        return
    state.set_first(name, d.value, d.source)


def _walk(
    f: ConfigFile,
    state: _PassState,
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
            if misplaced is not None and item.keyword in _GLOBAL_ONLY:
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


def _run_pass(
    parsed: ParsedSshdConfig, ctx: MatchContext | None, misplaced: list[ConfigError] | None = None
) -> _PassState:
    state = _PassState()
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
    global_pass = parsed.global_pass if parsed.global_pass is not None else _run_pass(parsed, None)
    values = dict(global_pass.values)
    conditional: list[str] = []
    if ctx is not None:
        match_pass = _run_pass(parsed, ctx)
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


def percent_expand(template: str, tokens: dict[str, str]) -> str:
    """misc.c percent_expand(): '%%' -> '%', '%X' -> tokens[X]; unknown or dangling '%' fails."""
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= len(template):
            raise ValueError("invalid format: '%' at end of path")
        key = template[i + 1]
        if key == "%":
            out.append("%")
        elif key in tokens:
            out.append(tokens[key])
        else:
            raise ValueError("unknown % token in path")
        i += 2
    return "".join(out)


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
            _tilde_expand(template, sshd_home, home_of), {"h": home, "u": user, "U": str(uid)}
        )
    if expanded.startswith("/"):
        return expanded
    return f"{home.rstrip('/')}/{expanded}"
