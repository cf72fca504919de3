"""Per-session accounting of statements: round-trip timings and rows for the statistics, the slow log and the audit trail."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, NamedTuple

from proxy.audit.process import AuditProcess
from proxy.audit.rows import Finished, Started
from proxy.enforce.router import Forward, Refuse
from proxy.ops.slowlog import SlowLog
from proxy.ops.stats import QueryStats, statement_text
from proxy.session.state import Refusal, SessionState
from proxy.wire import protocol
from proxy.wire.tracker import Ready

AUDIT_FULL = Refusal(
    "58030",
    "the statement was not run: the audit trail cannot record it (its sink is failing or its queue is full)",
    "check the audit file's disk and permissions (audit.path), or set audit.on_failure: drop",
)
_NAMED_PARSES_CAP = 10_000
_record = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (once per Query or Sync)


def _decided(decision: Forward | None) -> dict[str, Any] | None:
    """A record's decision fields beyond `allowed` (None: allowed)."""
    if decision is None or decision.sql is None:
        return None
    return {
        "decision": "rewritten",
        "tables": list(decision.tables),
        "masked": list(decision.masked),
        "rewritten": decision.sql,
    }


class Timing(NamedTuple):
    """One Query or Sync sent, until its ReadyForQuery."""

    started: float  # time.perf_counter() when it was sent
    message: bytes  # the Query or Parse whose text names it (b"": none)
    records: list[Started] | None  # the audited executions it ends


class AuditedStatement(NamedTuple):
    """A Parse recorded at each Bind of its name: the client's text and the policy's decision."""

    sql: str
    decision: Forward | None


