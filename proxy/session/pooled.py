"""What transaction pooling adds to a client session: statement names, session state, pinning."""

from __future__ import annotations

import logging
import re

from proxy.pooling.backend import Backend
from proxy.pooling.prepared import Statement
from proxy.session import params
from proxy.session.txstate import CONTROL, TxState
from proxy.wire import protocol
from proxy.wire.tracker import SWALLOW

log = logging.getLogger("pgwarden.session")

_P, _B, _D, _C, _S, _H, _Q = (ord(c) for c in "PBDCSHQ")
_I, _E = ord("I"), ord("E")

_DEALLOCATE = re.compile(r"\s*deallocate\s+(?:prepare\s+)?(all|\"(?:[^\"]|\"\")+\"|\w+)\s*;?\s*$", re.I | re.S)


_SESSION_MODE = "use pool.mode: session for this application"
_PREPARE_FIRST = "prepare it on this connection first (a Parse message); names are per connection"
_TX_REFUSED = {  # statements whose effect transaction pooling cannot keep: (what, hint)
    "listen": ("LISTEN", f"{_SESSION_MODE}: notifications need a backend of their own"),
    "prepare": (
        "SQL PREPARE",
        "use protocol-level prepared statements (every driver's "
        f"default; pgwarden keeps them under transaction pooling), or {_SESSION_MODE}",
    ),
    "identity": ("SET {name}", f"{_SESSION_MODE}, or connect as the role you need"),
}
_SHARED_NAMES = (
    "the backend is shared, and the prepared statements on it are other clients' (under names they never chose)"
)
_TX_NAMED = {  # statements that name a prepared statement pgwarden cannot map: (message, hint)
    "execute": (
        f"SQL EXECUTE is not supported in transaction pooling mode: {_SHARED_NAMES}",
        "use protocol-level prepared statements (Parse/Bind: every driver's default; "
        f"pgwarden keeps them per client), or {_SESSION_MODE}",
    ),
    "deallocate": (
        "DEALLOCATE in a multi-statement query or after a comment is not supported "
        f"in transaction pooling mode: {_SHARED_NAMES}",
        "send DEALLOCATE name (or DEALLOCATE ALL) as a query of its own",
    ),
}


def names_statement(kind: int, msg: bytes) -> bool:
    """Does this Parse/Bind/Describe/Close involve a named prepared statement?"""
    if kind == _P:
        return msg[5] != 0
    if kind == _B:
        return msg[5] != 0 or msg[6] != 0  # a named portal: decode to find the statement
    return msg[5] == 83 and msg[6] != 0  # Describe/Close 'S' with a name


