"""QueryStats: statements grouped by fingerprint, p95 from recent durations, bounded memory."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.ops import stats
from proxy.ops.stats import COLUMNS, QueryStats
from proxy.wire import protocol


def by_query(qs: QueryStats) -> dict[str, dict[str, object]]:
    return {row[-1]: dict(zip(COLUMNS, row)) for row in qs.rows(top=100)}


def test_literals_share_a_fingerprint_with_rows_refusals_and_cache_hits():
    observed: list[float] = []
    qs = QueryStats(observed.extend)
    for i in range(1, 101):
        qs.observe(f"select * from t where id = {i}", i / 10_000, rows=2, cached=i > 1)
    qs.refusal("select * from t where id = 7")
    qs.observe("select now()", 0.6)
    qs.flush()
    rows = by_query(qs)
    assert len(rows) == 2 and len(observed) == 101  # the refusal feeds no latency
    first = qs.rows()[0]
    assert "now()" in first[-1]  # one 600 ms call outranks 100 totalling 505 ms
    ids = next(r for q, r in rows.items() if "from t" in q)
    assert (ids["calls"], ids["rows"], ids["refusals"], ids["cache_hits"]) == (100, 200, 1, 99)
    assert (ids["total_ms"], ids["mean_ms"], ids["p95_ms"], ids["max_ms"]) == (505.0, 5.05, 9.6, 10.0)
    assert ids["query"] == "select * from t where id = ?"  # literals are redacted


def test_memory_is_capped_by_evicting_the_least_called(monkeypatch):
    monkeypatch.setattr(stats, "MAX_FINGERPRINTS", 3)
    qs = QueryStats()
    for _ in range(3):
        qs.observe("select a from t", 0.001)
        qs.observe("select b from t", 0.001)
    qs.observe("select c from t", 0.001)
    qs.observe("select d from t", 0.001)  # evicts c, the least called
    qs.flush()
    kept = " ".join(by_query(qs))
    assert len(qs.by_fingerprint) == 3
    assert " a " in kept and " b " in kept and " d " in kept and " c " not in kept


def test_a_message_shaped_on_the_hot_path_is_not_shaped_again_at_flush(monkeypatch):
    shapes = stats.Shapes(cap=3)
    qs = QueryStats(shapes=shapes)
    msgs = [protocol.query(f"select * from t1 where id = {i}") for i in range(5)]  # (t1: never `known`)
    for msg in msgs[:2]:
        assert shapes.of(msg) == (stats.statement_text(msg), "select * from t1 where id = 0")  # (as the cache does)
    shaped: list[str] = []
    real = stats.shaped
    monkeypatch.setattr(stats, "shaped", lambda sql: shaped.append(sql) or real(sql))
    for msg in msgs[:2]:
        qs.observe(msg, 0.001)
    qs.flush()
    assert shaped == []  # (taken on the hot path; a flush starts a new generation)
    shapes.of(msgs[1])  # (used again: kept)
    qs.flush()  # (msgs[0] is forgotten now)
    for msg in msgs:
        qs.observe(msg, 0.001)
    qs.flush()
    assert len(shaped) == 4 and stats.statement_text(msgs[1]) not in shaped
    assert by_query(qs)["select * from t1 where id = ?"]["calls"] == 7


def test_a_text_that_differs_only_in_its_digits_is_neither_decoded_nor_shaped(monkeypatch):
    qs = QueryStats()
    qs.observe(protocol.query("select * from t where id = 4711 limit 21"), 0.001)
    qs.flush()
    shaped: list[str] = []
    real = stats.shaped
    monkeypatch.setattr(stats, "shaped", lambda sql: shaped.append(sql) or real(sql))
    monkeypatch.setattr(stats, "statement_text", lambda msg: shaped.append(msg) or protocol.decode_query(msg))
    for i in range(1000, 1100):
        qs.observe(protocol.query(f"select * from t where id = {i} limit 30"), 0.001)
    qs.observe(protocol.query("select * from t where id = 47 limit 21"), 0.001)  # (other run lengths: shaped)
    qs.flush()
    assert len(shaped) == 2  # decoded and shaped once
    assert by_query(qs)["select * from t where id = ? limit ?"]["calls"] == 102


_PIECES = ["select ", "insert ", "x", "t", "_", ".", " ", "=", "1", "23", "4567890123", "'", '"', "é", "Ⅸ", "$", "from"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=14), st.randoms(use_true_random=False))
def test_known_shapes_are_the_literal_key_of_every_text_with_the_same_digit_key(pieces, rnd):
    """`Shapes.known` is exact: a text that differs from a shaped one only in its digits gets its own
    `literal_key`, or None (shaped then), never another's shape."""
    text = "".join(pieces)
    other = "".join(rnd.choice("0123456789") if c.isdigit() and c.isascii() else c for c in text)
    shapes = stats.Shapes()
    shapes.of(protocol.query(text))
    known = shapes.known(protocol.query(other))
    assert known is None or known == stats.literal_key(other)
    assert (known is None) == (not stats.shaped(text)[1])
