"""`pgwarden demo`: a throwaway PostgreSQL with a two-tenant shop, sample policies, and pgwarden in front."""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ACME = [
    "Ann Archer",
    "Bob Baker",
    "Cy Cole",
    "Dee Dunn",
    "Eve Ellis",
    "Fay Ford",
    "Gil Gray",
    "Ida Irwin",
    "Jo Jones",
    "Kai King",
]
GLOBEX = [
    "Gus Grant",
    "Hal Hart",
    "Ivy Ives",
    "Jed Jax",
    "Kim Kerr",
    "Lou Lane",
    "Max Moss",
    "Ned Nash",
    "Oz Owen",
    "Pam Pike",
]
SCHEMA = """
create table customers (id int primary key, tenant_id text not null, name text, email text,
                        ssn text, phone text, born date);
create table orders (id int primary key, tenant_id text not null, customer_id int, total numeric(10,2));
create table products (id int primary key, name text, price numeric(10,2));
insert into products values (1, 'anvil', 49.00), (2, 'rocket skates', 199.00), (3, 'giant magnet', 75.50),
  (4, 'portable hole', 12.00), (5, 'earthquake pills', 3.25);
create table secrets (id int, note text);
insert into secrets values (1, 'the launch codes');
"""


def shop_sql() -> str:
    """The demo shop: ten customers and ten orders for each of acme and globex, five shared products."""
    customers, orders = [], []
    for n, (tenant, name) in enumerate([("acme", x) for x in ACME] + [("globex", x) for x in GLOBEX], 1):
        row = n if tenant == "acme" else n - 10
        area = "01" if tenant == "acme" else "02"
        customers.append(
            f"({n}, '{tenant}', '{name}', '{name.split()[0].lower()}@{tenant}.io', "
            f"'{n:03d}-{n:02d}-{1000 + n * 7}', '555-{area}{row:02d}', "
            f"'{1960 + n * 2}-{n % 12 + 1:02d}-{n + 7:02d}')"
        )
        orders.append(f"({100 + n}, '{tenant}', {n}, {n * 17 % 250 + 9.99:.2f})")
    return (
        SCHEMA
        + "insert into customers values\n  "
        + ",\n  ".join(customers)
        + ";\n"
        + "insert into orders values "
        + ", ".join(orders)
        + ";\n"
    )


POLICY = """\
version: 1
tenancy:
  column: tenant_id
  sources:
    - users: {acme_app: acme, globex_app: globex, alice: acme}
roles:
  app: {users: [acme_app, globex_app]}
  analyst: {users: [alice]}
  admin: {users: [%(admin)s], bypass: true}
tables:
  public.customers:
    grants: {app: [select, insert, update, delete], analyst: [select]}
    masks:
      email: {mask: email, roles: [analyst]}
      ssn: {mask: redact, roles: [analyst, app]}
      phone: {mask: partial, keep_last: 4, roles: [analyst]}
      born: {mask: year, roles: [analyst]}
  public.orders:
    grants: {app: [select, insert, update, delete], analyst: [select]}
  public.products:
    tenant_column: null
    grants: {"*": [select]}
"""


POLICED_ROLE = "pgwarden_demo_policed"  # the role policed sessions log in as (not a superuser)


class DemoError(Exception):
    """Something the user must fix before the demo can run: the message says what, in one line."""


