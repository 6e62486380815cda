"""The packaged launcher's interpreter choice (packaging/runtime/python.sh), over fake /usr/bin and
/usr/lib/sshklm-agent trees: the distribution's python3 when the package has modules for it, else the
newest python3.N that has them, else exit 5 with the command to run. And main.py's own guard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "packaging" / "runtime"
ALL = ("11", "12", "13", "14")


class Host:
    """A fake /usr/bin and /usr/lib/sshklm-agent: `built` is the build's version list (python-versions,
    None: no list), `dirs` the python3.N directories present (default: those of `built`)."""

    def __init__(
        self, tmp: Path, built: tuple[str, ...] | None = ALL, dirs: tuple[str, ...] | None = None
    ) -> None:
        self.bin = tmp / "bin"
        self.lib = tmp / "lib"
        self.bin.mkdir()
        self.lib.mkdir()
        if built is not None:
            (self.lib / "python-versions").write_text(" ".join(f"3.{m}" for m in built) + "\n")
        for minor in dirs if dirs is not None else built or ():
            (self.lib / f"python3.{minor}").mkdir()

    def interpreter(self, name: str, answer: str = "") -> Path:
        """A fake interpreter; `answer` is what it prints when asked for its minor version."""
        path = self.bin / name
        path.write_text(f"#!/bin/sh\necho '{answer}'\n" if answer else "#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
        return path

    def python3_to(self, target: str) -> None:
        (self.bin / "python3").symlink_to(target)

    def installed(self, *names: str, python3: str | None = None) -> Host:
        """Fake interpreters `names`, and /usr/bin/python3 pointing at `python3`."""
        for name in names:
            self.interpreter(name)
        if python3 is not None:
            self.python3_to(python3)
        return self

    def pick(self) -> subprocess.CompletedProcess[str]:
        script = (
            f'SSHKLM_LIB="{self.lib}"; SSHKLM_BIN="{self.bin}"; . "{RUNTIME}/python.sh"; '
            'sshklm_pick_python || exit $?; echo "$SSHKLM_PYTHON $SSHKLM_PYTHON_MINOR"'
        )
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


@pytest.mark.parametrize(
    ("installed", "python3", "chosen"),
    [
        pytest.param(
            ["python3.13", "python3.11"], "python3.13", "13", id="python3 when supported (Debian 13)"
        ),
        pytest.param(
            ["python3.9", "python3.11", "python3.12"],
            "python3.9",
            "12",
            id="newest python3.N beside (RHEL 9)",
        ),
        pytest.param(
            ["python3.15", "python3.13"], "python3.15", "13", id="an older one when python3 is too new"
        ),
    ],
)
def test_the_interpreter_chosen(host: Host, installed: list[str], python3: str, chosen: str) -> None:
    done = host.installed(*installed, python3=python3).pick()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(host.bin / f"python3.{chosen}"), chosen]


def test_a_python3_that_is_no_symlink_is_asked_its_version(host: Host) -> None:
    host.interpreter("python3", answer="12")
    done = host.pick()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(host.bin / "python3"), "12"]


def test_a_free_threaded_or_debug_build_is_not_taken_for_the_normal_abi(host: Host) -> None:
    done = host.installed("python3.14t", python3="python3.14t").pick()  # answers nothing: abiflags "t"
    assert done.returncode == 5
    assert "install python3.11" in done.stderr


def test_too_old_says_what_to_install(host: Host) -> None:
    done = host.installed("python3.10", python3="python3.10").pick()  # Ubuntu 22.04, no python3.11 yet
    assert done.returncode == 5
    assert done.stdout == ""
    assert "python3 is 3.10" in done.stderr
    assert "3.11, 3.12, 3.13, 3.14" in done.stderr
    assert "run: " in done.stderr and " install python3.11 && systemctl restart sshklm-agent" in done.stderr


def test_too_new_says_to_upgrade_the_agent(host: Host) -> None:
    done = host.installed("python3.15", python3="python3.15").pick()
    assert done.returncode == 5
    assert "python3 is 3.15, newer than this sshklm-agent build supports" in done.stderr
    assert "sshklm-agent" in done.stderr.split("run: ")[1].splitlines()[0]
    assert "python3.14" in done.stderr


def test_no_python_at_all(host: Host) -> None:
    done = host.pick()
    assert done.returncode == 5
    assert "there is no" in done.stderr and "python3" in done.stderr


def test_a_build_for_older_versions_says_to_upgrade_it(tmp_path: Path) -> None:
    done = Host(tmp_path, built=("11", "12")).installed("python3.13", python3="python3.13").pick()
    assert done.returncode == 5
    assert "python3 is 3.13, newer than this sshklm-agent build supports (CPython 3.11, 3.12)" in done.stderr


@pytest.mark.parametrize("missing", ["13", "14"])
def test_a_missing_version_directory_says_to_reinstall(tmp_path: Path, missing: str) -> None:
    # The build's newest version too (seen on Debian testing, python3 3.14): damaged, not "too new".
    host = Host(tmp_path, dirs=tuple(m for m in ALL if m != missing))
    done = host.installed(f"python3.{missing}", python3=f"python3.{missing}").pick()
    assert done.returncode == 5
    assert f"the installation is damaged ({host.lib}/python3.{missing} is missing)" in done.stderr
    assert "reinstall sshklm-agent && systemctl restart sshklm-agent" in done.stderr


def test_a_missing_directory_of_an_extra_interpreter_says_to_reinstall(tmp_path: Path) -> None:
    # Ubuntu 22.04: no python3 >= 3.11, the package's python3.11 beside it; its directory lost.
    host = Host(tmp_path, dirs=("12", "13", "14"))
    done = host.installed("python3.10", "python3.11", python3="python3.10").pick()
    assert done.returncode == 5
    assert f"the installation is damaged ({host.lib}/python3.11 is missing)" in done.stderr


def test_a_missing_version_directory_falls_back_to_another_interpreter(tmp_path: Path) -> None:
    host = Host(tmp_path, dirs=("11", "12", "14")).installed("python3.13", "python3.12", python3="python3.13")
    done = host.pick()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(host.bin / "python3.12"), "12"]


def test_no_version_list_says_to_reinstall(tmp_path: Path) -> None:
    done = Host(tmp_path, built=None, dirs=ALL).installed("python3.11", python3="python3.11").pick()
    assert done.returncode == 5
    assert "python-versions is missing" in done.stderr


def test_main_py_refuses_an_interpreter_it_has_no_modules_for(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text((RUNTIME / "main.py").read_text())
    (tmp_path / "common").mkdir()
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(tmp_path / "main.py"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 5
    assert "has no modules for Python {}.{}".format(*sys.version_info[:2]) in done.stderr
