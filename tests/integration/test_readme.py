"""The README's walk-through, run as written: it cannot drift from the product again (issue 15).

The `sh` blocks of README.md's "Try the whole loop" section run in order in one `bash` with
`set -euo pipefail` (an unset variable, a failing command or a failed wait stops it), from a
directory where `.venv` is the environment running this test and `tests` is this checkout's (what
`make venv` gives a fresh clone), with COLUMNS and LINES unset as in a fresh non-interactive shell.
Nothing else is substituted: no command, path or value of the README is rewritten. The harness adds
one line of its own, a `trap` that stops the background processes the blocks start if a block fails.

Then the transcript (the blocks echoed by `set -v`, with what they printed) must show what the
README says each step shows: the `scan` table the README prints, `ok` from check-config, the
enrollment, alice's keys, the appended key, the grant active then expired, the revocation and the
agent's log lines. The transcript is printed (`pytest -s` shows it) and kept in the test's tmp dir,
without the throw-away control plane's bootstrap token and admin key.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
WALKTHROUGH = "## Try the whole loop"
SCAN_SAMPLE = "## What `scan` shows"
TOOLS = ("bash", "curl", "jq", "ssh-keygen")


def section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end != -1 else len(text)]


def fenced_blocks(text: str, info: str) -> list[str]:
    """The bodies of the ```<info> blocks, in order (info "" for blocks without one)."""
    return [
        m.group(2) for m in re.finditer(r"^```([a-z]*)\n(.*?)^```$", text, re.M | re.S) if m.group(1) == info
    ]


def test_the_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first = fenced_blocks(text, "sh")[0]
    assert [line.split()[:2] for line in first.splitlines()] == [["make", "run"], ["make", "test"]]
    assert text.index(first) < text.index("\n## ")
    assert "make unit" in text and "make test-latest" in text


def test_the_walkthrough_has_blocks_and_no_sudo() -> None:
    walk = section(README.read_text(), WALKTHROUGH)
    blocks = fenced_blocks(walk, "sh")
    assert len(blocks) >= 8
    assert not any(re.search(r"\bsudo\b", block) for block in blocks)


@pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason="needs " + ", ".join(TOOLS))
def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    text = README.read_text()
    blocks = fenced_blocks(section(text, WALKTHROUGH), "sh")
    script = tmp_path / "walkthrough.sh"
    script.write_text(
        "set -euo pipefail\n"
        # The harness's own line: background processes end with the script, whatever happens.
        "trap 'kill ${AGENT_PID:-} ${CONTROL_PLANE_PID:-} 2>/dev/null || true' EXIT\n"
        "set -v\n" + "\n".join(blocks)
    )
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(sys.prefix)
    (checkout / "tests").symlink_to(REPO / "tests")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "PYTHONPATH")}
    proc = subprocess.Popen(
        ["bash", str(script)],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        transcript, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        transcript, _ = proc.communicate(timeout=30)
        pytest.fail("the walk-through did not finish in 5 minutes:\n" + transcript)
    # Shown without the demo control plane's secrets (`set -v` echoes what eval read).
    shown = re.sub(r"^(export (?:BOOTSTRAP_TOKEN|ADMIN_API_KEY)=)\S+", r"\1…", transcript, flags=re.M)
    (tmp_path / "transcript.txt").write_text(shown)
    print("\n----- README walk-through transcript -----\n" + shown)
    assert proc.returncode == 0, f"the walk-through stopped (exit {proc.returncode}):\n{transcript}"

    # Each step shows what the README says it shows.
    sample = fenced_blocks(section(text, SCAN_SAMPLE), "")[0]
    assert sample in transcript, "scan's output differs from the README's sample"
    assert "\nok\n" in transcript  # check-config (a warning first: not enrolled yet)
    assert "warning: server: not enrolled" in transcript
    assert "enrolled: host hst_" in transcript
    assert re.search(r"^reporting:\s+ok, last delivery", transcript, re.M)
    assert re.search(r'"comment":"alice@laptop"', transcript)
    assert '"comment":"added-by-hand"' in transcript
    assert '"managed_by":"ephemeral:eph_' in transcript
    assert re.search(r'"status": "pending"', transcript)  # the grant as requested
    assert '"status":"revoking"' in transcript
    assert re.search(r"INFO sshklm.daemon: change detected: key_added user=alice", transcript)
    assert re.search(
        r"INFO sshklm.extensions: ephemeral grant eph_\w+: key SHA256:\S+ added for alice", transcript
    )
    assert re.search(r"ephemeral grant eph_\w+ expired: key SHA256:\S+ removed for alice", transcript)
    assert re.search(r"ephemeral grant eph_\w+ revoked: key SHA256:\S+ removed", transcript)
    assert "PRIVATE KEY" not in transcript.split("grep -E")[1]  # the log holds no key material
    assert "Traceback" not in transcript
