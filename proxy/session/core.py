"""The relay of a logged-in session, without I/O: client messages in, bytes to the backend and the client out."""

from __future__ import annotations

import logging
from collections.abc import Callable

from proxy.pooling.backend import Backend
from proxy.pooling.prepared import Statement
from proxy.session import limited, notify, params, reported, session_sql
from proxy.session.accounting import AUDIT_FULL, Accounting
from proxy.session.caching import Capture
from proxy.session.context import SessionContext, Shell
from proxy.session.deferred import Deferred
from proxy.session.guard import Guard
from proxy.session.policed import HIDDEN_DETAIL
from proxy.session.savepoints import Cycle
from proxy.session.state import CLOSED, Refusal, SessionState
from proxy.session.statements import STALE_PLAN, Statements, names_statement, unquoted
from proxy.session.txstate import CONTROL, Transaction
from proxy.wire import protocol
from proxy.wire.protocol import (
    MSG_BIND,
    MSG_CLOSE,
    MSG_DESCRIBE,
    MSG_EXECUTE,
    MSG_FUNCTION_CALL,
    MSG_PARSE,
    MSG_QUERY,
    MSG_SYNC,
    MSG_TERMINATE,
    TARGET_PORTAL,
    TARGET_STATEMENT,
    TX_FAILED,
    TX_IDLE,
)
from proxy.wire.tracker import ABORT, SWALLOW, ErrorSeen, ParameterChanged, Ready, Settled

log = logging.getLogger("pgwarden.session")

_ABORT_SQL = "pgwarden refused the statement before this one"  # fails to parse, on purpose
_ABORT_QUERY, _ABORT_PARSE = protocol.query(_ABORT_SQL), protocol.parse("", _ABORT_SQL)
_REQUESTS = frozenset(b"PBDECSF")  # answered by the backend, tracked in order
_PASSED = frozenset(b"dcfH")  # COPY data/done/fail and Flush: no answer of their own
_NAMED = frozenset(b"PBDC")  # may name a prepared statement
_NOTED = frozenset((MSG_PARSE, MSG_BIND))  # which Parse a Sync is timed under
_SYNC_LIKE = frozenset((MSG_SYNC, MSG_FUNCTION_CALL))  # end a round trip
_NO_SETTING = frozenset(("execute", "deallocate", "database"))  # effects that change no session setting
_PINNED = "client %s pinned to backend pid=%s for the rest of its session: it created a temporary table, took \
a session advisory lock, a WITH HOLD cursor or called set_config() on a setting that cannot be tracked"


