"""Compact statement records (proxy/audit/rows.py): what the proxy queues per round trip becomes, in the writer,
the same records in the same order, and the chain over them verifies."""

from __future__ import annotations

from pathlib import Path

from proxy.audit.process import AuditProcess, decode_batch, encode_batch
from proxy.audit.rows import Finished, Started
from proxy.audit.trail import Audit, AuditConfig, verify_files

WHO = {"session": 7, "client": "10.0.0.7:5000", "user": "ann", "database": "shop", "roles": [], "bypass": True}


def started(sql: str, stamp: float = 1764900000.25, **decision: object) -> Started:
    return Started(WHO, stamp, sql, False, decision or None, None)


def test_a_round_trip_becomes_the_records_the_proxy_used_to_build():
    rewritten = {"decision": "rewritten", "tables": ["public.t"], "masked": [], "rewritten": "select 1"}
    line = encode_batch([Finished([started("select 'x'"), started("select 2", **rewritten)], 0.8, 1, "00000")])
    first, second = decode_batch(line)
    assert first == {
        **WHO,
        "event": "statement",
        "time": 1764900000.25,
        "protocol": "extended",
        "tenant": None,
        "sql": "select 'x'",  # redacted by the writer, as before
        "route": "primary",
        "decision": "allowed",
        "duration_ms": 0.8,
        "rows": 1,
        "sqlstate": "00000",
    }
    assert second["decision"] == "rewritten" and second["tables"] == ["public.t"] and second["rewritten"] == "select 1"
    unfinished = decode_batch(encode_batch([Finished([started("select 3")], None, None, None, completed=False)]))
    assert unfinished[0]["completed"] is False and unfinished[0]["duration_ms"] is None


def test_an_answer_from_the_cache_is_the_same_record_with_route_cache():
    rewritten = {"decision": "rewritten", "tables": ["public.t"], "masked": [], "rewritten": "select 1"}
    line = encode_batch(
        [Finished([started("select 2"), started("select 2", route="cache", **rewritten)], 0.0, 3, "00000")]
    )
    ran, cached = decode_batch(line)
    assert (ran["route"], cached["route"]) == ("primary", "cache")
    assert {**cached, "route": "primary"} == {**ran, **rewritten}


def test_records_queued_in_the_same_tick_keep_their_order_and_chain(tmp_path: Path):
    entries: list = [{"event": "login", "session": 7, "time": 1764900000.0}]
    entries += [
        Finished([started(f"select {i} as c{i}", 1764900000.0 + i) for i in range(n, n + 3)], 1.0, 1, "00000")
        for n in (0, 3)
    ]
    entries += [{"event": "logout", "session": 7, "time": 1764900009.0}]
    trail = Audit(AuditConfig(path=tmp_path / "audit.jsonl"))
    lines = trail.form(decode_batch(encode_batch(entries)))
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(line + "\n" for _, line in lines))
    assert [seq for seq, _ in lines] == list(range(1, 9))
    sql = [line.split('"sql":"')[1].split('"')[0] for _, line in lines[1:-1]]
    assert sql == [f"select ? as c{i}" for i in range(6)]  # in the order sent, across the two round trips
    assert '"event":"login"' in lines[0][1] and '"event":"logout"' in lines[-1][1]
    assert all('"kind":"select"' in line for _, line in lines[1:-1])  # (docs/audit.md's field, from the text)
    assert '"kind"' not in lines[0][1]
    result = verify_files([path], None)
    assert result.ok and result.records == 8


def test_the_queue_counts_records_not_round_trips():
    audit = AuditProcess(AuditConfig(queue_size=10, on_failure="block"))
    assert audit.offer(Finished([started(f"select {i}") for i in range(9)], 1.0, 1, "00000"))
    assert audit.held == 9 and audit.accepting()
    assert audit.offer({"event": "login"})
    assert audit.held == 10 and not audit.accepting()  # full at queue_size records, though only two entries
    assert not audit.offer({"event": "statement", "sql": "select 10"})  # block: refused, not queued
    assert audit.offer({"event": "logout"}, force=True) and audit.held == 11 and len(audit.queue) == 3
