"""Savepoint frames (PostgreSQL's rules), transaction-control effects, and the Tracker's per-ReadyForQuery record."""

from __future__ import annotations

from proxy.session import params
from proxy.session import savepoints as sp
from proxy.session.state import SessionState
from proxy.session.txstate import CONTROL, Transaction
from proxy.wire import protocol as p
from proxy.wire.tracker import Ready, Tracker

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
    assert [(e.kind, e.name) for e in got] == [
        ("savepoint", "a"),
        ("set", "x"),
        ("rollback_to", "a"),
        ("release", "A"),
        ("rollback", ""),
    ]
    assert params.effects("COMMIT") == [params.Effect("commit")] and params.maybe_stateful("savepoint a")
    assert params.maybe_stateful("release savepoint a")


def test_each_ready_for_query_is_recorded_with_its_tag_and_whether_it_failed():
    t = Tracker()
    t.request(ord("Q"), tag=True)
    t.request(ord("Q"))
    t.request(ord("Q"), tag=True)
    error = p.error_response("3B001", "savepoint does not exist")
    _, events = t.feed(
        p.command_complete("SAVEPOINT")
        + p.ready_for_query(b"T")
        + error
        + p.ready_for_query(b"E")
        + error
        + p.ready_for_query(b"E")
    )
    ends = [(e.tag, e.error is not None, e.status) for e in events if isinstance(e, Ready)]
    assert ends == [(True, False, ord("T")), (None, True, ord("E")), (True, True, ord("E"))]


def test_transaction_control_effects_with_and_chain():
    got = params.effects("BEGIN; SET x TO '1'; COMMIT AND CHAIN; ROLLBACK AND CHAIN; END; ABORT")
    assert [(e.kind, e.name) for e in got] == [
        ("begin", ""),
        ("set", "x"),
        ("commit", "chain"),
        ("rollback", "chain"),
        ("commit", ""),
        ("rollback", ""),
    ]
    assert params.effects("start transaction read only") == [params.Effect("begin")]
    assert params.effects("prepare transaction 'g'") == [params.Effect("commit")]
    assert params.effects("commit prepared 'g'") == []  # outside any transaction: no session state
    assert params.effects(" Rollback ;") == [params.Effect("rollback")]
    assert all(params.maybe_stateful(s) for s in ["begin", "start transaction", "commit", "end"])


def test_a_commit_answered_after_its_transaction_failed_restores_only_if_nothing_came_after():
    cycle = sp.Cycle(commit=sp.Ending(ACME, 3, 0))
    assert sp.settle(cycle, False, True, 3, 0) == (ACME, False)  # it was a rollback
    assert sp.settle(cycle, False, False, 3, 0) == (None, False)  # it committed
    assert sp.settle(cycle, False, True, 4, 0) == (None, True)  # a SET was sent after it
    assert sp.settle(cycle, True, False, 3, 0) == (None, True)  # failed: did it run?
    assert sp.settle(cycle, False, True, 3, 1)[0].unknown  # lost since: stays unknown


def test_a_failed_implicit_transaction_is_undone_and_a_failed_begin_placed():
    cycle = sp.Cycle(implicit=sp.Ending(ACME, 2, 0))
    assert sp.settle(cycle, False, False, 2, 0) == (None, False)
    assert sp.settle(cycle, True, False, 2, 0) == (ACME, False)
    assert sp.settle(cycle, True, False, 3, 0) == (None, True)
    watched = sp.Cycle(watched=True, implicit=sp.Ending(ACME, 2, 0))
    assert sp.settle(watched, True, False, 2, 0) == (ACME, True)
    assert sp.settle(sp.Cycle(begin=1), True, False, 1, 0) == (None, False)
    assert sp.settle(sp.Cycle(begin=1), True, False, 2, 0) == (None, True)


class _Session:
    """The Transaction part, with settings applied as the session core's `_apply` does."""

    def __init__(self, tenant: str) -> None:
        self.state = SessionState(0, 0, peer="test", ident="token_user", settings={"t": tenant})  # type: ignore[arg-type]
        self.tx = Transaction(self.state)
        self.backend: dict = {}
        self.tags: list = []

    @property
    def settings(self) -> dict:
        return self.state.settings

    @property
    def tenant_unknown(self) -> bool:
        return self.state.tenant_unknown

    def send(self, sql: str) -> None:
        for effect in params.effects(sql):
            self.tx.changing(effect, self.backend)
            if effect.kind in CONTROL:
                self.tx.control(effect, self.backend)
            else:
                params.apply(self.state.settings, effect)
                self.tx.watch_tenant()

    def sync(self) -> None:
        self.tags.append(self.tx.watch())

    def answer(self, failed: bool, status: str) -> None:
        self.tx.ended(self.tags.pop(0), failed, ord(status), self.backend, drained=True)


def test_rollback_applies_when_sent_so_a_later_set_stays():
    s = _Session("acme")
    for sql in ["begin", "set t = globex", "rollback", "set t = globex"]:
        s.send(sql)
    assert s.settings["t"] == "set t = globex"
    s.sync()
    s.answer(False, "I")
    assert s.settings["t"] == "set t = globex" and not s.tenant_unknown


def test_a_rollback_pipelined_after_a_commit_leaves_the_commit():
    s = _Session("acme")
    for sql in ["begin", "set t = globex", "commit"]:
        s.send(sql)
    s.sync()
    for sql in ["begin", "set t = acme", "rollback"]:
        s.send(sql)
    s.sync()
    s.answer(False, "I")
    s.answer(False, "I")
    assert s.settings["t"] == "set t = globex" and not s.tenant_unknown


def test_a_commit_of_a_failed_transaction_restores_its_start():
    s = _Session("acme")
    s.send("begin; set t = globex")
    s.sync()
    s.answer(False, "T")
    s.sync()  # select 1/0
    s.answer(True, "E")
    s.send("commit")
    s.sync()
    s.answer(False, "I")
    assert s.settings == {"t": "acme"} and not s.tenant_unknown


def test_a_block_pgwarden_did_not_see_begin_loses_the_tenant_after_a_change():
    s = _Session("acme")
    s.send("set t = globex")  # in a transaction opened by a BEGIN pgwarden did not see
    s.sync()
    s.answer(False, "T")
    assert s.tenant_unknown and s.tx.in_block
