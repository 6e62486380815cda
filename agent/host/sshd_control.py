"""sshd itself, asked and told: `sshd -T` (the configuration it would run with), `sshd -t` (would it
start with the files as they are now), and a reload (the configured command).

`sshd -T` answers for the files on disk, not for the running daemon: a configuration changed and
not yet reloaded is reported as if it were in force. The agent reloads sshd itself after a change
it makes (the drop-in, `trust_files.install_dropin`), so the two agree for its own changes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

DEFAULT_RELOAD: Final = ("systemctl", "reload", "sshd.service")
_MESSAGE_MAX: Final = 300


class SshdError(Exception):
    """sshd refused (the message is its own complaint, one line), or could not be run."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _complaint(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    text = " / ".join(lines[-2:]) if lines else "no message"
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:_MESSAGE_MAX]


def parse_sshd_t(text: str) -> dict[str, str]:
    """`sshd -T` output -> {lower-case keyword: value} (the first line of a repeated keyword). Pure."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        keyword, _, value = line.strip().partition(" ")
        if keyword and keyword not in out:
            out[keyword.lower()] = value.strip()
    return out


@dataclass(frozen=True)
class SshdControl:
    """`binary` and `config` are host paths; `reload_command` is run as given (no shell)."""

    binary: str = "/usr/sbin/sshd"
    config: str = "/etc/ssh/sshd_config"
    reload_command: tuple[str, ...] = DEFAULT_RELOAD
    timeout_s: float = 30.0

    def _run(self, argv: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                list(argv), capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except FileNotFoundError:
            raise SshdError(f"{what}: {argv[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise SshdError(f"{what}: timed out") from None
        except OSError as exc:
            raise SshdError(f"{what}: {exc.strerror or type(exc).__name__}") from None

    def effective(self) -> dict[str, str]:
        """The configuration sshd would run with (`sshd -T -f CONFIG`: global, no Match context)."""
        done = self._run([self.binary, "-T", "-f", self.config], "sshd -T")
        if done.returncode != 0:
            raise SshdError(f"sshd -T: {_complaint(done.stderr)}")
        return parse_sshd_t(done.stdout)

    def check(self) -> None:
        """`sshd -t -f CONFIG`: raises SshdError with sshd's complaint when it would not start."""
        done = self._run([self.binary, "-t", "-f", self.config], "sshd -t")
        if done.returncode != 0:
            raise SshdError(f"sshd -t: {_complaint(done.stderr)}")

    def reload(self) -> None:
        """Have the running sshd re-read its configuration (SIGHUP through the configured command)."""
        if not self.reload_command:
            raise SshdError("no sshd reload command configured")
        done = self._run(self.reload_command, "sshd reload")
        if done.returncode != 0:
            raise SshdError(f"sshd reload ({self.reload_command[0]}): {_complaint(done.stderr)}")
