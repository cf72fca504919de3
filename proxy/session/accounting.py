"""Per-session accounting of statements: round-trip timings and rows for the statistics, the slow log and the audit records."""

from __future__ import annotations

import time
from collections import deque

from proxy.ops.stats import statement_text
from proxy.wire import protocol

_P = ord("P")


class Accounted:
    """Mixin for Session: which statement each round trip ran, and what became of it.

    `_timings` holds one entry per Query or Sync sent: [sent at, the Query or Parse message
    whose text names it, the audit records of the executions it ends]. When ReadyForQuery
    answers it, its duration and rows go to the statistics and the slow log, and its
    records get duration, rows and SQLSTATE and go to the audit trail.
    """

    _timings: deque[list]
    _last_parse: bytes
    _named_parses: dict[bytes, bytes]
    _audit_cycle: list[dict]

    def _note_statement(self, kind: int, msg: bytes) -> None:
        """Which Parse the next Sync is timed under: the last one, or the one of the statement
        a Bind names (a client's statement names are few; Close leaves a stale entry at most)."""
        end = msg.index(b"\0", 5)
        if kind == _P:
            self._last_parse = msg
            if end > 5:
                if len(self._named_parses) >= 10_000:
                    self._named_parses.clear()
                self._named_parses[msg[5:end]] = msg
            return
        name = msg[end + 1 : msg.index(b"\0", end + 1)]
        if name:
            self._last_parse = self._named_parses.get(name, b"")

    def _timed(self, results: list[tuple[int, bytes | None]]) -> None:
        """Round trips answered (rows, first error): their durations and rows go to the query
        statistics, the slow log and the audit records of the statements they ran."""
        now, server, timings = time.perf_counter(), self.server, self._timings
        for rows, error in results[: len(timings)]:
            started, msg, records = timings.popleft()
            seconds = now - started
            if msg:  # the raw message: its text is decoded off the hot path, when aggregated
                server.stats.observe(msg, seconds, rows)
                slowlog = server.slowlog
                if slowlog is not None and seconds >= slowlog.threshold_s:
                    slowlog.observe(
                        statement_text(msg), seconds, "primary", rows, self.database, self.ident is not None
                    )
            if records:
                self.audit_done(records, seconds, rows, error)

    def _take_cycle(self) -> list[dict] | None:
        """The records of the executions a Sync ends (None: none)."""
        cycle = self._audit_cycle
        if not cycle:
            return None
        self._audit_cycle = []
        return cycle

    def audit_done(self, records: list[dict], seconds: float, rows: int, error: bytes | None) -> None:
        """A round trip ended: its statements' records get its duration, rows and SQLSTATE (of
        its first error; 42501 when a refusal aborted it) and go to the trail."""
        sqlstate = (
            "00000"
            if error is None
            else "42501"
            if not error
            else protocol.decode_fields(error).get("sqlstate", "XX000")
        )
        audit = self.server.audit
        for record in records:
            record.update(duration_ms=round(seconds * 1000, 3), rows=rows, sqlstate=sqlstate)
            audit.offer(record, force=True)  # type: ignore[union-attr]

    def audit_unfinished(self, timings) -> None:
        """The session ended before these round trips did: their records go out as unfinished."""
        audit = self.server.audit
        if audit is None:
            return
        pending = [r for entry in timings for r in entry[2] or ()] + self._audit_cycle
        for record in pending:
            record.update(completed=False, duration_ms=None, rows=None, sqlstate=None)
            audit.offer(record, force=True)
        self._audit_cycle = []