class Pooled(TxState):
    """Mixin for Session: the statements and settings a client keeps while its backends change.

    Under transaction pooling each client statement name maps to a proxy-wide
    statement (keyed by its text) prepared lazily on whichever backend serves the
    client; SET/RESET are tracked and replayed; what cannot survive a change of
    backend is refused, or pins the client to its backend.
    """

    unchecked: set  # statements whose client Parse pgwarden answered without a backend
    last_bound: Statement | None = None  # the statement of this client's last Bind

    def _answer_without_backend(self, msgs: list[tuple[int, bytes]]) -> bool:
        """Parse of statements some backend already accepted, Close, Sync: answered here.

        A client outside a transaction that only prepares (pgbench -M prepared does so
        synchronously for each of its clients) need not wait for a backend.
        """
        statements = []
        for kind, msg in msgs:
            if kind == _P and msg[5] != 0:
                parsed = protocol.decode_parse(msg)
                stmt = self.server.statements.peek(parsed.query, parsed.param_types)
                if (
                    stmt is None
                    or not stmt.verified
                    or stmt.stale
                    or (params.maybe_stateful(parsed.query) and not params.plain_transaction_control(parsed.query))
                ):
                    return False  # (preparing BEGIN or COMMIT changes nothing: answered here)
                statements.append((parsed.name, stmt))
            elif not (kind in (_S, _H) or (kind == _C and msg[5] == 83 and msg[6] != 0)):
                return False
        out, parsed_names = [], iter(statements)
        for kind, msg in msgs:
            if kind == _P:
                name, stmt = next(parsed_names)
                self.statements[name] = stmt
                self.unchecked.add(stmt)  # prepared afresh where it is first used
                out.append(protocol.PARSE_COMPLETE)
            elif kind == _C:
                self.statements.pop(protocol.decode_target(msg)[1], None)
                out.append(protocol.CLOSE_COMPLETE)
            elif kind == _S:
                out.append(protocol.ready_for_query(b"I"))
        self.transport.write(b"".join(out))
        return True

    def _session_statement(self, sql: str, simple: bool) -> bool:
        """Track or refuse what a statement does to session state; False if it was refused/answered."""
        if self.tx_mode and simple and (match := _DEALLOCATE.match(sql)):
            self._deallocate(match.group(1))
            return False
        effects = params.effects(sql)
        refusal = self._refusal(effects)
        if refusal:
            self.refuse(*refusal, simple=simple)
            return False
        backend = self.backend
        if self.ident is not None and not self.tx_mode:
            self._sql_names(effects, simple)
        if self.tx_mode and params.leaves_state(sql) and not self.pinned:
            backend.dirty = self.pinned = True  # type: ignore[union-attr]
            log.info(
                "client %s pinned to backend pid=%s for the rest of its session: it created "
                "a temporary table, took a session advisory lock, a WITH HOLD cursor or "
                "called set_config() on a setting that cannot be tracked",
                self.peer,
                backend.pid,
            )  # type: ignore[union-attr]
        for effect in effects:
            if effect.kind in ("execute", "deallocate"):
                continue  # no session setting changes
            self._changing(effect)
            if effect.kind in CONTROL:
                self._control(effect)
                continue
            params.apply(self.settings, effect)
            params.apply(backend.settings, effect)  # type: ignore[union-attr]
            if effect.kind == "discard_all":
                self.statements.clear()
                backend.statements.clear()  # type: ignore[union-attr]
            if self.ident is not None and (
                effect.kind in ("reset_all", "discard_all") or effect.name == self.server.router.tenant_setting
            ):
                self._watch_tenant()  # a tenant change: known now, unless it fails
                if effect.kind != "local":
                    self.tenant_unknown = False
        return True

    def _sql_names(self, effects: list[params.Effect], simple: bool) -> None:
        """A policed session's SQL PREPARE / DEALLOCATE: which scopes each name may hold."""
        backend = self.backend
        sure = simple and len(effects) == 1 and backend.tracker.idle and backend.tracker.status != _E  # type: ignore[union-attr]  # (not in a failed transaction)
        for effect in effects:
            if effect.kind == "prepare":
                self.sql_names.prepare(effect.name, self.statement_scope())
            elif effect.kind == "deallocate":
                self.sql_names.deallocate(effect.name, sure)
            elif effect.kind == "discard_all":
                self.sql_names.deallocate("", sure)

    def _stateful_parse(self, msg: bytes, out: list[bytes]) -> bytes | None:
        """A Parse that may change session state: tracked, refused (None) or renamed.

        DEALLOCATE under transaction pooling names the proxy-wide statement (prepared
        here first if needed); DEALLOCATE ALL runs as written and this backend's
        statements are forgotten, so they are prepared again when next used.
        """
        parsed = protocol.decode_parse(msg)
        if self.tx_mode and (match := _DEALLOCATE.match(parsed.query)):
            backend = self.backend
            target = match.group(1)
            if target.lower() == "all":
                self.statements.clear()
                backend.statements.clear()  # type: ignore[union-attr]
                return msg
            name = target[1:-1].replace('""', '"') if target.startswith('"') else target.lower()
            stmt = self.statements.pop(name, None)
            if stmt is None:  # never to the backend, where the name may be another client's
                self._no_such_statement(name)
                return None
            if not self._ensure_prepared(stmt, out):
                return None
            backend.statements.discard(stmt.name)  # type: ignore[union-attr]
            return protocol.parse(parsed.name, f'DEALLOCATE "{stmt.name}"', parsed.param_types)
        return msg if self._session_statement(parsed.query, False) else None

    def _refusal(self, effects: list[params.Effect]) -> tuple[str, str, str] | None:
        """(SQLSTATE, message, hint) for a statement whose effect cannot be kept, else None."""
        for effect in effects:
            if self.ident is not None and effect.kind == "local" and effect.name == "search_path":
                return (
                    "42501",
                    "SET LOCAL search_path is refused: pgwarden resolves table names with the session's search_path",
                    "use SET search_path (pgwarden tracks it), or schema-qualified names",
                )
            if self.ident is not None and effect.kind == "listen":
                return (
                    "42501",
                    "LISTEN is refused under a policy: notification channels are not "
                    "tenant-scoped, so one tenant could receive another's payloads",
                    "use a bypass role for LISTEN, or deliver events through a tenant-scoped table",
                )
            if self.tx_mode and effect.kind in _TX_NAMED:
                return ("0A000", *_TX_NAMED[effect.kind])
            if effect.kind == "execute" and self.ident is not None:
                refusal = (
                    self.sql_names.refusal(effect.name, self.statement_scope())
                    or self.stale_refusal(effect.name)
                    or self.execute_refusal(effect.name, effect.args)
                )
                if refusal is not None:
                    return refusal
            if self.tx_mode and effect.kind in _TX_REFUSED:
                what, hint = _TX_REFUSED[effect.kind]
                what = what.format(name=effect.name.upper())
                return (
                    "0A000",
                    f"{what} is not supported in transaction pooling mode: its "
                    "effect would outlive this transaction on a backend that other clients "
                    "share",
                    hint,
                )
        return None

    def _deallocate(self, name: str) -> None:
        if name.lower() == "all":
            self.statements.clear()
            tag = "DEALLOCATE ALL"
        else:
            name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
            if self.statements.pop(name, None) is None:
                self.refuse("26000", f'prepared statement "{name}" does not exist', _PREPARE_FIRST, True)
                return
            tag = "DEALLOCATE"
        status = self.backend.tracker.status if self.backend is not None else _I
        self.reply(protocol.command_complete(tag) + protocol.ready_for_query(bytes([status])))

    def _extended_tx(self, kind: int, msg: bytes, out: list[bytes]) -> None:
        """Parse/Bind/Describe/Close under transaction pooling: client names -> proxy-wide names."""
        backend = self.backend
        tracker = backend.tracker  # type: ignore[union-attr]
        if kind == _P:
            parsed = protocol.decode_parse(msg)
            if params.maybe_stateful(parsed.query):
                msg = self._stateful_parse(msg, out)  # type: ignore[assignment]
                if msg is None:
                    return
                parsed = protocol.decode_parse(msg)
            stmt = self.server.statements.get(parsed.query, parsed.param_types, self.statement_scope())
            self.statements[parsed.name] = stmt
            if stmt.name in backend.statements:  # type: ignore[union-attr]
                # The client's Parse is real: prepared again, so it sees today's table shapes
                # and errors (the Close and the new Parse ride in the same write).
                out.append(protocol.target(b"C", "S", stmt.name))
                tracker.request(_C, SWALLOW)
                backend.statements.discard(stmt.name)  # type: ignore[union-attr]
            self._prepare_on_backend(stmt, out, 0)
            return
        if kind == _B:
            _, name, _ = protocol.decode_bind_names(msg)
            stmt = self.statements.get(name) if name else None
            if name and stmt is None:
                self._no_such_statement(name)
                return
            if stmt is not None:
                if not self._ensure_prepared(stmt, out):
                    return
                self.last_bound = stmt
                msg = protocol.rename_bind(msg, stmt.name)
        else:
            which, name = protocol.decode_target(msg)
            if which == "S" and name:
                if kind == _C:
                    self.statements.pop(name, None)
                    self.reply(protocol.CLOSE_COMPLETE)
                    return
                stmt = self.statements.get(name)
                if stmt is None:
                    self._no_such_statement(name)
                    return
                if not self._ensure_prepared(stmt, out):
                    return
                msg = protocol.target(b"D", "S", stmt.name)
        tracker.request(kind)
        out.append(msg)

    def _no_such_statement(self, name: str) -> None:
        """A statement name this client never prepared: PostgreSQL's own error, and the name
        never reaches the backend (where it could be another client's statement)."""
        self.refuse("26000", f'prepared statement "{name}" does not exist', _PREPARE_FIRST, simple=False)

    def _restore_unnamed(self, out: list[bytes]) -> None:
        """Prepare the client's unnamed statement again on a backend that never saw it.

        A client may Parse the unnamed statement in one Sync cycle and Bind it in the
        next; under transaction pooling that next cycle can land on another backend,
        whose unnamed statement is someone else's.
        """
        out.append(self._unnamed)  # type: ignore[arg-type]
        self.backend.tracker.request(_P, SWALLOW)  # type: ignore[union-attr]
        self._unnamed_here = True

    def _ensure_prepared(self, stmt: Statement, out: list[bytes]) -> bool:
        """Make the statement exist on this backend; False (refused) when it went stale."""
        backend = self.backend
        if stmt.stale and not backend.statements.touch(stmt.name):  # type: ignore[union-attr]
            # Prepared again it would answer in a shape this client was not told about:
            # PostgreSQL's own error, so the client prepares it again (as drivers do).
            self.reply(
                protocol.error_response(
                    "0A000", "cached plan must not change result type", routine="RevalidateCachedQuery"
                )
            )
            self.skipping = True
            return False
        if stmt in self.unchecked:  # answered without a backend: prepare it for real now
            self.unchecked.discard(stmt)
            if stmt.name in backend.statements:  # type: ignore[union-attr]
                out.append(protocol.target(b"C", "S", stmt.name))
                backend.tracker.request(_C, SWALLOW)  # type: ignore[union-attr]
                backend.statements.discard(stmt.name)  # type: ignore[union-attr]
        if not backend.statements.touch(stmt.name):  # type: ignore[union-attr]
            self._prepare_on_backend(stmt, out, SWALLOW)
        return True

    def _prepare_on_backend(self, stmt: Statement, out: list[bytes], action: int) -> None:
        backend = self.backend
        evicted = backend.statements.add(stmt.name)  # type: ignore[union-attr]
        if evicted is not None:
            out.append(protocol.target(b"C", "S", evicted))
            backend.tracker.request(_C, SWALLOW)  # type: ignore[union-attr]
        if backend.statements.settle(stmt.name):  # type: ignore[union-attr]
            out.append(protocol.target(b"C", "S", stmt.name))  # (no error if it is not there)
            backend.tracker.request(_C, SWALLOW)  # type: ignore[union-attr]
        out.append(stmt.parse)
        backend.tracker.request(_P, action, tag=stmt)  # type: ignore[union-attr]

    def _reported(self, backend: Backend, messages: list[bytes]) -> None:
        """The backend says a setting changed (however: SET, set_config(), ROLLBACK): track it."""
        if self.tx_mode or self.ident is not None:
            for msg in messages:
                name, pos = protocol.read_cstr(msg, 5)
                text = params.reported_setting(name, protocol.read_cstr(msg, pos)[0])
                if text is not None:
                    self.settings[name.lower()] = backend.settings[name.lower()] = text
        messages.clear()

    def _backend_errors(self, backend: Backend, errors: list[bytes]) -> None:
        """After a table changed shape, the statements on this backend are stale: reset it."""
        counter = self.server.metrics.backend_errors
        for msg in errors:
            at = msg.find(b"\x00C", 4)
            counter.labels(msg[at + 2 : at + 4].decode("ascii", "replace") if at >= 0 else "??").inc()
            if self.tx_mode and b"C0A000\x00" in msg and b"cached plan must not change" in msg:
                backend.dirty = True  # DISCARD ALL before the next client; prepared again then
                if self.last_bound is not None:
                    self.last_bound.stale = True  # the next Parse of its text gets a new name
        errors.clear()
