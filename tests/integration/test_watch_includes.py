"""A new file in an Include directory is a change of sshd's configuration, seen at once: sshd
reads it at its next start or reload, so the agent re-plans (and reports) as soon as it appears,
not at the next full rescan (15 minutes by default). Debian's sshd_config.d is often empty, so
the directory itself must be watched, not only the files already included."""

from __future__ import annotations

from pathlib import Path

from tests.fakeroot import FakeRoot, ed25519_line
from tests.integration.daemon_support import Agent, wait_for, write_config


def _config(tmp_path: Path) -> Path:
    """The daemon tests' configuration, with the safety-net rescan an hour away: only the watch
    can report the change within the test's wait."""
    config = write_config(tmp_path / "agent.toml", tmp_path / "state")
    config.write_text(config.read_text().replace("[schedule]\n", "[schedule]\nrescan_s = 3600.0\n"))
    return config


MAIN = "Include /etc/ssh/sshd_config.d/*.conf\nAuthorizedKeysFile .ssh/authorized_keys\n"


def _root(tmp_path: Path) -> FakeRoot:
    root = FakeRoot(tmp_path / "root", sshd_config=MAIN)
    root.add_user("alice", 1000)
    root.authorized_keys("alice", [ed25519_line("alice")])
    (root.root / "etc/ssh/sshd_config.d").mkdir()
    return root


def _running_agent(tmp_path: Path, agents: list[Agent]) -> tuple[FakeRoot, Agent]:
    """The demo root and an agent on it, ready (stopped by the `agents` fixture)."""
    root = _root(tmp_path)
    agent = Agent(_config(tmp_path), root.root).start()
    agents.append(agent)
    wait_for(lambda: "ready" in agent.text(), what="ready")
    assert agent.proc is not None and agent.proc.poll() is None, agent.text()
    return root, agent


def test_a_file_added_to_an_empty_include_directory_is_seen_at_once(
    tmp_path: Path, agents: list[Agent]
) -> None:
    root, agent = _running_agent(tmp_path, agents)
    # A drop-in turns public keys off: every key becomes ineffective, and the config changed.
    root.write("/etc/ssh/sshd_config.d/50-lockdown.conf", "PubkeyAuthentication no\n", mode=0o644)
    wait_for(lambda: "sshd_config_changed" in agent.text(), timeout=10, what="sshd_config_changed")
    wait_for(lambda: "key_changed user=alice" in agent.text(), timeout=10, what="alice's key re-evaluated")


def test_a_file_outside_the_include_pattern_is_not_a_config_change(
    tmp_path: Path, agents: list[Agent]
) -> None:
    root, agent = _running_agent(tmp_path, agents)
    root.write("/etc/ssh/sshd_config.d/README", "not read by sshd: the pattern is *.conf\n", mode=0o644)
    root.write("/etc/ssh/sshd_config.d/60-keys.conf", "AuthorizedKeysFile /etc/ssh/keys/%u\n", mode=0o644)
    wait_for(lambda: "sshd_config_changed" in agent.text(), timeout=10, what="sshd_config_changed")
    assert agent.text().count("sshd_config_changed") == 1, agent.text()


def test_include_matching_follows_glob_rules() -> None:
    from agent.daemon.discovery import include_dirs, matches_include

    patterns = ["/etc/ssh/sshd_config.d/*.conf", "/etc/ssh/extra-[ab]", "/etc/ssh/*/deep.conf"]
    assert include_dirs(patterns) == {"/etc/ssh/sshd_config.d", "/etc/ssh"}
    assert matches_include("/etc/ssh/sshd_config.d/50-x.conf", patterns)
    assert not matches_include("/etc/ssh/sshd_config.d/README", patterns)
    assert not matches_include("/etc/ssh/sshd_config.d/.hidden.conf", patterns)  # glob(3): no dot files
    assert not matches_include("/etc/ssh/sshd_config.d/sub/x.conf", patterns)  # * never crosses /
    assert matches_include("/etc/ssh/extra-b", patterns)
    assert matches_include("/etc/ssh/any/deep.conf", patterns)
