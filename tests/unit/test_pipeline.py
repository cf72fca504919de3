"""The Tracker: which backend responses reach the client, in which order, over any chunking."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire import protocol as p
from proxy.wire.tracker import FORWARD, SWALLOW, ParameterChanged, Ready, Settled, Tracker

PARSE_OK, BIND_OK, CLOSE_OK = p.PARSE_COMPLETE, p.BIND_COMPLETE, p.CLOSE_COMPLETE
ROW = p.message(b"D", b"\x00\x01\x00\x00\x00\x01x")
DONE = p.command_complete("SELECT 1")
READY_I, READY_T = p.ready_for_query(b"I"), p.ready_for_query(b"T")
ERROR = p.error_response("42601", "syntax error")


def feed(tracker: Tracker, data: bytes) -> bytes:
    """The bytes for the client (the events are told apart where a test asks for them)."""
    return tracker.feed(data)[0]


def failed(events) -> list:
    return [e.tag for e in events if isinstance(e, Settled) and not e.ok]


def feed_all(tracker: Tracker, stream: bytes, cuts: list[int]) -> bytes:
    out, last = [], 0
    for cut in sorted({c for c in cuts if 0 < c < len(stream)}) + [len(stream)]:
        out.append(feed(tracker, stream[last:cut]))
        last = cut
    return b"".join(out)


def test_plain_stream_is_forwarded_untouched_and_releases_on_idle():
    t = Tracker()
    t.request(ord("Q"))
    stream = p.message(b"T", b"\x00\x00") + ROW + DONE + READY_I
    assert feed(t, stream) is stream
    assert t.idle and t.status == ord("I")


def test_injected_parse_is_hidden_and_synthetic_parse_complete_is_in_order():
    t = Tracker()
    t.request(ord("P"), SWALLOW, tag="pgw_a")  # injected before the client's Bind
    t.request(ord("B"))
    t.request(ord("E"))
    assert t.synthetic(PARSE_OK) == b""  # the client's Parse, answered by the proxy
    t.request(ord("B"))
    t.request(ord("E"))
    t.request(ord("S"))
    stream = PARSE_OK + BIND_OK + ROW + DONE + BIND_OK + ROW + DONE + READY_I
    out, events = t.feed(stream)
    assert out == BIND_OK + ROW + DONE + PARSE_OK + BIND_OK + ROW + DONE + READY_I
    assert t.idle and t.fixups == 0 and failed(events) == []


def test_an_error_skips_to_sync_and_drops_the_answers_the_backend_will_not_send():
    t = Tracker()
    t.request(ord("P"), FORWARD, tag="pgw_bad")
    t.synthetic(CLOSE_OK)  # would come after the Parse: the backend skips past it
    t.request(ord("S"))
    out, events = t.feed(ERROR + READY_I)
    assert out == ERROR + READY_I
    assert failed(events) == ["pgw_bad"] and t.idle and t.fixups == 0


def test_synthetic_answer_with_nothing_in_flight_is_immediate():
    assert Tracker().synthetic(CLOSE_OK) == CLOSE_OK


def test_swallowed_query_hides_everything_up_to_its_ready():
    t = Tracker()
    t.request(ord("Q"), SWALLOW)  # a SET replayed by the proxy
    t.request(ord("Q"))
    replay = p.command_complete("SET") + p.parameter_status("TimeZone", "UTC") + READY_I
    client = p.message(b"T", b"\x00\x00") + ROW + DONE + READY_T
    assert feed(t, replay + client) == client
    assert t.status == ord("T")


def test_parameter_status_says_whether_the_client_got_it():
    """A replay's ParameterStatus is hidden; the client's own is not; a tagged replay reports its end."""
    t = Tracker()
    t.request(ord("Q"), SWALLOW, tag="replay")
    t.request(ord("Q"))
    replay = p.command_complete("SET") + p.parameter_status("TimeZone", "UTC") + READY_I
    client = p.command_complete("SET") + p.parameter_status("DateStyle", "ISO, MDY") + READY_I
    out, events = t.feed(replay + client)
    assert out == client
    changed = [(e.message[5:].split(b"\0")[0], e.hidden) for e in events if isinstance(e, ParameterChanged)]
    assert changed == [(b"TimeZone", True), (b"DateStyle", False)]
    assert [e.tag for e in events if isinstance(e, Ready)] == ["replay", None]


def _scenario():
    """Requests with actions, and the backend stream answering them."""
    kinds = st.lists(st.sampled_from(["parse", "parse_hidden", "bind", "close_synth", "exec"]), max_size=6)
    return st.tuples(kinds, st.booleans())


@settings(max_examples=300, deadline=None)
@given(_scenario(), st.lists(st.integers(min_value=1, max_value=200), max_size=12))
def test_any_chunking_gives_the_same_output(scenario, cuts):
    steps, ends_in_error = scenario

    def run(chunks: list[int]) -> tuple[bytes, bool]:
        t = Tracker()
        expected_now, stream = b"", b""
        for step in steps:
            if step == "parse":
                t.request(ord("P"))
                stream += PARSE_OK
            elif step == "parse_hidden":
                t.request(ord("P"), SWALLOW, tag="x")
                stream += PARSE_OK
            elif step == "bind":
                t.request(ord("B"))
                stream += BIND_OK
            elif step == "close_synth":
                expected_now += t.synthetic(CLOSE_OK)
            else:
                t.request(ord("E"))
                stream += ROW + DONE
        if ends_in_error:
            t.request(ord("E"))
            stream += ERROR
        t.request(ord("S"))
        stream += READY_I
        return expected_now + feed_all(t, stream, chunks), t.idle

    whole, idle_whole = run([])
    chunked, idle_chunked = run(cuts)
    assert chunked == whole and idle_whole and idle_chunked
    assert whole.endswith(READY_I)
    if not ends_in_error:  # every hidden ParseComplete gone, every synthetic one present
        assert whole.count(PARSE_OK) == steps.count("parse")
        assert whole.count(CLOSE_OK) == steps.count("close_synth")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=120), max_size=6))
def test_scrubbed_error_detail_never_reaches_the_client_whatever_the_chunking(cuts):
    t = Tracker()
    t.scrub = "hidden by pgwarden"
    t.request(ord("Q"))
    error = p.error_response("23505", "duplicate key", detail="Key (email)=(bob@other-tenant.io)")
    out = feed_all(t, error + READY_I, cuts)
    assert b"bob@other-tenant.io" not in out and b"hidden by pgwarden" in out
    assert out.endswith(READY_I) and t.idle


def test_answers_to_a_flush_do_not_make_the_backend_idle_until_sync():
    t = Tracker()
    for code in b"PDH"[:2]:
        t.request(code)
    assert feed(t, PARSE_OK + p.message(b"t", b"\x00\x00") + p.message(b"n")) is not None
    assert not t.queue and not t.idle, "Parse/Describe/Flush answered, but no Sync yet"
    t.request(ord("S"))
    t.feed(READY_I)
    assert t.idle


def test_an_error_after_flush_keeps_the_backend_until_the_sync():
    t = Tracker()
    t.request(ord("P"), FORWARD, tag="x")
    t.request(ord("D"))
    _, events = t.feed(ERROR)
    assert not t.idle and failed(events) == ["x"]
    t.request(ord("S"))
    t.feed(READY_I)
    assert t.idle


_ANSWERS = {  # request type -> what the backend answers (errors without DETAIL: scrubbing changes nothing)
    "P": PARSE_OK,
    "B": BIND_OK,
    "D": p.message(b"T", b"\x00\x00"),
    "E": ROW + ROW + DONE,
    "C": CLOSE_OK,
    "H": b"",
    "S": READY_I,
    "Q": p.message(b"T", b"\x00\x00") + ROW + p.parameter_status("TimeZone", "UTC") + DONE + READY_T,
}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from("PBDECHSQ"), min_size=1, max_size=10),
    st.integers(min_value=-1, max_value=10),
    st.lists(st.integers(min_value=1, max_value=300), max_size=12),
)
def test_the_header_walk_agrees_with_the_full_loop(requests, error_at, cuts):
    """With nothing to hide or insert, `feed` only walks headers; a scrub that finds no DETAIL
    takes the full loop: both give the same bytes, events and state, whatever the chunking."""

    def run(scrub: str | None) -> tuple:
        t = Tracker()
        t.scrub = scrub
        stream, events, out, last = b"", [], [], 0
        for i, kind in enumerate(requests):
            t.request(ord(kind))
            stream += ERROR + READY_I if i == error_at and kind in "EQ" else _ANSWERS[kind]
        for cut in sorted({c for c in cuts if 0 < c < len(stream)}) + [len(stream)]:
            data, got = t.feed(stream[last:cut])
            out.append(data)
            events += got
            last = cut
        return b"".join(out), events, list(t.queue), t.idle, t.status, t.synced

    assert run(None) == run("hidden")


def _postgres(requests: str, error_at: set[int]) -> list[bytes]:
    """What PostgreSQL answers to each request, in order: after an error in an extended-protocol
    message it skips every request up to the next Sync (a Query and a FunctionCall too)."""
    answers, skipping = [], False
    for i, kind in enumerate(requests):
        if skipping:
            skipping = kind != "S"
            answers.append(READY_I if kind == "S" else b"")
        elif i in error_at and kind in "PBDEC":
            answers.append(ERROR)
            skipping = True
        else:
            answers.append(_ANSWERS[kind])
    return answers


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from("PBDECSQQ"), min_size=1, max_size=14),
    st.sets(st.integers(min_value=0, max_value=13), max_size=3),
    st.integers(min_value=0, max_value=14),
)
def test_every_query_and_sync_is_answered_once_in_order_however_an_error_skips(requests, error_at, fed_after):
    """Requests sent, the backend's answers fed after the first `fed_after` of them (so some are sent
    while the backend already skips): each Query and Sync gets exactly one Ready, in the order sent;
    one the backend skipped is failed with the error, and so is the Sync that ends the skipping."""
    t = Tracker()
    answers = _postgres(requests + ["S"], error_at)
    events: list = []
    fed = 0
    for i, kind in enumerate(requests + ["S"]):
        if i == fed_after:
            events += t.feed(b"".join(answers[:i]))[1]
            fed = i
        t.request(ord(kind), tag=i if kind in "QS" else None)
    events += t.feed(b"".join(answers[fed:]))[1]
    readies = [e for e in events if isinstance(e, Ready)]
    sent = [i for i, kind in enumerate(requests + ["S"]) if kind in "QS"]
    assert [r.tag for r in readies] == sent
    for ready in readies:
        skipped = answers[ready.tag] == b""
        assert not skipped or ready.error == ERROR, (ready, answers)
    assert t.idle and not t.queue and t.skipping is None and t.fixups == 0


def test_a_query_the_backend_skips_after_an_error_does_not_take_the_syncs_ready():
    """Parse (fails), Query, Close, Parse, Sync: PostgreSQL answers the error and one ReadyForQuery.
    The Query is failed unanswered, and the Sync's Ready carries the error (its cycle never accepted)."""
    t = Tracker()
    t.request(ord("P"))
    t.request(ord("Q"), tag="query")
    t.request(ord("C"), tag="close")
    t.request(ord("P"), tag="parse")
    t.request(ord("S"), tag="sync")
    out, events = t.feed(ERROR + READY_I)
    assert out == ERROR + READY_I and t.idle
    assert [(e.tag, e.error) for e in events if isinstance(e, Ready)] == [("query", ERROR), ("sync", ERROR)]
    assert failed(events) == ["close", "parse"]


def test_after_an_error_with_no_sync_in_flight_the_proxys_own_answers_are_skipped_too():
    """Parse (fails), Flush: until the client's Sync the backend answers nothing, and neither does
    the proxy (a CloseComplete it would give itself)."""
    t = Tracker()
    t.request(ord("P"))
    t.feed(ERROR)
    assert t.skipping == ERROR and t.synthetic(CLOSE_OK) == b""
    t.request(ord("S"))
    assert t.skipping is None and t.feed(READY_I)[0] == READY_I and t.idle
