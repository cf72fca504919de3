"""No silent loss: block refuses and waits, drop counts, a failing sink is retried, stop drains or spills."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from proxy.audit.trail import Audit, AuditConfig, AuditError, AuditUnavailable, verify_files
from tests.audit.trail import numbered

UNWRITABLE = Path("/proc/pgwarden-no/audit.jsonl")


def run(coro):
    return asyncio.run(coro)


def test_block_with_an_unwritable_path_refuses_then_put_times_out():
    async def body() -> None:
        audit = Audit(AuditConfig(path=UNWRITABLE, block_timeout=0.3))
        await audit.start()
        assert not audit.writable() and "pgwarden-no" in audit.stats["last_error"]
        assert audit.offer(numbered(1)[0]) is False
        started = time.monotonic()
        with pytest.raises(AuditUnavailable, match="within 0.3s.*pgwarden-no"):
            await audit.put(numbered(1)[0])
        assert 0.3 <= time.monotonic() - started < 1.5
        assert audit.stats["queued"] == 0 and audit.stats["dropped"] == 0
        await audit.stop()

    run(body())


def test_strict_start_raises_a_clear_error():
    async def body() -> None:
        with pytest.raises(AuditError, match="audit sink unavailable: /proc/pgwarden-no/audit.jsonl"):
            await Audit(AuditConfig(path=UNWRITABLE)).start(strict=True)

    run(body())


def test_drop_counts_what_it_loses():
    async def body() -> Audit:
        audit = Audit(AuditConfig(path=UNWRITABLE, on_failure="drop"))
        await audit.start()
        assert all(audit.offer(r) for r in numbered(25))
        await audit.stop()
        return audit

    stats = run(body()).stats
    assert stats["dropped"] == 25 and stats["written"] == 0 and stats["queued"] == 0


def test_a_full_queue_refuses_in_block_and_drops_in_drop(tmp_path):
    block = Audit(AuditConfig(path=tmp_path / "b.jsonl", queue_size=10))  # writer not started: nothing drains
    assert [block.offer(r) for r in numbered(11)] == [True] * 10 + [False]
    drop = Audit(AuditConfig(path=tmp_path / "d.jsonl", queue_size=10, on_failure="drop"))
    assert all(drop.offer(r) for r in numbered(15))
    assert drop.stats["dropped"] == 5 and drop.stats["queued"] == 10


def test_a_failing_sink_holds_records_until_it_recovers(tmp_path):
    """/dev/full takes the open and fails every write (ENOSPC): records accepted before the
    failure are kept, new ones are refused, and once the path is a real file again every
    accepted record is written, in order, chained."""
    path = tmp_path / "audit.jsonl"
    path.symlink_to("/dev/full")

    async def body() -> list[int]:
        audit = Audit(AuditConfig(path=path, block_timeout=5))
        await audit.start()
        accepted = [r for r in numbered(20) if audit.offer(r)]
        assert len(accepted) == 20
        while not audit.stats["failures"]:
            await asyncio.sleep(0.01)
        assert "No space left" in audit.stats["last_error"] and not audit.writable()
        assert audit.offer(numbered(1, 20)[0]) is False
        late = asyncio.get_running_loop().create_task(audit.put(numbered(1, 20)[0]))
        await asyncio.sleep(0.2)
        path.unlink()  # the operator frees the disk
        await late  # put waited for the recovery instead of failing
        await audit.stop()
        return [json.loads(line)["seq"] for line in path.read_text().splitlines()]

    assert run(body()) == list(range(1, 22))
    assert verify_files([path], None).ok


def test_stop_with_a_dead_sink_spills_every_accepted_record_to_the_log(tmp_path, caplog):
    path = tmp_path / "audit.jsonl"
    path.symlink_to("/dev/full")

    async def body() -> None:
        audit = Audit(AuditConfig(path=path, block_timeout=0.3))
        await audit.start()
        for r in numbered(7):
            assert audit.offer(r)
        await audit.stop()

    with caplog.at_level(logging.ERROR, logger="pgwarden.audit"):
        run(body())
    spilled = [
        m.split("audit record not written: ", 1)[1]
        for m in caplog.messages
        if m.startswith("audit record not written: ")
    ]
    assert [json.loads(line)["seq"] for line in spilled] == list(range(1, 8))
    assert all("secret-" not in line for line in spilled)  # redacted there too


def test_the_writer_keeps_up_and_loses_nothing(tmp_path):
    """Throughput of the whole writer (redaction, chain, JSON, file) with the loop offering as
    fast as it can; the rate is printed (docs/audit.md quotes it)."""
    path = tmp_path / "audit.jsonl"
    records = numbered(20_000)

    async def body() -> float:
        audit = Audit(AuditConfig(path=path, queue_size=100_000))
        await audit.start()
        started = time.perf_counter()
        for i, r in enumerate(records):
            assert audit.offer(r)
            if i % 1000 == 0:
                await asyncio.sleep(0)  # the session code yields between statements
        await audit.stop()
        return len(records) / (time.perf_counter() - started)

    rate = run(body())
    print(f"audit writer: {rate:,.0f} records/s")
    assert verify_files([path], None).records == 20_000
    assert rate > 2_000
