"""Parsing sshd_config and everything it includes, as servconf.c's process_server_config_line
reads it: keywords, their values, Match lines, Include globs (relative to /etc/ssh; depth and
recursion limits), and the errors for which sshd would refuse to start."""

from __future__ import annotations

from collections.abc import Callable

from agent.ssh.sshd_config.keywords import (
    ALIASES,
    COMMAND_KEYWORDS,
    CONNECTION_CRITERIA,
    FLAG_KEYWORDS,
    KNOWN,
    MAX_INCLUDE_DEPTH,
    MAX_INCLUDED_FILE_INSTANCES,
    PERMIT_ROOT_LOGIN,
    SINGLE_ARG_KEYWORDS,
    SSHD_CWD,
    SSHD_HOME,
    SSHDIR,
    USER_CRITERIA,
    WHITESPACE,
)
from agent.ssh.sshd_config.model import (
    ConfigError,
    ConfigFile,
    Directive,
    IncludeLine,
    Item,
    MatchLine,
    ParsedSshdConfig,
)
from agent.ssh.sshd_config.resolve import run_pass
from agent.ssh.sshd_config.syntax import QuoteError, argv_split, strdelim, tilde_expand


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
        line = raw.lstrip(" \t\r").rstrip(WHITESPACE + "\f")
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
        except QuoteError:
            self.error(path, number, "invalid quotes")
            return None
        if kw not in KNOWN:
            self.unknown.append(kw)
            self.error(path, number, "unknown keyword")
            return None
        if kw == "match":
            return self._parse_match(rest, path, number)
        if kw == "include":
            return self._parse_include(args, path, number, depth, stack)
        kw = ALIASES.get(kw, kw)
        return Directive(kw, self._parse_value(kw, args, rest, path, number), path, number)

    def _parse_value(self, kw: str, args: list[str], rest: str, path: str, number: int) -> object:
        def single() -> str | None:
            if not args or args[0] == "":
                self.error(path, number, "missing argument")
                return None
            if len(args) > 1:
                self.error(path, number, "extra arguments at end of line")
            return args[0]

        if kw in FLAG_KEYWORDS:
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
            if arg.lower() not in PERMIT_ROOT_LOGIN:
                self.error(path, number, "unsupported option value")
                return None
            return PERMIT_ROOT_LOGIN[arg.lower()]
        if kw == "authorizedkeysfile":
            if any(a == "" for a in args):
                self.error(path, number, "empty argument")
                return None
            return tuple(args)  # may be empty (only a comment): sshd then sets nothing
        if kw in COMMAND_KEYWORDS:
            # The command is the rest of the line verbatim (quotes and even a trailing '#...').
            command = rest.lstrip(WHITESPACE)
            if not command.startswith("/") and command.lower() != "none":
                self.error(path, number, "command must be an absolute path")
                return None
            return command
        if kw in ("hostkey", "hostcertificate", "trustedusercakeys", "revokedkeys"):
            arg = single()
            return None if arg is None else _derelativise(arg)
        if kw in SINGLE_ARG_KEYWORDS:
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
            if name not in USER_CRITERIA and name not in CONNECTION_CRITERIA:
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


def _derelativise(path: str) -> str:
    """servconf.c derelativise_path(): 'none' kept, '~' expanded, relative -> sshd's cwd."""
    if path.lower() == "none":
        return "none"
    if path.startswith("~/") or path == "~":
        path = tilde_expand(path, SSHD_HOME, None)
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
    global_pass = run_pass(parsed, None, misplaced)
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
