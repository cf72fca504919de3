"""Property tests of the sans-IO codec (proxy/wire/protocol.py): round trips, chunking, fuzzing."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.wire import protocol as p

# Text the protocol can carry in a C string: no NUL, no lone surrogates (not UTF-8).
ctext = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
params_dict = st.dictionaries(ctext, ctext, max_size=8)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` split at the given positions (taken modulo its length, sorted)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=20)


# --- startup packets ----------------------------------------------------------------------------


@given(params_dict, st.integers(min_value=0, max_value=0xFFFF), cuts)
def test_startup_message_round_trips_through_the_framer(params, minor, cut_at):
    packet = p.startup_message(params, version=(3 << 16) | minor)
    framer = p.StartupFramer()
    got = []
    for chunk in chunked(packet + b"Qrest", cut_at):
        framer.feed(chunk)
        if not got:  # after the StartupMessage the typed protocol begins
            got += filter(None, [framer.next_packet()])
    assert got == [p.StartupMessage((3 << 16) | minor, params)]
    assert framer.take_rest() == b"Qrest"


@given(params_dict)
def test_parse_startup_packet_inverts_startup_message(params):
    assert p.parse_startup_packet(p.startup_message(params)) == p.StartupMessage(p.PROTOCOL_3_0, params)


@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=0, max_value=2**32 - 1))
def test_fixed_startup_packets_decode(pid, secret):
    assert p.parse_startup_packet(p.ssl_request()) == p.SSLRequest()
    assert p.parse_startup_packet(p.cancel_request(pid, secret)) == p.CancelRequest(pid, secret)


@given(st.integers(min_value=0, max_value=0xFFFF).filter(lambda major: major != 3))
def test_other_protocol_versions_are_refused_with_0A000(major):
    packet = p.startup_message({"user": "u"}, version=major << 16)
    with pytest.raises(p.ProtocolError) as err:
        p.parse_startup_packet(packet)
    assert err.value.sqlstate == "0A000"


@given(st.integers(min_value=p.MAX_STARTUP_PACKET + 1, max_value=2**32 - 1))
def test_oversize_startup_length_is_refused_before_its_body_arrives(length):
    framer = p.StartupFramer()
    framer.feed(struct.pack("!I", length))
    with pytest.raises(p.ProtocolError) as err:
        framer.next_packet()
    assert err.value.sqlstate == "08P01"


@given(st.binary(max_size=300), cuts)
def test_startup_framer_raises_only_protocol_errors_on_arbitrary_bytes(data, cut_at):
    framer = p.StartupFramer()
    try:
        for chunk in chunked(data, cut_at):
            framer.feed(chunk)
            while framer.next_packet() is not None:
                pass
    except p.ProtocolError:
        pass


# --- typed message framing -----------------------------------------------------------------------

kinds = st.sampled_from(b"QPBDECSHXpdfZT12nI")
messages = st.builds(lambda k, body: p.message(bytes([k]), body), kinds, st.binary(max_size=40))


@given(st.lists(messages, max_size=20), cuts)
def test_framer_yields_exactly_the_messages_whatever_the_chunking(msgs, cut_at):
    framer = p.Framer()
    got: list[tuple[int, bytes]] = []
    for chunk in chunked(b"".join(msgs), cut_at):
        framer.feed(chunk)
        got += framer.messages()
    assert got == [(m[0], m) for m in msgs]
    assert framer.pending() == 0


@given(st.lists(messages, max_size=20), cuts)
def test_framer_split_yields_exactly_the_messages_whatever_the_chunking(msgs, cut_at):
    framer = p.Framer()
    got: list[tuple[int, bytes]] = []
    for chunk in chunked(b"".join(msgs), cut_at):
        got += framer.split(chunk)
    assert got == [(m[0], m) for m in msgs]
    assert framer.pending() == 0


@given(st.binary(max_size=300), cuts)
def test_framer_split_agrees_with_messages_on_arbitrary_bytes(data, cut_at):
    by_split, by_feed = p.Framer(max_size=4096), p.Framer(max_size=4096)
    split_out: list = []
    feed_out: list = []
    split_error = feed_error = None
    for chunk in chunked(data, cut_at):
        try:
            split_out += by_split.split(chunk)
        except p.ProtocolError as exc:
            split_error = exc.sqlstate
            break
    for chunk in chunked(data, cut_at):
        try:
            by_feed.feed(chunk)
            feed_out += by_feed.messages()
        except p.ProtocolError as exc:
            feed_error = exc.sqlstate
            break
    assert split_error == feed_error
    if split_error is None:
        assert split_out == feed_out and by_split.pending() == by_feed.pending()


@given(
    st.integers(min_value=1024, max_value=2**20),
    st.integers(min_value=1, max_value=2**20),
    st.lists(messages, max_size=3),
)
def test_framer_split_refuses_oversize_with_54000(max_size, excess, before):
    framer = p.Framer(max_size=max_size)
    with pytest.raises(p.ProtocolError) as err:
        framer.split(b"".join(before) + b"Q" + struct.pack("!I", max_size + excess))
    assert err.value.sqlstate == "54000"


@given(st.lists(messages, min_size=1, max_size=5), st.integers(min_value=1, max_value=40))
def test_framer_keeps_an_incomplete_message_pending(msgs, missing):
    stream = b"".join(msgs)
    missing = min(missing, len(msgs[-1]))
    framer = p.Framer()
    framer.feed(stream[:-missing])
    assert [m for _, m in framer.messages()] == msgs[:-1]
    assert framer.pending() == len(msgs[-1]) - missing


@given(st.integers(min_value=1024, max_value=2**20), st.integers(min_value=1, max_value=2**20))
def test_oversize_message_is_refused_with_54000_as_soon_as_its_header_arrives(max_size, excess):
    framer = p.Framer(max_size=max_size)
    framer.feed(b"Q" + struct.pack("!I", max_size + excess))
    with pytest.raises(p.ProtocolError) as err:
        framer.messages()
    assert err.value.sqlstate == "54000"


@given(st.integers(min_value=0, max_value=3))
def test_message_length_below_four_is_refused(length):
    framer = p.Framer()
    framer.feed(b"Q" + struct.pack("!I", length))
    with pytest.raises(p.ProtocolError) as err:
        framer.messages()
    assert err.value.sqlstate == "08P01"


@given(st.binary(max_size=300), cuts)
def test_framer_raises_only_protocol_errors_on_arbitrary_bytes(data, cut_at):
    framer = p.Framer(max_size=4096)
    try:
        for chunk in chunked(data, cut_at):
            framer.feed(chunk)
            for kind, msg in framer.messages():
                assert msg[0] == kind and len(msg) == 1 + struct.unpack_from("!I", msg, 1)[0]
    except p.ProtocolError:
        pass


# --- the backend stream scanner (proxy.wire.tracker.Tracker) -------------------------------------------

ready = st.sampled_from(b"ITE").map(lambda s: p.ready_for_query(bytes([s])))
error = st.builds(lambda t: p.error_response("42000", t), ctext)
other = st.builds(lambda k, body: p.message(bytes([k]), body), st.sampled_from(b"TDCK12nIst"), st.binary(max_size=30))


@given(st.lists(st.one_of(ready, error, other), max_size=25), cuts)
def test_backend_stream_is_forwarded_whole_and_ready_status_tracked_over_any_chunking(msgs, cut_at):
    from proxy.wire.tracker import ErrorSeen, Tracker

    tracker = Tracker()
    stream = b"".join(msgs)
    fed = [tracker.feed(chunk) for chunk in chunked(stream, cut_at)]
    out = b"".join(data for data, _ in fed)
    zs = [m for m in msgs if m[0] == ord("Z")]
    assert out == stream
    assert tracker.status == (zs[-1][5] if zs else ord("I"))
    errors = [e for _, events in fed for e in events if isinstance(e, ErrorSeen)]
    assert len(errors) == sum(1 for m in msgs if m[0] == ord("E"))


@given(st.binary(max_size=300), cuts)
def test_backend_stream_scanner_raises_only_protocol_error(data, cut_at):
    from proxy.wire.tracker import Tracker

    tracker = Tracker()
    try:
        for chunk in chunked(data, cut_at):
            tracker.feed(chunk)
    except p.ProtocolError:
        pass


# --- client message decoders -------------------------------------------------------------------

param_types = st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=6).map(
    lambda oids: struct.pack(f"!H{len(oids)}I", len(oids), *oids)
)


@given(ctext, ctext, param_types)
def test_decode_parse_inverts_parse(name, text, types):
    assert p.decode_parse(p.parse(name, text, types)) == p.Parse(name, text, types)


def bind(portal: str, stmt: str, formats: list[int], values: list[bytes | None], result_formats: list[int]) -> bytes:
    """A Bind message built field by field, as a client library would."""
    body = p.cstr(portal) + p.cstr(stmt) + struct.pack(f"!H{len(formats)}H", len(formats), *formats)
    body += struct.pack("!H", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    body += struct.pack(f"!H{len(result_formats)}H", len(result_formats), *result_formats)
    return p.message(b"B", body)


fmts = st.lists(st.sampled_from([0, 1]), max_size=4)
values = st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=8)


@given(ctext, ctext, ctext, fmts, values, fmts)
def test_rename_bind_changes_only_the_statement_name(portal, stmt, new, formats, vals, rfmts):
    original = bind(portal, stmt, formats, vals, rfmts)
    renamed = p.rename_bind(original, new)
    assert p.decode_bind_names(renamed)[:2] == (portal, new)
    assert p.bind_params(renamed) == p.bind_params(original) == vals
    assert renamed == bind(portal, new, formats, vals, rfmts)


@given(st.sampled_from("SP"), ctext, st.sampled_from([b"D", b"C"]))
def test_decode_target_inverts_target(which, name, kind):
    assert p.decode_target(p.target(kind, which, name)) == (which, name)


@given(ctext)
def test_decode_query_inverts_query(text):
    assert p.decode_query(p.query(text)) == text


DECODERS = [
    p.decode_query,
    p.decode_parse,
    p.decode_bind_names,
    p.decode_target,
    p.decode_fields,
    p.bind_params,
    lambda msg: p.replace_detail(msg, "d"),
]


@pytest.mark.parametrize("decode", DECODERS, ids=lambda f: f.__name__.strip("<>"))
@given(st.binary(max_size=120))
def test_decoders_raise_only_protocol_errors_on_arbitrary_bytes(decode, body):
    try:
        decode(p.message(body[:1] or b"X", body[1:]))
    except p.ProtocolError:
        pass


@given(st.binary(max_size=80))
def test_bind_params_raises_only_protocol_errors_past_the_names(rest):
    msg = p.message(b"B", b"\x00\x00" + rest)  # empty portal and statement: straight to the counts
    try:
        values = p.bind_params(msg)
    except p.ProtocolError:
        return
    assert sum(len(v) for v in values if v is not None) <= len(rest)


def test_bind_params_on_a_truncated_bind_raises_protocol_error():
    truncated = p.message(b"B", b"portal\x00stmt\x00")  # no format or parameter counts
    with pytest.raises(p.ProtocolError):
        p.bind_params(truncated)


def test_bind_params_refuses_a_value_longer_than_the_message():
    body = b"\x00\x00" + struct.pack("!HH", 0, 1) + struct.pack("!i", 100) + b"abc"
    with pytest.raises(p.ProtocolError):
        p.bind_params(p.message(b"B", body))


# --- ErrorResponse ----------------------------------------------------------------------------

optional = st.one_of(st.none(), ctext)
sqlstates = st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=5, max_size=5)


@given(
    sqlstates, ctext, st.sampled_from(["ERROR", "FATAL", "NOTICE"]), optional, optional, st.sampled_from([b"E", b"N"])
)
def test_decode_fields_inverts_error_response(code, text, severity, detail, hint, kind):
    msg = p.error_response(code, text, severity=severity, detail=detail, hint=hint, kind=kind)
    expected = {"severity": severity, "severity_nl": severity, "sqlstate": code, "message": text}
    expected |= {k: v for k, v in (("detail", detail), ("hint", hint)) if v is not None}
    assert msg[:1] == kind
    assert p.decode_fields(msg) == expected
    assert _frames(msg) == [msg]


def _frames(stream: bytes) -> list[bytes]:
    framer = p.Framer()
    framer.feed(stream)
    return [m for _, m in framer.messages()]


@given(sqlstates, ctext, optional, optional, optional)
def test_replace_detail_changes_only_the_detail(code, text, detail, hint, new_detail):
    msg = p.error_response(code, text, detail=detail, hint=hint)
    replaced = p.replace_detail(msg, new_detail)
    fields = p.decode_fields(replaced)
    before = p.decode_fields(msg)
    before.pop("detail", None)
    if new_detail is not None:
        before["detail"] = new_detail
    assert fields == before
    assert _frames(replaced) == [replaced]


def test_replace_detail_on_a_malformed_error_raises_protocol_error():
    with pytest.raises(p.ProtocolError):
        p.replace_detail(p.message(b"E", b"Mno terminator"), "x")
