"""sshd_config parsing and resolution, rule by rule (OpenSSH 9.2 servconf.c semantics).

tests/integration/test_sshd_oracle.py checks the same rules against the real `sshd -T`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.ssh.sshd_config import (
    DEFAULT_AUTHORIZED_KEYS_FILES,
    DEFAULT_HOST_KEYS,
    EffectiveSshdConfig,
    MatchContext,
    ParsedSshdConfig,
    argv_split,
    expand_user_path,
    match_pattern,
    match_pattern_list,
    parse_sshd_config,
    resolve,
    strdelim,
)

MAIN = "/etc/ssh/sshd_config"
ALICE = MatchContext("alice", frozenset({"alice", "staff"}))
BOB = MatchContext("bob", frozenset({"bob", "wheel"}))


class FakeFs:
    """Include loader over an in-memory tree; records the patterns sshd would glob."""

    def __init__(self, files: dict[str, str] | None = None) -> None:
        self.files = files or {}
        self.patterns: list[str] = []

    def __call__(self, pattern: str) -> list[tuple[str, str]]:
        import fnmatch as fm

        self.patterns.append(pattern)
        return [(p, self.files[p]) for p in sorted(self.files) if fm.fnmatchcase(p, pattern)]


def parse(text: str, files: dict[str, str] | None = None) -> ParsedSshdConfig:
    return parse_sshd_config(text, MAIN, FakeFs(files))


def eff(
    text: str, ctx: MatchContext | None = None, files: dict[str, str] | None = None
) -> EffectiveSshdConfig:
    return resolve(parse(text, files), ctx)


def reasons(parsed: ParsedSshdConfig) -> list[tuple[int, str]]:
    return [(e.line, e.reason) for e in parsed.errors]


# --------------------------------------------------------------------------- defaults & syntax


def test_defaults() -> None:
    parsed = parse("")
    result = resolve(parsed, None)
    assert (
        result.authorized_keys_files
        == DEFAULT_AUTHORIZED_KEYS_FILES
        == (
            ".ssh/authorized_keys",
            ".ssh/authorized_keys2",
        )
    )
    assert result.host_keys == DEFAULT_HOST_KEYS
    assert result.strict_modes and result.pubkey_authentication and result.password_authentication
    assert result.permit_root_login == "prohibit-password"
    assert result.authorized_keys_command is None and result.trusted_user_ca_keys is None
    assert result.conditional_authorized_keys_files == ()
    assert result.included_files == (MAIN,)
    assert parsed.errors == () and result.sources == ()
    assert resolve(parsed, ALICE) == result


def test_first_value_wins_and_sources() -> None:
    result = eff("PasswordAuthentication no\nPasswordAuthentication yes\nStrictModes no\nStrictModes yes\n")
    assert result.password_authentication is False
    assert result.strict_modes is False
    assert result.source_of("password_authentication") == f"{MAIN}:1"
    assert result.source_of("strict_modes") == f"{MAIN}:3"
    assert result.source_of("pubkey_authentication") is None


def test_keyword_equals_value_quotes_and_case() -> None:
    text = (
        "pubkeyauthentication=NO\n"
        "  PERMITROOTLOGIN   =   without-password  \n"
        'AuthorizedKeysFile "/etc/ssh/my keys/%u" \'.ssh/x y\' plain\\ space # comment "unbalanced\n'
        '"TrustedUserCAKeys" /etc/ssh/ca.pub\n'
        "\tPasswordAuthentication\tno\r\n"
    )
    parsed = parse(text)
    assert parsed.errors == ()
    result = resolve(parsed, None)
    assert result.pubkey_authentication is False
    assert result.permit_root_login == "prohibit-password"
    assert result.authorized_keys_files == ("/etc/ssh/my keys/%u", ".ssh/x y", "plain space")
    assert result.trusted_user_ca_keys == "/etc/ssh/ca.pub"
    assert result.password_authentication is False


def test_comments_and_blank_lines_are_ignored() -> None:
    parsed = parse("# PasswordAuthentication no\n\n   \n   # indented comment\n")
    assert parsed.errors == ()
    assert resolve(parsed, None).password_authentication is True


def test_authorized_keys_file_takes_args_of_first_line_and_none() -> None:
    assert eff("AuthorizedKeysFile a b\nAuthorizedKeysFile c\n").authorized_keys_files == ("a", "b")
    assert eff("AuthorizedKeysFile none\nAuthorizedKeysFile c\n").authorized_keys_files == ()
    assert eff("AuthorizedKeysFile NONE .ssh/k\n").authorized_keys_files == (".ssh/k",)
    # A line holding only a comment sets nothing, so the next line still counts.
    assert eff("AuthorizedKeysFile # nothing\nAuthorizedKeysFile c\n").authorized_keys_files == ("c",)


def test_permit_root_login_values() -> None:
    for value, expected in [
        ("yes", "yes"),
        ("no", "no"),
        ("Without-Password", "prohibit-password"),
        ("prohibit-password", "prohibit-password"),
        ("forced-commands-only", "forced-commands-only"),
    ]:
        assert eff(f"PermitRootLogin {value}\n").permit_root_login == expected


def test_paths_are_derelativised_like_sshd() -> None:
    result = eff(
        "TrustedUserCAKeys ca.pub\nHostKey ssh/k1\nHostKey /etc/ssh/k2\nHostKey ~/k3\nHostCertificate c.pub\n"
    )
    assert result.trusted_user_ca_keys == "/ca.pub"
    assert result.host_keys == ("/ssh/k1", "/etc/ssh/k2", "/root/k3")
    assert result.host_certificates == ("/c.pub",)
    assert eff("TrustedUserCAKeys none\n").trusted_user_ca_keys is None
    assert eff("HostKey none\n").host_keys == ()


def test_commands_are_kept_verbatim_and_must_be_absolute() -> None:
    result = eff('AuthorizedKeysCommand   /usr/bin/keys %u "%f" # note\nAuthorizedKeysCommandUser nobody\n')
    assert result.authorized_keys_command == '/usr/bin/keys %u "%f" # note'
    assert result.authorized_keys_command_user == "nobody"
    parsed = parse("AuthorizedKeysCommand bin/keys\n")
    assert reasons(parsed) == [(1, "command must be an absolute path")]
    assert resolve(parsed, None).authorized_keys_command is None
    assert eff("AuthorizedKeysCommand none\n").authorized_keys_command is None


def test_principals_command_quirk_of_openssh_9_2() -> None:
    # servconf.c checks authorized_keys_command before storing AuthorizedPrincipalsCommand.
    assert (
        eff("AuthorizedKeysCommand /k\nAuthorizedPrincipalsCommand /p\n").authorized_principals_command
        is None
    )
    assert eff(
        "AuthorizedPrincipalsCommand /p1\nAuthorizedPrincipalsCommand /p2\n"
    ).authorized_principals_command == ("/p2")


def test_principals_file_and_pubkey_algorithms() -> None:
    result = eff("AuthorizedPrincipalsFile /etc/ssh/principals/%u\nPubkeyAcceptedKeyTypes +ssh-rsa\n")
    assert result.authorized_principals_file == "/etc/ssh/principals/%u"
    assert result.pubkey_accepted_algorithms == "+ssh-rsa"
    assert eff("AuthorizedPrincipalsFile none\n").authorized_principals_file is None


def test_unknown_keywords_are_listed_and_ignored() -> None:
    parsed = parse("FrobnicateKeys yes\nPasswordAuthentication no\nfrobnicatekeys no\n")
    assert parsed.unknown_keywords == ("frobnicatekeys",)
    assert reasons(parsed) == [(1, "unknown keyword"), (3, "unknown keyword")]
    result = resolve(parsed, None)
    assert result.unknown_keywords == ("frobnicatekeys",)
    assert result.password_authentication is False


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("PasswordAuthentication\n", "no argument after keyword"),
        ("PasswordAuthentication maybe\n", "unsupported option value"),
        ("PermitRootLogin sometimes\n", "unsupported option value"),
        ('AuthorizedKeysFile "unterminated\n', "invalid quotes"),
        ("TrustedUserCAKeys a b\n", "extra arguments at end of line"),
        ('AuthorizedKeysFile ""\n', "empty argument"),
        ("Match Colour blue\n", "unsupported Match attribute"),
        ("Match\n", "no argument after keyword"),
        ("Match User\n", "missing Match criteria"),
        ("Match User # comment\n", "missing Match criteria"),
        ("Match All User bob\n", "'all' cannot be combined with other Match attributes"),
        ("Match User bob All\n", "'all' cannot be combined with other Match attributes"),
        ("Match LocalPort http\n", "invalid Match LocalPort"),
        ("Include\n", "no argument after keyword"),
    ],
)
def test_invalid_lines_are_reported_by_line_and_reason(text: str, reason: str) -> None:
    assert reasons(parse(text)) == [(1, reason)]


def test_error_reasons_never_contain_values() -> None:
    parsed = parse("PasswordAuthentication s3cr3t-value\nAuthorizedKeysCommand s3cr3t-cmd\n")
    assert len(parsed.errors) == 2
    assert all("s3cr3t" not in repr(e) for e in parsed.errors)


# --------------------------------------------------------------------------- Match


def test_match_block_overrides_global_for_matching_user_only() -> None:
    text = (
        "PasswordAuthentication yes\nAuthorizedKeysFile .ssh/authorized_keys\n"
        "Match User alice\n  PasswordAuthentication no\n  AuthorizedKeysFile /etc/ssh/keys/%u\n"
    )
    alice, bob, global_ = eff(text, ALICE), eff(text, BOB), eff(text)
    assert (alice.password_authentication, alice.authorized_keys_files) == (False, ("/etc/ssh/keys/%u",))
    assert alice.source_of("password_authentication") == f"{MAIN}:4"
    assert (bob.password_authentication, bob.authorized_keys_files) == (True, (".ssh/authorized_keys",))
    assert global_ == bob


def test_match_values_override_even_when_global_comes_later() -> None:
    # Global lines after a Match block belong to that block (Match lasts until the next Match).
    text = "Match User alice\n  PubkeyAuthentication no\nMatch All\n  PubkeyAuthentication yes\n"
    assert eff(text, ALICE).pubkey_authentication is False
    assert eff(text, BOB).pubkey_authentication is True


def test_first_matching_block_wins() -> None:
    text = "Match User alice\n  PermitRootLogin no\nMatch User a*\n  PermitRootLogin yes\n"
    assert eff(text, ALICE).permit_root_login == "no"
    assert eff(text, MatchContext("anna", frozenset())).permit_root_login == "yes"


def test_match_all_applies_to_global_configuration() -> None:
    text = "Match User bob\n  StrictModes no\nMatch all\n  StrictModes no\n  HostKey /k\n"
    parsed = parse(text)
    # StrictModes is global-only: inside a non-matching block sshd refuses it; under Match All it counts.
    assert reasons(parsed) == [(2, "keyword not allowed within a Match block")]
    result = resolve(parsed, None)
    assert result.strict_modes is False
    assert result.host_keys == ("/k",)


def test_global_only_keyword_in_match_block_is_ignored() -> None:
    text = "Match User alice\n  StrictModes no\n  HostKey /k\n  PasswordAuthentication no\n"
    parsed = parse(text)
    assert reasons(parsed) == [
        (2, "keyword not allowed within a Match block"),
        (3, "keyword not allowed within a Match block"),
    ]
    result = resolve(parsed, ALICE)
    assert result.strict_modes is True and result.host_keys == DEFAULT_HOST_KEYS
    assert result.password_authentication is False


def test_match_user_patterns_negation_and_lists() -> None:
    text = "Match User *,!root,!adm?n\n  PasswordAuthentication no\n"
    assert eff(text, ALICE).password_authentication is False
    assert eff(text, MatchContext("root", frozenset({"root"}))).password_authentication is True
    assert eff(text, MatchContext("admin", frozenset())).password_authentication is True
    assert eff(text, MatchContext("administrator", frozenset())).password_authentication is False
    # Matching is case-sensitive for user names.
    assert eff("Match User ALICE\n  PasswordAuthentication no\n", ALICE).password_authentication is True


def test_match_group_any_group_matches_negated_group_vetoes() -> None:
    text = "Match Group wheel,st*\n  PermitRootLogin no\n"
    assert eff(text, ALICE).permit_root_login == "no"  # staff
    assert eff(text, BOB).permit_root_login == "no"  # wheel
    assert eff(text, MatchContext("carol", frozenset({"carol"}))).permit_root_login == "prohibit-password"
    veto = "Match Group *,!wheel\n  PermitRootLogin no\n"
    assert eff(veto, ALICE).permit_root_login == "no"
    assert eff(veto, BOB).permit_root_login == "prohibit-password"
    assert eff("Match Group *\n  PermitRootLogin no\n", MatchContext("x", frozenset())).permit_root_login == (
        "prohibit-password"
    )


def test_match_criteria_are_anded_and_keywords_case_insensitive() -> None:
    text = "MATCH user=alice GROUP wheel\n  PermitRootLogin no\nmatch USER alice\n  PermitRootLogin yes\n"
    assert eff(text, ALICE).permit_root_login == "yes"  # not in wheel: second block
    assert eff(text, MatchContext("alice", frozenset({"wheel"}))).permit_root_login == "no"


def test_connection_criteria_do_not_match_but_their_key_files_are_conditional() -> None:
    text = (
        "Match Address 10.0.0.0/8 User alice\n  AuthorizedKeysFile /lan/%u\n  PasswordAuthentication no\n"
        "Match Host *.example.org,!bad.example.org\n  AuthorizedKeysFile /host/%u .ssh/authorized_keys\n"
        "Match LocalPort 2222 User bob\n  AuthorizedKeysFile /port/%u\n"
        "Match User alice\n  AuthorizedKeysFile /alice\n"
        "Match RDomain vrf1\n  AuthorizedKeysFile /too-late\n"
    )
    alice = eff(text, ALICE)
    assert alice.password_authentication is True
    assert alice.authorized_keys_files == ("/alice",)
    # /port/%u: the user criterion fails; /too-late: a definite value for alice comes first.
    assert alice.conditional_authorized_keys_files == ("/lan/%u", "/host/%u", ".ssh/authorized_keys")
    bob = eff(text, BOB)
    assert bob.authorized_keys_files == DEFAULT_AUTHORIZED_KEYS_FILES
    assert bob.conditional_authorized_keys_files == ("/host/%u", "/port/%u", "/too-late")
    assert eff(text).conditional_authorized_keys_files == ()


def test_conditional_block_include_is_conditional_too() -> None:
    files = {"/etc/ssh/lan.conf": "AuthorizedKeysFile /lan\nMatch User bob\n  AuthorizedKeysFile /lan-bob\n"}
    text = "Match Address 10.0.0.0/8\n  Include lan.conf\n"
    alice, bob = eff(text, ALICE, files), eff(text, BOB, files)
    assert alice.authorized_keys_files == bob.authorized_keys_files == DEFAULT_AUTHORIZED_KEYS_FILES
    assert alice.conditional_authorized_keys_files == ("/lan",)
    assert bob.conditional_authorized_keys_files == ("/lan", "/lan-bob")


# --------------------------------------------------------------------------- Include


def test_include_relative_to_etc_ssh_glob_order_and_first_value_wins() -> None:
    files = {
        "/etc/ssh/sshd_config.d/20-b.conf": "PasswordAuthentication yes\nAuthorizedKeysFile /b\n",
        "/etc/ssh/sshd_config.d/10-a.conf": "PasswordAuthentication no\n",
        "/etc/ssh/sshd_config.d/README": "PasswordAuthentication yes\n",
    }
    fs = FakeFs(files)
    parsed = parse_sshd_config(
        "Include sshd_config.d/*.conf /etc/ssh/missing/*.conf\nAuthorizedKeysFile /main\n", MAIN, fs
    )
    assert fs.patterns == ["/etc/ssh/sshd_config.d/*.conf", "/etc/ssh/missing/*.conf"]
    assert parsed.errors == ()
    assert parsed.included_files == (
        MAIN,
        "/etc/ssh/sshd_config.d/10-a.conf",
        "/etc/ssh/sshd_config.d/20-b.conf",
    )
    assert parsed.include_patterns == ("/etc/ssh/sshd_config.d/*.conf", "/etc/ssh/missing/*.conf")
    result = resolve(parsed, None)
    assert result.password_authentication is False
    assert result.source_of("password_authentication") == "/etc/ssh/sshd_config.d/10-a.conf:1"
    assert result.authorized_keys_files == ("/b",)
    assert result.included_files == parsed.included_files


def test_include_inside_match_belongs_to_the_block() -> None:
    files = {"/etc/ssh/alice.conf": "PasswordAuthentication no\n"}
    text = "Match User alice\n  Include alice.conf\n"
    assert eff(text, ALICE, files).password_authentication is False
    assert eff(text, BOB, files).password_authentication is True
    assert eff(text, None, files).password_authentication is True


def test_match_inside_included_file_ends_with_that_file() -> None:
    files = {"/etc/ssh/inc.conf": "Match User bob\n  PermitRootLogin no\n"}
    text = "Include inc.conf\nPasswordAuthentication no\n"
    # After the include, the main file is global again: the line applies to everyone.
    assert eff(text, None, files).password_authentication is False
    assert eff(text, ALICE, files).password_authentication is False
    assert eff(text, BOB, files).permit_root_login == "no"
    assert eff(text, ALICE, files).permit_root_login == "prohibit-password"
    # And inside a Match block, the includer's block resumes after the include.
    text2 = "Match User alice\n  Include inc.conf\n  PasswordAuthentication no\n"
    assert eff(text2, ALICE, files).password_authentication is False
    assert eff(text2, BOB, files).password_authentication is True


def test_match_in_file_included_from_non_matching_block_never_matches() -> None:
    files = {"/etc/ssh/inc.conf": "Match All\n  PermitRootLogin no\n"}
    text = "Match User bob\n  Include inc.conf\n"
    assert eff(text, ALICE, files).permit_root_login == "prohibit-password"
    assert eff(text, None, files).permit_root_login == "prohibit-password"
    assert eff(text, BOB, files).permit_root_login == "no"


def test_include_of_same_pattern_twice_is_read_once() -> None:
    fs = FakeFs({"/etc/ssh/x.conf": "PermitRootLogin no\n"})
    parsed = parse_sshd_config("Include x.conf\nMatch User alice\n  Include x.conf\n", MAIN, fs)
    assert fs.patterns == ["/etc/ssh/x.conf"]
    assert parsed.included_files == (MAIN, "/etc/ssh/x.conf")
    assert resolve(parsed, ALICE).permit_root_login == "no"


def test_recursive_include_is_an_error_not_a_hang() -> None:
    parsed = parse(
        "Include /etc/ssh/loop.conf\n", {"/etc/ssh/loop.conf": "Include loop.conf\nPermitRootLogin no\n"}
    )
    assert "recursive include" in [e.reason for e in parsed.errors]
    assert resolve(parsed, None).permit_root_login == "no"


def test_include_depth_limit() -> None:
    files = {f"/etc/ssh/d{i}.conf": f"Include d{i + 1}.conf\n" for i in range(1, 20)}
    files["/etc/ssh/d20.conf"] = "PermitRootLogin no\n"
    parsed = parse("Include d1.conf\n", files)
    assert [(e.file, e.reason) for e in parsed.errors] == [
        ("/etc/ssh/d16.conf", "too many recursive configuration includes")
    ]
    assert len(parsed.included_files) == 17  # main + depths 1..16
    assert resolve(parsed, None).permit_root_login == "prohibit-password"


# --------------------------------------------------------------------------- tokenisers and patterns


def test_strdelim() -> None:
    assert strdelim("Key value") == ("Key", "value")
    assert strdelim("Key=value") == ("Key", "value")
    assert strdelim("Key = value more") == ("Key", "value more")
    assert strdelim("Key==value") == ("Key", "=value")  # only one '=' is a separator
    assert strdelim('"Quoted key" rest') == ("Quoted key", "rest")
    assert strdelim('"unterminated') == (None, None)
    assert strdelim("alone") == ("alone", None)


def test_argv_split() -> None:
    assert argv_split(r"a 'b c' \"d e\\f # x") == ["a", "b c", '"d', "e\\f"]
    assert argv_split(r"a\ b 'it''s' \q") == ["a b", "its", "\\q"]
    assert argv_split("x#y z") == ["x#y", "z"]  # '#' ends the line only at a token start
    with pytest.raises(ValueError):
        argv_split("'open")


def test_match_pattern_list() -> None:
    assert match_pattern_list("alice", "bob,al*") == 1
    assert match_pattern_list("alice", "bob") == 0
    assert match_pattern_list("alice", "*,!alice") == -1
    assert match_pattern_list("alice", "!bob") == 0  # negation alone never matches
    assert match_pattern("a.b", "a?b") and not match_pattern("ab", "a?b")
    assert match_pattern("[x]", "[x]")  # brackets are literal in OpenSSH patterns


@given(st.text(alphabet="ab*?", max_size=8), st.text(alphabet="ab", max_size=8))
def test_match_pattern_agrees_with_fnmatch_without_brackets(pattern: str, string: str) -> None:
    assert match_pattern(string, pattern) == fnmatch.fnmatchcase(string, pattern)


# --------------------------------------------------------------------------- expand_user_path


def alice_path(template: str, home_of: Callable[[str], str | None] | None = None) -> str | None:
    return expand_user_path(template, user="alice", uid=1001, home="/home/alice", home_of=home_of)


def test_expand_user_path_tokens_and_relative_paths() -> None:
    assert alice_path(".ssh/authorized_keys") == "/home/alice/.ssh/authorized_keys"
    assert alice_path("%h/.ssh/k") == "/home/alice/.ssh/k"
    assert alice_path("/etc/ssh/keys/%u-%U") == "/etc/ssh/keys/alice-1001"
    assert alice_path("/k/100%%") == "/k/100%"
    assert alice_path("none") is None and alice_path("None") is None
    assert expand_user_path("k", user="r", uid=0, home="/") == "/k"


def test_expand_user_path_tilde_is_sshds_own_home() -> None:
    assert alice_path("~/.ssh/authorized_keys") == "/root/.ssh/authorized_keys"
    assert alice_path("~") == "/root/"
    assert expand_user_path("~/k", user="a", uid=1, home="/h", sshd_home="/var/root") == "/var/root/k"
    homes = {"bob": "/home/bob"}
    assert alice_path("~bob/keys/%u", homes.get) == "/home/bob/keys/alice"
    with pytest.raises(ValueError):
        alice_path("~bob/keys")
    with pytest.raises(ValueError):
        alice_path("~nobody/keys", homes.get)


@pytest.mark.parametrize("template", ["/k/%d", "/k/%", "%C"])
def test_expand_user_path_rejects_unknown_tokens(template: str) -> None:
    with pytest.raises(ValueError):
        expand_user_path(template, user="a", uid=1, home="/h")
