"""Command line: `sshklm-agent {scan,run,reload,status,check-config,enroll,rollback}`.

Each command imports only what it needs, so `--version` starts fast and `scan` never loads
httpx, apscheduler or watchdog. Exit codes: 0 done (a scan that found problems is still done),
1 the command failed (or check-config found errors), 2 a user mistake: bad arguments, a
configuration file that cannot be read or that `run` cannot use, a `--root` that is not a root.
A user mistake is never a traceback: one line per problem, naming it and the fix
(agent.commands.UsageError; tests/unit/test_cli_mistakes.py walks a table of them through every
command). `status` exits 3 when the agent is not running.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from agent import __version__

if TYPE_CHECKING:
    from agent.config import Config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line and exit 2 (argparse prints the whole usage block by default).
        self.exit(EXIT_USAGE, f"sshklm-agent: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sshklm-agent", description="Host agent of SSH key lifecycle management.")
    parser.add_argument("--version", action="version", version=f"sshklm-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config", metavar="FILE", help="configuration file (default /etc/sshklm-agent/agent.toml)"
        )
        return p

    scan = add("scan", "Discover every SSH key on this host and print them.")
    scan.add_argument("--root", metavar="DIR", help="treat DIR as the filesystem root (tests, images)")
    scan.add_argument(
        "--format", choices=("table", "json", "ndjson"), help="default: table on a terminal, else json"
    )

    run = add("run", "Run the agent daemon (what systemd starts).")
    run.add_argument("--root", metavar="DIR", help="treat DIR as the filesystem root")
    run.add_argument("--log-format", choices=("auto", "plain", "json", "journal"))

    reload = add("reload", "Make the running agent re-read its configuration; wait until it is in force.")
    reload.add_argument("--pid", type=int, metavar="PID", help="the agent's process (default: its status)")
    reload.add_argument(
        "--timeout", type=float, default=300.0, metavar="SECONDS", help="give up after this long (300)"
    )

    status = add("status", "Show what the running agent reports about itself (no server call).")
    shown = status.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="machine-readable output")
    shown.add_argument(
        "--prometheus",
        action="store_true",
        help="the metrics, in Prometheus' text format (as metrics.textfile holds them)",
    )

    add("check-config", "Validate the configuration file: prints ok or each problem with its key.")

    enroll = add("enroll", "Register this host with the control plane and store its credentials.")
    enroll.add_argument("--server", metavar="URL", help="the control plane (default: server.url)")
    enroll.add_argument("--root", metavar="DIR", help="take the host's facts and keys from DIR")
    tokens = enroll.add_mutually_exclusive_group(required=True)
    tokens.add_argument("--token-file", metavar="FILE", help="file holding the bootstrap token")
    tokens.add_argument("--token", metavar="-", help="'-' reads the bootstrap token from standard input")

    rollback = add("rollback", "Restore the files a rotation changed, when unchanged since.")
    rollback.add_argument("rotation_id", metavar="ROTATION_ID")
    return parser


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    for line in message.splitlines() or [""]:
        print(f"sshklm-agent: {line}", file=sys.stderr)
    return code


def _load(path: str | None) -> Config:
    from agent.commands import UsageError
    from agent.config import ConfigError, load_config

    try:
        config, _ = load_config(path)
    except ConfigError as exc:
        raise UsageError(*(f"configuration: {problem}" for problem in exc.problems)) from None
    return config


def _check_root(root: str | None) -> None:
    from agent.commands import UsageError
    from agent.commands.preflight import check_root

    problem = check_root(root)
    if problem is not None:
        raise UsageError(str(problem))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from agent.commands import UsageError

    try:
        if args.command == "check-config":
            return cmd_check_config(args.config)
        if args.command == "reload":
            # Loads and checks the file itself: a broken one is refused before the daemon is signalled.
            from agent.commands.reload import cmd_reload

            return cmd_reload(args.config, pid=args.pid, timeout_s=args.timeout)
        config = _load(args.config)
        _check_root(getattr(args, "root", None))
        if args.command == "scan":
            from agent.commands.scan import cmd_scan

            return cmd_scan(config, root=args.root, fmt=args.format)
        if args.command == "run":
            from agent.commands.run import cmd_run

            return cmd_run(config, root=args.root, log_format=args.log_format, config_path=args.config)
        if args.command == "status":
            from agent.commands.status import cmd_status

            return cmd_status(config, as_json=args.json, prometheus=args.prometheus)
        if args.command == "enroll":
            from agent.commands.enroll import cmd_enroll

            if args.token is not None and args.token != "-":  # noqa: S105 (not a password)
                raise UsageError(
                    "--token only accepts '-' (standard input); a token on the command line is visible "
                    "in ps: use --token-file FILE, or --token - and the token on standard input"
                )
            return cmd_enroll(config, server=args.server, token_file=args.token_file or "-", root=args.root)
        if args.command == "rollback":
            from agent.commands.rollback import cmd_rollback

            return cmd_rollback(config, args.rotation_id)
    except UsageError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return _fail(f"unknown command {args.command}")


def cmd_check_config(path: str | None) -> int:
    """Prints each finding (`error: key: message`, `warning: ...`), then `ok` unless there is an
    error. The same checks `run` makes before it starts (agent/commands/preflight.py)."""
    from agent.commands.preflight import check_config
    from agent.config import ConfigError, ConfigFileError, load_config

    try:
        config, used = load_config(path)
    except ConfigFileError as exc:
        return _fail("configuration: " + "; ".join(exc.problems))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}")
        return EXIT_FAILED
    findings = check_config(config)
    for finding in findings:
        print(f"{finding.severity}: {finding}")
    if any(f.severity == "error" for f in findings):
        return EXIT_FAILED
    print("ok" if used else "ok (no configuration file: all defaults)")
    return EXIT_OK
