"""What an operator does with the sshklm-agent package on a Debian host, step by step, each step a
check (tests/system/nspawn.py runs them in a booted container and prints PASS/FAIL).

The package comes from a flat apt repository in the container (/root/repo, `[trusted=yes]`), as it
would from the vendor's: installing resolves the Python dependency from the Debian archive, an
upgrade is `apt-get install --only-upgrade`, and `apt-get install --reinstall` works.

One module over 500 lines on purpose: the steps run in order on shared state (the running
container, its control plane, alice's keys, the agent's pid); split by phase, they would only pass
that state around.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tests.controlplane import ControlPlane
from tests.system.container import Container
from tests.system.rpm_root import rpm_scriptlets
from tests.system.trust import TRUST_DIR, TrustSteps

UNIT = "sshklm-agent.service"
CONFIG = "/etc/sshklm-agent/agent.toml"
MARKER = "# edited by the system test"
AK = "/home/alice/.ssh/authorized_keys"
TEST_DROPIN = """# Test only (tests/system/nspawn.py), never shipped.
[Service]
# A filtered system call kills the process instead of failing with EPERM: nothing goes unnoticed.
SystemCallErrorNumber=kill
"""
# nspawn fakes the container's boot id; under systemd 252 a unit's fresh /proc (ProtectProc=...)
# shows the host's instead, so `journalctl -f` started by the agent would see no entry of this
# boot. Added only where a sandboxed unit sees another boot id (systemd 257 shows the same one, and
# there /proc is mounted after the bind mounts, so the bind would fail).
BOOT_ID_DROPIN = """# Test only (tests/system/nspawn.py), never shipped: nspawn's fake boot id, see there.
[Service]
BindReadOnlyPaths=/run/sshklm-test-boot-id:/proc/sys/kernel/random/boot_id
"""

Check = Callable[..., bool]
JAMMY_UNIT_DIR = (
    "dpkg: warning: while removing sshklm-agent, directory '/usr/lib/systemd/system' not empty so not removed"
)
# systemd's own complaints about this host's hybrid cgroup tree in a container (cgroup.kill gives
# EIO under 252; pids.max is missing under 262, TasksMax= is not enforced there): "ignoring".
CGROUP_ARTIFACT = re.compile(r"^sshklm-agent\.service: Failed to .* control group \S+, ignoring: .*$")


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


class Operator:
    def __init__(self, container: Container, args: Any, log: IO[str]) -> None:
        self.c = container
        self.args = args
        self.log = log
        self.deb_x = next((args.packages / "x").glob("sshklm-agent_*_amd64.deb"))
        self.deb_y = next((args.packages / "y").glob("sshklm-agent_*_amd64.deb"))
        self.rpm_x = next((args.packages / "x").glob("sshklm-agent-*.x86_64.rpm"))
        self.rpm_y = next((args.packages / "y").glob("sshklm-agent-*.x86_64.rpm"))
        self.version_x = deb_field(self.deb_x, "Version").rsplit("-", 1)[0]
        self.version_y = deb_field(self.deb_y, "Version").rsplit("-", 1)[0]
        self.tmp = Path(tempfile.mkdtemp(prefix="sshklm-system-keys."))
        self.ssh_port = free_port()
        self.cp: ControlPlane | None = None
        self.host_id = ""
        self.keys: dict[str, tuple[Path, str, str]] = {}  # name -> (private key, public line, fingerprint)
        self.facts: list[str] = []
        self.rpm_pending = False
        self.main_pid = 0
        self.active_since_usec = 0
        self.trust = TrustSteps(self)

    def close(self) -> None:
        if self.cp is not None:
            self.cp.stop()
            self.cp = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------

    def props(self, *names: str) -> dict[str, str]:
        out = self.c.run("systemctl", "show", UNIT, "-p", ",".join(names)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def status(self) -> dict[str, Any]:
        done = self.c.run("sshklm-agent", "status", "--json", check=False)
        return dict(json.loads(done.stdout)) if done.stdout.strip().startswith("{") else {}

    def wait_active(self) -> dict[str, str]:
        def active() -> dict[str, str] | None:
            p = self.props("ActiveState", "SubState", "MainPID", "ActiveEnterTimestampMonotonic", "NRestarts")
            return p if (p["ActiveState"], p["SubState"]) == ("active", "running") else None

        p: dict[str, str] = wait_for(active, "active (running)", 90)
        self.main_pid = int(p["MainPID"])
        self.active_since_usec = int(p["ActiveEnterTimestampMonotonic"])
        return p

    def exists(self, path: str) -> bool:
        return self.c.run("test", "-e", path, check=False).returncode == 0

    def interpreter(self) -> str:
        return self.c.run("readlink", f"/proc/{self.main_pid}/exe").stdout.strip()

    def keygen(self, name: str) -> tuple[Path, str, str]:
        path = self.tmp / f"id_{name}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@system-test", "-f", str(path)],
            check=True,
        )
        line = path.with_suffix(".pub").read_text().strip()
        fp = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{path}.pub"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[1]
        self.keys[name] = (path, line, fp)
        return self.keys[name]

    def login(self, key: str) -> bool:
        return self.login_with(self.keys[key][0])

    def login_with(self, identity: Path, certificate: Path | None = None) -> bool:
        """`ssh alice@127.0.0.1 true` through the container's sshd with this key (and certificate)."""
        cmd = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"]
        cmd += ["-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10"]
        if certificate is not None:
            cmd += ["-o", f"CertificateFile={certificate}"]
        cmd += [
            "-o",
            "LogLevel=ERROR",
            "-i",
            str(identity),
            "-p",
            str(self.ssh_port),
            "alice@127.0.0.1",
            "true",
        ]
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0

    def events(self, kind: str) -> list[str]:
        assert self.cp is not None
        return [e["fingerprint"] for e in self.cp.events(self.host_id) if e["type"] == kind]

    def append_key(self, name: str) -> str:
        _, line, fp = self.keygen(name)
        self.c.sh(f"cat >> {AK}", input=line + "\n")
        return fp

    def journal_cursor(self) -> str:
        out = self.c.run("journalctl", "-n", "0", "--show-cursor", "-q").stdout
        return out.strip().removeprefix("-- cursor: ")

    def journal(self, cursor: str, *extra: str) -> str:
        args = ["journalctl", "-u", UNIT, "--no-pager", "-q", "-o", "cat", f"--after-cursor={cursor}", *extra]
        return self.c.run(*args).stdout

    def publish(self, *debs: Path) -> None:
        """The flat apt repository /root/repo holds `debs` (the vendor's repository, in small)."""
        repo = self.c.root / "root/repo"
        shutil.rmtree(repo, ignore_errors=True)
        repo.mkdir(parents=True)
        stanzas = []
        for deb in debs:
            shutil.copy(deb, repo / deb.name)
            control = subprocess.run(
                ["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True
            ).stdout
            digest = hashlib.sha256(deb.read_bytes()).hexdigest()
            stanzas.append(
                control.rstrip("\n")
                + f"\nFilename: ./{deb.name}\nSize: {deb.stat().st_size}\nSHA256: {digest}\n"
            )
        (repo / "Packages").write_text("\n".join(stanzas))
        self.c.write("/etc/apt/sources.list.d/sshklm.list", "deb [trusted=yes] file:/root/repo ./\n")

    def apt_both(self, *args: str) -> str:
        """apt-get's output and what the maintainer scripts said on stderr."""
        done = self.c.run(*self.apt_command(*args), timeout=900)
        return done.stdout + done.stderr

    def apt(self, *args: str) -> str:
        return self.c.run(*self.apt_command(*args), timeout=900).stdout

    def apt_command(self, *args: str) -> list[str]:
        return [
            "apt-get",
            "-y",
            "-q",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confold",
            *args,
        ]

    # -- steps -----------------------------------------------------------------------------

    def prepare(self) -> str:
        self.c.prepare()
        self.c.write(
            "/etc/ssh/sshd_config.d/sshklm-system-test.conf",
            f"Port {self.ssh_port}\nListenAddress 127.0.0.1\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n",
        )
        self.c.write(f"/etc/systemd/system/{UNIT}.d/system-test.conf", TEST_DROPIN)
        if self.c.suite not in ("bookworm", "trixie"):
            # Debian testing's Release expires after a week; this machine's mirror may be older.
            self.c.write("/etc/apt/apt.conf.d/99sshklm-system-test", 'Acquire::Check-Valid-Until "false";\n')
        self.publish(self.deb_x)
        return f"sshd on 127.0.0.1:{self.ssh_port}; packages {self.version_x} and {self.version_y}"

    def versions(self) -> str:
        systemd = self.c.run("systemctl", "--version").stdout.splitlines()[0]
        sshd = self.c.run("dpkg-query", "-W", "-f=${Version}", "openssh-server").stdout
        self.facts += [systemd, f"openssh-server {sshd}"]
        return f"{systemd}; openssh-server {sshd}"

    def run_all(self, check: Check) -> None:
        check(
            "apt-get install sshklm-agent: the Python dependency comes from the archive",
            self.install,
            required=True,
        )
        check("active (running) through Type=notify READY, with a Status: line", self.started, required=True)
        check("enrolled with the control plane on the host's loopback", self.enrol, required=True)
        check("a key appended -> key_added at the control plane", self.key_added)
        check("a login through the container's sshd -> key_used", self.key_used)
        check("a signed rotation: the new key logs in, the old one no longer", self.rotation)
        check("the agent's files for sshd, made in the sandbox: a KRL ssh-keygen reads", self.trust.files)
        how = "the agent installs its drop-in" if self.trust.agent_installs else "by hand"
        check(f"sshd pointed at the agent's files ({how}); the key still logs in", self.trust.sshd)
        check(
            "revoke_keys by fingerprint: sshd refuses it, authorized_keys unchanged; withdrawn: logs in",
            self.trust.revoke,
        )
        check(
            "trust_ca: a certificate for alice's principal logs in, another's not; untrust_ca: refused",
            self.trust.ca,
        )
        check("systemctl reload returns with the changed setting in force", self.reload_applies)
        check("systemctl reload of a broken file fails; the running configuration stays", self.reload_refuses)
        check("watchdog pings for a whole WatchdogSec, same process, no restart", self.watchdog)
        check(
            f"systemd-analyze security <= {self.args.max_exposure}, verify silent; read-only config",
            self.sandbox,
        )
        check("a normal stop logs no warning", self.stop_quietly)
        check("upgrade: configuration, enrolment and outbox kept; queued events then delivered", self.upgrade)
        if self.c.suite == "bookworm":
            check(
                "python3 3.11 -> 3.13 (Debian 13's): the agent restarts on the new interpreter",
                self.python_swap,
            )
        else:
            check("a damaged installation: systemctl status says what to run, and it works", self.damaged)
        check("no filtered system call (SystemCallErrorNumber=kill) and no failure all along", self.no_kills)
        check(
            "apt-get remove keeps configuration and state; purge removes them; no dpkg warning",
            self.remove_purge,
        )
        self.rpm_pending = True

    def install(self) -> str:
        boot_id = self.c.run("cat", "/proc/sys/kernel/random/boot_id").stdout.strip()
        sandboxed = self.c.run(
            "systemd-run", "--wait", "--pipe", "-q", "-p", "ProtectProc=invisible",
            "cat", "/proc/sys/kernel/random/boot_id",
        ).stdout.strip()  # fmt: skip
        if sandboxed != boot_id:
            self.c.run("install", "-m", "644", "/dev/stdin", "/run/sshklm-test-boot-id", input=boot_id + "\n")
            self.c.write(f"/etc/systemd/system/{UNIT}.d/system-test-boot-id.conf", BOOT_ID_DROPIN)
            self.c.run("systemctl", "daemon-reload")
            self.facts.append("boot-id bind drop-in (sandboxed /proc shows another boot id)")
        self.c.run("apt-get", "update", "-q", "--error-on=any", timeout=600)
        self.apt("install", "sshklm-agent")
        got = self.c.run("dpkg-query", "-W", "-f=${Status} ${Version}", "sshklm-agent").stdout
        assert got == f"install ok installed {self.version_x}-1", got
        names = ["python3"] + [f"python3.{m}" for m in range(10, 16)]
        listed = self.c.run(
            "dpkg-query", "-W", "-f=${db:Status-Abbrev}${Package} ${Version}\n", *names, check=False
        )
        pythons = ", ".join(line[3:] for line in listed.stdout.splitlines() if line.startswith("ii "))
        self.facts.append(pythons)
        return f"{pythons} installed with it"

    def started(self) -> str:
        p = self.wait_active()
        t = self.props("Type", "Result", "StatusText")
        assert t["Type"] == "notify" and t["Result"] == "success", t
        out = self.c.run("systemctl", "status", UNIT, "--no-pager", check=False).stdout
        assert "Active: active (running)" in out, out
        line = re.search(r'Status: "(\d+ files watched; \d+ keys; outbox \d+[^"]*)"', out)
        assert line, f"no Status: line in\n{out}"
        return f"{self.interpreter()} (pid {p['MainPID']}); Status: {line.group(1)}"

    def enrol(self) -> str:
        self.cp = ControlPlane.start(poll_interval=2)
        _, old, _ = self.keygen("old")
        self.c.sh(
            "useradd -m -s /bin/sh alice && usermod -p '*' alice"
            " && install -d -m 700 -o alice -g alice /home/alice/.ssh"
        )
        self.c.run("install", "-m", "600", "-o", "alice", "-g", "alice", "/dev/stdin", AK, input=old + "\n")
        edits = {
            r'^url = ""': f'url = "{self.cp.url}"',
            r"^allow_plain_http_loopback = false": "allow_plain_http_loopback = true",
            r"^public_keys = \[\]": f'public_keys = ["{self.cp.signing_public_key_openssh}"]',
            r"^startup_splay_s = .*": "startup_splay_s = 0.0",
            r"^heartbeat_s = .*": "heartbeat_s = 2.0",
        }
        script = " ".join(f"-e 's#{a}#{b}#'" for a, b in edits.items())
        self.c.sh(f"sed -i {script} {CONFIG} && echo '{MARKER}' >> {CONFIG}")
        text = self.c.run("cat", CONFIG).stdout
        for wanted in edits.values():
            assert re.search("^" + re.escape(wanted) + "$", text, re.M), f"config edit missing: {wanted}"
        # Not enrolled yet: check-config warns so (one line) and still says ok.
        said = self.c.run("sshklm-agent", "check-config").stdout.strip().splitlines()
        assert said[-1] == "ok" and all(line.startswith("warning: ") for line in said[:-1]), said
        self.c.run("install", "-m", "600", "/dev/stdin", "/run/sshklm-token", input=self.cp.bootstrap_token)
        self.c.run("sshklm-agent", "enroll", "--server", self.cp.url, "--token-file", "/run/sshklm-token")
        self.c.run("rm", "/run/sshklm-token")
        self.c.run("systemctl", "restart", UNIT)
        self.wait_active()
        st = self.status()
        assert st.get("mode") == "enrolled" and st.get("host_id"), st
        self.host_id = st["host_id"]
        wait_for(
            lambda: self.cp is not None and self.cp.inventory(self.host_id) is not None, "the first inventory"
        )
        return f"host {self.host_id}"

    def key_added(self) -> str:
        fp = self.append_key("extra")
        wait_for(lambda: fp in self.events("key_added"), f"key_added {fp}")
        return fp

    def key_used(self) -> str:
        assert self.login("old"), "login with alice's key failed"
        fp = self.keys["old"][2]
        wait_for(lambda: fp in self.events("key_used"), f"key_used {fp}")
        return fp

    def rotation(self) -> str:
        assert self.cp is not None
        _, new, _ = self.keygen("new")
        body = {
            "rotation_id": "rot_system_1",
            "user": "alice",
            "action": "replace",
            "old_fingerprint": self.keys["old"][2],
            "new_key": new,
        }
        self.cp.issue_instruction(self.host_id, "rotation", body)

        def applied() -> list[dict[str, Any]]:
            assert self.cp is not None
            return [
                r
                for r in self.cp.instruction_results()
                if r["host_id"] == self.host_id and r["kind"] == "rotation"
            ]

        results = wait_for(applied, "the rotation's result")
        assert results[0]["status"] == "applied", results
        assert self.login("new"), "the new key does not log in"
        assert not self.login("old"), "the old key still logs in"
        return "applied"

    def reload_applies(self) -> str:
        before = self.status()
        pid = self.main_pid
        alice = sum(
            1
            for k in json.loads(self.c.run("sshklm-agent", "scan", "--format", "json").stdout)["keys"]
            if k.get("user") == "alice" or k["path"].startswith("/home/alice/")
        )
        assert alice >= 1
        self.c.sh(
            "sed -i -e 's#^skip_users = \\[\\]#skip_users = [\"alice\"]#'"
            f" -e 's#^orphan_homes = true#orphan_homes = false#' {CONFIG}"
        )
        self.c.run("systemctl", "reload", UNIT)
        after = self.status()  # read at once: no waiting after `systemctl reload` returned
        assert after["keys"] == before["keys"] - alice, (before["keys"], alice, after["keys"])
        assert after["config_generation"] == before["config_generation"] + 1
        self.c.sh(
            "sed -i -e 's#^skip_users = .*#skip_users = []#'"
            f" -e 's#^orphan_homes = false#orphan_homes = true#' {CONFIG}"
        )
        self.c.run("systemctl", "reload", UNIT)
        assert self.status()["keys"] == before["keys"]
        assert self.props("MainPID")["MainPID"] == str(pid)
        return f"keys {before['keys']} -> {after['keys']} -> {before['keys']}, same pid {pid}"

    def reload_refuses(self) -> str:
        before = self.status()
        cursor = self.journal_cursor()
        self.c.sh(f"cp {CONFIG} /root/agent.toml.good && echo 'this is not toml' >> {CONFIG}")
        done = self.c.run("systemctl", "reload", UNIT, check=False)
        self.c.sh(f"mv /root/agent.toml.good {CONFIG}")
        assert done.returncode != 0, "systemctl reload succeeded with a broken file"
        assert "reload refused, keeping the running configuration" in self.journal(cursor)
        p = self.props("ActiveState", "MainPID")
        assert p == {"ActiveState": "active", "MainPID": str(self.main_pid)}, p
        assert self.status()["config_generation"] == before["config_generation"]
        return f"systemctl reload exited {done.returncode}"

    def watchdog(self) -> str:
        environ = self.c.run("cat", f"/proc/{self.main_pid}/environ").stdout.split("\0")
        usec = int(next(v.split("=", 1)[1] for v in environ if v.startswith("WATCHDOG_USEC=")))
        period = usec / 1e6
        up_since = self.active_since_usec / 1e6
        wait_for(lambda: time.monotonic() - up_since > period + 2, "a whole watchdog period", period + 30)
        p = self.props("MainPID", "NRestarts", "WatchdogTimestampMonotonic", "ActiveState")
        last_ping = int(p["WatchdogTimestampMonotonic"]) / 1e6
        ago = time.monotonic() - last_ping
        assert (
            p["ActiveState"] == "active" and p["MainPID"] == str(self.main_pid) and p["NRestarts"] == "0"
        ), p
        assert last_ping > up_since + period / 2 and ago < period / 2 + 5, f"last ping {ago:.1f} s ago"
        return f"WatchdogSec={period:.0f}s, up {time.monotonic() - up_since:.0f} s, last ping {ago:.1f} s ago"

    def sandbox(self) -> str:
        out = self.c.run("systemd-analyze", "security", "--no-pager", UNIT).stdout
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
        assert found, out[-500:]
        verify = self.c.run("systemd-analyze", "verify", UNIT, check=False)
        # verify also loads the units ours depends on; what it says about the distribution's own
        # (Ubuntu 22.04: "Suspicious symlink ... treating as alias") is noted, not ours to fail on.
        said = (verify.stdout + verify.stderr).strip().splitlines()
        ours = [line for line in said if "sshklm" in line]
        assert verify.returncode == 0 and not ours, "\n".join(said)
        exposure = float(found.group(1))
        assert exposure <= self.args.max_exposure, f"exposure {exposure}"
        # The agent's own view of the file system (its mount namespace): configuration and sshd's
        # read-only (no ConfigurationDirectory=), state and its files for sshd writable, sshd's
        # drop-in directory only with the unit drop-in for trust.install_sshd_dropin.
        probe = "touch {0}/.probe 2>&1 && rm {0}/.probe && echo writable || true"
        dirs = ("/etc/sshklm-agent", "/etc/ssh", "/etc/ssh/sshd_config.d", "/var/lib/sshklm-agent", TRUST_DIR)
        view = {
            d: self.c.run(
                "nsenter", "-t", str(self.main_pid), "-m", "sh", "-c", probe.format(d)
            ).stdout.strip()
            for d in dirs
        }
        writable = {"/var/lib/sshklm-agent", TRUST_DIR}
        if self.trust.agent_installs:
            writable.add("/etc/ssh/sshd_config.d")
        for d, seen in view.items():
            assert seen == "writable" if d in writable else "Read-only file system" in seen, view
        others = (
            f"; verify said {len(said)} lines about the distribution's units, none about ours" if said else ""
        )
        return f"exposure {exposure}; writable: {', '.join(sorted(writable))}; the rest read-only{others}"

    def stop_quietly(self) -> str:
        cursor = self.journal_cursor()
        try:
            self.c.run("systemctl", "stop", UNIT)
            p = self.props("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
            assert (
                p["ActiveState"] == "inactive" and p["Result"] == "success" and p["ExecMainStatus"] == "0"
            ), p
            everything = self.journal(cursor)
            assert "stopping" in everything, f"the stop was not logged at all:\n{everything}"
            lines = self.journal(cursor, "-p", "warning").splitlines()
            # systemd in this container sometimes cannot handle the stopped unit's cgroup on the
            # hybrid cgroup v1 host (CGROUP_ARTIFACT): systemd's own message about this machine,
            # not the agent's; every other warning fails the check.
            host_artifact = [line for line in lines if CGROUP_ARTIFACT.search(line)]
            warnings = [line for line in lines if line not in host_artifact]
            assert not warnings, "warnings logged during the stop:\n" + "\n".join(warnings)
        finally:  # the next checks need it running, whatever this one found
            self.c.run("systemctl", "start", UNIT)
            self.wait_active()
        note = (
            f" (systemd about this host's cgroups, not the agent: {host_artifact})" if host_artifact else ""
        )
        return "nothing at warning or above" + note

    def upgrade(self) -> str:
        assert self.cp is not None
        self.cp.faults.fail_next(1_000_000, 503, path_prefix=f"/v1/hosts/{self.host_id}/events")
        fp = self.append_key("queued")
        wait_for(lambda: (self.status().get("outbox") or 0) >= 1, "the event queued in the outbox")
        self.publish(self.deb_x, self.deb_y)
        self.c.run("apt-get", "update", "-q", "--error-on=any", timeout=600)
        self.apt("install", "--only-upgrade", "sshklm-agent")
        got = self.c.run("dpkg-query", "-W", "-f=${Version}", "sshklm-agent").stdout
        assert got == f"{self.version_y}-1", got
        self.wait_active()
        st = self.status()
        assert st.get("version") == self.version_y, st.get("version")
        assert st.get("mode") == "enrolled" and st.get("host_id") == self.host_id, st
        assert (st.get("outbox") or 0) >= 1, f"outbox {st.get('outbox')} after the upgrade"
        text = self.c.run("cat", CONFIG).stdout
        assert MARKER in text and self.cp.url in text, "the edited configuration was replaced"
        assert "changed in the upgrade build" in self.c.run("cat", CONFIG + ".dpkg-dist").stdout
        assert fp not in self.events("key_added")
        self.cp.faults.clear()
        wait_for(lambda: fp in self.events("key_added"), "the queued event after the upgrade", 120)
        return f"{self.version_x} -> {self.version_y}; outbox {st.get('outbox')} delivered"

    def python_swap(self) -> str:
        mirror = self.args.mirror
        self.c.write("/etc/apt/sources.list.d/trixie.list", f"deb {mirror} trixie main\n")
        self.c.run("apt-get", "update", "-q", "--error-on=any", timeout=600)
        before = self.interpreter()
        out = self.apt("install", "-t", "trixie", "python3")
        assert "sshklm-agent: restarting on /usr/bin/python3.13" in out, (
            "the trigger did not restart the agent"
        )
        self.wait_active()
        now = self.interpreter()
        assert now == "/usr/bin/python3.13", now
        pid = self.main_pid
        # apt keeps python3.11 (it satisfies an alternative of the agent's dependency): an operator
        # may remove it; the trigger runs again and leaves the agent alone (its interpreter stays).
        self.apt("purge", "python3.11-minimal", "libpython3.11-minimal")
        assert not self.exists("/usr/bin/python3.11"), "python3.11 still there"
        assert self.props("MainPID")["MainPID"] == str(pid), (
            "restarted although its interpreter did not change"
        )
        fp = self.append_key("after-swap")
        wait_for(lambda: fp in self.events("key_added"), "a key_added from the agent on 3.13")
        python = self.c.run("dpkg-query", "-W", "-f=${Version}", "python3").stdout
        self.facts.append(f"then python3 {python} (Debian 13's)")
        return f"{before} -> {now}; python3.11 removed, agent untouched"

    def damaged(self) -> str:
        minor = self.interpreter().rsplit("python", 1)[1]
        self.c.run("mv", f"/usr/lib/sshklm-agent/python{minor}", "/root/moved-away")
        self.c.run("systemctl", "restart", UNIT, check=False)
        p = self.props("ActiveState", "ExecMainStatus", "NRestarts")
        assert p["ActiveState"] == "failed" and p["ExecMainStatus"] == "5", p
        out = self.c.run("systemctl", "status", UNIT, "--no-pager", "-l", check=False).stdout
        assert "status=5/NOTINSTALLED" in out, out
        found = re.search(r"sshklm-agent: run: (.+?)(?:    \(.*)?$", out, re.M)
        assert found, f"no command in\n{out}"
        command = found.group(1).strip()
        self.c.sh(command)
        self.c.run("rm", "-rf", "/root/moved-away")
        self.wait_active()
        assert self.props("NRestarts")["NRestarts"] == "0"
        return f"status=5/NOTINSTALLED; ran: {command}"

    def no_kills(self) -> str:
        text = self.c.run("journalctl", "-u", UNIT, "--no-pager", "-q", "-o", "cat").stdout
        for bad in ("status=31/SYS", "code=killed", "Failed with result", "Traceback"):
            lines = [line for line in text.splitlines() if bad in line]
            allowed = [line for line in lines if "status=5/NOTINSTALLED" in line or "exit-code" in line]
            assert len(lines) == len(allowed), f"{bad}: {lines}"
        return f"{len(text.splitlines())} journal lines checked"

    def remove_purge(self) -> str:
        out = self.apt("remove", "sshklm-agent")
        assert "warning" not in out.lower(), out
        assert MARKER in self.c.run("cat", CONFIG).stdout
        assert self.exists("/var/lib/sshklm-agent"), "state removed"
        assert self.props("LoadState")["LoadState"] == "not-found"
        assert not self.exists("/usr/lib/sshklm-agent")
        self.trust.after_remove()
        out = self.apt_both("purge", "sshklm-agent")
        trust = self.trust.after_purge(out)
        tolerated = ""
        if self.c.suite == "jammy" and JAMMY_UNIT_DIR in out:
            # Documented (docs/choices.md, Packaging): on Ubuntu 22.04 no other package owns the
            # /usr/lib spelling of the merged unit directory, so dpkg tries to remove it.
            out, tolerated = out.replace(JAMMY_UNIT_DIR, ""), f"; known on Ubuntu 22.04: {JAMMY_UNIT_DIR}"
        assert "warning" not in out.lower() and "not empty" not in out, out
        for gone in (
            "/etc/sshklm-agent",
            "/var/lib/sshklm-agent",
            "/usr/lib/sshklm-agent",
            "/usr/bin/sshklm-agent",
        ):
            assert not self.exists(gone), f"{gone} left after purge"
        return (
            f"remove kept /etc/sshklm-agent and /var/lib/sshklm-agent; purge removed them; {trust}"
            + tolerated
        )

    def rpm_scriptlets(self) -> str:
        return rpm_scriptlets(
            self.c.root, self.rpm_x, self.rpm_y, self.log, trust_named=not self.trust.agent_installs
        )
