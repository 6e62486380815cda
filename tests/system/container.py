"""A Debian root made by debootstrap, booted under a real systemd with systemd-nspawn.

Facts this relies on (checked on the CI machine, see shared/reference/field-notes.md):
- `systemd-nspawn -D ROOT -b --register=no --keep-unit --console=pipe` boots where the host itself has
  no systemd or D-Bus; `nsenter -t <container init> -a CMD` runs a command inside; the container
  shares the host's network, so servers on the host's 127.0.0.1 are reachable from it.
- Killing the container's init (SIGKILL) ends its PID namespace: every process in it dies, and
  nspawn exits and drops its mounts. debootstrap mounts /proc and /sys inside the target while it
  works; `destroy()` unmounts whatever is left under the root before deleting it (never rm -rf
  across a mount).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import IO

ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"]
INCLUDE = "systemd,systemd-sysv,dbus,ca-certificates,openssh-server"


class CommandFailed(AssertionError):
    pass


def default_mirror() -> str:
    """The Debian mirror this machine uses (/etc/apt/sources.list.d/debian.sources), else deb.debian.org."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    return "http://deb.debian.org/debian"


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix) or point == prefix[:-1]:
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _container_init(nspawn_pid: int) -> int | None:
    """The child of nspawn that is PID 1 of a new PID namespace (nspawn forks helpers first)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = dict(
                line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        nspid = fields.get("NSpid", "").split()
        if fields.get("PPid", "").strip() == str(nspawn_pid) and len(nspid) >= 2 and nspid[-1] == "1":
            return int(entry.name)
    return None


class Container:
    def __init__(
        self, suite: str, root: Path, name: str, mirror: str, log: IO[str], options: tuple[str, ...] = ()
    ) -> None:
        self.suite, self.root, self.name, self.mirror, self.log = suite, root, name, mirror, log
        self.options = options  # more debootstrap options (Ubuntu: --keyring, --components)
        self.ubuntu = "ubuntu" in mirror
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # the container's init, as the host sees it
        self.debootstrap: subprocess.Popen[bytes] | None = None
        self.closed = False  # destroyed: nothing may start in it any more

    # -- the root --------------------------------------------------------------------------

    def bootstrap(self, cache: Path | None) -> str:
        """debootstrap (or unpack the cached tarball of an earlier one); returns how."""
        tarball = cache / f"{self.suite}.tar" if cache else None
        self.root.mkdir(parents=True)
        if tarball is not None and tarball.exists():
            subprocess.run(["tar", "-C", str(self.root), "-xf", str(tarball)], check=True)
            return f"unpacked {tarball}"
        cmd = ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", *self.options, self.suite]
        cmd += [str(self.root), self.mirror]
        if not Path("/usr/share/debootstrap/scripts", self.suite).exists():
            # A suite newer than this debootstrap (Debian testing, Ubuntu 24.04): the script of its family.
            cmd.append("/usr/share/debootstrap/scripts/" + ("gutsy" if self.ubuntu else "sid"))
        for attempt in (1, 2):  # a mirror hiccup should not fail CI on its own
            self._open()
            # Its own process group: destroy() ends debootstrap and the dpkg it runs in the root.
            self.debootstrap = subprocess.Popen(
                cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
            )
            returncode = self.debootstrap.wait()
            if returncode == 0:
                break
            if attempt == 2:
                raise CommandFailed(f"debootstrap {self.suite} failed (exit {returncode}); see the log")
            self.destroy()
            self.root.mkdir(parents=True)
        # The downloaded .debs are not needed any more (~40 MB).
        for deb in (self.root / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        if tarball is not None:
            tarball.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "-C", str(self.root), "-cf", str(tarball), "."], check=True)
        return f"debootstrap --variant=minbase --include={INCLUDE} {self.suite} {self.mirror}"

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """A file in the (stopped or running) container, written from the host side."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def prepare(self) -> None:
        self.write("/etc/hostname", self.name + "\n")
        self.write("/etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
        if self.ubuntu:
            # As on any Ubuntu host: the -updates and -security pockets (22.04's python3.11 is there).
            components = next(
                (o.split("=", 1)[1] for o in self.options if o.startswith("--components=")), "main"
            )
            pockets = "".join(
                f"deb {self.mirror} {self.suite}-{pocket} {components.replace(',', ' ')}\n"
                for pocket in ("updates", "security")
            )
            self.write("/etc/apt/sources.list.d/ubuntu-pockets.list", pockets)

    # -- running ---------------------------------------------------------------------------

    def _open(self) -> None:
        if self.closed:
            raise CommandFailed("the container was destroyed (interrupted)")

    def boot(self, timeout: float = 90.0) -> str:
        self._open()
        env = dict(os.environ)
        if self.suite in ("forky", "sid"):
            # systemd >= 258 (Debian testing) no longer runs on this host's hybrid cgroup v1 tree:
            # nspawn gives such a container the unified (v2) hierarchy only.
            env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "-b", "--register=no", "--keep-unit", "--console=pipe"]
            # The host's resolver, also where the root's resolv.conf points at a stub (Ubuntu).
            + ["-M", self.name, "--resolv-conf=replace-host"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while self.pid is None:
            if self.nspawn.poll() is not None:
                raise CommandFailed(f"systemd-nspawn exited ({self.nspawn.returncode}); see the log")
            if time.monotonic() > deadline:
                raise CommandFailed("the container's init did not appear")
            self.pid = _container_init(self.nspawn.pid)
            time.sleep(0.1)
        # PID 1 needs a moment before its private bus socket exists; until then systemctl fails.
        while True:
            done = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=timeout)
            state = done.stdout.strip()
            if state or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if state not in ("running", "degraded"):
            raise CommandFailed(f"system state {state!r}")
        if state == "degraded":
            failed = self.run("systemctl", "--failed", "--no-legend", "--plain", check=False).stdout
            return f"degraded: {' '.join(line.split()[0] for line in failed.splitlines() if line)}"
        return state

    def run(
        self,
        *cmd: str,
        input: str | None = None,  # noqa: A002 (subprocess's name)
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """CMD inside the container (all its namespaces), with a clean environment."""
        self._open()
        if self.pid is None:
            raise CommandFailed("the container is not running")
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", *ENV, *cmd],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        print(
            f"$ {' '.join(cmd)}  -> {done.returncode}\n{done.stdout}{done.stderr}", file=self.log, flush=True
        )
        if check and done.returncode != 0:
            raise CommandFailed(
                f"`{' '.join(cmd)}` exited {done.returncode}: {(done.stderr or done.stdout).strip()[-800:]}"
            )
        return done

    def sh(self, script: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, **kw)  # type: ignore[arg-type]

    def poweroff(self, timeout: float = 30.0) -> None:
        """`systemctl poweroff` and wait for nspawn; SIGKILL of the init when that does not end it."""
        if self.nspawn is None:
            return
        if self.nspawn.poll() is None and self.pid is not None:
            with contextlib.suppress(Exception):
                self.run("systemctl", "poweroff", check=False, timeout=10)
            try:
                self.nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.pid = None

    def kill(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.nspawn is not None:
            try:
                self.nspawn.wait(15)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(5)
        self.pid = None

    def destroy(self) -> None:
        """Stop whatever still runs, unmount what is left under the root, delete it."""
        self.closed = True
        if self.debootstrap is not None and self.debootstrap.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.debootstrap.pid, signal.SIGKILL)
            self.debootstrap.wait(15)
        self.kill()
        for point in _mounts_under(self.root):
            subprocess.run(["umount", "-l", point], check=False)
        if _mounts_under(self.root):
            raise CommandFailed(f"mounts left under {self.root}; not deleting it")
        if self.root.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False)
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
