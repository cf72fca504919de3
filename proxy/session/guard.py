"""The policy guard of a session: each statement decided by the router under its tenant and search path, Bind checks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from proxy.enforce.decisions import declared_type, tenant_bound
from proxy.enforce.router import Forward, Identity, Refuse, Router, SetTenant, tenant_parameter_types
from proxy.ops.metrics import Metrics
from proxy.ops.stats import QueryStats
from proxy.pooling.backend import Backend
from proxy.session import params
from proxy.session.accounting import AUDIT_FULL, Accounting
from proxy.session.held import Versions
from proxy.session.policed import Prepared, current_tenant, search_path_of, unknown_tenant
from proxy.session.sql_names import SqlNames
from proxy.session.state import Refusal, SessionState
from proxy.session.statements import Statements
from proxy.session.txstate import Transaction
from proxy.wire import protocol
from proxy.wire.protocol import MSG_BIND, MSG_CLOSE, MSG_PARSE, TARGET_STATEMENT
from proxy.wire.tracker import SWALLOW

log = logging.getLogger("pgwarden.guard")

_NAMED_TENANT_CHANGE = Refusal(
    "0A000",
    "a tenant change cannot be prepared as a named statement: pgwarden applies "
    "it when it reads the SET, and a later Bind of the statement would not change "
    "the tenant",
    "send SET pgwarden.tenant as a simple query or an unnamed statement "
    "(psycopg: execute(..., prepare=False); asyncpg: execute())",
)
_PARSES_CAP = 256
_NAME_MAX = 63  # bytes of a name PostgreSQL keeps (NAMEDATALEN - 1)


class Passed(NamedTuple):
    """A statement the policy lets through: the text to send, and the decision."""

    text: str
    decision: Forward


class CachedParse(NamedTuple):
    """A client's Parse as policed once, reused while policy, tenant and search path hold."""

    router: Router
    tenant: str | None
    search_path: tuple[str, ...] | None
    prepared: Prepared | None
    parse: bytes  # the policed Parse sent for it
    generation: int


def login_refusal(
    router: Router, ident: Identity, database: str, client_params: dict[str, str], settings: dict[str, str]
) -> Refusal | None:
    """Why a policed client may not log in (a FATAL), or None."""
    if any(k.startswith("pgwarden.") for k in client_params):
        return Refusal("42501", "pgwarden settings cannot be given as startup parameters", "SET them after connecting")
    if ident.bypass:
        return None
    for text in settings.values():  # startup parameters are SETs under the policy too
        decision = router.decide(ident, ident.tenant, database, text)
        if isinstance(decision, Refuse):
            return Refusal("42501", f"startup parameter refused: {decision.message}", decision.hint)
    return None


def version_refusal(
    router: Router | None, ident: Identity | None, database: str, server_params: dict[str, str]
) -> Refusal | None:
    """Why pgwarden cannot judge a policed client's statements for this database's backend (a
    FATAL 0A000): an unsupported PostgreSQL major, or one other than the control plane read."""
    if router is None or ident is None:
        return None
    problem = router.version_problem(database, server_params.get("server_version", ""))
    return None if problem is None else Refusal("0A000", *problem)


