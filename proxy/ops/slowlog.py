"""The slow-query log: statements over a threshold, with fingerprint, redacted text and optionally their plan."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

import asyncpg

from proxy.audit.redact import fingerprint, redact
from proxy.config.sections import SlowQueryConfig
from rewriter import pgparser
from rewriter.pgparser import ast, parse_sql

log = logging.getLogger("pgwarden.slow")
PENDING = 1000


def explainable(sql: str) -> bool:
    """A single plain SELECT with no `$n` parameters (EXPLAIN would need their values).

    >>> explainable("select pg_sleep(0.3)"), explainable("select * from t where a = $1")
    (True, False)
    >>> explainable("update t set a = 1"), explainable("with x as (delete from t returning *) select * from x")
    (False, False)
    """
    try:
        if any(tok.name == "PARAM" for tok in pgparser.scan(sql)):
            return False
        statements = parse_sql(sql)
    except Exception:  # not parseable: nothing to explain
        return False
    if len(statements) != 1 or not isinstance(statements[0].stmt, ast.SelectStmt):
        return False
    return not any(
        isinstance(cte.ctequery, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt))
        for cte in ((statements[0].stmt.withClause.ctes or ()) if statements[0].stmt.withClause else ())
    )


class SlowLog:
    """`observe` (hot path) keeps statements over the threshold; a task fingerprints, redacts,
    explains and writes them, so the hot path pays one comparison for a fast statement."""

    def __init__(
        self,
        cfg: SlowQueryConfig,
        base_dir: Path | None = None,
        explain_dsn: dict[str, Any] | None = None,
        policed_dsn: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.path = (
            None
            if cfg.path is None
            else (cfg.path if base_dir is None or cfg.path.is_absolute() else base_dir / cfg.path)
        )
        self.threshold_s = cfg.threshold_ms / 1000
        self.explain_dsn = explain_dsn
        self.policed_dsn = policed_dsn  # policed sessions' statements are explained as their role
        self.pending: deque[tuple[float, str, float, str, int | None, str, bool]] = deque(maxlen=PENDING)
        self.logged = self.explained = 0
        self._explained_at: dict[str, float] = {}
        self._conns: dict[tuple[str, bool], asyncpg.Connection] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

    def observe(
        self, sql: str, duration_s: float, route: str, rows: int | None, database: str, policed: bool = False
    ) -> None:
        """Note a finished statement; cheap when under the threshold."""
        if duration_s < self.threshold_s:
            return
        self.pending.append((time.time(), sql, duration_s, route, rows, database, policed))
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="slow-query-log")

    async def stop(self) -> None:
        """Write what is pending, close the control-plane connections."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()

    async def _run(self) -> None:
        while True:
            while self.pending:
                await self._log(*self.pending.popleft())
            if self._stopping:
                return
            self._wake.clear()
            await self._wake.wait()

    async def _log(
        self,
        when: float,
        sql: str,
        duration_s: float,
        route: str,
        rows: int | None,
        database: str,
        policed: bool = False,
    ) -> None:
        fp = fingerprint(sql)
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z",
            "fingerprint": fp,
            "duration_ms": round(duration_s * 1000, 3),
            "route": route,
            "rows": rows,
            "database": database,
            "query": redact(sql),
        }
        if self.cfg.explain and self.explain_dsn is not None and self._due(fp) and explainable(sql):
            record["plan"] = await self._explain(sql, database, policed)
        line = json.dumps(record, default=str)
        self.logged += 1
        if self.path is not None:
            try:
                await asyncio.to_thread(_append, self.path, line)
                return
            except OSError as exc:
                log.warning("cannot write the slow-query log %s: %s", self.path, exc.strerror or exc)
        log.warning("slow statement: %s", line)

    def _due(self, fp: str) -> bool:
        now = time.monotonic()
        if now - self._explained_at.get(fp, -1e9) < self.cfg.explain_every_s:
            return False
        if len(self._explained_at) > 10_000:
            self._explained_at.clear()
        self._explained_at[fp] = now
        return True

    async def _explain(self, sql: str, database: str, policed: bool = False) -> Any:
        """The plan as PostgreSQL gives it, or {"error": ...}; EXPLAIN without ANALYZE runs
        nothing, but planning folds immutable functions: a policed session's statement (its
        own text, not the rewrite) is planned as the role policed sessions run as."""
        dsn = self.policed_dsn if policed and self.policed_dsn is not None else self.explain_dsn
        try:
            conn = self._conns.get((database, policed))
            if conn is None or conn.is_closed():
                conn = self._conns[(database, policed)] = await asyncpg.connect(
                    **{**(dsn or {}), "database": database},
                    timeout=5,
                    server_settings={
                        "statement_timeout": str(int(self.cfg.explain_timeout_ms)),
                        "application_name": "pgwarden-explain",
                    },
                )
            plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql)
            self.explained += 1
            return redact_plan(json.loads(plan) if isinstance(plan, str) else plan)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}


def redact_plan(node: Any) -> Any:
    """The plan with literals removed from its expressions (`Index Cond`, `Filter`, `Output`, ...).

    >>> redact_plan([{"Plan": {"Index Cond": "(email = 'ann@x.io'::text)", "Plan Rows": 1}}])
    [{'Plan': {'Index Cond': '(email = ?::text)', 'Plan Rows': 1}}]
    """
    if isinstance(node, dict):
        return {k: redact_plan(v) for k, v in node.items()}
    if isinstance(node, list):
        return [redact_plan(v) for v in node]
    return redact(node) if isinstance(node, str) else node


def _append(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
