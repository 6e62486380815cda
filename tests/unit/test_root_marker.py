"""The `root` marker (tests/conftest.py): a reason is mandatory; without root the test is skipped
with that reason, as root it runs."""

from __future__ import annotations

import pytest

CONFTEST = "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n"
INI = "[pytest]\nmarkers =\n    root(reason): needs root\n"


@pytest.fixture
def session(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    return pytester


@pytest.mark.parametrize("euid", [0, 1000])
def test_skipped_with_its_reason_unless_root(
    session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, euid: int
) -> None:
    session.makepyfile(
        """
        import pytest

        @pytest.mark.root(reason="chowns to another uid")
        def test_needs_root():
            pass

        @pytest.mark.root("starts sshd")
        def test_positional_reason():
            pass

        def test_plain():
            pass
        """
    )
    monkeypatch.setattr("os.geteuid", lambda: euid)
    result = session.runpytest("-rs")
    if euid == 0:
        result.assert_outcomes(passed=3)
    else:
        result.assert_outcomes(passed=1, skipped=2)
        result.stdout.fnmatch_lines(
            ["*SKIPPED*needs root: chowns to another uid*", "*SKIPPED*needs root: starts sshd*"]
        )


@pytest.mark.parametrize("marker", ["pytest.mark.root", 'pytest.mark.root(reason="")'])
def test_a_reason_is_mandatory(session: pytest.Pytester, marker: str) -> None:
    session.makepyfile(f"import pytest\n\n@{marker}\ndef test_x():\n    pass\n")
    result = session.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*@pytest.mark.root needs a reason*test_x*"])


def test_module_marker_covers_every_test(session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    session.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.root(reason="runs sshd -T")

        def test_a():
            pass

        def test_b():
            pass
        """
    )
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = session.runpytest("-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*needs root: runs sshd -T*"])