class Guard:
    """What policy enforcement adds to a client session (only for a policed identity).

    Inputs: the session's state (identity, tracked settings and tenant), the router in force,
    and the transaction part (which cycle a statement name was sent in). Outputs: the text
    or Parse to send, or a `Refusal` the session answers with; metrics and the audit trail.
    """

    __slots__ = (
        "_accounting",
        "_caching",
        "_metrics",
        "_parses",
        "_router",
        "_state",
        "_stats",
        "_tx",
        "sql_names",
        "versions",
    )

    def __init__(
        self,
        state: SessionState,
        router: Callable[[], Router | None],
        metrics: Metrics,
        stats: QueryStats,
        transaction: Transaction,
        accounting: Accounting,
    ) -> None:
        self._caching = not accounting.auditing  # reuse policed Parses (not with an audit trail: each is recorded)
        self._state, self._router, self._metrics, self._stats = state, router, metrics, stats
        self._tx, self._accounting = transaction, accounting
        self.versions: Versions[Prepared] = Versions()  # what each client statement name ("" = unnamed) may hold
        self.sql_names = SqlNames()  # names PREPAREd in SQL, and whom they were rewritten for
        self._parses: dict[bytes, CachedParse] = {}  # a client's Parse -> the policed Parse built for it

    @property
    def router(self) -> Router:
        router = self._router()
        assert router is not None  # a guard exists only under a policy (a reload keeps one)
        return router

    def tenant(self) -> str | None:
        return current_tenant(self._state, self._router())

    def statement_scope(self) -> str:
        """Who a proxy-wide statement is prepared for: tenant, roles and policy version (load
        and schema generation)."""
        ident, router = self._state.ident, self.router
        assert ident is not None
        version = f"{router.policy.version}.{router.serial}.{router.generation}"
        return "\x00".join((repr(self.tenant()), ",".join(sorted(ident.roles)), version))

    def search_path(self) -> tuple[str, ...] | None:
        text = self._state.settings.get("search_path")
        return search_path_of(text) if text else None

    def check_text(self, sql: str, simple: bool, name: str | None = None) -> Passed | Refusal:
        """The text to send for a client's statement, or why it is refused."""
        state, router = self._state, self.router
        assert state.ident is not None
        tenant = self.tenant()
        decision = router.decide(state.ident, tenant, state.database, sql, self.search_path())
        protocol_name = "simple" if simple else "extended"
        if isinstance(decision, Forward):
            self.counted(decision, simple)
            if not self._accounting.statement(sql, simple, decision, tenant, name):
                return AUDIT_FULL
            return Passed(sql if decision.sql is None else decision.sql, decision)
        self._metrics.statement(protocol_name, "refused", tenant=tenant)
        self._stats.refusal(sql)
        if isinstance(decision, Refuse):
            if state.tenant_unknown and state.local_tenant is None:
                decision = unknown_tenant(decision, router.tenant_setting)
            self._metrics.refusals.labels(decision.rule).inc()
            self._accounting.statement(sql, simple, decision, tenant)
            log.info("refused for user=%s tenant=%s (%s): %s", state.user, tenant, decision.rule, decision.message)
            return Refusal(decision.sqlstate, decision.message, decision.hint)
        return self._set_tenant(decision, name)

    def counted(self, decision: Forward, simple: bool) -> None:
        """A statement the router forwards (or whose answer the result cache gives), in the metrics."""
        kind = "allowed" if decision.sql is None else "rewritten"
        self._metrics.statement("simple" if simple else "extended", kind, tenant=self.tenant())

    def _set_tenant(self, decision: SetTenant, name: str | None) -> Passed | Refusal:
        if name:  # a named statement: PostgreSQL would run it again at each Bind, without pgwarden seeing a SET
            self._metrics.refusals.labels("tenancy.sources").inc()
            return _NAMED_TENANT_CHANGE
        if decision.local:
            state = self._state
            ident = state.ident
            state.local_tenant = decision.tenant if decision.tenant is not None else (ident.tenant if ident else None)
        return Passed(decision.sql, Forward(decision.sql))

    def check_parse(self, msg: bytes) -> bytes | Refusal:
        """A Parse with the policy applied (rewritten text), or why it is refused.

        A client that sends the same Parse again (unnamed statements, every time) under the
        same policy, tenant and search_path gets the Parse built the first time.
        """
        router, tenant, path = self.router, self.tenant(), self.search_path()
        hit = self._parses.get(msg)
        if (
            hit is not None
            and hit.router is router
            and hit.tenant == tenant
            and hit.search_path == path
            and hit.generation == router.generation
            and self._caching
        ):
            self.statement_sent(protocol.decode_parse(msg).name if msg[5] else "", hit.prepared)
            self._metrics.statement("extended", "rewritten" if hit.parse is not msg else "allowed", tenant=tenant)
            return hit.parse
        out = self._check_parse(msg)
        if not isinstance(out, Refusal):
            if len(self._parses) > _PARSES_CAP:
                self._parses.clear()
            name = protocol.decode_parse(msg).name if msg[5] else ""
            latest = self.versions.latest(name)
            self._parses[msg] = CachedParse(router, tenant, path, latest, out, router.generation)
        return out

    def _check_parse(self, msg: bytes) -> bytes | Refusal:
        parsed = protocol.decode_parse(msg)
        checked = self.check_text(parsed.query, simple=False, name=parsed.name)
        if isinstance(checked, Refusal):
            return checked
        state, router = self._state, self.router
        assert state.ident is not None
        refused = router.parameter_types(state.ident, state.database, parsed.param_types)
        if refused is None:
            refused = tenant_parameter_types(parsed.param_types, checked.decision.param_checks)
        if refused is not None:
            self._metrics.refusals.labels(refused.rule).inc()
            return Refusal(refused.sqlstate, refused.message, refused.hint)
        prepared = Prepared(
            parsed.query, parsed.param_types, checked.decision.param_checks, router, self.tenant(), router.generation
        )
        self.statement_sent(parsed.name, prepared)
        if checked.text == parsed.query:
            return msg
        return protocol.parse(parsed.name, checked.text, parsed.param_types)

    def forwarded_parse(self, parsed: protocol.Parse) -> tuple[Forward, Prepared] | None:
        """An unnamed Parse as `check_parse` would pass it, without its side effects: when the policy
        forwards it with nothing to check at Bind, the decision and what the name would hold (the result
        cache may answer its batch: `answered_parse`); else None."""
        state, router = self._state, self.router
        if state.ident is None or state.tenant_unknown or parsed.name:
            return None
        tenant = self.tenant()
        decision = router.decide(state.ident, tenant, state.database, parsed.query, self.search_path())
        if not isinstance(decision, Forward) or decision.param_checks:
            return None
        if router.parameter_types(state.ident, state.database, parsed.param_types) is not None:
            return None
        return decision, Prepared(parsed.query, parsed.param_types, (), router, tenant, router.generation)

    def answered_parse(self, prepared: Prepared) -> None:
        """The result cache answered a batch with an unnamed Parse (`forwarded_parse`): the unnamed
        statement holds it now, for sure (no backend saw it; the next Bind prepares it on one first)."""
        self.versions.sent("", prepared, True)

    def runs_as_is(self, name: str) -> bool:
        """Would a Bind of the named statement be sent as it is, with nothing to check or prepare again
        (all it may hold current, no tenant parameter, not a name PREPAREd in SQL)?"""
        held = self.versions.candidates(name)
        return (
            bool(held) and all(not p.checks and self._current(p) for p in held) and self.sql_name_refusal(name) is None
        )

    def statement_sent(self, name: str, prepared: Prepared | None) -> None:
        """A Parse (a Close: None) of a statement name goes to the backend: until its cycle ends
        without an error, the name may hold this or what it held before (`held.Versions`)."""
        sure = self._state.tx_mode and name != ""  # pgwarden's own mapping
        serial = self.versions.sent(name, prepared, sure)
        if not sure:
            self._tx.next_cycle().statements[name] = serial

    def cycle_accepted(self, statements: dict[str, int]) -> None:
        """A cycle ended without an error: each name holds what its last Parse in it sent."""
        self.versions.accepted(statements)

    def _current(self, prepared: Prepared) -> bool:
        router = self.router
        return (
            prepared.router is router and prepared.tenant == self.tenant() and prepared.generation == router.generation
        )

    def _bound(self, name: str) -> list[Prepared]:
        """What a Bind of `name` sent now may run: the last Parse of it when that was sent in this
        cycle (the Bind runs only if it succeeded), else every statement the name may hold."""
        if self._tx.sent_in_cycle(name):
            latest = self.versions.latest(name)
            return [latest] if latest is not None else []
        return self.versions.candidates(name)

    def stale_statement(self, name: str) -> bytes | Refusal:
        """A named statement prepared under another policy version or tenant: its new Parse.

        Returns the Parse to send again (rewritten now), b"" when it is current or unknown,
        or why the statement is now refused.
        """
        if all(self._current(p) for p in self._bound(name)):
            return b""
        latest = self.versions.latest(name)
        if latest is None:  # closed, but the Close may have been skipped: not run under the old tenant
            return self._stale_refusal(name)
        return self._check_parse(protocol.parse(name, latest.query, latest.param_types))

    def stale_refusal(self, name: str) -> Refusal | None:
        """SQL EXECUTE of a protocol-level statement prepared under another tenant or policy
        version: why it is refused; None when it is current or not one of them."""
        if all(self._current(p) for p in self.versions.candidates(name)):
            return None
        return self._stale_refusal(name)

    @staticmethod
    def _stale_refusal(name: str) -> Refusal:
        return Refusal(
            "42501",
            f"EXECUTE {name} is refused: the statement was prepared (rewritten) under "
            "another tenant or policy version than this session has now",
            "run it with Bind (pgwarden prepares it again for the current tenant), or prepare it again",
        )

    def execute_refusal(self, name: str, args: tuple[params.Arg, ...]) -> Refusal | None:
        """SQL EXECUTE of a protocol-level statement whose tenant value is a parameter: each such
        argument must be a plain literal equal to the session's tenant, as a Bind's value must be."""
        for prepared in self.versions.candidates(name):
            for number, expected in prepared.checks:
                arg = args[number - 1] if number <= len(args) else None
                if arg is not None and arg.literal and arg.value == expected:
                    continue
                return Refusal(
                    "42501",
                    f"EXECUTE {name} is refused: argument ${number} sets the tenant "
                    f"column and is {_shown(arg)}, but this session's tenant is {expected!r}",
                    "pass the session's own tenant as a plain string literal, or run the statement with Bind",
                )
        return None

    def sql_execute_refusal(self, name: str, args: tuple[params.Arg, ...]) -> Refusal | None:
        """SQL EXECUTE name: refused when what the name holds may not run now."""
        refusal = self.sql_names.refusal(name, self.statement_scope())
        if refusal is not None:
            return Refusal(*refusal)
        return self.stale_refusal(name) or self.execute_refusal(name, args)

    def sql_name_refusal(self, name: str) -> Refusal | None:
        """A Bind or Describe of a name PREPAREd in SQL, for another tenant or policy version."""
        refusal = self.sql_names.refusal(name, self.statement_scope()) if name else None
        return None if refusal is None else Refusal(*refusal)

    def sql_names_changed(self, effects: list[params.Effect], sure: bool) -> None:
        """A policed session's SQL PREPARE / DEALLOCATE (session pooling): which scopes each
        name may hold; `sure` when the outcome will be known for certain."""
        for effect in effects:
            if effect.kind == "prepare":
                self.sql_names.prepare(effect.name, self.statement_scope())
            elif effect.kind == "deallocate":
                self.sql_names.deallocate(effect.name, sure)
            elif effect.kind == "discard_all":
                self.sql_names.deallocate("", sure)

    def check_bind(self, msg: bytes) -> Refusal | None:
        """Check tenant-column parameters at Bind: why it is refused when one may write another tenant
        (its value, as PostgreSQL reads it in its format and the type each statement it may run declares)."""
        bound = [p for p in self._bound(protocol.decode_bind_names(msg)[1]) if p.checks]
        if not bound:
            return None
        values = protocol.bind_params(msg)
        binary = protocol.bind_binary(msg, len(values))
        for prepared in bound:
            for number, expected in prepared.checks:
                value = values[number - 1] if number <= len(values) else None
                is_binary = binary[number - 1] if number <= len(binary) else False
                if tenant_bound(value, expected, is_binary, declared_type(prepared.param_types, number)):
                    continue
                shown = "NULL" if value is None else repr(value.decode("utf-8", "replace"))
                if is_binary and value is not None:
                    shown = f"a {len(value)}-byte binary value"
                return Refusal(
                    "42501",
                    f"INSERT refused: parameter ${number} sets the tenant column to {shown}, "
                    f"but this session's tenant is {expected!r}",
                    "omit the tenant column (pgwarden fills it in) or pass the session's own tenant "
                    "(in binary format only as text or varchar, or an integer type for a numeric tenant)",
                )
        return None

    def extended(
        self, kind: int, msg: bytes, backend: Backend, out: list[bytes], names: Statements, tx_mode: bool
    ) -> bytes | Refusal:
        """A Parse rewritten under the policy; a stale named statement prepared again (into `out`);
        a Bind checked. The message to send, or the refusal."""
        if kind == MSG_PARSE:
            if msg.index(b"\0", 5) > 5 + _NAME_MAX:
                return _long_name(protocol.decode_parse(msg).name)
            return self.check_parse(msg)
        if kind == MSG_BIND:
            name = protocol.decode_bind_names(msg)[1]
        elif msg[5] == TARGET_STATEMENT:  # Describe or Close of a statement
            name = protocol.decode_target(msg)[1]
        else:
            return msg
        if len(name) > _NAME_MAX // 4 and len(name.encode()) > _NAME_MAX:
            return _long_name(name)
        if kind == MSG_CLOSE:
            self.statement_sent(name, None)
            if tx_mode and not name:  # (gone for good: a Bind of it alone finds none, 26000, never the old rewrite)
                names.closed_unnamed()
            return msg
        fresh = self.sql_name_refusal(name) or self.stale_statement(name)
        if isinstance(fresh, Refusal):  # e.g. a name PREPAREd in SQL for another tenant or policy version
            return fresh
        if fresh and tx_mode and name:
            parsed = protocol.decode_parse(fresh)
            names.remember(name, parsed.query, parsed.param_types, self.statement_scope())
        elif fresh:
            tracker = backend.tracker
            out += (protocol.target(b"C", "S", name), fresh)
            tracker.request(MSG_CLOSE, SWALLOW)
            tracker.request(MSG_PARSE, SWALLOW)
            if tx_mode:  # the unnamed statement: this backend has it now, rewritten afresh
                names.parsed_unnamed(fresh)
        if kind == MSG_BIND:
            refused = self.check_bind(msg)
            if refused is not None:
                return refused
        return msg


def _long_name(name: str) -> Refusal:
    """A statement name PostgreSQL would cut to its first 63 bytes, as it keys it, unlike the guard."""
    return Refusal(
        "42622",
        f"the statement name {name[:24]!r}... is {len(name.encode())} bytes long: PostgreSQL keeps only "
        f"its first {_NAME_MAX} bytes, so pgwarden could not tell which statement a Bind of it runs",
        f"use statement names of at most {_NAME_MAX} bytes",
    )


def _shown(arg: params.Arg | None) -> str:
    """How an EXECUTE argument is told in a refusal."""
    if arg is None:
        return "missing"
    if arg.literal and arg.value is not None:
        return repr(arg.value)
    return "NULL" if arg.literal else "not a plain literal"
