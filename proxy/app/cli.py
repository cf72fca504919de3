"""The `pgwarden` command line: run, check, passwd."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from proxy.config.logs import setup_logging
from proxy.config.model import Config, ConfigError, load_config


def _load(path: str):
    try:
        return load_config(path)
    except ConfigError as exc:
        if len(exc.errors) == 1:  # one problem, one line (a container's log shows it whole)
            print(f"pgwarden: {exc.errors[0]}", file=sys.stderr)
            return None
        print(f"pgwarden: the config has {len(exc.errors)} error(s):", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return None


def _router(config, quiet: bool = False):
    """The policy router of a config (None without policies); prints errors and returns False if bad."""
    if config.policies is None:
        return None
    from proxy.enforce.router import PolicyLoadError, load_router

    try:
        return load_router(config.policies)
    except PolicyLoadError as exc:
        if not quiet:
            print(f"pgwarden: the policy has {len(exc.errors)} error(s):", file=sys.stderr)
            for line in exc.errors:
                print(f"  {line}", file=sys.stderr)
        return False


async def _with_live_schema(config, router, database: str) -> None:
    from proxy.enforce.schema import load_schema
    from proxy.wire.tls import backend_tls

    auth = config.backend_auth  # read as the server reads it: as the role policed sessions use
    user, password = (
        (auth.policed.user, auth.policed.secret()) if auth.policed else (auth.user or "postgres", auth.secret())
    )
    live = await load_schema(
        config.primary.host, config.primary.port, user, password, database, backend_tls(config.primary.tls)
    )
    router.add_schema(database, live.schema, live.search_path, live.routines, live.server_major)


async def _policed_role_problems(config, database: str) -> list[str]:
    """Why the role policed sessions log in as must not serve them (empty when it may)."""
    from proxy.pooling.backend_role import HINT, read_facts, unfit
    from proxy.wire.tls import backend_tls

    auth = config.backend_auth  # every user in no bypass role is policed
    if auth.policed is not None:
        user, password = auth.policed.user, auth.policed.secret()
    elif auth.user is not None:
        user, password = auth.user, auth.secret()
    else:
        return []  # each client logs in as itself: pgwarden checks each such role at its login
    facts = await read_facts(
        config.primary.host, config.primary.port, user, password, database, backend_tls(config.primary.tls)
    )
    reason = unfit(facts, database)
    return [] if reason is None else [f"{reason}; {HINT}"]


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None or _router(config) is False:
        return 1
    setup_logging(config.log.level, config.log.format)
    if config.worker_count() > 1:
        from proxy.app.supervisor import supervise

        return supervise(config)
    return _serve(config)


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker process under the supervisor (`pgwarden run` with workers > 1 starts these)."""
    import logging
    from pathlib import Path

    from proxy.app.workers import WorkerLink, WorkerTag

    config = _load(args.config)
    if config is None or _router(config) is False:
        return 1
    setup_logging(config.log.level, config.log.format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(WorkerTag(args.index))
    return _serve(config, WorkerLink(args.index, args.count, Path(args.rundir), args.supervisor))


def _serve(config, link=None) -> int:
    from proxy.app.server import serve
    from proxy.audit.trail import AuditError

    try:
        serve(config, link)
    except AuditError as exc:
        print(f"pgwarden: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"pgwarden: cannot listen on {config.listen.host}:{config.listen.port}: "
            f"{exc.strerror or exc} (is another pgwarden or PgBouncer running there? "
            f"change listen.port)",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    router = _router(config)
    if router is False:
        return 1
    if args.live and router is not None:
        import asyncio

        try:
            asyncio.run(_with_live_schema(config, router, args.database))
        except (OSError, Exception) as exc:  # asyncpg raises its own errors for a refused login
            print(f"pgwarden: cannot read the live schema of {args.database!r}: {exc}", file=sys.stderr)
            return 1
        problems = router.problems(args.database)
        try:
            unfit = asyncio.run(_policed_role_problems(config, args.database))
        except (OSError, Exception) as exc:  # asyncpg raises its own errors for a refused login
            unfit = [f"cannot check the role policed sessions log in as: {exc}"]
        if unfit:
            print(f"pgwarden: policed sessions of database {args.database!r} would be refused:", file=sys.stderr)
            for line in unfit:
                print(f"  {line}", file=sys.stderr)
        if problems:
            print(f"pgwarden: the policy does not match database {args.database!r}:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
        if problems or unfit:
            return 1
    if args.live and router is not None:
        from rewriter.pgparser import PARSER_MAJOR
        from rewriter.server_grammar import SUPPORTED_SERVERS

        major = router.server_majors[args.database]
        supported = router.server_supported(args.database)
        print(
            f"database {args.database!r}: PostgreSQL {major}, "
            + ("supported" if supported else "NOT supported: policed sessions are refused")
            + f" (pgwarden judges with PostgreSQL {PARSER_MAJOR}'s grammar and supports "
            + f"{min(SUPPORTED_SERVERS)} to {max(SUPPORTED_SERVERS)})",
            file=sys.stdout if supported else sys.stderr,
        )
        if not supported:
            return 1
    print(
        f"{args.config}: ok"
        + (f" (policy {config.policies})" if router else "")
        + (f", matches database {args.database!r}" if args.live and router else "")
    )
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import asyncio

    from proxy.enforce.router import Forward, Refuse, SetTenant

    config = _load(args.config)
    if config is None:
        return 1
    router = _router(config)
    if not router and config.cache is None:
        print("pgwarden: explain needs a config with `policies` or `cache`", file=sys.stderr)
        return 1
    if not router:
        return _explain_cache(config, args.database, args.sql)
    asyncio.run(_with_live_schema(config, router, args.database))
    ident = router.identity(args.user)
    tenant = args.tenant if args.tenant is not None else ident.tenant
    decision = router.decide(ident, tenant, args.database, args.sql)
    roles = ", ".join(sorted(ident.roles)) or "(none)"
    print(f"user {args.user}: roles {roles}{'; bypass' if ident.bypass else ''}; tenant {tenant}")
    if isinstance(decision, Refuse):
        print(f"deny ({decision.sqlstate}, rule {decision.rule}): {decision.message}")
        print(f"hint: {decision.hint}")
        return 2
    if isinstance(decision, SetTenant):
        print(f"set tenant: {decision.tenant}; sends: {decision.sql}")
    elif isinstance(decision, Forward) and decision.sql is not None:
        print(
            "rewrite: "
            + ", ".join(decision.tables)
            + (f"; masks {', '.join(decision.masked)}" if decision.masked else "")
        )
        for number, value in decision.param_checks:
            print(f"check at Bind: ${number} must equal {value!r}")
        print(decision.sql)
    else:
        print("allow: sent unchanged")
        print(args.sql)
    return _explain_cache(config, args.database, decision.sql or args.sql) if config.cache is not None else 0


def _explain_cache(config: Config, database: str, sql: str) -> int:
    """Whether the result cache may keep the answer of `sql` (as sent to PostgreSQL), and why."""
    import asyncio

    from proxy.app.caching import explain_cache

    print("cache: " + asyncio.run(explain_cache(config, database, sql)))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from policies.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from proxy.wire.auth import scram_verifier

    password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass()
    print(scram_verifier(password))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pgwarden", description=("A transparent PostgreSQL proxy that enforces data policy.")
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy in the foreground")
    run.add_argument("--config", required=True, help="the proxy config file (YAML)")
    run.set_defaults(func=cmd_run)
    worker = sub.add_parser("worker")  # started by `run` when workers > 1; not for people
    worker.add_argument("--config", required=True)
    for name in ("--index", "--count", "--supervisor"):
        worker.add_argument(name, type=int, required=True)
    worker.add_argument("--rundir", required=True)
    worker.set_defaults(func=cmd_worker)
    check = sub.add_parser("check", help="validate the config and policies; exit 1 listing every error")
    check.add_argument("--config", required=True)
    check.add_argument("--live", action="store_true", help="also check the policy against the database")
    check.add_argument("--database", default="postgres", help="the database for --live (postgres)")
    check.set_defaults(func=cmd_check)
    explain = sub.add_parser("explain", help="what pgwarden would do with a statement for a user")
    explain.add_argument("--config", required=True)
    explain.add_argument("--user", required=True)
    explain.add_argument("--tenant", help="the session's tenant (default: the user's from the policy)")
    explain.add_argument("--database", default="postgres")
    explain.add_argument("sql")
    explain.set_defaults(func=cmd_explain)
    from proxy.audit.report import add_audit_commands

    add_audit_commands(sub)
    schema = sub.add_parser("schema", help="print the policy format as JSON Schema (for editors)")
    schema.set_defaults(func=cmd_schema)
    from proxy.app.demo import add_command as add_demo

    add_demo(sub)
    from proxy.app import init_policy

    init = sub.add_parser("init", help="write a starter policy from a live database's schema")
    init_policy.add_arguments(init)
    init.set_defaults(func=init_policy.cmd_init)
    passwd = sub.add_parser("passwd", help="print a SCRAM verifier for a password read from stdin")
    passwd.set_defaults(func=cmd_passwd)
    args = parser.parse_args(argv)
    return args.func(args)
