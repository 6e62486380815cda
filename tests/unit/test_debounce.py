"""The pure per-key debouncer: times are passed in, so every case is exact."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.daemon.debounce import Debouncer


def test_a_burst_on_one_key_is_due_once_after_quiet() -> None:
    d: Debouncer[str] = Debouncer(0.25)
    for t in (0.0, 0.1, 0.2, 0.3):
        d.touch("a", t)
    assert d.next_deadline() == pytest.approx(0.55)
    assert d.pop_due(0.54) == set()
    assert d.pop_due(0.55) == {"a"}
    assert d.pop_due(10.0) == set()
    assert d.next_deadline() is None
    assert len(d) == 0


def test_keys_are_independent_and_batched_when_due_together() -> None:
    d: Debouncer[str] = Debouncer(0.25)
    d.touch("a", 0.0)
    d.touch("b", 0.2)
    assert d.pop_due(0.3) == {"a"}
    assert d.next_deadline() == pytest.approx(0.45)
    d.touch("c", 0.21)
    assert d.pop_due(0.5) == {"b", "c"}


def test_max_wait_bounds_a_never_ending_burst() -> None:
    d: Debouncer[str] = Debouncer(0.25, max_wait_s=1.0)
    t = 0.0
    due: list[float] = []
    while t < 3.0:
        d.touch("a", t)
        if d.pop_due(t):
            due.append(t)
        t = round(t + 0.1, 10)
    assert due and due[0] == pytest.approx(1.0)
    assert len(due) == 2  # at 1.0 and again 1.0 s after the next burst began


def test_a_touch_after_pop_starts_a_new_burst() -> None:
    d: Debouncer[str] = Debouncer(0.25, max_wait_s=1.0)
    d.touch("a", 0.0)
    assert d.pop_due(0.25) == {"a"}
    d.touch("a", 5.0)
    assert d.next_deadline() == pytest.approx(5.25)


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError):
        Debouncer(-1.0)
    with pytest.raises(ValueError):
        Debouncer(1.0, max_wait_s=0.5)


@given(
    st.lists(st.tuples(st.sampled_from("abcde"), st.floats(0, 10, allow_nan=False)), max_size=60),
    st.floats(0.01, 2.0),
)
def test_each_key_is_due_exactly_when_quiet_long_enough(
    touches: list[tuple[str, float]], quiet: float
) -> None:
    d: Debouncer[str] = Debouncer(quiet)
    touches.sort(key=lambda kt: kt[1])
    for key, t in touches:
        d.touch(key, t)
    last: dict[str, float] = {}
    for key, t in touches:
        last[key] = t
    end = max((t for _, t in touches), default=0.0)
    # At the last touch, a key is due iff its own last touch is at least `quiet` earlier.
    due = d.pop_due(end)
    assert due == {k for k, t in last.items() if t + quiet <= end}
    rest = d.pop_due(end + quiet)
    assert due | rest == set(last) and not (due & rest)
    assert d.next_deadline() is None
