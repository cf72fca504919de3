"""A client's prepared statements under transaction pooling: its names mapped to proxy-wide statements, prepared lazily per backend."""

from __future__ import annotations

from proxy.pooling.backend import Backend
from proxy.pooling.prepared import Registry, Statement
from proxy.session import params
from proxy.wire import protocol
from proxy.wire.protocol import MSG_CLOSE, MSG_FLUSH, MSG_PARSE, MSG_SYNC, TARGET_STATEMENT
from proxy.wire.tracker import SWALLOW


def unquoted(name: str) -> str:
    """A statement name as PostgreSQL folds it: "Quoted" kept, otherwise lower case."""
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()


def names_statement(kind: int, msg: bytes) -> bool:
    """Does this Parse/Bind/Describe/Close involve a named prepared statement?"""
    if kind == MSG_PARSE:
        return msg[5] != 0
    if kind == protocol.MSG_BIND:  # (a named portal: decode to find the statement; of the unnamed one, it is not)
        return msg[6] != 0 if msg[5] == 0 else protocol.decode_bind_names(msg)[1] != ""
    return msg[5] == TARGET_STATEMENT and msg[6] != 0  # Describe/Close of a named statement


class Statements:
    """The statement names a client keeps while its backends change.

    Under transaction pooling each client statement name maps to a proxy-wide statement
    (keyed by its text and scope, `Registry`) prepared lazily on whichever backend serves
    the client. Inputs: the backend serving the client and the batch of messages being
    built for it (`out`), to which the Parses and Closes it needs are added in order.
    """

    __slots__ = ("_registry", "last_bound", "names", "unchecked", "unnamed", "unnamed_here")

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.names: dict[str, Statement] = {}  # the client's name -> the proxy-wide statement
        self.unchecked: set[Statement] = set()  # statements whose client Parse pgwarden answered without a backend
        self.unnamed: bytes | None = None  # the client's last unnamed Parse
        self.unnamed_here = False  # ... and whether the linked backend has it
        self.last_bound: Statement | None = None  # the statement of the last Bind sent

    def linked(self) -> None:
        """A backend now serves the client: it has none of the client's unnamed statement."""
        self.unnamed_here = False

    def parsed_unnamed(self, msg: bytes, here: bool = True) -> None:
        """The client's unnamed statement is (re)defined by `msg`, on the linked backend (not `here`:
        answered without it, by the result cache; prepared on a backend when next bound)."""
        self.unnamed, self.unnamed_here = msg, here

    def closed_unnamed(self) -> None:
        """The client closed its unnamed statement: it has none now (nor does the linked backend)."""
        self.unnamed, self.unnamed_here = None, False

    def lookup(self, name: str) -> Statement | None:
        return self.names.get(name)

    def remember(self, name: str, query: str, param_types: bytes, scope: str) -> None:
        """The client's `name` now stands for this text (prepared lazily where it is used)."""
        self.names[name] = self._registry.get(query, param_types, scope)

    def forget(self, name: str) -> Statement | None:
        """The client closed or deallocated `name`: what it stood for (None: nothing)."""
        return self.names.pop(name, None)

    def forget_all(self) -> None:
        self.names.clear()

    def deallocate(self, name: str) -> str | None:
        """SQL DEALLOCATE name (or ALL), answered without a backend: its command tag (None: no such name)."""
        if name.lower() == "all":
            self.forget_all()
            return "DEALLOCATE ALL"
        return None if self.forget(unquoted(name)) is None else "DEALLOCATE"

    def bound(self, stmt: Statement) -> None:
        """A Bind of `stmt` was sent: the statement a "cached plan must not change" error names."""
        self.last_bound = stmt

    def plan_changed(self) -> None:
        """The last statement bound no longer matches its table: the next Parse of its text gets
        a new name."""
        if self.last_bound is not None:
            self.last_bound.stale = True

    def answer_without_backend(self, msgs: list[tuple[int, bytes]]) -> bytes | None:
        """Parse (of statements a backend has already accepted), Close and Sync answered here;
        None when a backend is needed.

        A client outside a transaction that only prepares (pgbench -M prepared does so
        synchronously for each of its clients) need not wait for a backend.
        """
        statements = []
        for kind, msg in msgs:
            if kind == MSG_PARSE and msg[5] != 0:
                parsed = protocol.decode_parse(msg)
                stmt = self._registry.peek(parsed.query, parsed.param_types)
                if (
                    stmt is None
                    or not stmt.verified
                    or stmt.stale
                    or (params.maybe_stateful(parsed.query) and not params.plain_transaction_control(parsed.query))
                ):
                    return None  # (preparing BEGIN or COMMIT changes nothing: answered here)
                statements.append((parsed.name, stmt))
            elif not (kind in (MSG_SYNC, MSG_FLUSH) or (kind == MSG_CLOSE and names_statement(kind, msg))):
                return None
        out, parsed_names = [], iter(statements)
        for kind, msg in msgs:
            if kind == MSG_PARSE:
                name, stmt = next(parsed_names)
                self.names[name] = stmt
                self.unchecked.add(stmt)  # prepared afresh where it is first used
                out.append(protocol.PARSE_COMPLETE)
            elif kind == MSG_CLOSE:
                self.names.pop(protocol.decode_target(msg)[1], None)
                out.append(protocol.CLOSE_COMPLETE)
            elif kind == MSG_SYNC:
                out.append(protocol.ready_for_query(b"I"))
        return b"".join(out)

    def parse(self, msg: bytes, scope: str, backend: Backend, out: list[bytes]) -> None:
        """A client's named Parse: the proxy-wide statement prepared on the backend.

        The client's Parse is real: prepared again, so it sees today's table shapes and errors
        (the Close and the new Parse ride in the same write).
        """
        parsed = protocol.decode_parse(msg)
        stmt = self._registry.get(parsed.query, parsed.param_types, scope)
        self.names[parsed.name] = stmt
        if stmt.name in backend.statements:
            _close(stmt.name, backend, out)
        self.prepare_on_backend(stmt, backend, out, 0)

    def ensure_prepared(self, stmt: Statement, backend: Backend, out: list[bytes]) -> bool:
        """Make the statement exist on this backend; False when it went stale (the caller answers
        PostgreSQL's own error, `STALE_PLAN`)."""
        statements = backend.statements
        if stmt.stale and not statements.touch(stmt.name):
            # Prepared again it would answer in a shape this client was not told about.
            return False
        if stmt in self.unchecked:  # answered without a backend: prepare it for real now
            self.unchecked.discard(stmt)
            if stmt.name in statements:
                _close(stmt.name, backend, out)
        if not statements.touch(stmt.name):
            self.prepare_on_backend(stmt, backend, out, SWALLOW)
        return True

    def prepare_on_backend(self, stmt: Statement, backend: Backend, out: list[bytes], action: int) -> None:
        statements, tracker = backend.statements, backend.tracker
        evicted = statements.add(stmt.name)
        if evicted is not None:
            out.append(protocol.target(b"C", "S", evicted))
            tracker.request(MSG_CLOSE, SWALLOW)
        if statements.settle(stmt.name):
            out.append(protocol.target(b"C", "S", stmt.name))  # (no error if it is not there)
            tracker.request(MSG_CLOSE, SWALLOW)
        out.append(stmt.parse)
        tracker.request(MSG_PARSE, action, tag=stmt)

    @staticmethod
    def settled(tag: object, ok: bool, backend: Backend) -> None:
        """A proxy-wide statement's Parse answered: verified, or in doubt on this backend."""
        if isinstance(tag, Statement):
            if ok:
                tag.verified = True
            else:
                backend.statements.doubt(tag.name)

    def ensure_unnamed(self, backend: Backend, out: list[bytes]) -> bool:
        """Prepare the client's unnamed statement again on a backend that never saw it (False:
        the client has none).

        A client may Parse the unnamed statement in one Sync cycle and Bind it in the
        next; under transaction pooling that next cycle can land on another backend,
        whose unnamed statement is someone else's.
        """
        if self.unnamed_here:
            return True
        if self.unnamed is None:
            return False
        out.append(self.unnamed)
        backend.tracker.request(MSG_PARSE, SWALLOW)
        self.unnamed_here = True
        return True


def _close(name: str, backend: Backend, out: list[bytes]) -> None:
    """Close statement `name` on the backend, its answer hidden."""
    out.append(protocol.target(b"C", "S", name))
    backend.tracker.request(MSG_CLOSE, SWALLOW)
    backend.statements.discard(name)


STALE_PLAN = protocol.error_response(
    "0A000", "cached plan must not change result type", routine="RevalidateCachedQuery"
)
