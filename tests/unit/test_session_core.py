"""The session core driven by bytes alone: client messages in, bytes each way out, no PostgreSQL and no event loop."""

from __future__ import annotations

from proxy.ops.stats import QueryStats
from proxy.pooling.backend import Backend
from proxy.pooling.prepared import Registry
from proxy.session.context import SessionContext
from proxy.session.core import SessionCore
from proxy.session.state import CLOSED, SessionState
from proxy.wire import protocol as p

ROW = p.message(b"D", b"\x00\x01\x00\x00\x00\x01x")
READY_I, READY_T = p.ready_for_query(b"I"), p.ready_for_query(b"T")


class _Transport:
    """What the backend writes, collected."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return False


class _Shell:
    """The connection around the core: what it was asked to do."""

    def __init__(self) -> None:
        self.to_client: list[bytes] = []
        self.detached: list[Backend] = []
        self.closed: list[str] = []

    def write(self, data: bytes) -> None:
        self.to_client.append(data)

    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        self.closed.append(f"{sqlstate} {message}")

    def close(self, reason: str) -> None:
        self.closed.append(reason)

    def detach(self, backend: Backend) -> None:
        self.detached.append(backend)


class _Counter:
    def labels(self, *_: str) -> _Counter:
        return self

    def inc(self) -> None:
        pass


class _Metrics:
    backend_errors = refusals = _Counter()


def _unused(*_: object) -> None:
    raise AssertionError("the core does not call this")


def _core(tx_mode: bool = True) -> tuple[SessionCore, _Shell, Backend, _Transport]:
    ctx = SessionContext(
        config=None,  # type: ignore[arg-type]  # the shell's, not the core's
        statements=Registry(),
        stats=QueryStats(),
        slowlog=None,
        audit=None,
        metrics=_Metrics(),  # type: ignore[arg-type]
        router=lambda: None,
        tls_context=lambda: None,
        draining=lambda: False,
        issue_key=_unused,  # type: ignore[arg-type]
        forget=_unused,
        client_count=_unused,  # type: ignore[arg-type]
        cancel=_unused,  # type: ignore[arg-type]
        pool_for=_unused,  # type: ignore[arg-type]
        ensure_schema=_unused,  # type: ignore[arg-type]
        refresh_schemas=_unused,
        admin_console=_unused,  # type: ignore[arg-type]
    )
    shell = _Shell()
    core = SessionCore(SessionState(1, 2, tx_mode=tx_mode), ctx, shell)
    backend, transport = Backend(100), _Transport()
    backend.transport = transport  # type: ignore[assignment]
    core.link(backend)
    return core, shell, backend, transport


def test_a_query_goes_to_the_backend_and_its_answer_to_the_client_then_the_backend_goes_back():
    core, shell, backend, transport = _core()
    query = p.query("SELECT 1")
    core.forward([(p.MSG_QUERY, query)])
    assert transport.sent == [query]
    answer = p.message(b"T", b"\x00\x00") + ROW + p.command_complete("SELECT 1") + READY_I
    core.backend_data(backend, answer)
    assert shell.to_client == [answer]
    assert shell.detached == [backend] and core.backend is None  # transaction pooling: between transactions


def test_an_extended_pipeline_is_sent_in_one_write_and_timed_under_its_parse():
    core, shell, backend, transport = _core()
    parse, bind = p.parse("", "SELECT $1"), p.message(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00")
    execute, sync = p.message(b"E", b"\x00\x00\x00\x00\x00"), p.SYNC
    core.forward([(p.MSG_PARSE, parse), (p.MSG_BIND, bind), (p.MSG_EXECUTE, execute), (p.MSG_SYNC, sync)])
    assert transport.sent == [parse + bind + execute + sync]
    core.backend_data(backend, p.PARSE_COMPLETE + p.BIND_COMPLETE + ROW + p.command_complete("SELECT 1") + READY_I)
    assert b"".join(shell.to_client).endswith(READY_I)
    assert core.ctx.stats.pending[0][0] == parse  # the round trip, under the Parse that named it


def test_a_refused_statement_gets_an_error_response_and_the_backend_a_failing_statement():
    core, shell, backend, transport = _core()
    core.forward([(p.MSG_QUERY, p.query("LISTEN news"))])
    assert shell.to_client[0][:1] == b"E"  # answered at once: nothing else was in flight
    fields = p.decode_fields(shell.to_client[0])
    assert fields["sqlstate"] == "0A000" and "LISTEN" in fields["message"]
    assert transport.sent == [p.query("pgwarden refused the statement before this one")]
    backend_error = p.error_response("42601", "syntax error")
    core.backend_data(backend, backend_error + READY_I)
    assert shell.to_client[1:] == [READY_I]  # the backend's own error hidden, its ReadyForQuery passed on


def test_a_deallocate_of_an_unknown_name_is_answered_by_the_proxy():
    core, shell, _, _ = _core()
    core.forward([(p.MSG_QUERY, p.query("DEALLOCATE nope"))])
    assert p.decode_fields(shell.to_client[0])["sqlstate"] == "26000"


def test_a_rollback_restores_the_settings_a_transaction_changed_and_a_savepoint_is_tracked():
    core, shell, backend, _ = _core()
    for sql in ("BEGIN", "SET application_name TO 'inside'", "SAVEPOINT a"):
        core.forward([(p.MSG_QUERY, p.query(sql))])
    assert core.tx.in_block and "application_name" in core.state.settings
    for tag in ("BEGIN", "SET", "SAVEPOINT"):
        core.backend_data(backend, p.command_complete(tag) + READY_T)
    assert core.backend is backend  # inside a transaction: the backend stays
    core.forward([(p.MSG_QUERY, p.query("ROLLBACK"))])
    assert not core.tx.in_block and "application_name" not in core.state.settings
    core.backend_data(backend, p.command_complete("ROLLBACK") + READY_I)
    assert shell.detached == [backend]


def test_terminate_closes_after_the_batch_before_it_is_sent():
    core, shell, _, transport = _core()
    query = p.query("SELECT 1")
    core.forward([(p.MSG_QUERY, query), (p.MSG_TERMINATE, p.TERMINATE)])
    assert transport.sent == [query] and shell.closed == ["client sent Terminate"]


def _relinked(
    client: dict[str, str], backend_settings: dict[str, str]
) -> tuple[SessionCore, _Shell, Backend, _Transport]:
    """A core whose client has `client` settings, linked to a fresh backend that has `backend_settings`."""
    core, shell, _, _ = _core()
    core.backend = None
    core.state.settings = dict(client)
    core.state.reported_base = {"standard_conforming_strings": "off"}  # what the client was told
    other, transport = Backend(100), _Transport()
    other.transport = transport  # type: ignore[assignment]
    other.settings = dict(backend_settings)
    core.link(other)
    return core, shell, other, transport


def test_a_replayed_value_the_client_was_not_told_reaches_it_before_its_answer():
    scs_off = {"standard_conforming_strings": "SET standard_conforming_strings TO 'off'"}
    core, shell, backend, transport = _relinked(scs_off, {})
    query = p.query("SELECT 1")
    core.forward([(p.MSG_QUERY, query)])
    assert transport.sent[0] == p.query("SET standard_conforming_strings TO 'off'")
    told = p.parameter_status("standard_conforming_strings", "off")
    answer = p.command_complete("SELECT 1") + READY_I
    core.backend_data(backend, p.command_complete("SET") + told + READY_I + answer)
    assert b"".join(shell.to_client) == answer  # the same value it was told: nothing more
    core, shell, backend, _ = _relinked(scs_off, {})
    core.forward([(p.MSG_QUERY, query)])
    on = p.parameter_status("standard_conforming_strings", "on")  # (a backend that reports otherwise)
    core.backend_data(backend, p.command_complete("SET") + on + READY_I + answer)
    assert b"".join(shell.to_client) == on + answer


def test_a_role_replay_runs_in_a_block_and_its_failure_closes_the_client():
    role = {"role": "SET ROLE app"}
    core, shell, backend, transport = _relinked(role, {"role": "SET ROLE other"})
    assert transport.sent[0] == p.query("BEGIN; RESET role; SET ROLE app; COMMIT")
    core.forward([(p.MSG_QUERY, p.query("SELECT 1"))])
    closing = shell.fatal
    shell.fatal = lambda *args: (closing(*args), setattr(core.state, "phase", CLOSED))  # type: ignore[method-assign]
    failed = p.error_response("42704", 'role "app" does not exist') + p.ready_for_query(b"E")
    client_error = p.error_response("25P02", "current transaction is aborted") + p.ready_for_query(b"E")
    core.backend_data(backend, failed + client_error)
    assert shell.closed and shell.closed[0].startswith("08000")
    assert shell.to_client == []  # not even the aborted statement's answer
