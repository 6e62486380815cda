"""What `run` checks before it starts and `check-config` prints: one validation for both.

agent/config.py checks each setting on its own (type, range, choice). This module checks what needs
more than the value: a pinned key that must parse, a server URL the agent will really use, files
that must be readable, a state directory the daemon can own, and `--root`. Each finding names the
setting and says what to do.

- error:   `run` refuses to start (exit 2, one line per finding); `check-config` exits 1.
- warning: `run` starts and logs it once; `check-config` prints it and still exits 0.

A test walks a table of bad settings through both commands (tests/unit/test_preflight.py): every
setting that makes `run` stop or misbehave at start must be reported here first.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from agent.config import Config

Severity = Literal["error", "warning"]
# The directories the packaged unit makes writable by default (StateDirectory=, ReadWritePaths=).
DEFAULT_DIRS = {"state.dir": Config().state.dir, "trust.dir": Config().trust.dir}


@dataclass(frozen=True)
class Finding:
    severity: Severity
    key: str  # the dotted setting, or the command-line option
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def _error(key: str, message: str) -> Finding:
    return Finding("error", key, message)


def _warning(key: str, message: str) -> Finding:
    return Finding("warning", key, message)


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def check_root(root: str | None) -> Finding | None:
    """`--root DIR`: an existing directory holding a user database (etc/passwd)."""
    if root is None:
        return None
    if not os.path.exists(root):
        return _error("--root", f"{root}: no such directory (give the directory that holds the image's etc/)")
    if not os.path.isdir(root):
        return _error("--root", f"{root}: not a directory")
    if not os.path.isfile(os.path.join(root, "etc", "passwd")):
        return _error(
            "--root",
            f"{root}: no etc/passwd in it: a root must hold its user database "
            "(`python -m tests.demoroot DIR` creates a demo root)",
        )
    return None


def _read_only(path: str) -> bool:
    """`path` is on a file system mounted read-only for this process: under the packaged unit
    (ProtectSystem=strict) everything but the directories it names is, root or not."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _read_only_error(key: str, path: str, mode: int, *, exists: bool) -> Finding:
    """The unit makes the default directories writable (StateDirectory=, ReadWritePaths=): the
    default trust.dir only once it exists (the package creates it); another path needs a drop-in."""
    what = (
        f"{path} is read-only here" if exists else f"{path}: cannot be created: its parent is read-only here"
    )
    create = f"create it (`install -d -m {mode:04o} {path}`)"
    if path == DEFAULT_DIRS.get(key):
        fix = f"{create} and restart; the package does that when installed"
    else:
        writable = f"make it writable (`systemctl edit sshklm-agent`: [Service] ReadWritePaths={path})"
        fix = writable if exists else f"{create}, then {writable}"
    return _error(key, f"{what} (under systemd: the unit's ProtectSystem=strict): {fix}")


