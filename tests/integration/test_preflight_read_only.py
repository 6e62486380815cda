"""`run` and `check-config` under the packaged unit's sandbox: ProtectSystem=strict mounts everything
read-only but the paths the unit names, for root too. A trust or state directory the agent cannot
write there must be refused at start with a line that says so and what to do, not "run as root"
(the agent is root) and not a start that fails later. A read-only tmpfs stands in for the sandbox."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands import preflight
from agent.commands.preflight import check_state_dir, check_trust_dir

pytestmark = pytest.mark.root(reason="mounts a tmpfs and remounts it read-only")


@pytest.fixture
def read_only() -> Iterator[Path]:
    """A directory holding `existing/` (0755) and `private/` (0700), then remounted read-only."""
    base = Path(tempfile.mkdtemp(prefix="sshklm-ro-", dir="/run"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(base)], capture_output=True
    )
    if mounted.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip("cannot mount a tmpfs here: " + mounted.stderr.decode().strip())
    try:
        (base / "existing").mkdir(mode=0o755)
        (base / "private").mkdir(mode=0o700)
        subprocess.run(["mount", "-o", "remount,ro", str(base)], check=True)
        yield base
    finally:
        subprocess.run(["umount", "-l", str(base)], check=False)
        with contextlib.suppress(OSError):
            base.rmdir()


def test_a_trust_dir_that_cannot_be_created_there_says_read_only(read_only: Path) -> None:
    path = read_only / "sshklm-agent"
    finding = check_trust_dir(str(path))
    assert finding is not None and finding.severity == "error" and finding.key == "trust.dir"
    assert "read-only" in finding.message and "run as root" not in finding.message
    assert f"install -d -m 0755 {path}" in finding.message
    assert f"ReadWritePaths={path}" in finding.message


def test_an_existing_read_only_trust_dir_is_refused(read_only: Path) -> None:
    path = read_only / "existing"
    assert os.path.isdir(path)
    finding = check_trust_dir(str(path))
    assert finding is not None and finding.severity == "error"
    assert f"{path} is read-only here" in finding.message
    assert f"ReadWritePaths={path}" in finding.message and "install -d" not in finding.message


def test_a_state_dir_there_says_read_only(read_only: Path) -> None:
    created = check_state_dir(str(read_only / "state"))
    assert created is not None and "read-only" in created.message
    assert "install -d -m 0700" in created.message
    existing = check_state_dir(str(read_only / "private"))
    assert existing is not None and existing.key == "state.dir"
    assert f"{read_only / 'private'} is read-only here" in existing.message


def test_the_default_trust_dir_missing_says_create_it(
    read_only: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unit already names the default (ReadWritePaths=-/etc/ssh/sshklm-agent): only missing."""
    default = read_only / "sshklm-agent"
    monkeypatch.setitem(preflight.DEFAULT_DIRS, "trust.dir", str(default))
    finding = check_trust_dir(str(default))
    assert finding is not None and f"(`install -d -m 0755 {default}`) and restart" in finding.message
    assert "ReadWritePaths" not in finding.message


def test_a_writable_trust_dir_passes(tmp_path: Path) -> None:
    (tmp_path / "trust").mkdir(mode=0o755)
    assert check_trust_dir(str(tmp_path / "trust")) is None
    assert check_trust_dir(str(tmp_path / "absent")) is None


def test_a_read_only_metrics_directory_is_a_warning_naming_the_drop_in(read_only: Path) -> None:
    """Metrics never stop the agent: a directory it cannot write there is a warning, with the fix."""
    path = str(read_only / "existing" / "sshklm-agent.prom")
    finding = preflight.check_metrics_file(path)
    assert finding is not None and finding.severity == "warning" and finding.key == "metrics.textfile"
    assert "read-only" in finding.message and f"ReadWritePaths={read_only / 'existing'}" in finding.message


def test_a_missing_or_unsafe_metrics_directory_is_a_warning(tmp_path: Path) -> None:
    missing = preflight.check_metrics_file(str(tmp_path / "absent" / "a.prom"))
    assert missing is not None and missing.severity == "warning" and "install -d" in missing.message
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    unsafe = preflight.check_metrics_file(str(loose / "a.prom"))
    assert (
        unsafe is not None
        and unsafe.severity == "warning"
        and "writable by group or others" in unsafe.message
    )
    good = tmp_path / "good"
    good.mkdir(mode=0o755)
    assert preflight.check_metrics_file(str(good / "a.prom")) is None
