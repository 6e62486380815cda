"""Revocation and CA trust (agent-api.md section 6.2) as one part of the Applier: the two appliers
(revocation.py, ca_trust.py), their upkeep (at start and every `trust.check_s`), and the optional
sshd drop-in (host/sshd_dropin.py). `trust_from` builds it over the real host; the unit tests build
`Trust` over fakes of its ports (instructions/trust_ports.py).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

from agent.config import Config
from agent.host.keygen import SshKeygen
from agent.host.safefs import HostFS, UnsafePath
from agent.host.sshd_control import SshdControl, SshdError
from agent.host.sshd_dropin import DropinConflict, DropinResult, install_dropin
from agent.host.sshd_files import load_sshd_config
from agent.host.trust_files import REVOKED_KEYS, TRUSTED_USER_CA_KEYS, AgentTrustFiles, TrustLayout
from agent.instructions.ca_trust import CaTrust
from agent.instructions.edit import Outcome
from agent.instructions.errors import ApplyFailed
from agent.instructions.revocation import Revocations
from agent.instructions.trust_ports import KrlTool, SshdConfigured, TrustFiles
from agent.instructions.validate_trust import Revocation, TrustBody
from agent.ssh.sshd_config import ParsedSshdConfig
from agent.store.state import StateStore
from agent.store.trust_state import TrustState

log = logging.getLogger("sshklm.trust")

KRL_WORK_SUBDIR = "krl"  # under the state directory: ssh-keygen's scratch space


class Trust:
    """Applies revocation and CA-trust bodies; keeps the files in step with the record."""

    def __init__(
        self,
        files: TrustFiles,
        keygen: KrlTool,
        sshd: SshdConfigured,
        state: TrustState,
        layout: TrustLayout,
        *,
        work_dir: str,
        sshd_version: Callable[[], str | None],
        check_s: float = 10.0,
        install_dropin: Callable[[], DropinResult] | None = None,
    ) -> None:
        self.files = files
        self.layout = layout
        self.check_s = check_s
        self.revocations = Revocations(
            files, keygen, sshd, state, layout, work_dir=work_dir, sshd_version=sshd_version
        )
        self.cas = CaTrust(files, sshd, state, layout)
        self._install_dropin = install_dropin
        # What the last check found wrong, per part: a problem is logged when it appears or
        # changes, not every `check_s`.
        self._problems: dict[str, str] = {}

    def apply(self, body: TrustBody) -> Outcome:
        if isinstance(body, Revocation):
            return self.revocations.apply(body)
        return self.cas.apply(body)

    def start(self) -> None:
        """Our files first (sshd must never be pointed at a file that is not there), then the
        drop-in when configured. Never raises: a problem is logged, reported by discovery and
        retried at the next check."""
        self.maintain()
        if self._install_dropin is None:
            return
        problem = self._not_ready()
        if problem is not None:
            log.error("sshd drop-in not installed: %s", problem)
            return
        try:
            result = self._install_dropin()
            log.info("sshd drop-in: %s", result.message)
        except DropinConflict as exc:
            log.error("sshd drop-in not installed: %s", exc)
        except SshdError as exc:
            log.error("sshd drop-in not installed (sshd refused it; nothing changed): %s", exc.message)
        except (OSError, UnsafePath) as exc:
            log.error("sshd drop-in not installed: %s%s", exc, _read_only_hint(exc))

    def _not_ready(self) -> str | None:
        """Why sshd must not be pointed at our files yet (None: they are there and valid): a
        RevokedKeys file that is missing or not a KRL would refuse every public key."""
        try:
            if self.revocations.live_contents() is None:
                return f"{self.files.path(REVOKED_KEYS)} is missing"
            if self.files.read(TRUSTED_USER_CA_KEYS) is None:
                return f"{self.files.path(TRUSTED_USER_CA_KEYS)} is missing"
        except ApplyFailed as exc:
            return f"{self.files.path(REVOKED_KEYS)}: {exc.message}"
        except (OSError, UnsafePath) as exc:
            return str(exc)
        return None

    def maintain(self) -> None:
        """Create our directory, finish a change a crash interrupted, re-create missing files.
        Never raises; a problem is logged once (and again when it changes or goes away)."""
        try:
            self.files.ensure_dirs()
        except (OSError, UnsafePath) as exc:
            self._note("trust directory", f"{self.layout.directory}: {exc}")
            return
        self._note("trust directory", None)
        for name, upkeep in (
            ("key revocation list", self.revocations.maintain),
            ("CA trust", self.cas.maintain),
        ):
            try:
                upkeep()
            except ApplyFailed as exc:
                self._note(name, f"{exc.message} ({exc.code})")
            else:
                self._note(name, None)

    def _note(self, part: str, problem: str | None) -> None:
        before = self._problems.get(part)
        if problem == before:
            return
        if problem is None:
            self._problems.pop(part, None)
            log.info("%s: problem resolved", part)
        else:
            self._problems[part] = problem
            log.error("%s: %s", part, problem)


def _read_only_hint(exc: Exception) -> str:
    """What to do when the drop-in directory is read-only: the packaged unit keeps it so
    (ProtectSystem=strict) unless the operator adds the shipped unit drop-in."""
    if not isinstance(exc, OSError) or exc.errno != errno.EROFS:
        return ""
    return (
        " (the service may not write there: add ReadWritePaths= for it, see "
        "/usr/share/doc/sshklm-agent/examples/sshklm-agent.service.d/install-sshd-dropin.conf)"
    )


class SshdView:
    """`SshdConfigured` over the real sshd (`sshd -T`) and sshd_config read through the safe file layer."""

    def __init__(self, control: SshdControl, fs: HostFS, config_path: str) -> None:
        self.control = control
        self.fs = fs
        self.config_path = config_path

    def effective(self) -> dict[str, str]:
        return self.control.effective()

    def parsed(self) -> ParsedSshdConfig:
        return load_sshd_config(self.fs, self.config_path)[0]


def host_path(root: str | None, path: str) -> str:
    """`path` inside the host root as the rest of the system (sshd, ssh-keygen) sees it."""
    return path if not root or root == "/" else os.path.join(root, path.lstrip("/"))


def trust_from(
    cfg: Config, fs: HostFS, store: StateStore, *, root: str | None, sshd_version: Callable[[], str | None]
) -> Trust:
    """The production Trust for this configuration (the daemon's composition root calls it)."""
    t = cfg.trust
    layout = TrustLayout(t.dir)
    control = SshdControl(
        binary=cfg.discovery.sshd_binary,
        config=host_path(root, cfg.discovery.sshd_config),
        reload_command=tuple(t.sshd_reload_command),
    )
    files = AgentTrustFiles(fs, layout)
    dropin: Callable[[], DropinResult] | None = None
    if t.install_sshd_dropin:

        def dropin() -> DropinResult:
            return install_dropin(fs, t.sshd_dropin_dir, layout, control)

    return Trust(
        files,
        SshKeygen(t.ssh_keygen),
        SshdView(control, fs, cfg.discovery.sshd_config),
        TrustState(store),
        layout,
        work_dir=os.path.join(cfg.state.dir, KRL_WORK_SUBDIR),
        sshd_version=sshd_version,
        check_s=t.check_s,
        install_dropin=dropin,
    )
