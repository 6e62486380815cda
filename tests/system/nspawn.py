"""System test: the packages under a real systemd, on Debian 12 and Debian 13 (`make system-test`).

For each suite, a minbase root from debootstrap (the Debian mirror of this machine) is booted with
systemd-nspawn and checked as an operator would, against the reference control plane served on the
host's loopback (the container shares the network):

  install     `apt-get install ./sshklm-agent_X.deb` resolves the Python dependency from the archive;
              the unit reaches active (running) through Type=notify READY, with its Status: line
  enrol       `sshklm-agent enroll`, restart: a key appended -> key_added at the control plane; a login
              through the container's sshd -> key_used; a signed rotation -> the new key logs in, the
              old one does not
  trust       the agent's files for sshd made in the sandbox; sshd pointed at them (Debian 12: by hand;
              Debian 13: the agent installs its drop-in); revoke_keys / unrevoke_keys and trust_ca /
              untrust_ca through the control plane, proven by logins (tests/system/trust.py)
  reload      `systemctl reload` returns with the changed setting in force; a broken file is refused
              (the reload fails) and the running configuration stays
  watchdog    WATCHDOG=1 pings for a whole WatchdogSec with the same main process and no restart
  sandbox     `systemd-analyze security` <= --max-exposure and `verify` silent inside; no filtered
              syscall during the whole run (a test-only drop-in sets SystemCallErrorNumber=kill)
  stop        a normal stop logs nothing at warning or above
  upgrade     to X+1 (apt, conffile kept): the edited configuration, the enrolment and the outbox
              (events queued while the control plane refused them) survive, then the events arrive
  python      Debian 12: python3 is replaced by Debian 13's (3.11 -> 3.13, a partial dist-upgrade):
              the dpkg trigger restarts the agent on the new interpreter. Debian 13: a damaged
              installation makes the start fail, `systemctl status` says what to run, and running it
              brings the agent back
  remove      `apt-get remove` keeps configuration and state; `purge` removes both, dpkg warns of nothing;
              the trust files stay while sshd's configuration names them (Debian 12), else purge takes
              the agent's sshd drop-in out, reloads sshd and deletes them (Debian 13); a key logs in
  rpm         the rpm's scriptlets run by `rpm --root` into the stopped root: install (bytecode,
              enablement, state 0700, trust directory), upgrade (edited %config kept), erase
              (configuration and state gone; the trust files as purge above)

Test-only drop-in (never shipped): SystemCallErrorNumber=kill, and the container's boot id bound
over /proc/sys/kernel/random/boot_id, because nspawn fakes the boot id while the unit's fresh /proc
(ProtectProc=...) shows the host's, so `journalctl -f` started by the agent would print nothing.
This host's cgroups are hybrid v1: MemoryHigh= and TasksMax= are not enforced in the container and
are not checked here. Exit status: 0 when every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from tests.system.container import Container, default_mirror
from tests.system.operator import UNIT, Operator

# CI runs Debian 12 and 13 (the default). Opt-in with --suites: forky (Debian testing, python3 3.14:
# a moving target must not turn CI red) and Ubuntu 24.04 (python3 3.12) and 22.04 (python3 3.10, so
# the package's python3.11 alternative from universe), which need --ubuntu-keyring (README).
SUITES = {
    "bookworm": "debian-12",
    "trixie": "debian-13",
    "forky": "debian-testing",
    "noble": "ubuntu-24.04",
    "jammy": "ubuntu-22.04",
}
DEFAULT_SUITES = ["bookworm", "trixie"]
UBUNTU_COMPONENTS = {"noble": "main", "jammy": "main,universe"}
_print_lock = threading.Lock()


class Abort(Exception):
    """A step the rest of the suite depends on failed."""


class Suite:
    """One distribution's run: its checks, printed as PASS/FAIL lines."""

    def __init__(self, suite: str, args: argparse.Namespace, workdir: Path) -> None:
        self.suite, self.label = suite, SUITES[suite]
        self.args = args
        self.log_path = workdir / f"{self.label}.log"
        self.log = self.log_path.open("w")
        mirror, options = args.mirror, ()
        if suite in UBUNTU_COMPONENTS:
            mirror = args.ubuntu_mirror
            options = (f"--keyring={args.ubuntu_keyring}", f"--components={UBUNTU_COMPONENTS[suite]}")
        self.container = Container(
            suite, workdir / self.label, f"sshklm-{self.label}", mirror, self.log, options
        )
        self.passed = 0
        self.failed: list[str] = []
        self.started = time.monotonic()
        self.facts: list[str] = []

    def say(self, text: str) -> None:
        with _print_lock:
            print(f"[{self.label}] {text}", flush=True)

    def check(self, name: str, fn: Callable[[], object], *, required: bool = False) -> bool:
        t0 = time.monotonic()
        try:
            detail = fn()
            ok = True
        except Exception as exc:  # every failure is reported, with its reason
            detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, AssertionError) else str(exc)
            ok = False
        took = time.monotonic() - t0
        suffix = f" -- {detail}" if detail not in (None, "", True) else ""
        self.say(f"{'PASS' if ok else 'FAIL'}: {name} ({took:.0f} s){suffix}")
        print(f"== {'PASS' if ok else 'FAIL'}: {name}{suffix}", file=self.log, flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)
            self._log_unit_state()
            if required:
                raise Abort(name)
        return ok

    def _log_unit_state(self) -> None:
        """After a failure: the unit's state and its last journal lines, into the log only."""
        if self.container.pid is None:
            return
        with contextlib.suppress(Exception):
            self.container.run("systemctl", "status", "--no-pager", "-l", "-n", "0", UNIT, check=False)
            self.container.run("journalctl", "-u", UNIT, "--no-pager", "-n", "40", check=False)

    def run(self) -> None:
        op = Operator(self.container, self.args, self.log)
        try:
            self.check(
                "root: " + self.suite, lambda: self.container.bootstrap(self.args.roots_cache), required=True
            )
            self.check("root prepared (sshd port, test drop-in, packages)", op.prepare, required=True)
            self.check("boot with systemd-nspawn -b", self.container.boot, required=True)
            self.check("versions", op.versions)
            op.run_all(self.check)
        except Abort as exc:
            self.say(f"ABORT: the rest of {self.label} depends on: {exc}")
        finally:
            op.close()
            with contextlib.suppress(Exception):
                self.container.poweroff()
            if op.rpm_pending:
                self.check("rpm scriptlets into the stopped root", op.rpm_scriptlets)
            self.facts = op.facts
            if self.args.keep:
                self.say(f"kept: {self.container.root} (log {self.log_path})")
            else:
                self.container.destroy()
            self.log.close()


