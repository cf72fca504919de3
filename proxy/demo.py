"""`pgwarden demo`: a throwaway PostgreSQL with a two-tenant shop, sample policies, and pgwarden in front."""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHOP = """
create table customers (id int primary key, tenant_id text not null, name text, email text,
                        ssn text, phone text, born date);
create table orders (id int primary key, tenant_id text not null, customer_id int, total numeric(10,2));
create table products (id int primary key, name text, price numeric(10,2));
insert into customers values
  (1, 'acme', 'Ann Archer', 'ann@acme.io', '111-11-1111', '555-0101', '1980-05-17'),
  (2, 'acme', 'Bob Baker', 'bob@acme.io', '222-22-2222', '555-0102', '1990-01-02'),
  (3, 'acme', 'Cy Cole', 'cy@acme.io', '333-33-3333', '555-0103', '1985-07-07'),
  (4, 'globex', 'Gus Grant', 'gus@globex.io', '444-44-4444', '555-0201', '1975-12-31'),
  (5, 'globex', 'Hal Hart', 'hal@globex.io', '555-55-5555', '555-0202', '1969-03-03');
insert into orders values (10, 'acme', 1, 120.00), (11, 'acme', 2, 35.50), (12, 'acme', 3, 9.99),
  (20, 'globex', 4, 999.00), (21, 'globex', 5, 15.00);
insert into products values (1, 'anvil', 49.00), (2, 'rocket skates', 199.00);
create table secrets (id int, note text);
insert into secrets values (1, 'the launch codes');
"""

POLICY = """\
version: 1
tenancy:
  column: tenant_id
  sources:
    - users: {acme_app: acme, globex_app: globex, alice: acme}
roles:
  app: {users: [acme_app, globex_app]}
  analyst: {users: [alice]}
  admin: {users: [postgres], bypass: true}
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


class DemoError(Exception):
    """Something the user must fix before the demo can run: the message says what, in one line."""


def _bindir() -> Path:
    candidates = [Path(p).parent for p in (shutil.which("initdb"),) if p]
    try:
        candidates.append(Path(subprocess.run(["pg_config", "--bindir"], capture_output=True,
                                              text=True, check=True).stdout.strip()))
    except (OSError, subprocess.CalledProcessError):
        pass
    candidates += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")), reverse=True)
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    raise DemoError("no PostgreSQL server binaries found (initdb, pg_ctl): install PostgreSQL "
                    "(apt-get install postgresql) or put its bin folder on PATH")


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
        raise DemoError("running as root needs a `postgres` user to own the demo cluster: "
                        "create one (useradd postgres) or run as another user") from None
    return ["runuser", "-u", "postgres", "--", *cmd]


class Cluster:
    """A throwaway PostgreSQL in a temp dir: trust auth, 127.0.0.1 on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port, self.bindir = workdir, _free_port(), _bindir()
        self.data = workdir / "pgdata"

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres")
        run = dict(capture_output=True, text=True, cwd=self.workdir)
        init = subprocess.run(_as_owner([str(self.bindir / "initdb"), "-D", str(self.data), "-U",
                                         "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]), **run)
        if init.returncode:
            raise DemoError(f"initdb failed: {init.stderr.strip().splitlines()[-1:]}")
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = subprocess.run(_as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w",
                                          "-l", str(self.workdir / "postgres.log"), "-o", options,
                                          "start"]), **run)
        if start.returncode:
            raise DemoError(f"PostgreSQL did not start: see {self.workdir / 'postgres.log'}")

    def psql(self, sql: str, dbname: str = "postgres") -> None:
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
                        str(self.port), "-U", "postgres", "-d", dbname, "-c", sql],
                       check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(_as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                  "-w", "stop"]), capture_output=True, cwd=self.workdir)


def _config(workdir: Path, pg_port: int, port: int, http_port: int):
    from proxy.config import parse_config
    (workdir / "policies").mkdir()
    (workdir / "policies" / "shop.yaml").write_text(POLICY)
    data = {"listen": {"host": "127.0.0.1", "port": port},
            "http": {"host": "127.0.0.1", "port": http_port},
            "primary": {"host": "127.0.0.1", "port": pg_port}, "auth": {"method": "trust"},
            "backend_auth": {"user": "postgres"}, "pool": {"mode": "transaction", "size": 10},
            "policies": "policies", "admin": {"users": ["admin"]}}
    return parse_config(data, workdir / "pgwarden.yaml")


def _banner(port: int, http_port: int) -> str:
    line = f'psql "host=127.0.0.1 port={port} dbname=shop user='
    return f"""
pgwarden demo is running: a throwaway PostgreSQL with a two-tenant shop, behind pgwarden.

  tenant acme:        {line}acme_app"
  tenant globex:      {line}globex_app"
  analyst (masked):   {line}alice"
  admin (bypass):     {line}postgres"
  admin console:      psql "host=127.0.0.1 port={port} dbname=pgwarden user=admin" -c "SHOW POOLS"
  metrics:            curl -s http://127.0.0.1:{http_port}/metrics

Try, as acme_app and then as globex_app:   select id, name, ssn from customers;
As alice (emails, phones, birth dates masked): select name, email, phone, born from customers;
Refused, with a hint naming the policy rule:   select * from secrets;

Ctrl-C stops pgwarden and PostgreSQL and removes everything the demo created.
""".rstrip()


def run(port: int, http_port: int) -> int:
    """Start everything, serve until SIGINT/SIGTERM, clean up; return the exit status."""
    if not _port_free(port):
        raise DemoError(f"port {port} is in use (another pgwarden or PgBouncer?): use --port")
    if http_port and not _port_free(http_port):
        raise DemoError(f"port {http_port} is in use: use --http-port")
    workdir = Path(tempfile.mkdtemp(prefix="pgwarden-demo-"))
    cluster = Cluster(workdir)
    try:
        started = time.monotonic()
        cluster.start()
        cluster.psql("create database shop")
        cluster.psql("create role acme_app login; create role globex_app login; create role alice login")
        cluster.psql(SHOP, "shop")
        config = _config(workdir, cluster.port, port, http_port)
        import uvloop

        from proxy.cli import _setup_logging
        from proxy.server import Server
        _setup_logging("warning", "text")

        async def main() -> None:
            server = Server(config)
            await server.start()
            print(_banner(port, http_port), flush=True)
            print(f"(ready in {time.monotonic() - started:.1f} s)", flush=True)
            await server._stop.wait()
            await server.shutdown()

        uvloop.run(main())
        return 0
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        return run(args.port, args.http_port)
    except DemoError as exc:
        print(f"pgwarden demo: {exc}", file=sys.stderr)
        return 1


def add_command(sub) -> None:
    demo = sub.add_parser("demo", help="a throwaway PostgreSQL with sample tenants and policies, "
                                       "pgwarden in front; Ctrl-C removes it all")
    demo.add_argument("--port", type=int, default=6432)
    demo.add_argument("--http-port", type=int, default=9187)
    demo.set_defaults(func=cmd_demo)
