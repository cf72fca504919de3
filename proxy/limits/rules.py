"""Which limits apply to a session, and what a refusal says: pure functions of the config and the identity."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from proxy.config.limits import DEFAULT, Limit, Limits

# The limits a refusal names (the `limit` label of pgwarden_limit_rejections_total).
RATE, CONCURRENCY, CONNECTIONS, TIMEOUT = (
    "statements_per_second",
    "concurrent_statements",
    "client_connections",
    "statement_timeout",
)


class Entity(NamedTuple):
    """Whom a limit counts: a tenant value, a policy role or a user."""

    kind: str  # "tenant", "role" or "user"
    name: str


class Applied(NamedTuple):
    """One entity's limit (its own entry, else the `"*"` entry of its kind)."""

    entity: Entity
    limit: Limit


def lookup(entries: Mapping[str, Limit], name: str) -> Limit | None:
    """The entry named, else the default `"*"` (None: no limit for it).

    >>> lookup({"*": Limit(concurrent_statements=1)}, "x").concurrent_statements
    1
    """
    found = entries.get(name)
    return found if found is not None else entries.get(DEFAULT)


def applicable(limits: Limits, user: str, roles: Iterable[str], tenant: str | None) -> tuple[Applied, ...]:
    """The limits of a user, its policy roles (sorted) and its tenant, in that order.

    >>> config = Limits(users={"bob": Limit(client_connections=2)}, tenants={"*": Limit(statements_per_second=5)})
    >>> [a.entity for a in applicable(config, "bob", (), "acme")]
    [Entity(kind='user', name='bob'), Entity(kind='tenant', name='acme')]
    """
    out = []
    found = lookup(limits.users, user)
    if found is not None:
        out.append(Applied(Entity("user", user), found))
    for role in sorted(roles):
        found = lookup(limits.roles, role)
        if found is not None:
            out.append(Applied(Entity("role", role), found))
    if tenant is not None and (found := lookup(limits.tenants, tenant)) is not None:
        out.append(Applied(Entity("tenant", tenant), found))
    return tuple(out)


def timeout_cap(applied: Iterable[Applied]) -> int | None:
    """The smallest statement_timeout_ms of the limits that apply (None: no cap).

    >>> timeout_cap([Applied(Entity("role", "a"), Limit(statement_timeout_ms=900)),
    ...              Applied(Entity("user", "u"), Limit(statement_timeout_ms=500))])
    500
    """
    caps = [a.limit.statement_timeout_ms for a in applied if a.limit.statement_timeout_ms is not None]
    return min(caps) if caps else None


def timeout_ms(value: str) -> int | None:
    """A statement_timeout value in milliseconds as PostgreSQL reads it (None: not understood).

    >>> timeout_ms("5s"), timeout_ms("250"), timeout_ms("0"), timeout_ms("1min"), timeout_ms("x")
    (5000, 250, 0, 60000, None)
    """
    text = value.strip().strip("'").strip().lower()
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = text[len(number) :].strip() or "ms"
    scale = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}.get(unit)
    try:
        return None if scale is None else round(float(number) * scale)
    except ValueError:
        return None


def message(limit: str, entity: Entity, config: Limit) -> str:
    """What a refusal says: the limit, whose it is, and its value.

    >>> message(RATE, Entity("tenant", "acme"), Limit(statements_per_second=100))
    "rate limit for tenant 'acme' exceeded: 100 statements per second"
    """
    who = f"{entity.kind} '{entity.name}'"
    if limit == RATE:
        return f"rate limit for {who} exceeded: {config.statements_per_second:g} statements per second"
    if limit == CONCURRENCY:
        return f"concurrency limit for {who} exceeded: {config.concurrent_statements} concurrent statements"
    if limit == CONNECTIONS:
        return f"connection limit for {who} exceeded: {config.client_connections} client connections"
    return f"statement_timeout limit for {who}: at most {config.statement_timeout_ms} ms (and not 0)"
