"""LISTEN/NOTIFY through pgwarden in both pooling modes: multiplexed on one listening backend under transaction pooling."""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import psycopg
import pytest
from psycopg import errors

from tests.clients.support import connect, direct_dsn, pool_mode, unique
from tests.rawwire import Wire, query


def _heard(conn: psycopg.Connection, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
    return [(n.channel, n.payload) for n in conn.notifies(timeout=timeout, stop_after=count)]


def _unlistened(channel: str) -> bool:
    """Did a backend (pgwarden's listening one) last run UNLISTEN of `channel`?"""
    with psycopg.connect(direct_dsn(), autocommit=True) as pg:
        row = pg.execute(
            "select count(*) from pg_stat_activity where query = %s", (f'UNLISTEN "{channel}"',)
        ).fetchone()
        return bool(row and row[0])


def test_several_clients_hear_one_channel(proxy):
    channel = unique("pgw_many")
    clients = [connect(proxy, autocommit=True) for _ in range(3)]
    try:
        for conn in clients:
            conn.execute(f"LISTEN {channel}")
        with connect(proxy, autocommit=True) as sender:
            sender.execute(f"NOTIFY {channel}, 'one'")
            sender.execute("select pg_notify(%s, %s)", (channel, "two"))
            with sender.transaction():  # delivered at COMMIT, as PostgreSQL does
                sender.execute(f"NOTIFY {channel}, 'three'")
        for conn in clients:
            assert _heard(conn, 3) == [(channel, "one"), (channel, "two"), (channel, "three")]
            assert conn.execute("select 'still usable'").fetchone() == ("still usable",)
    finally:
        for conn in clients:
            conn.close()


def test_unlisten_unlisten_all_discard_all_and_disconnect_unsubscribe(proxy):
    a, b = unique("pgw_a"), unique("pgw_b")
    with connect(proxy, autocommit=True) as conn, connect(proxy, autocommit=True) as sender:

        def sent_and_heard(*payloads: str) -> list[tuple[str, str]]:
            for payload in payloads:
                sender.execute(f"NOTIFY {payload.split(':')[0]}, '{payload}'")
            return _heard(conn, len(payloads) + 1, timeout=1.0)

        conn.execute(f"LISTEN {a}")
        conn.execute(f'listen "{b}"')
        assert sent_and_heard(f"{a}:1", f"{b}:1") == [(a, f"{a}:1"), (b, f"{b}:1")]
        conn.execute(f"UNLISTEN {a}")
        assert sent_and_heard(f"{a}:2", f"{b}:2") == [(b, f"{b}:2")]
        conn.execute("UNLISTEN *")
        assert sent_and_heard(f"{a}:3", f"{b}:3") == []
        conn.execute(f"LISTEN {a}")
        conn.execute("DISCARD ALL")
        assert sent_and_heard(f"{a}:4") == []
        conn.execute(f"LISTEN {a}")
        assert sent_and_heard(f"{a}:5") == [(a, f"{a}:5")]
    if pool_mode(proxy) == "transaction":  # the listening backend stops listening once nobody does
        deadline = time.monotonic() + 5
        while not _unlistened(a) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _unlistened(a)


def test_a_notification_waits_for_the_end_of_the_running_statement(proxy):
    channel = unique("pgw_between")
    wire = Wire(proxy.host, proxy.port, "postgres", "postgres")
    try:
        assert [k for k, _ in wire.send(query(f"LISTEN {channel}")).messages] == ["C", "Z"]
        sender = threading.Timer(0.3, lambda: _notify(channel, "during"))
        sender.start()
        running = [k for k, _ in wire.send(query("select pg_sleep(1), 'answer'")).messages]
        sender.join()
        after = [k for k, _ in wire.send(query("select 2")).messages]
        # never inside the answer: after its CommandComplete (PostgreSQL) or its ReadyForQuery (pgwarden)
        assert [k for k in running if k != "A"] == ["T", "D", "C", "Z"] and running.index(
            "A" if "A" in running else "Z"
        ) >= 3
        assert (running + after).count("A") == 1 and [k for k in after if k != "A"] == ["T", "D", "C", "Z"]
        assert "A" not in after[1:]
        wire.send(query("BEGIN"))
        _notify(channel, "in a transaction")
        time.sleep(0.3)
        inside = [k for k, _ in wire.send(query("select 3")).messages]
        assert "A" not in inside  # held while the client's transaction is open
        ended = [k for k, _ in wire.send(query("COMMIT")).messages]
        later = [k for k, _ in wire.send(query("select 4")).messages]
        assert ended == ["C", "A", "Z"] and "A" not in later  # before the ReadyForQuery, as PostgreSQL sends it
    finally:
        wire.close()


def _notify(channel: str, payload: str) -> None:
    with psycopg.connect(direct_dsn(), autocommit=True) as pg:
        pg.execute("select pg_notify(%s, %s)", (channel, payload))


def _silent(conn: psycopg.Connection, channel: str, marker: str) -> list[tuple[str, str]]:
    """What `conn` hears of a notification on `channel` and then one on `marker` (heard if it listens)."""
    _notify(channel, "x")
    _notify(marker, "y")
    return _heard(conn, 2, timeout=1.0)


def test_listen_and_unlisten_in_a_transaction_block_apply_at_commit(proxy):
    """As PostgreSQL: a LISTEN or UNLISTEN sent in a transaction block (psycopg's default, not in
    autocommit) takes effect when the block commits, and never if it rolls back or had failed."""
    channel, marker = unique("pgw_block"), unique("pgw_mark")
    with connect(proxy) as conn:
        conn.execute(f"LISTEN {marker}")
        conn.commit()
        conn.execute(f"LISTEN {channel}")
        conn.rollback()
        assert _silent(conn, channel, marker) == [(marker, "y")]  # rolled back: never listened

        conn.execute(f"LISTEN {channel}")
        conn.commit()
        _notify(channel, "after")
        assert _heard(conn, 1) == [(channel, "after")]

        conn.execute(f"UNLISTEN {channel}")
        conn.rollback()
        _notify(channel, "still")
        assert _heard(conn, 1) == [(channel, "still")]  # the UNLISTEN was rolled back

        conn.execute("select 1")
        conn.execute(f"UNLISTEN {channel}")
        conn.execute(f"LISTEN {channel}")
        conn.execute(f"UNLISTEN {channel}")
        conn.commit()
        assert _silent(conn, channel, marker) == [(marker, "y")]  # the last of them counts

        conn.execute(f"LISTEN {channel}")
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 1/0")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute(f"LISTEN {channel}")
        conn.commit()  # (of a failed block: PostgreSQL rolls it back)
        assert _silent(conn, channel, marker) == [(marker, "y")]
        assert conn.execute("select 'usable'").fetchone() == ("usable",)


def test_listen_in_a_savepoint(proxy):
    """Transaction pooling refuses LISTEN inside a savepoint (it cannot undo it at ROLLBACK TO); the
    transaction fails as on an error. In session pooling the client's own backend listens."""
    channel = unique("pgw_save")
    with connect(proxy) as conn:
        conn.execute("savepoint s")
        if pool_mode(proxy) == "transaction":
            with pytest.raises(errors.FeatureNotSupported) as info:
                conn.execute(f"LISTEN {channel}")
            assert "savepoint" in info.value.diag.message_primary and info.value.diag.message_hint
            with pytest.raises(errors.InFailedSqlTransaction):
                conn.execute("select 1")
        else:
            conn.execute(f"LISTEN {channel}")
            conn.execute("rollback to savepoint s")
        conn.rollback()
        conn.autocommit = True
        conn.execute(f"LISTEN {channel}")
        _notify(channel, "after")
        assert _heard(conn, 1) == [(channel, "after")]


def test_asyncpg_add_listener(proxy):
    channel = unique("pgw_asyncpg")

    async def scenario() -> list[str]:
        got: list[str] = []
        conn = await asyncpg.connect(proxy.url())
        other = await asyncpg.connect(proxy.url())
        try:
            await conn.add_listener(channel, lambda _c, _pid, _ch, payload: got.append(payload))
            await other.execute(f"NOTIFY {channel}, 'from asyncpg'")
            await other.execute("select pg_notify($1, $2)", channel, "with parameters")
            for _ in range(50):
                if len(got) == 2:
                    break
                await asyncio.sleep(0.1)
            assert await conn.fetchval("select 7") == 7
        finally:
            await conn.close()
            await other.close()
        return got

    assert asyncio.run(scenario()) == ["from asyncpg", "with parameters"]


def test_listen_through_the_extended_protocol(proxy):
    channel = unique("pgw_extended")
    with connect(proxy, autocommit=True) as conn:
        conn.execute(f"LISTEN {channel}", prepare=True)
        conn.execute(f"LISTEN {channel}", prepare=True)  # a named statement, bound again
        _notify(channel, "prepared")
        assert _heard(conn, 1) == [(channel, "prepared")]
        conn.execute(f"UNLISTEN {channel}", prepare=True)
        _notify(channel, "unheard")
        assert _heard(conn, 1, timeout=0.5) == []
        assert conn.execute("select %s::int", (8,), prepare=True).fetchone() == (8,)


def test_the_listening_backend_is_replaced_when_lost(proxy, pg):
    if pool_mode(proxy) != "transaction":
        pytest.skip("session mode: the client's own backend listens")
    channel = unique("pgw_lost")
    with connect(proxy, autocommit=True) as conn:
        conn.execute(f"LISTEN {channel}")
        killed = pg.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where query = %s", (f'LISTEN "{channel}"',)
        ).fetchall()
        assert killed == [(True,)]
        heard: list[tuple[str, str]] = []
        deadline = time.monotonic() + 10
        while not heard and time.monotonic() < deadline:  # notifications sent while it was down are lost
            _notify(channel, "again")
            heard = _heard(conn, 1, timeout=0.3)
        assert heard == [(channel, "again")]
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
