"""One health check of a backend: a single query for its role, WAL positions, replay delay and timeline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from proxy.routing.lsn import parse_lsn

# One round trip. pg_current_wal_lsn() and pg_walfile_name() raise during recovery, so CASE keeps
# them to a primary; the delay is 0 when everything received is replayed (an idle primary sends
# nothing, and the last replayed commit may be old), else the age of the last replayed commit (NULL
# when none was replayed since the standby started: unknown, which routing counts as lagging).
HEALTH_QUERY = """
SELECT r.in_recovery,
       (CASE WHEN r.in_recovery THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text AS lsn,
       pg_last_wal_receive_lsn()::text AS receive_lsn,
       CASE WHEN NOT r.in_recovery THEN 0::float8
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8
            ELSE (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::float8
       END AS delay_ms,
       CASE WHEN r.in_recovery THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END AS timeline
FROM (SELECT pg_is_in_recovery() AS in_recovery) AS r
"""


@dataclass(frozen=True, slots=True)
class Reading:
    """What one check found."""

    in_recovery: bool
    lsn: int  # primary: current WAL position; standby: replayed up to here (0 when nothing replayed yet)
    receive_lsn: int | None  # standby: received up to here (None when no WAL receiver has run)
    delay_ms: float | None  # None: a standby that has not replayed a commit since it started
    timeline: int  # a primary's timeline; 0 in recovery


def reading(row: Mapping[str, Any]) -> Reading:
    """The Reading of a row of HEALTH_QUERY.

    >>> reading({"in_recovery": False, "lsn": "0/3000060", "receive_lsn": None, "delay_ms": 0.0,
    ...          "timeline": "00000002"})
    Reading(in_recovery=False, lsn=50331744, receive_lsn=None, delay_ms=0.0, timeline=2)
    >>> reading({"in_recovery": True, "lsn": None, "receive_lsn": "0/10", "delay_ms": None, "timeline": None})
    Reading(in_recovery=True, lsn=0, receive_lsn=16, delay_ms=None, timeline=0)
    """
    receive = row["receive_lsn"]
    delay = row["delay_ms"]
    return Reading(
        in_recovery=bool(row["in_recovery"]),
        lsn=parse_lsn(row["lsn"]) if row["lsn"] else 0,
        receive_lsn=parse_lsn(receive) if receive else None,
        delay_ms=max(0.0, float(delay)) if delay is not None else None,  # clocks of primary and standby differ
        timeline=int(row["timeline"], 16) if row["timeline"] else 0,
    )


async def read_health(conn: asyncpg.Connection) -> Reading:
    """Run the check on an open connection (the caller bounds it with its timeout)."""
    row = await conn.fetchrow(HEALTH_QUERY)
    return reading(row)
