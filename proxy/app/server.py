"""The pgwarden process: listeners, pools and signals, with explicit startup, main loop and shutdown."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time

from proxy.app.caching import CacheService
from proxy.app.replication import Replication
from proxy.app.replication import wanted as replication_wanted
from proxy.app.workers import WorkerLink
from proxy.audit.process import AuditProcess
from proxy.config.model import Config, ConfigError, load_config
from proxy.enforce.router import PolicyLoadError, Router, load_router
from proxy.enforce.schema import load_schema
from proxy.ops.admin import AdminConsole
from proxy.ops.http import HttpServer
from proxy.ops.janitor import Janitor
from proxy.ops.metrics import Metrics
from proxy.ops.slowlog import SlowLog
from proxy.ops.stats import QueryStats, Shapes
from proxy.pooling.backend import Target
from proxy.pooling.backend_role import HINT, read_facts, refusal, superuser_reason, unfit
from proxy.pooling.pool import Pool
from proxy.pooling.prepared import Registry
from proxy.session.connection import CLOSED, READY, Session
from proxy.session.context import SessionContext
from proxy.session.limited import limiter_for
from proxy.wire import protocol
from proxy.wire.tls import backend_tls, listen_tls

log = logging.getLogger("pgwarden.server")


class Server:
    """Owns the config snapshot, the pools and the sessions; sessions ask it for pools and keys."""

    def __init__(self, config: Config, link: WorkerLink | None = None) -> None:
        self.config = config
        self.link = link  # with several workers: this one's index, cancel keys and siblings
        self.pool_settings = link.shaped(config).pool if link else config.pool  # this worker's share
        self.pools: dict[tuple[str, str], Pool] = {}
        self.sessions: dict[int, Session] = {}
        self.statements = Registry()
        self.draining = False
        self.started = time.time()
        self.tls_context = listen_tls(config.listen.tls)
        self._backend_tls = backend_tls(config.primary.tls)
        self.router: Router | None = None  # set when a policy is loaded
        self._schema_loads: dict[str, asyncio.Task] = {}
        self._role_loads: dict[tuple[str, str], asyncio.Task] = {}
        self.role_checks: dict[tuple[str, str], str | None] = {}  # (database, role) -> why unfit
        self._schema_again: set[str] = set()  # databases to read again once the read under way ends
        self._policy_stamp: tuple | None = None
        self._listener: asyncio.AbstractServer | None = None
        self.metrics = Metrics(self, config.metrics)
        self.paused = False  # PAUSE from the admin console, for pools created meanwhile too
        self.stats = QueryStats(self.metrics.statement_seconds.observe_many, Shapes() if config.cache else None)
        self.limiter = limiter_for(config.limits, self.metrics)
        self.slowlog = (
            SlowLog(config.slow_query, explain_dsn=self._control_dsn(), policed_dsn=self._control_dsn(policed=True))
            if config.slow_query
            else None
        )
        self.audit = AuditProcess(config.audit, config.log.format, config.log.level) if config.audit else None
        self._http = HttpServer(self, link.peers if link else None, link.index if link else 0)
        self._janitor = Janitor(self)
        self._stop = asyncio.Event()
        self.replication = (
            Replication(config, self.pools, lambda: self.pool_settings, self._target, lambda: self.paused)
            if replication_wanted(config)
            else None
        )
        self.caching = (
            CacheService(config, self._target, self.stats.shapes) if config.cache and config.cache.tables else None
        )
        self.result_cache = self.caching.results if self.caching is not None else None
        self._planes = [plane for plane in (self.replication, self.caching) if plane is not None]

    # --- what sessions ask of the server ----------------------------------------------------

    def session_context(self) -> SessionContext:
        """What a new client session is given of the server (the config snapshot in force now)."""
        return SessionContext(
            config=self.config,
            statements=self.statements,
            stats=self.stats,
            slowlog=self.slowlog,
            audit=self.audit,
            metrics=self.metrics,
            router=lambda: self.router,
            tls_context=lambda: self.tls_context,
            draining=lambda: self.draining,
            issue_key=self.issue_key,
            forget=self.forget,
            client_count=self.client_count,
            cancel=self.cancel,
            pool_for=self.pool_for,
            ensure_schema=self.ensure_schema,
            refresh_schemas=self.refresh_schemas,
            admin_console=lambda: AdminConsole(self, self.link),
            read_routing=self.replication.routing if self.replication is not None else None,
            limits=self.limiter,
            caching=self.caching.caching if self.caching is not None else None,
        )

    def issue_key(self, session: Session) -> tuple[int, int]:
        """A proxy-wide BackendKeyData for a new client (never a backend's own key)."""
        while True:
            pid = self.link.new_pid() if self.link else secrets.randbelow(2**31 - 1) + 1
            if pid not in self.sessions:
                self.sessions[pid] = session
                return pid, secrets.randbits(32)

    def forget(self, session: Session) -> None:
        if self.sessions.get(session.pid) is session:
            del self.sessions[session.pid]

    def client_count(self) -> int:
        return len(self.sessions)

    def backend_user(self, client_user: str, policed: bool) -> str:
        """The role a client's backends log in as: backend_auth.policed.user for policed
        sessions when configured, else backend_auth.user, else the client's own user."""
        auth = self.config.backend_auth
        if policed and auth.policed is not None:
            return auth.policed.user
        return auth.user or client_user

    def pool_for(self, database: str, client_user: str, policed: bool = False) -> Pool:
        """The pool of a client's backends: policed sessions never share one with bypass roles."""
        user = self.backend_user(client_user, policed)
        auth = self.config.backend_auth
        shared = policed and (auth.policed is None or auth.policed.user == auth.user)
        key = (database, f"{user} (policed)" if shared else user)
        pool = self.pools.get(key)
        if pool is None:
            target = self._target(database, client_user, policed)
            make = self.replication.primary_pool if self.replication is not None else Pool
            pool = make(f"{database}/{key[1]}", target, self.pool_settings, policed)
            pool.paused = self.paused
            self.pools[key] = pool
        return pool

    def _target(self, database: str, client_user: str, policed: bool = False) -> Target:
        config = self.config
        auth = config.backend_auth
        user = self.backend_user(client_user, policed)
        if policed and auth.policed is not None:
            password = auth.policed.secret()
        else:
            password = auth.secret()
            if auth.user is None and password is None:
                entry = config.auth.users.get(client_user)
                password = entry.secret() if entry else None
        return Target(
            config.primary.host,
            config.primary.port,
            database,
            user,
            password,
            config.primary.tls.mode,
            self._backend_tls,
            config.pool.connect_timeout,
        )

    def cancel(self, pid: int, secret: int) -> asyncio.Task | None:
        """Forward a client's CancelRequest to the backend serving it now; ignore it otherwise.

        The returned task ends once PostgreSQL has acted on the request, as a direct
        cancel connection would (clients such as asyncpg wait for that). A key another
        worker issued is handed to that worker.
        """
        if self.link is not None and self.link.owner(pid) != self.link.index:
            return self.link.forward_cancel(pid, secret)
        session = self.sessions.get(pid)
        if session is None or not secrets.compare_digest(session.secret.to_bytes(4, "big"), secret.to_bytes(4, "big")):
            log.info("cancel request for unknown key pid=%s ignored", pid)
            return None
        backend, pool = session.backend, session.lent
        if backend is None or pool is None:
            log.info("cancel request for client %s ignored: it has no query running", session.peer)
            return None
        backend.cancels += 1
        return asyncio.get_running_loop().create_task(pool.cancel(backend))

    # --- policies and the live schema -------------------------------------------------------

    def load_policies(self, config: Config) -> Router | None:
        """A router for the config's policy (None without one); raises PolicyLoadError on a bad file."""
        if config.policies is None:
            return None
        old = self.router
        router = load_router(
            config.policies,
            old.schemas if old else {},
            old.search_paths if old else {},
            old.routines if old else {},
            old.server_majors if old else {},
        )
        router.observe = self.metrics.rewrite_seconds.observe
        return router

    def policy_files_changed(self) -> bool:
        """True (once per change) when a policy file was added, removed or modified on disk."""
        path = self.config.policies
        if path is None:
            return False
        files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
        stamp = tuple((str(f), f.stat().st_mtime_ns) for f in files if f.exists())
        changed = self._policy_stamp is not None and stamp != self._policy_stamp
        self._policy_stamp = stamp
        return changed

    async def ensure_schema(self, session: Session, database: str) -> bool:
        """Load a database's live schema once, before its first policed statement, and check
        that the role policed sessions log in as is fit to serve them (closing the client if not)."""
        router = self.router
        if router is None or session.ident is None:
            return True
        if database not in router.schemas:
            try:
                await self._once(self._schema_loads, database, lambda: self._load_schema(database))
            except Exception as exc:
                session.fatal(
                    "08006",
                    f"pgwarden could not read the schema of database {database!r}: {exc}",
                    hint="check that the role policed sessions log in as "
                    "(backend_auth.policed, else backend_auth) can connect",
                )
                return False
        pool = session.pool
        assert pool is not None
        if not pool.policed:  # a reload made this user policed while it logged in as bypass
            session.fatal(
                "57P01",
                "the policy changed while this client logged in: it is now "
                "policed, and was given a bypass role's backend",
                hint="connect again",
            )
            return False
        reason = superuser_reason(pool.target.user, pool.server_params or {})
        if reason is None:
            key = (database, pool.target.user)
            try:
                reason = await self._once(self._role_loads, key, lambda: self._check_role(pool.target))
            except Exception as exc:
                session.fatal(
                    "08006",
                    f"pgwarden could not check backend role {pool.target.user!r} in database {database!r}: {exc}",
                    hint=HINT,
                )
                return False
        if reason is not None:
            log.error("refusing a policed session of %s: %s", session.user, reason)
            session.fatal("42501", refusal(reason), hint=HINT)
            return False
        return session.state != CLOSED

    async def _once(self, tasks: dict, key, make):
        """Run make() once for all the sessions that ask for `key` meanwhile; its result."""
        task = tasks.get(key)
        if task is None:
            task = tasks[key] = asyncio.get_running_loop().create_task(make())
            task.add_done_callback(lambda _: tasks.pop(key, None) if tasks.get(key) is task else None)
        return await asyncio.shield(task)

    async def _check_role(self, target: Target) -> str | None:
        """Why `target`'s role must not serve policed sessions of its database (None: it may);
        remembered until the schema is read again."""
        key = (target.database, target.user)
        if key in self.role_checks:
            return self.role_checks[key]
        facts = await read_facts(
            target.host,
            target.port,
            target.user,
            target.password,
            target.database,
            target.tls_context,
            target.connect_timeout,
        )
        reason = self.role_checks[key] = unfit(facts, target.database)
        return reason

    async def _load_schema(self, database: str) -> None:
        target = self._target(database, self.config.backend_auth.user or "postgres", policed=True)
        live = await load_schema(target.host, target.port, target.user, target.password, database, target.tls_context)
        router = self.router
        if router is not None:
            router.add_schema(database, live.schema, live.search_path, live.routines, live.server_major)
        await self._recheck_roles(database)

    async def _recheck_roles(self, database: str) -> None:
        """Check again the roles serving policed sessions of `database` (after DDL or a reload);
        a role now unfit has its policed clients closed and its backends dropped."""
        for key in [k for k in self.role_checks if k[0] == database]:
            self.role_checks.pop(key, None)
        for pool in [p for p in self.pools.values() if p.policed and p.target.database == database]:
            reason = await self._check_role(pool.target)
            if reason is None:
                continue
            log.error("%s: closing its policed sessions", reason)
            for session in list(self.sessions.values()):
                if session.pool is pool and session.ident is not None:
                    session.fatal("42501", refusal(reason), hint=HINT)
            for backend in list(pool.idle):
                backend.close()
            pool.idle.clear()

    def _control_dsn(self, policed: bool = False) -> dict:
        """asyncpg connection arguments for control-plane work (EXPLAIN of slow statements)."""
        target = self._target("postgres", self.config.backend_auth.user or "postgres", policed)
        return {
            "host": target.host,
            "port": target.port,
            "user": target.user,
            "password": target.password,
            "ssl": target.tls_context or False,
        }

    def refresh_schemas(self, database: str | None = None) -> None:
        """Read the known databases' schemas again (all after a reload; one after DDL a bypass
        role ran through pgwarden). A read already under way is followed by another, so DDL
        that committed while it ran is not missed."""
        if self.replication is not None and database is not None:
            self.replication.routing.refresh(database)
        if self.router is None:
            return
        for name in [database] if database is not None else list(self.router.schemas):
            if name not in self.router.schemas:
                continue  # never read: it will be read before its first policed statement
            if name in self._schema_loads:
                self._schema_again.add(name)
            else:
                self._schema_loads[name] = asyncio.get_running_loop().create_task(self._reread(name))

    async def _reread(self, database: str) -> None:
        again = True
        while again:
            self._schema_again.discard(database)
            try:
                await self._load_schema(database)
            except Exception as exc:  # the schema read before stays in force
                log.error(
                    "reading the schema of %s again failed (%s); the one read before stays in force", database, exc
                )
            again = database in self._schema_again
        self._schema_loads.pop(database, None)

    # --- startup, main loop, shutdown -------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.router = self.load_policies(self.config)
        self.policy_files_changed()  # the baseline for the janitor's watch
        if self.audit is not None:
            await self.audit.start()
        if self.slowlog is not None:
            await self.slowlog.start()
        listen = self.config.listen
        self._listener = await loop.create_server(
            lambda: Session(self.session_context()),
            listen.host,
            listen.port,
            reuse_address=True,
            reuse_port=self.link is not None,
            backlog=1024,
        )
        if self.link is None or self.link.index == 0:  # one HTTP listener, reporting for all workers
            await self._http.start()
        if self.link is not None:
            await self.link.start(self, self.stop, AdminConsole(self, None).local)
            loop.add_signal_handler(signal.SIGUSR1, self.set_paused, True)
            loop.add_signal_handler(signal.SIGUSR2, self.set_paused, False)
        self._janitor.start()
        for plane in self._planes:  # read routing's monitor; the cache's catalog rereads
            await plane.start()
        for sig, handler in (
            (signal.SIGHUP, self.reload),
            (signal.SIGTERM, self._stop.set),
            (signal.SIGINT, self._stop.set),
        ):
            loop.add_signal_handler(sig, handler)
        log.info(
            "pgwarden listening on %s:%s (%s pooling, backend %s:%s)",
            listen.host,
            listen.port,
            self.config.pool.mode,
            self.config.primary.host,
            self.config.primary.port,
        )

    async def run(self) -> None:
        await self.start()
        await self._stop.wait()
        await self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    def set_paused(self, paused: bool) -> None:
        """PAUSE (stop lending backends) or RESUME, as the supervisor relays them to every worker."""
        self.paused = paused
        for pool in self.pools.values():
            if paused:
                pool.paused = True
            else:
                pool.resume()

    def reload(self) -> bool:
        """SIGHUP: load the config file again; a bad file is reported and the running config kept."""
        source = self.config.source
        if source is None:
            log.error("reload: this config was not read from a file (the demo builds its own); nothing to reload")
            return False
        try:
            new = load_config(source)
            tls_context, backend_context = listen_tls(new.listen.tls), backend_tls(new.primary.tls)
            pool_settings = self.link.shaped(new).pool if self.link else new.pool
            router = self.load_policies(new)
        except (ConfigError, PolicyLoadError, OSError, ValueError) as exc:
            log.error("reload of %s failed; keeping the running config:\n%s", source, exc)
            return False
        if (new.listen.host, new.listen.port) != (self.config.listen.host, self.config.listen.port):
            log.warning("reload: a new listen address takes effect only after a restart")
        self.config, self.tls_context, self._backend_tls = new, tls_context, backend_context
        self.pool_settings = pool_settings
        self.router = router
        self.limiter = limiter_for(new.limits, self.metrics, self.limiter)
        self.policy_files_changed()
        self.refresh_schemas()
        for (database, _), pool in self.pools.items():
            pool.settings = pool_settings
            user = pool.target.user
            if self.backend_user(user, pool.policed) == user:
                pool.target = self._target(database, user, pool.policed)
        if self.replication is not None:
            self.replication.reloaded(new)
        log.info("reloaded %s", source)
        if self.audit is not None:
            self.audit.offer(
                {"event": "reload", "config": str(source), "policy_version": router.policy.version if router else None},
                force=True,
            )
        return True

    async def shutdown(self) -> None:
        """Stop accepting, let transactions finish up to shutdown_timeout, then close everything."""
        self.draining = True
        if self._listener is not None:
            self._listener.close()
        log.info(
            "shutting down: %d clients, waiting up to %gs for their transactions",
            len(self.sessions),
            self.config.shutdown_timeout,
        )
        deadline = time.monotonic() + self.config.shutdown_timeout
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions.values()):
                if _between_transactions(session):
                    session.fatal("57P01", "terminating connection: pgwarden is shutting down")
            await asyncio.sleep(0.05)
        for session in list(self.sessions.values()):
            session.fatal("57P01", "terminating connection: pgwarden shutdown timeout reached")
        self._janitor.stop()
        for plane in self._planes:
            await plane.stop()
        await self._http.stop()
        if self.link is not None:
            await self.link.stop()
        for pool in self.pools.values():
            pool.close_all()
        if self.audit is not None:
            await self.audit.stop()
        if self.slowlog is not None:
            await self.slowlog.stop()
        await asyncio.sleep(0.05)
        log.info("pgwarden stopped")


def _between_transactions(session: Session) -> bool:
    if session.state != READY:
        return True
    backend = session.backend
    return backend is None or (backend.tracker.idle and backend.tracker.status == protocol.TX_IDLE)


def serve(config: Config, link: WorkerLink | None = None) -> None:
    """Run the proxy (or, with `link`, one worker of it) until SIGTERM/SIGINT, on uvloop."""
    import uvloop

    async def main() -> None:
        await Server(config, link).run()

    uvloop.run(main())
