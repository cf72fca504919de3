"""Statement records in compact form: what the proxy queues per statement, and the records the writer makes of them.

A session's statement costs the proxy one small tuple (`Started`) when it is sent and one
(`Finished`) per round trip when ReadyForQuery answers; the fields every record of the session
shares (`who`) are one dict built once per session. The writer process turns them into the same
records the proxy used to build itself (`expand`): the trail's content does not change.
"""

from __future__ import annotations

from typing import Any, NamedTuple

Entry = dict[str, Any] | list[Any]  # one item of a pipe's batch: a whole record, or a `Finished` as JSON


class Started(NamedTuple):
    """A statement sent (one per simple Query or Bind): who, when, what, and the policy's decision."""

    who: dict[str, Any]  # the session's fields (session, client, user, database, roles, bypass): shared
    time: float  # time.time() when it was sent
    sql: str  # the client's text, redacted by the writer
    simple: bool  # simple or extended protocol
    decision: dict[str, Any] | None  # None: allowed; else the fields that differ: `decision` and its fields
    # (rewritten: tables, masked, ...), `route` (cache: answered from the result cache, nothing sent)
    tenant: str | None


class Finished(NamedTuple):
    """The statements a round trip ran and how it ended (all None and completed False: the client left)."""

    started: list[Started]
    duration_ms: float | None
    rows: int | None
    sqlstate: str | None
    completed: bool = True


def plain(value: Any) -> Any:
    """orjson's `default` for the pipe: tuples (these records) as arrays, anything else as its str."""
    return tuple(value) if isinstance(value, tuple) else str(value)


def count(entry: Any) -> int:
    """How many records a queued entry (a record dict or a `Finished`) is."""
    return len(entry.started) if isinstance(entry, Finished) else 1


def expand(entry: Entry) -> list[dict[str, Any]]:
    """The records of one batch entry, decoded from JSON: a dict is one record; a list is a
    `Finished` whose statements each become the record the proxy used to build."""
    if isinstance(entry, dict):
        return [entry]
    started, duration_ms, rows, sqlstate, completed = entry
    out = []
    for who, stamp, sql, simple, decision, tenant in started:
        record = {
            **who,
            "event": "statement",
            "time": stamp,
            "protocol": "simple" if simple else "extended",
            "tenant": tenant if not who["bypass"] else None,
            "sql": sql,
            "route": "primary",
            "decision": "allowed",
        }
        if decision is not None:
            record.update(decision)
        record.update(duration_ms=duration_ms, rows=rows, sqlstate=sqlstate)
        if not completed:
            record["completed"] = False
        out.append(record)
    return out
