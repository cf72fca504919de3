"""The audit writer process through a real pgwarden: it survives signals meant for the proxy, is
restarted when it dies, and never outlives the proxy."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from tests.ops.test_audit import audited, records, verify  # noqa: F401 (fixture)
from tests.policy.conftest import connect, policy_proxy, shop_db  # noqa: F401 (fixture)


def writer_pid(proxy) -> int:
    """The audit writer: the proxy's child running proxy.audit.process."""
    for _ in range(100):
        for task in Path(f"/proc/{proxy.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                if b"proxy.audit.process" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return int(pid)
        time.sleep(0.05)
    raise AssertionError("no audit writer process under the proxy")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_a_killed_writer_is_restarted_and_the_chain_continues(audited):
    proxy, path = audited
    with connect(proxy, "acme_app") as conn:
        conn.execute("select name from customers where id = 1")
    first = writer_pid(proxy)
    os.kill(first, signal.SIGKILL)
    assert wait_gone(first)
    with connect(proxy, "postgres") as conn:
        started = time.monotonic()
        # block mode: the statement waits (block_timeout, 5 s) for the new writer, then runs
        conn.execute("select 'after the restart'")
        assert time.monotonic() - started < 5
    assert writer_pid(proxy) != first
    proxy.stop()
    assert "audit writer process exited with code -9" in proxy.logs()
    got = records(path)
    assert any("after the restart" in (r.get("sql") or "") or r.get("sql") == "select ?" for r in got)
    result = verify(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_signals_for_the_proxy_do_not_reach_the_writer_and_nothing_is_lost(audited):
    proxy, path = audited
    child = writer_pid(proxy)
    os.kill(child, signal.SIGTERM)
    os.kill(child, signal.SIGINT)
    os.kill(child, signal.SIGHUP)
    time.sleep(0.2)
    assert alive(child)
    with connect(proxy, "postgres") as conn:
        for i in range(500):
            conn.execute(f"select {i}")
    proxy.stop(signal.SIGINT)
    assert wait_gone(child)
    statements = [r for r in records(path) if r["event"] == "statement"]
    assert len(statements) == 500
    assert verify(path).returncode == 0


def test_a_killed_proxy_leaves_no_writer_behind_and_its_records_written(audited):
    proxy, path = audited
    child = writer_pid(proxy)
    with connect(proxy, "postgres") as conn:
        for i in range(50):
            conn.execute(f"select {i}")
        time.sleep(0.3)  # the proxy hands records over within ~10 ms
    proxy.proc.kill()
    assert wait_gone(child), "the writer outlived the proxy"
    proxy.stop()
    statements = [r for r in records(path) if r["event"] == "statement"]
    assert len(statements) == 50
    assert verify(path).returncode == 0


@pytest.mark.parametrize("text", ["select 'caf\xe9'", "select 1 -- \udcff undecodable byte"])
def test_text_the_fast_encoder_refuses_still_reaches_the_trail(text):
    from proxy.audit.process import decode_batch, encode_batch

    assert decode_batch(encode_batch([{"sql": text, "n": 2**70}])) == [{"sql": text, "n": 2**70}]


def test_statements_wait_for_a_failing_trail_then_are_refused(shop_db, tmp_path):
    proxy = policy_proxy(
        tmp_path / "w", "transaction", audit={"path": "/proc/pgwarden-no/audit.jsonl", "block_timeout": 1.0}
    )
    try:
        with connect(proxy, "postgres") as conn:
            started = time.monotonic()
            with pytest.raises(psycopg.errors.IoError):
                conn.execute("select 1")
            assert 1.0 <= time.monotonic() - started < 4
            with pytest.raises(psycopg.errors.IoError) as info:  # the connection stays usable
                conn.execute("select 2")
            assert "audit trail cannot record it" in str(info.value)
    finally:
        proxy.stop()


def test_a_failing_sink_never_hangs_the_stop_nor_leaves_the_writer_behind(tmp_path):
    """Records the trail cannot write are spilled to the log at stop; stop ends; the child exits."""
    import asyncio

    from proxy.audit.process import AuditProcess
    from proxy.audit.trail import AuditConfig

    async def run() -> tuple[float, int | None]:
        trail = AuditProcess(AuditConfig(path="/proc/pgwarden-no/audit.jsonl", queue_size=10, block_timeout=0.3))
        await trail.start()
        child = trail._proc.pid
        for i in range(3000):  # refusals, logins, finished statements: kept whatever the state
            trail.offer({"event": "statement", "sql": f"select {i}"}, force=True)
        started = time.monotonic()
        await trail.stop()
        return time.monotonic() - started, child

    took, child = asyncio.run(run())
    assert took < 15
    assert wait_gone(child, 5)


def test_a_batch_cut_short_loses_only_itself(tmp_path):
    """The proxy died in the middle of a write: the writer keeps every whole batch before it."""
    import subprocess
    import sys

    from proxy.audit.process import encode_batch
    from proxy.audit.trail import AuditConfig
    from tests.harness import ROOT

    path = tmp_path / "audit.jsonl"
    config = AuditConfig(path=path).model_dump_json()
    whole = encode_batch([{"event": "statement", "sql": f"select {i}"} for i in range(500)])
    writer = subprocess.run(
        [sys.executable, "-m", "proxy.audit.process", config, "text", "info", "lenient"],
        input=whole + whole[:10],
        capture_output=True,
        cwd=ROOT,
        timeout=30,
    )
    assert writer.returncode == 0, writer.stderr
    assert len(path.read_text().splitlines()) == 500 and b"cut short" in writer.stderr