def _bindir() -> Path:
    candidates = [Path(p).parent for p in (shutil.which("initdb"),) if p]
    try:
        candidates.append(
            Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
        )
    except (OSError, subprocess.CalledProcessError):
        pass
    candidates += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")), reverse=True)
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    raise DemoError(
        "no PostgreSQL server binaries found (initdb, pg_ctl): install PostgreSQL "
        "(apt-get install postgresql) or put its bin folder on PATH"
    )


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(cmd: list[str]) -> list[str]:
    """initdb refuses root: run the cluster as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise DemoError(
            "running as root needs a `postgres` user to own the demo cluster: "
            "create one (useradd postgres) or run as another user"
        ) from None
    return ["runuser", "-u", "postgres", "--", *cmd]


class Cluster:
    """A throwaway PostgreSQL in a temp dir: trust auth, 127.0.0.1 on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port, self.bindir = workdir, _free_port(), _bindir()
        self.data = workdir / "pgdata"

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres")
        run: dict[str, Any] = {"capture_output": True, "text": True, "cwd": self.workdir}
        init = subprocess.run(
            _as_owner(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            **run,
        )
        if init.returncode:
            raise DemoError(f"initdb failed: {init.stderr.strip().splitlines()[-1:]}")
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = subprocess.run(
            _as_owner(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-w",
                    "-l",
                    str(self.workdir / "postgres.log"),
                    "-o",
                    options,
                    "start",
                ]
            ),
            **run,
        )
        if start.returncode:
            raise DemoError(f"PostgreSQL did not start: see {self.workdir / 'postgres.log'}")

    def psql(self, sql: str, dbname: str = "postgres") -> None:
        _psql(f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}", sql)

    def target(self) -> dict:
        """Where pgwarden connects: host, port, user, password, the demo database."""
        return {"host": "127.0.0.1", "port": self.port, "user": "postgres", "password": None, "dbname": "shop"}

    def stop(self) -> None:
        subprocess.run(
            _as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            cwd=self.workdir,
        )


class External:
    """A PostgreSQL named by --database-url: the demo gets its own database there, dropped at exit."""

    DBNAME = "pgwarden_demo"

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise DemoError(f"--database-url must look like postgresql://user:password@host:5432/db, not {url!r}")
        self.url, self.parts = url, parts

    def start(self) -> None:
        if shutil.which("psql") is None:
            raise DemoError("psql not found: install the PostgreSQL client (apt-get install postgresql-client)")
        self.psql(f"drop database if exists {self.DBNAME}")

    def psql(self, sql: str, dbname: str | None = None) -> None:
        url = self.url if dbname is None else self.parts._replace(path=f"/{dbname}").geturl()
        _psql(url, sql)

    def target(self) -> dict:
        return {
            "host": self.parts.hostname,
            "port": self.parts.port or 5432,
            "user": unquote(self.parts.username or "postgres"),
            "password": unquote(self.parts.password) if self.parts.password else None,
            "dbname": self.DBNAME,
        }

    def stop(self) -> None:
        try:
            self.psql(f"drop database if exists {self.DBNAME} with (force)")
            self.psql(f"drop role if exists {POLICED_ROLE}")
        except DemoError as exc:
            print(
                f"pgwarden demo: could not drop database {self.DBNAME} or role {POLICED_ROLE}: {exc}", file=sys.stderr
            )


def _psql(conninfo: str, sql: str) -> None:
    result = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql],
        capture_output=True,
        text=True,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )
    if result.returncode:
        lines = result.stderr.strip().splitlines() or ["psql failed"]
        raise DemoError(f"{lines[0]} (check the server, user and password)")


def _policed_role(db, workdir: Path, target: dict) -> dict:
    """Create the least-privilege role policed sessions log in as, from `pgwarden init`'s SQL
    for the demo policy; its backend_auth.policed entry."""
    from policies.load import load_policy
    from proxy.enforce.role_sql import role_sql

    (workdir / "policies").mkdir()
    (workdir / "policies" / "shop.yaml").write_text(POLICY % {"admin": target["user"]})
    sql = role_sql(load_policy(workdir / "policies"), POLICED_ROLE, target["dbname"])
    password = secrets.token_urlsafe(18)
    db.psql(f"DROP ROLE IF EXISTS {POLICED_ROLE}")  # left over by a demo that was killed
    db.psql(sql.create + f"ALTER ROLE {POLICED_ROLE} PASSWORD '{password}';")
    db.psql(sql.grants, target["dbname"])
    return {"user": POLICED_ROLE, "password": password}


def _config(workdir: Path, target: dict, port: int, http_port: int, policed: dict):
    from proxy.config.model import parse_config

    backend = {"user": target["user"], "policed": policed} | (
        {"password": target["password"]} if target["password"] else {}
    )
    data = {
        "listen": {"host": "127.0.0.1", "port": port},
        "http": {"host": "127.0.0.1", "port": http_port},
        "primary": {"host": target["host"], "port": target["port"]},
        "auth": {"method": "trust"},
        "backend_auth": backend,
        "pool": {"mode": "transaction", "size": 10},
        "policies": "policies",
        "admin": {"users": ["admin"]},
    }
    return parse_config(data, workdir / "pgwarden.yaml")


