"""Savepoint frames (PostgreSQL's rules), transaction-control effects, and the Tracker's per-ReadyForQuery record."""

from __future__ import annotations

from proxy import params, protocol as p, savepoints as sp
from proxy.pipeline import Tracker

ACME, GLOBEX = sp.State({"t": "acme"}, {}), sp.State({"t": "globex"}, {})


def test_rollback_to_uses_the_newest_frame_of_a_name_and_keeps_it():
    frames = sp.savepoint(sp.savepoint((), "a", ACME), "a", GLOBEX)
    left, state = sp.rollback_to(frames, "a")
    assert state is GLOBEX and left == frames
    left, state = sp.rollback_to(sp.release(frames, "a"), "a")
    assert state is ACME and [n for n, _ in left] == ["a"]


def test_rollback_to_destroys_newer_savepoints():
    frames = sp.savepoint(sp.savepoint((), "a", ACME), "b", GLOBEX)
    left, state = sp.rollback_to(frames, "a")
    assert state is ACME and sp.rollback_to(left, "b") == (left, None)


def test_release_drops_the_savepoint_and_newer_ones_and_keeps_older():
    frames = sp.savepoint(sp.savepoint(sp.savepoint((), "a", ACME), "b", GLOBEX), "c", ACME)
    assert [n for n, _ in sp.release(frames, "b")] == ["a"]
    assert sp.release(frames, "nosuch") is None


def test_poisoned_frames_restore_an_unknown_tenant():
    frames = sp.poison(sp.savepoint((), "a", sp.State({}, {}, "acme")))
    state = sp.rollback_to(frames, "a")[1]
    assert state.unknown and state.local_tenant is None


def test_transaction_control_is_an_effect_in_statement_order():
    got = params.effects("SAVEPOINT a; SET x TO '1'; ROLLBACK TO SAVEPOINT a; RELEASE \"A\"; ABORT")
    assert [(e.kind, e.name) for e in got] == [("savepoint", "a"), ("set", "x"), ("rollback_to", "a"),
                                                ("release", "A"), ("rollback", "")]
    assert params.effects("COMMIT") == [] and params.maybe_stateful("savepoint a")
    assert params.maybe_stateful("release savepoint a")


def test_each_ready_for_query_is_recorded_with_its_tag_and_whether_it_failed():
    t = Tracker()
    t.request(ord("Q"), tag=True)
    t.request(ord("Q"))
    t.request(ord("Q"), tag=True)
    error = p.error_response("3B001", "savepoint does not exist")
    t.feed(p.command_complete("SAVEPOINT") + p.ready_for_query(b"T") + error + p.ready_for_query(b"E")
           + error + p.ready_for_query(b"E"))
    assert t.ends == [(True, False, ord("T")), (None, True, ord("E")), (True, True, ord("E"))]