class Accounting:
    """Which statement each round trip ran, and what became of it.

    `timings` holds one entry per Query or Sync sent. When ReadyForQuery answers it
    (`answered`), its duration and rows go to the statistics and the slow log, and its
    audit records get duration, rows and SQLSTATE and go to the audit trail.
    """

    __slots__ = (
        "_last_parse",
        "_who",
        "_who_ident",
        "audit",
        "last_parse",
        "named_parses",
        "pending",
        "route",
        "slowlog",
        "state",
        "statements",
        "stats",
        "timings",
    )

    def __init__(
        self, state: SessionState, stats: QueryStats, slowlog: SlowLog | None, audit: AuditProcess | None
    ) -> None:
        self.state = state  # read for who the records name
        self.stats, self.slowlog, self.audit = stats, slowlog, audit
        self.timings: deque[Timing] = deque()
        self.last_parse = b""  # the Parse the next Sync is timed under
        self.named_parses: dict[bytes, bytes] = {}  # statement name -> its Parse, for timing
        self.pending: list[Started] = []  # Binds whose Sync has not been sent yet
        self.statements: dict[bytes, AuditedStatement] = {}  # statement name -> what a Bind of it records
        self._who: dict[str, Any] | None = None  # the fields every statement record of the session shares
        self._who_ident: object = None  # the identity `_who` was built for
        self._last_parse: tuple[bytes, bytes, AuditedStatement] = (b"", b"", AuditedStatement("", None))
        self.route = "primary"  # where the linked backend is: "primary" or "replica" (set at each link)

    @property
    def auditing(self) -> bool:
        """Is there an audit trail to record statements in?"""
        return self.audit is not None

    def note_statement(self, kind: int, msg: bytes) -> None:
        """Which Parse the next Sync is timed under: the last one, or the one of the statement
        a Bind names (a client's statement names are few; Close leaves a stale entry at most)."""
        end = msg.index(b"\0", 5)
        if kind == protocol.MSG_PARSE:
            self.last_parse = msg
            if end > 5:
                if len(self.named_parses) >= _NAMED_PARSES_CAP:
                    self.named_parses.clear()
                self.named_parses[msg[5:end]] = msg
            return
        name = msg[end + 1 : msg.index(b"\0", end + 1)]
        if name:
            self.last_parse = self.named_parses.get(name, b"")

    def started(self, msg: bytes, ends_executions: bool = True) -> None:
        """A Query or Sync (named by `msg`: its Query or Parse, b"" for none) was sent."""
        records = self._take_pending() if ends_executions else None
        self.timings.append(_record(Timing, (time.perf_counter(), msg, records)))

    def started_sync(self) -> None:
        """A Sync or FunctionCall was sent: timed under the last Parse (or the one a Bind named)."""
        self.timings.append(_record(Timing, (time.perf_counter(), self.last_parse, self._take_pending())))

    def _take_pending(self) -> list[Started] | None:
        """The records of the executions a Sync ends (None: none)."""
        pending = self.pending
        if not pending:
            return None
        self.pending = []
        return pending

    def answered(self, ready: Ready) -> None:
        """A round trip answered: its duration and rows go to the query statistics, the slow log
        and the audit records of the statements it ran."""
        if not self.timings:
            return
        started, msg, records = self.timings.popleft()
        seconds = time.perf_counter() - started
        if msg:  # the raw message: its text is decoded off the hot path, when aggregated
            self.stats.observe(msg, seconds, ready.rows)
            slowlog = self.slowlog
            if slowlog is not None and seconds >= slowlog.threshold_s:
                state = self.state
                slowlog.observe(
                    statement_text(msg), seconds, self.route, ready.rows, state.database, state.ident is not None
                )
        if records:
            self._audit_done(records, seconds, ready.rows, ready.error)

    def _audit_done(self, records: list[Started], seconds: float, rows: int, error: bytes | None) -> None:
        """Its statements get the round trip's duration, rows and SQLSTATE (of its first error;
        42501 when a refusal aborted it) and go to the trail: one entry for them all, made into
        records by the writer process (proxy/audit/rows.py)."""
        sqlstate = (
            "00000"
            if error is None
            else "42501"
            if not error
            else protocol.decode_fields(error).get("sqlstate", "XX000")
        )
        audit = self.audit
        assert audit is not None  # records are made only when there is a trail
        audit.offer(_record(Finished, (records, round(seconds * 1000, 3), rows, sqlstate, True)), force=True)

    def unfinished(self) -> None:
        """The session ended before its round trips did: their records go out as unfinished."""
        audit = self.audit
        if audit is None:
            return
        pending = [r for timing in self.timings for r in timing.records or ()] + self.pending
        if pending:
            audit.offer(Finished(pending, None, None, None, completed=False), force=True)
        self.pending = []

    def admits(self) -> bool:
        """Can the trail take a record now? (on_failure: drop counts a dropped one and says yes)."""
        audit = self.audit
        if audit is None or audit.accepting():
            return True
        if audit.config.on_failure == "drop":
            audit.drop()
            return True
        return False

    def cached(
        self, sql: str, simple: bool, decision: Forward | None, tenant: str | None, seconds: float, rows: int
    ) -> bool:
        """An answer from the result cache, recorded as its statement's round trip would be, with `route`
        cache: its lookup's duration and time, the rows of the answer's CommandComplete. False when the
        trail cannot take it and `audit.on_failure` is block (the caller does not answer it)."""
        audit = self.audit
        assert audit is not None  # records are made only when there is a trail
        if not audit.accepting() and not self.admits():
            return False
        self.answered_here(sql, simple, decision, tenant, seconds, rows, None, "cache")
        return True

    def answered_here(
        self,
        sql: str,
        simple: bool,
        decision: Forward | None,
        tenant: str | None,
        seconds: float,
        rows: int,
        error: bytes | None,
        route: str,
    ) -> None:
        """The record of a statement answered without the client's backend (the result cache's answer, a
        LISTEN run on the pool's listening backend), sent `seconds` ago; `error` its ErrorResponse."""
        fields = {**(_decided(decision) or {}), "route": route}
        started = _record(Started, (self._shared(), time.time() - seconds, sql, simple, fields, tenant))
        self._audit_done([started], seconds, rows, error)

    def statement(
        self,
        sql: str,
        simple: bool,
        decision: Forward | Refuse | None,
        tenant: str | None,
        name: str | None = None,
    ) -> bool:
        """Record a statement; False when the trail cannot take it and `audit.on_failure` is
        block (the caller refuses it: `AUDIT_FULL`).

        A Parse (`name` given) that is not refused is recorded at each Bind instead: one
        record per execution, as for simple queries.
        """
        audit = self.audit
        if audit is None:
            return True
        if isinstance(decision, Refuse):
            audit.offer(self._refused(sql, simple, decision, tenant), force=True)  # never ran: recorded now
            return True
        if name is not None:
            self.statements[protocol.cstr(name)[:-1]] = AuditedStatement(sql, decision)  # keyed as a Bind names it
            return True
        if not audit.accepting() and not self.admits():
            return False
        fields = _decided(decision)
        if self.route != "primary":
            fields = {**(fields or {}), "route": self.route}
        started = _record(Started, (self._shared(), time.time(), sql, simple, fields, tenant))
        if simple:  # recorded when its round trip ends, with duration, rows and SQLSTATE
            last = self.timings[-1]
            if last.records is None:
                self.timings[-1] = _record(Timing, (last.started, last.message, [started]))
            else:
                last.records.append(started)
        else:
            self.pending.append(started)
        return True

    def _shared(self) -> dict[str, Any]:
        """The fields every statement record of the session shares (built again if the identity changes)."""
        state = self.state
        ident = state.ident
        who = self._who
        if who is None or self._who_ident is not ident:
            who = self._who = {
                "session": state.pid,
                "client": state.peer,
                "user": state.user,
                "database": state.database,
                "roles": sorted(ident.roles) if ident else [],
                "bypass": ident is None,
            }
            self._who_ident = ident
        return who

    def _refused(self, sql: str, simple: bool, decision: Refuse, tenant: str | None) -> dict:
        state = self.state
        ident = state.ident
        return {
            "event": "statement",
            "time": time.time(),
            "session": state.pid,
            "client": state.peer,
            "user": state.user,
            "database": state.database,
            "protocol": "simple" if simple else "extended",
            "roles": sorted(ident.roles) if ident else [],
            "bypass": ident is None,
            "tenant": tenant if ident else None,
            "sql": sql,
            "route": "primary",
            "decision": "refused",
            "rule": decision.rule,
            "sqlstate": decision.sqlstate,
            "reason": decision.message,
        }

    def parsed(self, msg: bytes) -> None:
        """A bypass role's Parse: its text is recorded at each Bind of its name (a Parse sent
        again, as drivers send the unnamed one, is not decoded again)."""
        last_msg, name, audited = self._last_parse
        if msg != last_msg:
            parse = protocol.decode_parse(msg)
            name, audited = protocol.cstr(parse.name)[:-1], AuditedStatement(parse.query, None)
            self._last_parse = (msg, name, audited)
        self.statements[name] = audited

    def bind(self, msg: bytes, tenant: str | None) -> bool:
        """A Bind is an execution: recorded with what its statement was prepared from."""
        sql, decision = self.bound(msg)
        return self.statement(sql, False, decision, tenant)

    def bound(self, msg: bytes) -> AuditedStatement:
        """What a Bind's statement was prepared from, as its record names it."""
        end = msg.index(b"\0", 5)  # after the portal name: the statement name, as raw bytes
        name = msg[end + 1 : msg.index(b"\0", end + 1)]
        hit = self.statements.get(name)
        return AuditedStatement(f"(prepared statement {name.decode(errors='replace')!r})", None) if hit is None else hit

    def event(self, event: str, **fields: Any) -> None:
        """A login or logout record (never refused: the session is starting or over)."""
        if self.audit is not None:
            state = self.state
            self.audit.offer(
                {
                    "event": event,
                    "session": state.pid,
                    "client": state.peer,
                    "user": state.user,
                    "database": state.database,
                    **fields,
                },
                force=True,
            )  # it happened: kept even while the trail is failing
