"""tests/fanout.py: the same list, in the same order, as a plain comprehension."""

from __future__ import annotations

from functools import partial

from tests.fanout import fan_out


def _scaled(x: int, by: int) -> tuple[int, int]:
    return x, x * by


def test_fan_out_keeps_every_result_in_order() -> None:
    items = list(range(-50, 53))
    for every in (1, 2, 4, 7, 200):
        assert fan_out(partial(_scaled, by=3), items, traced_every=every) == [(x, 3 * x) for x in items]
    assert fan_out(abs, []) == []
