"""proxy.changes.pgoutput: every message round-trips through an independent encoder; random bytes raise only ProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.changes import pgoutput as po
from proxy.wire.protocol import ProtocolError

# --- an encoder written from the protocol documentation, independent of the decoder ------------


def _cstr(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def _ts(seconds: float) -> bytes:
    return struct.pack("!q", po.unix_to_pg_time(seconds))


def _tuple(row: tuple[po.Datum, ...]) -> bytes:
    out = struct.pack("!H", len(row))
    for d in row:
        out += d.kind.encode() + (struct.pack("!I", len(d.data)) + d.data if d.kind in "tb" else b"")
    return out


def encode(m: po.PgoutputMessage) -> bytes:
    if isinstance(m, po.Begin):
        return b"B" + struct.pack("!Q", m.final_lsn) + _ts(m.commit_time) + struct.pack("!I", m.xid)
    if isinstance(m, po.Commit):
        return b"C" + struct.pack("!BQQ", m.flags, m.commit_lsn, m.end_lsn) + _ts(m.commit_time)
    if isinstance(m, po.Origin):
        return b"O" + struct.pack("!Q", m.commit_lsn) + _cstr(m.name)
    if isinstance(m, po.Relation):
        cols = b"".join(
            struct.pack("!B", int(c.is_key)) + _cstr(c.name) + struct.pack("!Ii", c.type_oid, c.type_modifier)
            for c in m.columns
        )
        head = struct.pack("!I", m.relation_id) + _cstr(m.schema) + _cstr(m.table) + m.replica_identity.encode()
        return b"R" + head + struct.pack("!H", len(m.columns)) + cols
    if isinstance(m, po.Type):
        return b"Y" + struct.pack("!I", m.type_oid) + _cstr(m.schema) + _cstr(m.name)
    if isinstance(m, po.Insert):
        return b"I" + struct.pack("!I", m.relation_id) + b"N" + _tuple(m.new)
    if isinstance(m, po.Update):
        old = b"" if m.old is None or m.old_kind is None else m.old_kind.encode() + _tuple(m.old)
        return b"U" + struct.pack("!I", m.relation_id) + old + b"N" + _tuple(m.new)
    if isinstance(m, po.Delete):
        return b"D" + struct.pack("!I", m.relation_id) + m.old_kind.encode() + _tuple(m.old)
    if isinstance(m, po.Truncate):
        options = int(m.cascade) | int(m.restart_identity) << 1
        return (
            b"T"
            + struct.pack("!IB", len(m.relation_ids), options)
            + b"".join(struct.pack("!I", r) for r in m.relation_ids)
        )
    assert isinstance(m, po.Message)
    return (
        b"M"
        + struct.pack("!BQ", int(m.transactional), m.lsn)
        + _cstr(m.prefix)
        + struct.pack("!I", len(m.content))
        + m.content
    )


# --- strategies ---------------------------------------------------------------------------------

u8, u32, u64 = st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
times = st.integers(-(2**50), 2**52).map(po.pg_time_to_unix)  # microseconds exact in a float
names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
datum = st.one_of(
    st.sampled_from(["n", "u"]).map(po.Datum),
    st.builds(po.Datum, st.sampled_from(["t", "b"]), st.binary(max_size=20)),
)
rows = st.lists(datum, max_size=5).map(tuple)
column = st.builds(po.Column, st.booleans(), names, u32, st.integers(-(2**31), 2**31 - 1))
old_pair = st.one_of(st.just((None, None)), st.tuples(st.sampled_from(["K", "O"]), rows))

messages = st.one_of(
    st.builds(po.Begin, u64, times, u32),
    st.builds(po.Commit, u8, u64, u64, times),
    st.builds(po.Origin, u64, names),
    st.builds(po.Relation, u32, names, names, st.sampled_from(list("dnfi")), st.lists(column, max_size=4).map(tuple)),
    st.builds(po.Type, u32, names, names),
    st.builds(po.Insert, u32, rows),
    old_pair.flatmap(lambda old: st.builds(po.Update, u32, st.just(old[0]), st.just(old[1]), rows)),
    st.builds(po.Delete, u32, st.sampled_from(["K", "O"]), rows),
    st.builds(po.Truncate, st.lists(u32, max_size=6).map(tuple), st.booleans(), st.booleans()),
    st.builds(po.Message, st.booleans(), u64, names, st.binary(max_size=30)),
)


@settings(max_examples=600, deadline=None)
@given(messages)
def test_every_message_round_trips(m: po.PgoutputMessage) -> None:
    payload = encode(m)
    assert po.decode_message(payload) == m
    expected_rel = m.relation_id if isinstance(m, po.Insert | po.Update | po.Delete) else None
    assert po.changed_relation(payload) == expected_rel


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_a_truncated_or_padded_message_is_a_protocol_error(m: po.PgoutputMessage, data: st.DataObject) -> None:
    payload = encode(m)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(ProtocolError):
        po.decode_message(payload[:cut])
    with pytest.raises(ProtocolError):
        po.decode_message(payload + data.draw(st.binary(min_size=1, max_size=4)))


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.binary(max_size=64), messages.map(encode), st.tuples(messages.map(encode), st.binary(max_size=8))))
def test_random_or_mutated_bytes_raise_only_protocol_error(blob: bytes | tuple[bytes, bytes]) -> None:
    if isinstance(blob, tuple):  # a valid message with some bytes overwritten at the front of its body
        valid, noise = blob
        blob = valid[:1] + noise + valid[1 + len(noise) :]
    for decode in (po.decode_message, po.decode_copy_data, po.changed_relation):
        try:
            decode(blob)
        except ProtocolError:
            pass


@given(u64, u64, st.integers(-(2**50), 2**52), st.binary(max_size=40))
def test_xlogdata(start: int, end: int, micros: int, payload: bytes) -> None:
    body = b"w" + struct.pack("!QQq", start, end, micros) + payload
    assert po.decode_copy_data(body) == po.XLogData(start, end, po.pg_time_to_unix(micros), payload)


@given(u64, st.integers(-(2**50), 2**52), st.booleans())
def test_keepalive(end: int, micros: int, reply: bool) -> None:
    body = b"k" + struct.pack("!Qq?", end, micros, reply)
    assert po.decode_copy_data(body) == po.Keepalive(end, po.pg_time_to_unix(micros), reply)
    with pytest.raises(ProtocolError):
        po.decode_copy_data(body[:-1])
    with pytest.raises(ProtocolError):
        po.decode_copy_data(body[:-1] + b"\x02")


@given(u64, u64, u64, st.integers(-(2**50), 2**52), st.booleans())
def test_standby_status_update_layout(write: int, flush: int, apply: int, micros: int, reply: bool) -> None:
    body = po.standby_status_update(write, flush, apply, po.pg_time_to_unix(micros), reply)
    assert body == b"r" + struct.pack("!QQQq?", write, flush, apply, micros, reply)


def test_known_bytes() -> None:
    """Hand-written from the protocol documentation: the Unix epoch and one TRUNCATE ... CASCADE."""
    begin = b"B" + (0x16B3748).to_bytes(8, "big") + struct.pack("!q", -946_684_800 * 10**6) + (731).to_bytes(4, "big")
    assert po.decode_message(begin) == po.Begin(0x16B3748, 0.0, 731)
    truncate = b"T" + struct.pack("!IBII", 2, 1, 16384, 16390)
    assert po.decode_message(truncate) == po.Truncate((16384, 16390), cascade=True, restart_identity=False)
    relation = b"R" + struct.pack("!I", 1259) + b"\x00pg_class\x00" + b"n" + struct.pack("!H", 0)
    decoded = po.decode_message(relation)
    assert isinstance(decoded, po.Relation) and decoded.qualified == "pg_catalog.pg_class"
    assert po.decode_copy_data(b"k" + bytes(17)) == po.Keepalive(0, po.PG_EPOCH_UNIX, False)
    with pytest.raises(ProtocolError, match="unknown pgoutput message"):
        po.decode_message(b"S" + bytes(8))  # streaming (protocol v2) was not asked for
    with pytest.raises(ProtocolError, match="unknown tuple column kind"):
        po.decode_message(b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 1) + b"x")