def _banner(port: int, http_port: int, dbname: str, admin: str) -> str:
    line = f'psql "host=127.0.0.1 port={port} dbname={dbname} user='
    return f"""
pgwarden demo is running: a PostgreSQL with a two-tenant shop, behind pgwarden.

  tenant acme:        {line}acme_app"
  tenant globex:      {line}globex_app"
  analyst (masked):   {line}alice"
  admin (bypass):     {line}{admin}"
  admin console:      psql "host=127.0.0.1 port={port} dbname=pgwarden user=admin" -c "SHOW POOLS"
  metrics:            curl -s http://127.0.0.1:{http_port}/metrics

Isolation, as acme_app and then as globex_app:  select id, name, ssn from customers;
Masks, as alice (acme's analyst):              select name, email, phone, born from customers;
Refused, with a hint naming the policy rule:   select * from secrets;
No superuser rights, as any policed user:      select current_user, current_setting('is_superuser');

Ctrl-C stops pgwarden and PostgreSQL and removes everything the demo created.
""".rstrip()


def _serve(config, banner: str, started: float) -> None:
    """Run pgwarden on this thread's new event loop until SIGINT or SIGTERM."""
    import uvloop

    from proxy.app.server import Server
    from proxy.config.logs import setup_logging

    setup_logging("warning", "text")

    async def main() -> None:
        server = Server(config)
        await server.start()
        print(banner, flush=True)
        print(f"(ready in {time.monotonic() - started:.1f} s)", flush=True)
        await server._stop.wait()
        await server.shutdown()

    uvloop.run(main())


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(port: int, http_port: int, database_url: str | None = None) -> int:
    """Start everything, serve until SIGINT/SIGTERM, clean up; return the exit status."""
    if not _port_free(port):
        raise DemoError(f"port {port} is in use (another pgwarden or PgBouncer?): use --port")
    if http_port and not _port_free(http_port):
        raise DemoError(f"port {http_port} is in use: use --http-port")
    signal.signal(signal.SIGTERM, _interrupt)  # until pgwarden's own handlers take over
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="pgwarden-demo-"))
    try:
        db = External(database_url) if database_url else _local_cluster(workdir)
        db.start()
        try:
            target = db.target()
            db.psql(f"create database {target['dbname']}")
            db.psql(shop_sql(), target["dbname"])
            policed = _policed_role(db, workdir, target)
            config = _config(workdir, target, port, http_port, policed)
            _serve(config, _banner(port, http_port, target["dbname"], target["user"]), started)
            return 0
        finally:
            db.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _local_cluster(workdir: Path) -> Cluster | External:
    """The throwaway local cluster; without server binaries, $DATABASE_URL when it is set."""
    try:
        return Cluster(workdir)
    except DemoError as exc:
        if os.environ.get("DATABASE_URL"):
            return External(os.environ["DATABASE_URL"])
        raise DemoError(f"{exc}; or give a server with --database-url (or set DATABASE_URL)") from None


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        return run(args.port, args.http_port, args.database_url)
    except DemoError as exc:
        print(f"pgwarden demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=6432, help="where pgwarden listens (6432)")
    parser.add_argument("--http-port", type=int, default=9187, help="metrics and health (9187)")
    parser.add_argument(
        "--database-url",
        help="use this PostgreSQL instead of a throwaway local one "
        "($DATABASE_URL when no initdb is found); the demo creates and drops "
        "database pgwarden_demo there",
    )


def add_command(sub) -> None:
    demo = sub.add_parser(
        "demo", help="a throwaway PostgreSQL with sample tenants and policies, pgwarden in front; Ctrl-C removes it all"
    )
    add_arguments(demo)
    demo.set_defaults(func=cmd_demo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgwarden demo", description=__doc__)
    add_arguments(parser)
    return cmd_demo(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
