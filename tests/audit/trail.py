"""Builds real audit trails for the tests (and for the excerpts in docs/audit.md)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from proxy.audit.trail import Audit, AuditConfig, statement_record

KEY_ENV = "PGWARDEN_TEST_AUDIT_KEY"


def write_trail(path: Path, records: list[dict], **config) -> Audit:
    """Write records through a real Audit (started, offered, stopped) and return it."""

    async def run() -> Audit:
        audit = Audit(AuditConfig(path=path, **config))
        await audit.start()
        for record in records:
            assert audit.offer(record)
        await audit.stop()
        return audit

    return asyncio.run(run())


def numbered(n: int, start: int = 0) -> list[dict]:
    """n statement records, each with a secret literal in its text."""
    return [
        statement_record(
            sql=f"select * from orders where id = {i} and note = 'secret-{i}'",
            user="acme_app",
            tenant="acme",
            roles=["app"],
            decision="rewritten",
            tables=["public.orders"],
        )
        for i in range(start, start + n)
    ]


def sample(base: float | None = None) -> list[dict]:
    """A morning of a small shop: two tenants, an analyst with masks, refusals, a bypass role."""
    base = base if base is not None else time.time() - 3600
    out: list[dict] = []
    session = {"session": 4242, "client": "10.0.0.7:51544", "database": "shop", "route": "primary"}
    for minute in range(0, 60, 3):
        at = base + minute * 60
        out.append(
            statement_record(
                time=at,
                **session,
                user="acme_app",
                roles=["app"],
                tenant="acme",
                decision="rewritten",
                sql="select id, name, email from customers where email = 'ann@acme.io'",
                tables=["public.customers"],
                masked=["public.customers.ssn"],
                rows=1,
                duration_ms=0.8,
                rewritten="select ... from (select ...) as customers",
                sqlstate="00000",
            )
        )
        out.append(
            statement_record(
                time=at + 5,
                **session,
                user="globex_app",
                roles=["app"],
                tenant="globex",
                decision="rewritten",
                sql="insert into orders (id, customer_id, total) values (9001, 3, 12.50)",
                tables=["public.orders"],
                rows=1,
                duration_ms=1.2,
                rewritten="insert into ...",
                sqlstate="00000",
            )
        )
        if minute % 9 == 0:
            out.append(
                statement_record(
                    time=at + 20,
                    **session,
                    user="acme_app",
                    roles=["app"],
                    tenant="acme",
                    decision="refused",
                    rule="tables.public.secrets",
                    reason="table public.secrets is not granted to role app",
                    sql="select * from secrets",
                    sqlstate="42501",
                )
            )
    out.append(
        statement_record(
            time=base + 1800,
            **session,
            user="analyst",
            roles=["analyst"],
            tenant=None,
            decision="rewritten",
            sql="select customer_id, sum(total) from orders group by 1",
            tables=["public.orders"],
            masked=["public.customers.email"],
            rows=3,
            duration_ms=4.1,
            rewritten="select ...",
            sqlstate="00000",
        )
    )
    out.append(
        statement_record(
            time=base + 1900,
            **session,
            user="acme_app",
            roles=["app"],
            tenant="acme",
            decision="refused",
            rule="functions",
            reason="function pg_read_file is not known to be safe",
            sql="select pg_read_file('/etc/passwd')",
            sqlstate="42501",
        )
    )
    out.append(
        statement_record(
            time=base + 1950,
            **session,
            user="analyst",
            roles=["analyst"],
            tenant=None,
            decision="monitor-would-refuse",
            rule="tables.public.payroll",
            tables=["public.payroll"],
            reason="table public.payroll is not granted to role analyst",
            sql="select * from payroll",
            rows=12,
        )
    )
    out.append(
        statement_record(
            time=base + 2000,
            **session,
            user="postgres",
            roles=[],
            bypass=True,
            decision="allowed",
            sql="update customers set email = 'x@y.z' where id = 7",
            rows=1,
            duration_ms=0.5,
            sqlstate="00000",
        )
    )
    out.append({"event": "login", "time": base, "user": "acme_app", **session})
    out.append({"event": "logout", "time": base + 3500, "user": "acme_app", "reason": "client closed", **session})
    out.sort(key=lambda r: r["time"])
    return out
