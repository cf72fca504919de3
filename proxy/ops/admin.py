"""The admin console (`psql -p 6432 pgwarden` as an admin user): SHOW POOLS, CLIENTS, ... as PgBouncer users know it."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol, cast

from proxy.cache.results import ResultCache
from proxy.ops import across
from proxy.ops.cache_view import CACHE_COLUMNS, cache_rows
from proxy.ops.replicas_view import REPLICA_COLUMNS, ReplicationSource, replica_rows, server_columns
from proxy.ops.stats import COLUMNS
from proxy.wire import protocol

if TYPE_CHECKING:
    from proxy.audit.process import AuditProcess
    from proxy.config.model import Config
    from proxy.enforce.router import Router
    from proxy.limits.limiter import Limiter
    from proxy.ops.stats import QueryStats
    from proxy.pooling.backend import Backend
    from proxy.pooling.pool import Pool

DATABASE = "pgwarden"
# What psql and drivers need to hear at login from a server that is not PostgreSQL.
PARAMETERS = {
    "server_version": "15.0 (pgwarden admin console)",
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
    "TimeZone": "UTC",
}
_TEXT_OID = 25
HINT = (
    "commands: SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW REPLICAS, SHOW STATS, SHOW QUERIES, SHOW CONFIG, "
    "SHOW POLICY, SHOW LIMITS, SHOW CACHE, SHOW HELP, RELOAD, PAUSE, RESUME, KILL db, RECONNECT db, SHUTDOWN"
)
_COMMAND = re.compile(
    r'\s*(show\s+\w+|reload|pause|resume|(?:kill|reconnect)\s+(?:"(?:[^"]|"")+"|\S+)|shutdown)\s*;?\s*$', re.I
)


_table = across.table  # RowDescription, DataRows (text) and CommandComplete for one result
# Commands whose rows are a worker's own: with several workers, every worker answers and the rows are merged.
PER_WORKER = frozenset(
    (
        "show pools",
        "show clients",
        "show servers",
        "show replicas",
        "show stats",
        "show queries",
        "show limits",
        "show cache",
        "kill",
        "reconnect",
    )
)


class AdminClient(Protocol):
    """What the console reads of one client session (SHOW CLIENTS, SHOW POOLS) and calls (KILL)."""

    @property
    def pid(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def database(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def tls(self) -> bool: ...
    @property
    def since(self) -> float: ...
    @property
    def backend(self) -> Backend | None: ...
    @property
    def pool(self) -> Pool | None: ...
    @property
    def ident(self) -> object: ...  # None for a bypass role: no tenant to show

    def tenant(self) -> str | None: ...
    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None: ...


class AdminServer(Protocol):
    """What the console reads of the server, and the three things it may do to it: pause, reload, stop."""

    paused: bool  # PAUSE/RESUME: pools created meanwhile start paused too

    @property
    def config(self) -> Config: ...
    @property
    def started(self) -> float: ...
    @property
    def pools(self) -> Mapping[tuple[str, str], Pool]: ...
    @property
    def sessions(self) -> Mapping[int, AdminClient]: ...
    @property
    def stats(self) -> QueryStats: ...
    @property
    def router(self) -> Router | None: ...
    @property
    def audit(self) -> AuditProcess | None: ...
    @property
    def replication(self) -> ReplicationSource | None: ...
    @property
    def limiter(self) -> Limiter | None: ...
    @property
    def result_cache(self) -> ResultCache | None: ...

    def reload(self) -> bool: ...
    def stop(self) -> None: ...


class Cluster(Protocol):
    """The worker processes around this one, when there are several (`workers`)."""

    @property
    def index(self) -> int: ...
    @property
    def count(self) -> int: ...

    def broadcast(self, command: str) -> None: ...  # pause, resume, reload, shutdown: to every worker
    async def gather(self, sql: str) -> list[tuple[int, bytes]]: ...  # the other workers' answers to a command


class AdminConsole:
    """Answers one admin session's simple queries from the server's state; does no backend I/O.

    With several workers, SHOW commands answer for the worker this session landed on (a
    notice says which) and PAUSE, RESUME, RELOAD and SHUTDOWN act on every worker.
    """

    def __init__(self, server: AdminServer, cluster: Cluster | None = None) -> None:
        self.server = server
        self.cluster = cluster
        self.commands: dict[str, Callable[[str], bytes]] = {
            "show pools": self.pools,
            "show clients": self.clients,
            "show servers": self.servers,
            "show replicas": self.replicas,
            "show backends": self.servers,
            "show stats": self.stats,
            "show config": self.config,
            "show policy": self.policy,
            "show limits": self.limits,
            "show cache": self.cache,
            "show help": self.help,
            "reload": self.reload,
            "show queries": self.queries,
            "pause": self.pause,
            "resume": self.resume,
            "kill": self.kill,
            "reconnect": self.reconnect,
            "shutdown": self.shutdown,
        }

    def _name(self, sql: str) -> tuple[str, str]:
        """The command's name (`show pools`, `kill`, ...) and its argument."""
        match = _COMMAND.match(sql)
        words = match.group(1).lower().split() if match else []
        name = " ".join(words[:2]) if words and words[0] == "show" else (words[0] if words else "")
        argument = match.group(1).split(None, 1)[1] if match and name in ("kill", "reconnect") else ""
        return name, argument

    def local(self, sql: str) -> bytes:
        """This worker's own answer to a command (no ReadyForQuery)."""
        name, argument = self._name(sql)
        command = self.commands.get(name)
        if command is None:
            return protocol.error_response("42601", f"unknown admin command: {sql.strip()[:80]!r}", hint=HINT)
        return command(argument)

    def handle(self, sql: str) -> bytes:
        """Everything to send for one Query message, ending with ReadyForQuery (this worker's rows
        only: `handle_all` merges every worker's)."""
        name, _ = self._name(sql)
        body = self.local(sql)
        if self.cluster is not None and name in self.commands:
            body = self._across_workers(name) + body
        return body + protocol.ready_for_query(b"I")

    def across(self, sql: str) -> bool:
        """Does this command need every worker's answer?"""
        return self.cluster is not None and self._name(sql)[0] in PER_WORKER

    async def handle_all(self, sql: str) -> bytes:
        """A per-worker command answered by every worker: rows with a worker column, KILL summed."""
        assert self.cluster is not None
        own = (self.cluster.index, self.local(sql))
        others = await self.cluster.gather(sql)
        text = (
            f"answered by all {self.cluster.count} workers"
            if len(others) + 1 == self.cluster.count
            else (f"answered by {len(others) + 1} of {self.cluster.count} workers (the others did not answer)")
        )
        notice = protocol.error_response("00000", text, severity="NOTICE", kind=b"N")
        return notice + across.merged([own, *others]) + protocol.ready_for_query(b"I")

    def _across_workers(self, name: str) -> bytes:
        """With several workers: a notice naming the worker that answers, or sends the command to all."""
        cluster = self.cluster
        assert cluster is not None
        if name in ("pause", "resume", "reload", "shutdown"):
            cluster.broadcast(name)
            text = f"{name.upper()} sent to all {cluster.count} workers"
        else:
            text = f"answered by worker {cluster.index} of {cluster.count}: rows of this worker only"
        return protocol.error_response("00000", text, severity="NOTICE", kind=b"N")

    def help(self, _: str) -> bytes:
        rows = [
            ["SHOW POOLS", "backends and waiting clients per pool"],
            ["SHOW CLIENTS", "client connections"],
            ["SHOW SERVERS", "backend connections (with their server's role, lag and state)"],
            ["SHOW REPLICAS", "the primary and replicas: role, health, breaker, replay position, lag, routed"],
            ["SHOW STATS", "counters since start"],
            ["SHOW CONFIG", "the running config"],
            [
                "SHOW QUERIES",
                "statements by fingerprint: calls, time (total, mean, p95, max), rows, refusals, cache hits",
            ],
            ["SHOW POLICY", "the running policy"],
            ["SHOW LIMITS", "limits: configured, and per entity seen: in flight, connections, rejections"],
            ["SHOW CACHE", "the result cache: hits, misses, invalidations, whether it serves, the WAL consumer's lag"],
            ["RELOAD", "re-read config and policies"],
            ["PAUSE", "stop lending backends (transactions in flight finish)"],
            ["RESUME", "lend backends again"],
            ["KILL db", "close a database's clients and backends"],
            ["RECONNECT db", "replace a database's backends: the idle ones closed now, the lent ones when released"],
            ["SHUTDOWN", "stop pgwarden (as SIGTERM)"],
        ]
        return _table(["command", "does"], rows, "SHOW")

    def pools(self, _: str) -> bytes:
        rows = []
        for (database, user), pool in sorted(self.server.pools.items()):
            clients = [s for s in self.server.sessions.values() if s.pool is pool]
            rows.append(
                [
                    database,
                    user,
                    sum(s.backend is not None for s in clients),
                    len(pool.waiters),
                    len(pool.active),
                    len(pool.idle),
                    pool.connecting,
                    pool.settings.size,
                    pool.settings.mode,
                    pool.wait_count,
                    round(pool.wait_time, 3),
                    "yes" if pool.paused else "no",
                ]
            )
        return _table(
            [
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "be_active",
                "be_idle",
                "be_connecting",
                "size",
                "pool_mode",
                "waits",
                "wait_s",
                "paused",
            ],
            rows,
            "SHOW",
        )

    def clients(self, _: str) -> bytes:
        now = time.monotonic()
        rows = [
            [
                s.pid,
                s.user,
                s.database,
                s.peer,
                s.state,
                "yes" if s.tls else "no",
                s.backend.pid if s.backend else None,
                s.tenant() if s.ident is not None else None,
                round(now - s.since, 1),
            ]
            for s in list(self.server.sessions.values())
        ]
        return _table(
            ["id", "user", "database", "addr", "state", "tls", "backend_pid", "tenant", "connected_s"], rows, "SHOW"
        )

    def servers(self, _: str) -> bytes:
        now, rows = time.monotonic(), []
        monitor = self.server.replication.monitor if self.server.replication is not None else None
        for pool in list(self.server.pools.values()):
            for state, backends in (("active", pool.active), ("idle", pool.idle)):
                for b in list(backends):
                    rows.append(
                        [
                            b.pid,
                            pool.name,
                            state,
                            cast(AdminClient, b.client).pid if b.client else None,  # a backend serves a session
                            round(now - b.created, 1),
                            len(b.statements._names),
                            "yes" if b.dirty else "no",
                            "{}:{}".format(*b.address),
                            *server_columns(monitor, b.address),
                        ]
                    )
        columns = ["backend_pid", "pool", "state", "client_id", "age_s", "prepared", "dirty", "server"]
        return _table([*columns, "role", "lag_bytes", "server_state"], rows, "SHOW")

    def replicas(self, _: str) -> bytes:
        replication = self.server.replication
        rows = replica_rows(replication.monitor) if replication is not None else []
        return _table(REPLICA_COLUMNS, rows, "SHOW")

    def queries(self, _: str) -> bytes:
        self.server.stats.flush()
        return _table(COLUMNS, self.server.stats.rows(), "SHOW")

    def stats(self, _: str) -> bytes:
        server, router = self.server, self.server.router
        rows = [
            ["uptime_s", round(time.time() - server.started, 1)],
            ["clients", len(server.sessions)],
            ["pools", len(server.pools)],
            ["rewrite_cache_hits", router.hits if router else 0],
            ["rewrite_cache_misses", router.misses if router else 0],
        ]
        if self.cluster is not None:
            rows.append(["worker", f"{self.cluster.index} of {self.cluster.count}"])
        if server.audit is not None:
            rows += [[f"audit_{k}", v] for k, v in server.audit.stats.items()]
        return _table(["stat", "value"], rows, "SHOW")

    def config(self, _: str) -> bytes:
        rows = _flatten(self.server.config.model_dump(mode="json", exclude={"source"}))
        return _table(["key", "value"], [[k, "****" if "password" in k else v] for k, v in rows], "SHOW")

    def policy(self, _: str) -> bytes:
        router = self.server.router
        if router is None:
            return _table(["policy"], [["no policy loaded"]], "SHOW")
        policy = router.policy
        rows = [
            ["version", policy.version],
            ["mode", policy.mode],
            ["files", ", ".join(str(f) for f in policy.files)],
            ["tables", ", ".join(sorted(policy.tables))],
            ["roles", ", ".join(sorted(policy.roles))],
        ]
        return _table(["key", "value"], rows, "SHOW")

    def limits(self, _: str) -> bytes:
        from proxy.limits.limiter import COLUMNS as LIMIT_COLUMNS

        limiter = self.server.limiter
        rows = limiter.rows() if limiter is not None else []
        return _table(LIMIT_COLUMNS, rows, "SHOW")

    def cache(self, _: str) -> bytes:
        cache = self.server.result_cache
        return _table(CACHE_COLUMNS, cache_rows(cache) if cache is not None else [["cache", "not configured"]], "SHOW")

    def reload(self, _: str) -> bytes:
        if not self.server.reload():
            return protocol.error_response(
                "F0000", "reload failed: the running config is kept", hint="the pgwarden log lists the errors"
            )
        return protocol.command_complete("RELOAD")

    def pause(self, _: str) -> bytes:
        self.server.paused = True  # Server.pool_for starts new pools paused too
        for pool in self.server.pools.values():
            pool.paused = True
        return protocol.command_complete("PAUSE")

    def resume(self, _: str) -> bytes:
        self.server.paused = False
        for pool in self.server.pools.values():
            pool.resume()
        return protocol.command_complete("RESUME")

    def kill(self, database: str) -> bytes:
        database = _database_name(database)
        killed = 0
        for session in list(self.server.sessions.values()):
            if session.database == database and session.pool is not None:
                session.fatal(
                    "57P01", f"terminating connection: database {database!r} was killed from the admin console"
                )
                killed += 1
        for (db, _), pool in self.server.pools.items():
            if db == database:
                pool.close_all()
        return protocol.command_complete(f"KILL {killed}")

    def reconnect(self, database: str) -> bytes:
        """RECONNECT db: its backends replaced (idle ones closed now: the tag counts them), as before
        a DROP DATABASE or CREATE DATABASE ... TEMPLATE of it, which want no other session on it."""
        database = _database_name(database)
        closed = sum(pool.reconnect() for (db, _), pool in self.server.pools.items() if db == database)
        return protocol.command_complete(f"RECONNECT {closed}")

    def reconnect_everywhere(self, database: str) -> None:
        """RECONNECT of `database` (as PostgreSQL names it) by this worker now, and sent to every other
        one (not waited for: PostgreSQL waits up to 5 s for the sessions closing meanwhile)."""
        self.reconnect(database)
        if self.cluster is not None:
            quoted = database.replace('"', '""')
            asyncio.get_running_loop().create_task(self.cluster.gather(f'RECONNECT "{quoted}"'))

    def shutdown(self, _: str) -> bytes:
        self.server.stop()
        return protocol.command_complete("SHUTDOWN")


def _database_name(argument: str) -> str:
    """The database a KILL or RECONNECT names: a quoted identifier unquoted, else as typed.

    >>> _database_name('"my ""db"";" '), _database_name("shop;"), _database_name('"shop"')
    ('my "db";', 'shop', 'shop')
    """
    name = argument.strip().removesuffix(";").strip()
    if len(name) > 1 and name.startswith('"') and name.endswith('"'):
        return name[1:-1].replace('""', '"')
    return name.strip('"')


def _flatten(value: object, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flatten(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), value)]
