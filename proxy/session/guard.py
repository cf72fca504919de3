"""A client session under policy: each statement decided by the router, its tenant and search path, Bind checks."""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass

from proxy.enforce.router import Forward, Identity, Refuse, Router, SetTenant, tenant_parameter_types
from proxy.session.held import Versions
from proxy.session.sql_names import SqlNames
from proxy.wire import protocol
from proxy.wire.tracker import SWALLOW
from rewriter import pgparser

log = logging.getLogger("pgwarden.guard")

_B, _C, _P = ord("B"), ord("C"), ord("P")
HIDDEN_DETAIL = "detail hidden by pgwarden: it can show other tenants' data"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A client's statement as the client wrote it, and the policy and tenant it was rewritten under."""

    query: str
    param_types: bytes
    checks: tuple[tuple[int, str], ...]
    router: Router
    tenant: str | None
    generation: int = 0  # the router's schema generation it was rewritten under


@functools.lru_cache(maxsize=1024)
def set_value(text: str) -> str | None:
    """The string value of a tracked `SET name TO 'value'` text (None if not a single string).

    >>> set_value("SET pgwarden.tenant TO 'acme'")
    'acme'
    """
    try:
        (raw,) = json.loads(pgparser.parse_sql_json(text))["stmts"]
        args = raw["stmt"]["VariableSetStmt"].get("args") or []
        return args[0]["A_Const"]["sval"]["sval"] if len(args) == 1 else None
    except Exception:
        return None


@functools.lru_cache(maxsize=256)
def search_path_of(text: str) -> tuple[str, ...] | None:
    """The schemas of a tracked `SET search_path ...` text.

    >>> search_path_of("SET search_path TO app, public")
    ('app', 'public')
    """
    try:
        (raw,) = json.loads(pgparser.parse_sql_json(text))["stmts"]
        args = raw["stmt"]["VariableSetStmt"].get("args") or []
    except Exception:
        return None
    out = []
    for arg in args:
        const = arg.get("A_Const", {})
        if "sval" in const:
            out += [s.strip() for s in const["sval"]["sval"].split(",") if s.strip()]
        elif "String" in arg:
            out.append(arg["String"]["sval"])
    return tuple(out)


def unknown_tenant(decision: Refuse, setting: str | None) -> Refuse:
    """A refusal for want of a tenant, told as what it is: the tenant was lost, not never set."""
    if not decision.message.endswith("this session has no tenant"):
        return decision
    return Refuse(
        decision.sqlstate,
        decision.message.replace(
            "this session has no tenant",
            "this session's tenant is unknown: a statement that "
            "changed it, or a SAVEPOINT, RELEASE or ROLLBACK TO, failed or ran in a batch that "
            "failed, so pgwarden cannot tell what PostgreSQL kept",
        ),
        f"SET {setting or 'pgwarden.tenant'} again (outside a failed transaction)",
        decision.rule,
    )