def _stop_on_signals() -> None:
    def raise_exit(signum: int, frame: object) -> NoReturn:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, raise_exit)
    signal.signal(signal.SIGHUP, raise_exit)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.system.nspawn", description=__doc__.split("\n")[0])
    p.add_argument("--packages", type=Path, required=True, help="DIR with x/ (version X) and y/ (X+1)")
    p.add_argument("--suites", nargs="+", default=DEFAULT_SUITES, choices=list(SUITES))
    p.add_argument("--mirror", default=default_mirror())
    p.add_argument("--ubuntu-mirror", default="http://archive.ubuntu.com/ubuntu")
    p.add_argument("--ubuntu-keyring", type=Path, help="ubuntu-archive-keyring.gpg (Ubuntu suites only)")
    p.add_argument("--max-exposure", type=float, default=3.0)
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"), help="where the roots are made")
    p.add_argument("--roots-cache", type=Path, help="reuse (or save) the debootstrap result as DIR/SUITE.tar")
    p.add_argument("--keep", action="store_true", help="keep roots and logs for inspection")
    p.add_argument(
        "--sequential", action="store_true", help="one suite after the other (default: in parallel)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if set(args.suites) & set(UBUNTU_COMPONENTS) and not (
        args.ubuntu_keyring and args.ubuntu_keyring.exists()
    ):
        print("Ubuntu suites need --ubuntu-keyring FILE (ubuntu-archive-keyring.gpg)", file=sys.stderr)
        return 2
    for name in ("x", "y"):
        if not list((args.packages / name).glob("sshklm-agent_*_amd64.deb")):
            print(f"no .deb in {args.packages / name} (make test-packages builds them)", file=sys.stderr)
            return 2
    _stop_on_signals()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="sshklm-system-test.", dir=args.workdir))
    suites = [Suite(s, args, workdir) for s in args.suites]
    # Daemon threads: after an interruption the main thread destroys the containers (which ends
    # every command running in them) and the process exits without waiting for the suites.
    threads = [threading.Thread(target=s.run, name=s.label, daemon=True) for s in suites]
    try:
        for t in threads:
            t.start()
            if args.sequential:
                t.join()
        for t in threads:
            t.join()
    except BaseException:
        print(
            f"system-test: interrupted; stopping the containers, deleting the roots (logs: {workdir})",
            file=sys.stderr,
        )
        raise
    finally:
        for s in suites:  # after an interruption: nothing left running or mounted
            with contextlib.suppress(Exception):
                if not args.keep:
                    s.container.destroy()
        if not args.keep:
            for s in suites:
                if not s.failed:
                    s.log_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                workdir.rmdir()
    total = time.monotonic() - started
    print()
    for s in suites:
        print(f"[{s.label}] {'; '.join(s.facts)}")
    failed = [f"{s.label}: {name}" for s in suites for name in s.failed]
    passed = sum(s.passed for s in suites)
    print(f"system-test: {passed} passed, {len(failed)} failed in {total / 60:.1f} min")
    for f in failed:
        print(f"  FAILED {f}")
    for s in suites:
        if s.failed:
            print(f"  log: {s.log_path}")
    return 1 if failed or any(not s.passed for s in suites) else 0


if __name__ == "__main__":
    sys.exit(main())