class SessionCore:
    """A logged-in client's relay: its parts composed, and the backend serving it now.

    Parts: `accounting` (timings, statistics, audit records), `tx` (transaction and savepoint
    state), `names` (statement names under transaction pooling), `guard` (the policy; None for
    a bypass role or without a policy). `forward` takes the client's messages and writes to the
    backend; `backend_data` takes the backend's bytes and writes the client's share to the shell.
    """

    __slots__ = (
        "_out",
        "accounting",
        "backend",
        "ctx",
        "guard",
        "hold",
        "later",
        "names",
        "notes",
        "shell",
        "state",
        "tap",
        "tx",
    )

    def __init__(self, state: SessionState, ctx: SessionContext, shell: Shell) -> None:
        self.state, self.ctx, self.shell = state, ctx, shell
        self.backend: Backend | None = None
        self.accounting = Accounting(state, ctx.stats, ctx.slowlog, ctx.audit)
        self.tx = Transaction(state)
        self.names = Statements(ctx.statements)
        self.later = Deferred()  # what SET, BEGIN... sent as a Parse do when a portal of theirs runs
        policed = state.ident is not None
        self.guard = Guard(state, ctx.router, ctx.metrics, ctx.stats, self.tx, self.accounting) if policed else None
        self._out: list[bytes] | None = None  # the batch `forward` is building for the backend
        self.notes: notify.Notifications | None = None  # LISTEN multiplexed (set by the connection)
        # read routing (set by the connection): after a write, the answer waits for the commit watermark
        self.hold: Callable[[Backend, bytes], bool] | None = None
        self.tap: Capture | None = None  # the cache takes the answer of the batch it looked up (set by the relay)

    # --- a backend comes and goes -----------------------------------------------------------

    def link(self, backend: Backend) -> None:
        """`backend` serves the client from now on; the settings it lacks are replayed first."""
        self.names.linked()
        backend.tracker.scrub = HIDDEN_DETAIL if self.guard is not None else None
        self.backend = backend
        settings = self.state.settings
        if settings == backend.settings:
            return
        sql = params.replay(settings, backend.settings)
        if sql:  # (tagged when it changes the role: if that fails, the client is closed)
            backend.tracker.request(MSG_QUERY, SWALLOW, tag=params.replay_tag(settings, backend.settings))
            backend.write(protocol.query(sql))
            backend.settings = dict(settings)

    def maybe_release(self) -> None:
        """Between transactions under transaction pooling, the backend goes back to its pool."""
        backend = self.backend
        if backend is None or not backend.tracker.idle or backend.tracker.status != TX_IDLE:
            return
        if self.state.tx_mode and not self.state.pinned:
            self.backend = None
            self.shell.detach(backend)
        if self.ctx.draining():
            self.shell.fatal("57P01", "terminating connection: pgwarden is shutting down")

    def answer_without_backend(self, msgs: list[tuple[int, bytes]]) -> bool:
        """Answer a batch that needs no backend (only Parses of known statements, Close, Sync)."""
        answer = None if not self.state.tx_mode or self.guard else self.names.answer_without_backend(msgs)
        if answer is not None:
            self.shell.write(answer)
        return answer is not None

    # --- the client's messages (the hot path) -----------------------------------------------

    def forward(self, msgs: list[tuple[int, bytes]]) -> None:
        """Relay a batch of client messages to the linked backend, in one write."""
        backend = self.backend
        assert backend is not None
        state = self.state
        out: list[bytes] = []
        self._out = out
        for kind, msg in msgs:
            if state.skipping:  # after a refusal, as PostgreSQL after an error: up to Sync
                if kind == MSG_SYNC:
                    state.skipping = False
                    self.accounting.started(b"")
                    backend.tracker.request(MSG_SYNC, tag=self.tx.watch())  # its ReadyForQuery ends the pipeline
                    out.append(msg)
                continue
            if kind == MSG_QUERY:
                self._query(msg, backend, out)
            elif kind == MSG_EXECUTE or (kind == MSG_DESCRIBE and msg[5] == TARGET_PORTAL):  # nothing to decide
                for effect in self.later.executed(msg) if self.later.portals and kind == MSG_EXECUTE else ():
                    self._apply(effect, backend)
                backend.tracker.request(kind)
                out.append(msg)
            elif kind == MSG_SYNC:
                self.accounting.started_sync()
                backend.tracker.request(kind, tag=self.tx.watch())
                out.append(msg)
            elif kind in _REQUESTS:
                self._request(kind, msg, backend, out)
            elif kind in _PASSED:
                out.append(msg)
            elif kind == MSG_TERMINATE:
                self._out = None
                if out:
                    backend.write(b"".join(out))
                self.shell.close("client sent Terminate")
                return
            elif kind in limited.LIMITED:  # refused by a rate limit or quota (limited.py): 53400
                if kind == limited.LIMITED_QUERY:
                    self.accounting.started(b"", ends_executions=False)
                self.refuse(limited.decode(msg), simple=kind == limited.LIMITED_QUERY)
            else:
                self._out = None
                self.shell.fatal("08P01", f"invalid frontend message type {chr(kind)!r}")
                return
        self._out = None
        if out:
            backend.write(b"".join(out))
        if not backend.tracker.queue:  # (else not idle: nothing to release)
            self.maybe_release()

    def _request(self, kind: int, msg: bytes, backend: Backend, out: list[bytes]) -> None:
        """One extended-protocol message (or FunctionCall) on its way to the backend."""
        state, guard = self.state, self.guard
        if kind == MSG_FUNCTION_CALL and guard is not None:
            self.accounting.started(b"", ends_executions=False)  # its ReadyForQuery
            self.refuse(session_sql.FUNCTION_CALL, simple=True)
            return
        if kind in _NOTED:
            self.accounting.note_statement(kind, msg)
        if self.later.statements or self.later.portals:  # (what the names and portals hold now)
            self.later.noted(kind, msg)
        if guard is not None and kind in _NAMED:
            checked = self._guard_extended(guard, kind, msg, backend, out)
            if checked is None:
                return
            msg = checked
        elif kind == MSG_PARSE:
            self._unpoliced_parse(msg)
        if kind == MSG_BIND and self.ctx.audit is not None and not self._audit_bind(msg):
            return
        tx_mode = state.tx_mode
        if tx_mode and kind in _NAMED and names_statement(kind, msg):
            self._extended_tx(kind, msg, backend, out)
            return
        if (
            tx_mode
            and (kind == MSG_BIND or (kind == MSG_DESCRIBE and msg[5] == TARGET_STATEMENT))
            and not self.names.ensure_unnamed(backend, out)
        ):  # the unnamed statement, not a portal; the backend's unnamed statement is not this client's
            self.refuse(session_sql.UNNAMED_MISSING, simple=False)
            return
        if kind == MSG_PARSE:
            state.ran_statements = True
            tracked = tx_mode or guard is not None or state.timeout_cap is not None  # (limits: SET checked)
            if tracked and session_sql.stateful_parse(msg):
                stateful = self._stateful_parse(msg, backend, out)
                if stateful is None:
                    return
                msg = stateful
            if tx_mode:
                self.names.parsed_unnamed(msg)
        if kind in _SYNC_LIKE:
            self.accounting.started_sync()
        backend.tracker.request(kind, tag=self.tx.watch() if kind == MSG_SYNC else None)
        out.append(msg)

    def _unpoliced_parse(self, msg: bytes) -> None:
        """A bypass role's Parse: DDL noticed for the policy's schema, the statement for the trail."""
        if self.ctx.router() is not None and session_sql.sends_ddl(msg):
            self.state.ddl_sent = True
        if self.ctx.audit is not None:
            self.accounting.parsed(msg)

    def _audit_bind(self, msg: bytes) -> bool:
        tenant = self.guard.tenant() if self.guard is not None else None
        if self.accounting.bind(msg, tenant):
            return True
        self.refuse(AUDIT_FULL, simple=False)
        return False

    def _query(self, msg: bytes, backend: Backend, out: list[bytes]) -> None:
        """A simple Query: policed, tracked, then sent."""
        self.accounting.started(msg)  # Binds before it too
        state, guard = self.state, self.guard
        if guard is not None:
            checked = guard.check_text(protocol.decode_query(msg), simple=True)
            if isinstance(checked, Refusal):
                self.refuse(checked, simple=True)
                return
            if checked.decision.sql is not None:
                msg = protocol.query(checked.text)
        else:
            if self.ctx.router() is not None and session_sql.sends_ddl(msg):
                state.ddl_sent = True
            if self.ctx.audit is not None and not self.accounting.statement(
                protocol.decode_query(msg), True, None, None
            ):
                self.refuse(AUDIT_FULL, simple=True)
                return
        state.ran_statements = True
        if (
            (state.tx_mode or guard is not None or state.timeout_cap is not None)
            and session_sql.stateful_query(msg)
            and not self.session_statement(protocol.decode_query(msg), True, backend)
        ):
            return
        backend.tracker.request(MSG_QUERY, tag=self.tx.watch())
        out.append(msg)

    # --- answers the proxy makes itself --------------------------------------------------------

    def reply(self, data: bytes) -> None:
        """Send the client an answer the proxy made itself, in order with the backend's answers."""
        now = self.backend.tracker.synthetic(data) if self.backend is not None else data
        if now:
            self.shell.write(now)

    def refuse(self, refusal: Refusal, simple: bool) -> None:
        """An ErrorResponse for one statement; the connection stays usable. The backend is made to fail too (a
        statement that cannot parse, its error hidden), so an open transaction or extended-protocol pipeline is
        aborted exactly as PostgreSQL aborts it on an error: nothing sent before the refusal commits unseen."""
        self.reply(protocol.error_response(refusal.sqlstate, refusal.message, hint=refusal.hint))
        backend = self.backend
        self.state.skipping = self.state.skipping or not simple  # (extended: up to the Sync)
        if backend is None:
            if simple:
                self.reply(protocol.ready_for_query(b"I"))
            return
        backend.tracker.request(MSG_QUERY if simple else MSG_PARSE, ABORT)
        self._send(_ABORT_QUERY if simple else _ABORT_PARSE, backend)

    def _send(self, msg: bytes, backend: Backend) -> None:
        """To the backend, in order with the batch `forward` is building."""
        if self._out is not None:
            self._out.append(msg)
        else:
            backend.write(msg)

    def _ensure_prepared(self, stmt: Statement, backend: Backend, out: list[bytes]) -> bool:
        """The statement made to exist on the backend; False (PostgreSQL's error sent: drivers prepare again) if stale."""
        if self.names.ensure_prepared(stmt, backend, out):
            return True
        self.reply(STALE_PLAN)
        self.state.skipping = True
        return False

    # --- statement names and session state ------------------------------------------------------

    def _guard_extended(self, guard: Guard, kind: int, msg: bytes, backend: Backend, out: list[bytes]) -> bytes | None:
        """`Guard.extended` carried out: the message to send, or None when refused (answered)."""
        checked = guard.extended(kind, msg, backend, out, self.names, self.state.tx_mode)
        if isinstance(checked, Refusal):
            self.refuse(checked, simple=False)
            return None
        return checked

    def _extended_tx(self, kind: int, msg: bytes, backend: Backend, out: list[bytes]) -> None:
        """Parse/Bind/Describe/Close under transaction pooling: client names -> proxy-wide names."""
        names = self.names
        if kind == MSG_PARSE:
            parsed = protocol.decode_parse(msg)
            if params.maybe_stateful(parsed.query):
                stateful = self._stateful_parse(msg, backend, out)
                if stateful is None:  # refused after the guard passed it: the name holds nothing now, for both
                    names.forget(parsed.name)
                    if self.guard is not None:
                        self.guard.statement_sent(parsed.name, None)
                    return
                msg = stateful
            scope = self.guard.statement_scope() if self.guard is not None else ""  # bypass: its own text
            names.parse(msg, scope, backend, out)
            return
        if kind == MSG_BIND:
            _, name, _ = protocol.decode_bind_names(msg)
            stmt = names.lookup(name) if name else None
            if name and stmt is None:
                self.refuse(session_sql.no_such_statement(name), simple=False)
                return
            if stmt is not None:
                if not self._ensure_prepared(stmt, backend, out):
                    return
                names.bound(stmt)
                msg = protocol.rename_bind(msg, stmt.name)
        else:
            which, name = protocol.decode_target(msg)
            if which == "S" and name:
                if kind == MSG_CLOSE:
                    names.forget(name)
                    self.reply(protocol.CLOSE_COMPLETE)
                    return
                stmt = names.lookup(name)
                if stmt is None:
                    self.refuse(session_sql.no_such_statement(name), simple=False)
                    return
                if not self._ensure_prepared(stmt, backend, out):
                    return
                msg = protocol.target(b"D", "S", stmt.name)
        backend.tracker.request(kind)
        out.append(msg)

    def session_statement(self, sql: str, simple: bool, backend: Backend, name: str | None = None) -> bool:
        """Track or refuse what a statement does to session state; False if it was refused/answered. A
        Parse's (of statement `name`) is checked now and applied when a portal of it is executed."""
        state, guard = self.state, self.guard
        if state.tx_mode and simple and (match := session_sql.DEALLOCATE.match(sql)):
            self._deallocate(match.group(1))
            return False
        effects = params.effects(sql)
        refused = session_sql.refusal(effects, state.tx_mode, guard)
        if refused is None and state.timeout_cap is not None:
            refused = limited.timeout_refusal(effects, sql, state.timeout_cap)
        if refused is not None:
            self.refuse(refused, simple=simple)
            return False
        if guard is not None and not state.tx_mode:
            sure = simple and len(effects) == 1 and backend.tracker.idle and backend.tracker.status != TX_FAILED
            guard.sql_names_changed(effects, sure)  # (not sure in a failed transaction)
        if state.tx_mode and params.leaves_state(sql) and not state.pinned:
            backend.needs_discard = state.pinned = True
            log.info(_PINNED, state.peer, backend.pid)
        for effect in effects:
            if effect.kind == "database":  # (wanted without other sessions: the pools' backends on it go first)
                self.ctx.admin_console().reconnect_everywhere(effect.name)
        kept = tuple(e for e in effects if e.kind not in _NO_SETTING)
        if name is not None:  # a Parse: applied when a portal of it is executed (`Deferred`)
            self.later.parsed(name, kept)
        else:
            for effect in kept:
                self._apply(effect, backend)
        return True

    def _apply(self, effect: params.Effect, backend: Backend) -> None:
        """One effect on session state, applied as it is sent."""
        state, tx = self.state, self.tx
        tx.changing(effect, backend.settings)
        if effect.kind in CONTROL:
            tx.control(effect, backend.settings)
            return
        params.apply(state.settings, effect)
        params.apply(backend.settings, effect)
        if state.timeout_cap is not None:  # RESET, RESET ALL, DISCARD ALL: the cap is the default again
            limited.restore_timeout(state, effect, state.timeout_cap.ms)
        if effect.kind == "discard_all":
            self.names.forget_all()
            backend.statements.clear()
        router = self.ctx.router() if self.guard is not None else None
        if router is not None and (effect.kind in ("reset_all", "discard_all") or effect.name == router.tenant_setting):
            tx.watch_tenant()  # a tenant change: known now, unless it fails
            if effect.kind != "local":
                state.tenant_unknown = False

    def _stateful_parse(self, msg: bytes, backend: Backend, out: list[bytes]) -> bytes | None:
        """A Parse that may change session state: tracked, refused (None) or renamed. DEALLOCATE under transaction
        pooling names the proxy-wide statement (prepared here first if needed); DEALLOCATE ALL runs as written,
        and this backend's statements are forgotten (prepared again when next used)."""
        parsed = protocol.decode_parse(msg)
        if self.state.tx_mode and (match := session_sql.DEALLOCATE.match(parsed.query)):
            target = match.group(1)
            if target.lower() == "all":
                self.names.forget_all()
                backend.statements.clear()
                return msg
            name = unquoted(target)
            stmt = self.names.forget(name)
            if stmt is None:  # never to the backend, where the name may be another client's
                self.refuse(session_sql.no_such_statement(name), simple=False)
                return None
            if not self._ensure_prepared(stmt, backend, out):
                return None
            backend.statements.discard(stmt.name)
            return protocol.parse(parsed.name, f'DEALLOCATE "{stmt.name}"', parsed.param_types)
        return msg if self.session_statement(parsed.query, False, backend, parsed.name) else None

    def _deallocate(self, name: str) -> None:
        """A simple-query DEALLOCATE under transaction pooling, answered here."""
        tag = self.names.deallocate(name)
        if tag is None:
            self.refuse(session_sql.no_such_statement(unquoted(name)), simple=True)
            return
        status = self.backend.tracker.status if self.backend is not None else TX_IDLE
        self.reply(protocol.command_complete(tag) + protocol.ready_for_query(bytes([status])))

    # --- the backend's answers --------------------------------------------------------------

    def backend_data(self, backend: Backend, data: bytes) -> None:
        """Bytes from the linked backend: the client's share written, the events acted on."""
        tracker = backend.tracker
        try:
            out, events = tracker.feed(data)
        except protocol.ProtocolError as exc:
            log.warning("backend pid=%s sent invalid data: %s", backend.pid, exc)
            backend.close()
            return
        ready = None
        for event in events:  # (before `out`: a hidden ParameterStatus may need telling first)
            if isinstance(event, Ready):
                ready = ready or event
                self._ready(event, backend)
            elif isinstance(event, Settled):
                self.names.settled(event.tag, event.ok, backend)
            elif isinstance(event, ParameterChanged):
                self._reported(event, backend)
            elif isinstance(event, ErrorSeen):
                self.ctx.metrics.backend_errors.labels(protocol.error_class(event.message)).inc()
                if self.state.tx_mode and b"C0A000\x00" in event.message and b"cached plan must" in event.message:
                    backend.needs_discard = True  # DISCARD ALL before the next client; prepared again then
                    self.names.plan_changed()
        if self.tap is not None and self.tap.take(out, ready, len(tracker.queue)):
            self.tap = None
        state = self.state
        if state.ddl_sent and tracker.status == TX_IDLE:  # a bypass role's DDL committed (or not)
            state.ddl_sent = False
            self.ctx.refresh_schemas(state.database)
        if self.notes is not None and self.notes.held and tracker.idle:
            out = self.notes.ahead_of(out)
        if self.hold is not None and tracker.idle and self.hold(backend, out):
            return  # (held: `out` is delivered, and the backend released, later)
        if out and state.phase != CLOSED:
            self.shell.write(out)
        if tracker.idle:
            self.maybe_release()

    def _ready(self, ready: Ready, backend: Backend) -> None:
        """A Query or Sync answered: its round trip accounted, its cycle settled."""
        tag, failed = ready.tag, ready.error is not None
        if tag is params.ROLE_REPLAY:  # never run the client's statements as another role
            if failed:
                self.shell.fatal("08000", "pgwarden could not restore this session's role on a pooled backend")
            return
        self.accounting.answered(ready)
        if isinstance(tag, Cycle) and tag.statements and not failed and self.guard is not None:
            self.guard.cycle_accepted(tag.statements)
        committed = self.tx.ended(tag, failed, ready.status, backend.settings, not backend.tracker.queue)
        if self.notes is not None and self.notes.block:  # LISTEN/UNLISTEN in the block, applied at its COMMIT
            self.notes.settled(committed, ready.status)

    def _reported(self, changed: ParameterChanged, backend: Backend) -> None:
        """The backend says a setting changed: tracked; told to the client if it did not get it (a
        replay's) and it differs from what it was told (`reported.changed`)."""
        track = self.state.tx_mode or self.guard is not None
        if reported.changed(self.state, changed.message, backend.settings, track) and changed.hidden:
            self.shell.write(changed.message)