class Guarded:
    """Mixin for Session: what policy enforcement adds to a client connection.

    `ident` is None when no policy is loaded or the user is a bypass role: then every
    statement goes through untouched and none of this costs anything.
    """

    ident: Identity | None = None
    local_tenant: str | None = None  # SET LOCAL: this transaction only
    tenant_unknown = False  # a tenant change or savepoint failed: what PostgreSQL kept is unknown
    versions: Versions[Prepared]  # what each client statement name ("" = unnamed) may hold
    _audit_statements: dict[bytes, tuple]  # statement name -> (text, decision), for Bind records
    _audit_cycle: list[dict]  # records of Binds whose Sync has not been sent yet
    _parses: dict[bytes, tuple]  # a client's Parse -> the policed Parse built for it
    sql_names: SqlNames  # names PREPAREd in SQL (session pooling), and whom they were rewritten for

    def guard_login(self) -> bool:
        """Bind the session to its identity; False (and the client closed) when it may not log in."""
        router = self.server.router
        self.versions = Versions()
        self.sql_names = SqlNames()
        self._parses = {}
        self._audit_statements = {}
        self._audit_cycle = []
        if router is None:
            return True
        if any(k.startswith("pgwarden.") for k in self._client_params):
            self.fatal(
                "42501", "pgwarden settings cannot be given as startup parameters", hint="SET them after connecting"
            )
            return False
        ident = router.identity(self.user)
        self.ident = None if ident.bypass else ident
        if self.ident is not None:
            for text in self.settings.values():  # startup parameters are SETs under the policy too
                decision = router.decide(ident, ident.tenant, self.database, text)
                if isinstance(decision, Refuse):
                    self.fatal("42501", f"startup parameter refused: {decision.message}", hint=decision.hint)
                    return False
        return True

    def guard_version(self, server_params: dict[str, str]) -> bool:
        """False (and the client closed, FATAL 0A000) when pgwarden cannot judge statements for this
        database's backend: an unsupported PostgreSQL major, or one other than the control plane read."""
        router = self.server.router
        if router is None or self.ident is None:
            return True
        problem = router.version_problem(self.database, server_params.get("server_version", ""))
        if problem is not None:
            self.fatal("0A000", *problem)
            return False
        return True

    def tenant(self) -> str | None:
        if self.local_tenant is not None:
            return self.local_tenant
        if self.tenant_unknown:
            return None
        router = self.server.router
        text = self.settings.get(router.tenant_setting) if router and router.tenant_setting else None
        if text is not None:
            return set_value(text)
        return self.ident.tenant if self.ident is not None else None

    def statement_scope(self) -> str:
        """Who a proxy-wide statement is prepared for: "" for bypass sessions (their text is their
        own); tenant, roles and policy version (load and schema generation) for policed ones."""
        ident = self.ident
        if ident is None:
            return ""
        router = self.server.router
        return "\x00".join(
            (
                repr(self.tenant()),
                ",".join(sorted(ident.roles)),
                f"{router.policy.version}.{router.serial}.{router.generation}",
            )
        )  # type: ignore[union-attr]

    def search_path(self) -> tuple[str, ...] | None:
        text = self.settings.get("search_path")
        return search_path_of(text) if text else None

    def guard_text(self, sql: str, simple: bool, name: str | None = None) -> tuple[str, Forward] | None:
        """The text to send for a client's statement, or None when it was refused (already answered)."""
        router = self.server.router
        decision = router.decide(self.ident, self.tenant(), self.database, sql, self.search_path())
        metrics, protocol_name = self.server.metrics, "simple" if simple else "extended"
        if isinstance(decision, Forward):
            metrics.statement(protocol_name, "allowed" if decision.sql is None else "rewritten", tenant=self.tenant())
            if not self.audited(sql, simple, decision, name):
                return None
            return (sql if decision.sql is None else decision.sql), decision
        metrics.statement(protocol_name, "refused", tenant=self.tenant())
        self.server.stats.refusal(sql)
        if isinstance(decision, Refuse) and self.tenant_unknown and self.local_tenant is None:
            decision = unknown_tenant(decision, router.tenant_setting)
        if isinstance(decision, Refuse):
            self.server.metrics.refusals.labels(decision.rule).inc()
            self.audited(sql, simple, decision)
            log.info(
                "refused for user=%s tenant=%s (%s): %s", self.user, self.tenant(), decision.rule, decision.message
            )
            self.refuse(decision.sqlstate, decision.message, decision.hint, simple)
            return None
        assert isinstance(decision, SetTenant)
        if name:  # a named statement: PostgreSQL would run it again at each Bind, without pgwarden seeing a SET
            self.server.metrics.refusals.labels("tenancy.sources").inc()
            self.refuse(
                "0A000",
                "a tenant change cannot be prepared as a named statement: pgwarden applies "
                "it when it reads the SET, and a later Bind of the statement would not change "
                "the tenant",
                "send SET pgwarden.tenant as a simple query or an unnamed statement "
                "(psycopg: execute(..., prepare=False); asyncpg: execute())",
                simple,
            )
            return None
        if decision.local:
            self.local_tenant = (
                decision.tenant if decision.tenant is not None else (self.ident.tenant if self.ident else None)
            )
        return decision.sql, Forward(decision.sql)

    def audited(
        self, sql: str, simple: bool, decision: Forward | Refuse | None = None, name: str | None = None
    ) -> bool:
        """Record a statement in the audit trail; False (and the statement refused) when the
        trail cannot take it and `audit.on_failure` is block.

        A Parse (`name` given) that is not refused is recorded at each Bind instead: one
        record per execution, as for simple queries.
        """
        audit = self.server.audit
        if audit is None:
            return True
        if name is not None and not isinstance(decision, Refuse):
            self._audit_statements[protocol.cstr(name)[:-1]] = (sql, decision)  # keyed as a Bind names it
            return True
        if not isinstance(decision, Refuse) and not audit.accepting():
            if audit.config.on_failure == "drop":
                audit.drop()
                return True
            self.refuse(
                "58030",
                "the statement was not run: the audit trail cannot record it "
                "(its sink is failing or its queue is full)",
                "check the audit file's disk and permissions (audit.path), or set audit.on_failure: drop",
                simple,
            )
            return False
        ident = self.ident
        record = {
            "event": "statement",
            "time": time.time(),
            "session": self.pid,
            "client": self.peer,
            "user": self.user,
            "database": self.database,
            "protocol": "simple" if simple else "extended",
            "roles": sorted(ident.roles) if ident else [],
            "bypass": ident is None,
            "tenant": self.tenant() if ident else None,
            "sql": sql,
            "route": "primary",
        }
        if isinstance(decision, Refuse):
            record.update(decision="refused", rule=decision.rule, sqlstate=decision.sqlstate, reason=decision.message)
        elif isinstance(decision, Forward) and decision.sql is not None:
            record.update(
                decision="rewritten", tables=list(decision.tables), masked=list(decision.masked), rewritten=decision.sql
            )
        else:
            record["decision"] = "allowed"
        if isinstance(decision, Refuse):
            audit.offer(record, force=True)  # never ran: recorded now
        elif simple:  # recorded when its round trip ends, with duration, rows and SQLSTATE
            entry = self._timings[-1]
            entry[2] = (entry[2] or []) + [record]
        else:
            self._audit_cycle.append(record)
        return True

    def audit_bind(self, msg: bytes) -> bool:
        """A Bind is an execution: recorded with what its statement was prepared from."""
        end = msg.index(b"\0", 5)  # after the portal name: the statement name, as raw bytes
        name = msg[end + 1 : msg.index(b"\0", end + 1)]
        hit = self._audit_statements.get(name)
        sql, decision = hit if hit is not None else (f"(prepared statement {name.decode(errors='replace')!r})", None)
        return self.audited(sql, False, decision)

    def audit_event(self, event: str, **fields) -> None:
        """A login or logout record (never refused: the session is starting or over)."""
        if self.server.audit is not None:
            self.server.audit.offer(
                {
                    "event": event,
                    "session": self.pid,
                    "client": self.peer,
                    "user": self.user,
                    "database": self.database,
                    **fields,
                },
                force=True,
            )  # it happened: kept even while the trail is failing

    def guard_parse(self, msg: bytes) -> bytes | None:
        """A Parse with the policy applied (rewritten text), or None when refused.

        A client that sends the same Parse again (unnamed statements, every time) under the
        same policy, tenant and search_path gets the Parse built the first time.
        """
        router, tenant, path = self.server.router, self.tenant(), self.search_path()
        hit = self._parses.get(msg)
        if (
            hit is not None
            and hit[0] is router
            and hit[1] == tenant
            and hit[2] == path
            and hit[5] == router.generation
            and self.server.audit is None
        ):  # type: ignore[union-attr]
            prepared, out = hit[3], hit[4]
            self.statement_sent(protocol.decode_parse(msg).name if msg[5] else "", prepared)
            self.server.metrics.statement("extended", "rewritten" if out is not msg else "allowed", tenant=tenant)
            return out
        out = self._guard_parse(msg)
        if out is not None:
            if len(self._parses) > 256:
                self._parses.clear()
            name = protocol.decode_parse(msg).name if msg[5] else ""
            self._parses[msg] = (router, tenant, path, self.versions.latest(name), out, router.generation)  # type: ignore[union-attr]
        return out

    def _guard_parse(self, msg: bytes) -> bytes | None:
        parsed = protocol.decode_parse(msg)
        guarded = self.guard_text(parsed.query, simple=False, name=parsed.name)
        if guarded is None:
            return None
        refused = self.server.router.parameter_types(self.ident, self.database, parsed.param_types)
        if refused is not None:
            self.server.metrics.refusals.labels(refused.rule).inc()
            self.refuse(refused.sqlstate, refused.message, refused.hint, False)
            return None
        text, decision = guarded
        router = self.server.router
        refused = tenant_parameter_types(parsed.param_types, decision.param_checks)
        if refused is not None:
            self.server.metrics.refusals.labels(refused.rule).inc()
            self.refuse(refused.sqlstate, refused.message, refused.hint, False)
            return None
        self.statement_sent(
            parsed.name,
            Prepared(parsed.query, parsed.param_types, decision.param_checks, router, self.tenant(), router.generation),
        )  # type: ignore[union-attr]
        if text == parsed.query:
            return msg
        return protocol.parse(parsed.name, text, parsed.param_types)

    def statement_sent(self, name: str, prepared: Prepared | None) -> None:
        """A Parse (a Close: None) of a statement name goes to the backend: until its cycle ends
        without an error, the name may hold this or what it held before (`held.Versions`)."""
        sure = self.tx_mode and name != ""  # type: ignore[attr-defined]  # pgwarden's own mapping
        serial = self.versions.sent(name, prepared, sure)
        if not sure:
            self._next_cycle().statements[name] = serial  # type: ignore[attr-defined]

    def _current(self, prepared: Prepared) -> bool:
        router = self.server.router
        return (
            prepared.router is router and prepared.tenant == self.tenant() and prepared.generation == router.generation
        )  # type: ignore[union-attr]

    def _bound(self, name: str) -> list[Prepared]:
        """What a Bind of `name` sent now may run: the last Parse of it when that was sent in this
        cycle (the Bind runs only if it succeeded), else every statement the name may hold."""
        cycle = self._cycle  # type: ignore[attr-defined]
        if cycle is not None and name in cycle.statements:
            latest = self.versions.latest(name)
            return [latest] if latest is not None else []
        return self.versions.candidates(name)

    def stale_statement(self, name: str) -> bytes | None:
        """A named statement prepared under another policy version or tenant: its new Parse.

        Returns the Parse to send again (rewritten now), b"" when it is current or unknown,
        None when the statement is now refused (the refusal is sent).
        """
        if all(self._current(p) for p in self._bound(name)):
            return b""
        latest = self.versions.latest(name)
        if latest is None:  # closed, but the Close may have been skipped: not run under the old tenant
            self.refuse(*self.stale_refusal(name), simple=False)  # type: ignore[misc]
            return None
        return self._guard_parse(protocol.parse(name, latest.query, latest.param_types))

    def stale_refusal(self, name: str) -> tuple[str, str, str] | None:
        """SQL EXECUTE of a protocol-level statement prepared under another tenant or policy
        version: (SQLSTATE, message, hint); None when it is current or not one of them."""
        if all(self._current(p) for p in self.versions.candidates(name)):
            return None
        return (
            "42501",
            f"EXECUTE {name} is refused: the statement was prepared (rewritten) under "
            "another tenant or policy version than this session has now",
            "run it with Bind (pgwarden prepares it again for the current tenant), or prepare it again",
        )

    def execute_refusal(self, name: str, args: tuple) -> tuple[str, str, str] | None:
        """SQL EXECUTE of a protocol-level statement whose tenant value is a parameter: each such
        argument must be a plain literal equal to the session's tenant, as a Bind's value must be."""
        for prepared in self.versions.candidates(name):
            for number, expected in prepared.checks:
                arg = args[number - 1] if number <= len(args) else None
                if arg is not None and arg.literal and arg.value == expected:
                    continue
                shown = (
                    "missing"
                    if arg is None
                    else (
                        repr(arg.value)
                        if arg.literal and arg.value is not None
                        else "NULL"
                        if arg.literal
                        else "not a plain literal"
                    )
                )
                return (
                    "42501",
                    f"EXECUTE {name} is refused: argument ${number} sets the tenant "
                    f"column and is {shown}, but this session's tenant is {expected!r}",
                    "pass the session's own tenant as a plain string literal, or run the statement with Bind",
                )
        return None

    def guard_bind(self, msg: bytes) -> bool:
        """Check tenant-column parameters at Bind; False (refused) when one names another tenant."""
        checks = dict.fromkeys(c for p in self._bound(protocol.decode_bind_names(msg)[1]) for c in p.checks)
        if not checks:
            return True
        values = protocol.bind_params(msg)
        for number, expected in checks:
            value = values[number - 1] if number <= len(values) else None
            if value != expected.encode():
                shown = "NULL" if value is None else repr(value.decode("utf-8", "replace"))
                self.refuse(
                    "42501",
                    f"INSERT refused: parameter ${number} sets the tenant column "
                    f"to {shown}, but this session's tenant is {expected!r}",
                    "omit the tenant column (pgwarden fills it in) or pass the session's own tenant",
                    simple=False,
                )
                return False
        return True

    def _guard_extended(self, kind: int, msg: bytes, out: list[bytes]) -> bytes | None:
        """Parse rewritten under the policy; a stale named statement prepared again; Bind checked."""
        if kind == _P:
            return self.guard_parse(msg)
        if kind == _B:
            name = protocol.decode_bind_names(msg)[1]
        elif msg[5] == 83:  # Describe or Close of a statement
            name = protocol.decode_target(msg)[1]
        else:
            return msg
        if kind == _C:
            self.statement_sent(name, None)
            return msg
        refusal = self.sql_names.refusal(name, self.statement_scope()) if name else None
        if refusal is not None:  # a name PREPAREd in SQL, for another tenant or policy version
            self.refuse(*refusal, simple=False)
            return None
        fresh = self.stale_statement(name)
        if fresh is None:
            return None
        if fresh and self.tx_mode and name:
            parsed = protocol.decode_parse(fresh)
            self.statements[name] = self.server.statements.get(parsed.query, parsed.param_types, self.statement_scope())
        elif fresh:
            tracker = self.backend.tracker  # type: ignore[union-attr]
            out += (protocol.target(b"C", "S", name), fresh)
            tracker.request(_C, SWALLOW)
            tracker.request(_P, SWALLOW)
            if self.tx_mode:  # the unnamed statement: this backend has it now, rewritten afresh
                self._unnamed, self._unnamed_here = fresh, True  # type: ignore[attr-defined]
        return msg if kind != _B or self.guard_bind(msg) else None