def _creatable(key: str, path: str, mode: int) -> Finding | None:
    """A directory the agent creates (with `mode`) when absent: its nearest existing ancestor
    must be a directory the caller may write in."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return _error(key, f"{path}: cannot be created: {parent} is not a directory")
    if _read_only(parent):
        return _read_only_error(key, path, mode, exists=False)
    if not os.access(parent, os.W_OK | os.X_OK):
        return _error(
            key,
            f"{path}: cannot be created (no write access to {parent}): run as root, "
            f"or set {key} to a directory you own",
        )
    return None


def check_trust_dir(path: str) -> Finding | None:
    """The directory of the agent's files for sshd (KRL, CA keys, principals): it creates the
    directory itself, but not its parents (they are sshd's configuration directory). The
    package creates the default one, which the unit makes writable (ReadWritePaths=)."""
    if os.path.isdir(path):
        if _read_only(path):
            return _read_only_error("trust.dir", path, 0o755, exists=True)
        return None
    if os.path.lexists(path):
        return _error("trust.dir", f"{path}: exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return _error(
            "trust.dir",
            f"{path}: its parent {parent} is not a directory (the agent creates only the last one)",
        )
    return _creatable("trust.dir", path, 0o755)


def check_state_dir(path: str) -> Finding | None:
    """The state directory as the daemon will need it: usable if it exists, creatable if not. The
    checks once it exists are store/db.py's (one rule for both)."""
    from agent.store.db import state_dir_problem

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return _creatable("state.dir", path, 0o700)
    except OSError as exc:
        return _error("state.dir", f"{path}: {exc.strerror}")
    problem = state_dir_problem(path, st)
    if problem is not None:
        return _error("state.dir", problem)
    if _read_only(path):
        return _read_only_error("state.dir", path, 0o700, exists=True)
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return _error("state.dir", f"{path}: no read/write access: run as root")
    return None


def check_metrics_file(path: str) -> Finding | None:
    """`metrics.textfile`: its directory must exist (the agent does not create it), be root's and
    writable by no one else (the rule the daemon's write applies: safefs_private), and be writable
    here. A warning: metrics never stop the agent, which logs the same when a write fails."""
    from agent.host.safefs import readable_dir_problem

    directory = os.path.dirname(path)
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return _warning(
            "metrics.textfile",
            f"{directory}: no such directory (node_exporter's package or you create it: "
            f"`install -d -m 0755 {directory}`); no metrics are written until it exists",
        )
    except OSError as exc:
        return _warning("metrics.textfile", f"{directory}: {exc.strerror}")
    problem = readable_dir_problem(st)
    if problem is not None:
        return _warning("metrics.textfile", f"{directory} {problem}; no metrics are written there")
    if _read_only(directory):
        return _warning(
            "metrics.textfile",
            f"{directory} is read-only here (under systemd: the unit's ProtectSystem=strict): make it "
            f"writable (`systemctl edit sshklm-agent`: [Service] ReadWritePaths={directory})",
        )
    return None


def _check_public_keys(config: Config) -> list[Finding]:
    from agent.instructions.verify import load_public_keys

    out: list[Finding] = []
    for index, text in enumerate(config.instructions.public_keys):
        try:
            load_public_keys([text])
        except ValueError as exc:
            reason = str(exc).partition(": ")[2] or "not a public key"
            out.append(
                _error(
                    f"instructions.public_keys[{index}]",
                    f"{reason}: paste the control plane's signing key (`ssh-ed25519 AAAA…` or PEM)",
                )
            )
    return out


def _check_server(config: Config) -> list[Finding]:
    from agent.control.connect import plain_http_allowed

    s = config.server
    out: list[Finding] = []
    parts = urlsplit(s.url)
    if not parts.hostname:
        return [_error("server.url", f"{s.url}: no host name in it")]
    if not plain_http_allowed(s.url, s.allow_plain_http_loopback):
        if parts.scheme == "http" and s.allow_plain_http_loopback:
            reason = "plain http is allowed only to a loopback address: use https://"
        elif parts.scheme == "http":
            reason = (
                "plain http is refused: use https:// (only a loopback address may use http, "
                "with server.allow_plain_http_loopback = true)"
            )
        else:
            reason = "must be https://"
        out.append(_error("server.url", reason))
    if s.ca_file:
        try:
            ssl.create_default_context(cafile=s.ca_file)
        except FileNotFoundError:
            out.append(_error("server.ca_file", f"{s.ca_file}: no such file"))
        except OSError as exc:
            out.append(_error("server.ca_file", f"{s.ca_file}: {exc.strerror or 'cannot be read'}"))
        except ssl.SSLError:
            out.append(_error("server.ca_file", f"{s.ca_file}: no PEM certificate in it"))
    if bool(s.api_key_file) != bool(s.host_id):
        out.append(
            _error(
                "server.api_key_file" if s.api_key_file else "server.host_id",
                "server.api_key_file and server.host_id go together: set both, or neither "
                "(then the credentials `enroll` stored are used)",
            )
        )
    elif not out:
        out.extend(_check_credentials(config))
    if config.apply.enabled and config.instructions.require_signature and not config.instructions.public_keys:
        out.append(
            _warning(
                "instructions.public_keys",
                "empty: every instruction from the control plane will be rejected "
                "(paste its signing key, or set apply.enabled = false)",
            )
        )
    return out


def _check_credentials(config: Config) -> list[Finding]:
    """Missing or unreadable credentials do not stop the daemon (it waits for them: docs/choices.md),
    so they are warnings."""
    from agent.control.connect import NOT_ENROLLED, host_credentials
    from agent.control.enroll import EnrollmentError

    try:
        credentials = host_credentials(config)
    except EnrollmentError as exc:
        return [_warning("server", f"credentials unreadable: {exc}")]
    except (OSError, ValueError) as exc:
        return [_warning("server", f"credentials unreadable: {type(exc).__name__}")]
    if credentials is None:
        return [_warning("server", NOT_ENROLLED)]
    return []


def check_config(config: Config, *, daemon: bool = True, root: str | None = None) -> list[Finding]:
    """Every finding for `config`. `daemon`: also what only the daemon needs (the state directory,
    the trust directory: inside `root` when the daemon runs on a host root, `run --root`)."""
    out = _check_public_keys(config)
    if config.server.url:
        out.extend(_check_server(config))
    if daemon:
        problem = check_state_dir(config.state.dir)
        if problem is not None:
            out.append(problem)
        # The trust files are kept only by an agent that applies instructions.
        if config.server.url and config.apply.enabled:
            from agent.instructions.trust import host_path

            problem = check_trust_dir(host_path(root, config.trust.dir))
            if problem is not None:
                out.append(problem)
        if config.metrics.textfile:
            problem = check_metrics_file(config.metrics.textfile)
            if problem is not None:
                out.append(problem)
    return out
