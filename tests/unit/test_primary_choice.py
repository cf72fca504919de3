"""The primary choice of proxy/routing/election.py: highest timeline, ties keep the current one, fencing."""

from __future__ import annotations

from proxy.routing.election import Choice, Writable, choose_primary


def test_no_writable_candidate_no_primary() -> None:
    assert choose_primary([], current="a") == Choice(None, 0, frozenset())


def test_single_writable_is_chosen() -> None:
    assert choose_primary([Writable("b", 1)], current=None) == Choice("b", 1, frozenset())


def test_highest_timeline_wins_over_the_current_one() -> None:
    choice = choose_primary([Writable("old", 1), Writable("promoted", 2)], current="old")
    assert choice == Choice("promoted", 2, frozenset({"old"}))


def test_tie_keeps_current_else_first_given() -> None:
    both = [Writable("a", 3), Writable("b", 3)]
    assert choose_primary(both, current="b") == Choice("b", 3, frozenset({"a"}))
    assert choose_primary(both, current="gone").primary == "a"
    assert choose_primary(both, current=None).primary == "a"


def test_current_on_a_lower_timeline_loses() -> None:
    choice = choose_primary([Writable("a", 2), Writable("b", 5), Writable("c", 4)], current="c")
    assert choice.primary == "b"
    assert choice.fenced == frozenset({"a", "c"})


def test_floor_fences_an_old_primary_left_alone() -> None:
    """The promoted primary went down; the old one, back on timeline 1, must not take writes."""
    assert choose_primary([Writable("old", 1)], current="promoted", floor=2) == Choice(None, 2, frozenset({"old"}))
    assert choose_primary([Writable("promoted", 2)], current=None, floor=2).primary == "promoted"
    assert choose_primary([Writable("newer", 3)], current=None, floor=2) == Choice("newer", 3, frozenset())
