"""Whether a backend role is fit to serve policed sessions: no superuser, no BYPASSRLS, owns nothing."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import asyncpg

HINT = (
    "set backend_auth.policed.user to a role that is not a superuser, has no BYPASSRLS, owns "
    "no table and cannot create any, with only the grants the policy needs: `pgwarden init --policy FILE --role NAME` "
    "writes the SQL that creates it; reload pgwarden (SIGHUP) once the role is fixed"
)

# Run as the role itself (current_user): its attributes, the superuser or BYPASSRLS roles it can
# become with SET ROLE, the relations outside the system schemas owned by it or a role it is a
# member of (owners bypass grants, can ALTER, DROP and GRANT, and are exempt from RLS), and the
# schemas it may create objects in (a table it creates is its own; a function or operator there
# can shadow a built-in one on the search_path).
FACTS = """
select r.rolname, r.rolsuper, r.rolbypassrls,
  array(select m.rolname from pg_roles m
        where m.oid <> r.oid and (m.rolsuper or m.rolbypassrls)
          and pg_has_role(r.oid, m.oid, 'MEMBER') order by 1) as powerful,
  array(select quote_ident(n.nspname) || '.' || quote_ident(c.relname) from pg_class c
        join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
          and n.nspname not in ('pg_catalog', 'information_schema')
          and n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
          and pg_has_role(r.oid, c.relowner, 'MEMBER') order by 1) as owned,
  array(select quote_ident(n.nspname) from pg_namespace n
        where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_'
          and has_schema_privilege(r.oid, n.oid, 'CREATE') order by 1) as creates
from pg_roles r where r.rolname = current_user
"""


@dataclass(frozen=True, slots=True)
class RoleFacts:
    """What PostgreSQL says about a backend role, in one database."""

    role: str
    superuser: bool
    bypassrls: bool
    powerful_roles: tuple[str, ...] = ()  # superuser or BYPASSRLS roles it is a member of
    owned: tuple[str, ...] = ()  # relations owned by it or a role it is a member of
    creates_in: tuple[str, ...] = ()  # schemas it has CREATE on


def unfit(facts: RoleFacts, database: str) -> str | None:
    """Why the role must not serve policed sessions, or None when it may.

    >>> unfit(RoleFacts("app_policed", False, False), "shop") is None
    True
    >>> unfit(RoleFacts("postgres", True, True, ("pg_super",), ("public.orders",)), "shop")
    'backend role "postgres" is a superuser and has BYPASSRLS in database "shop"'
    >>> unfit(RoleFacts("app", False, False, (), ("public.orders",)), "shop")
    'backend role "app" owns public.orders (or is a member of the role owning it) in database "shop"'
    """
    reasons = (["is a superuser"] if facts.superuser else []) + (["has BYPASSRLS"] if facts.bypassrls else [])
    if not facts.superuser:  # a superuser is a member and owner of everything: nothing to add
        reasons += _powers(facts)
    if not reasons:
        return None
    listed = reasons[0] if len(reasons) == 1 else ", ".join(reasons[:-1]) + " and " + reasons[-1]
    return f'backend role "{facts.role}" {listed} in database "{database}"'


def _powers(facts: RoleFacts) -> list[str]:
    """What a role that is not a superuser can still do that a policed role must not."""
    out = []
    if facts.powerful_roles:
        out.append("is a member of superuser or BYPASSRLS role(s) " + ", ".join(facts.powerful_roles))
    if facts.owned:
        more = len(facts.owned) - 5
        out.append(
            f"owns {', '.join(facts.owned[:5])}{f' and {more} more' if more > 0 else ''} "
            "(or is a member of the role owning it)"
        )
    if facts.creates_in:
        out.append(
            "may create objects in schema(s) "
            + ", ".join(facts.creates_in)
            + " (REVOKE CREATE ON SCHEMA ... FROM PUBLIC and from the role)"
        )
    return out


def refusal(reason: str) -> str:
    """The message a policed client gets when its backend role is unfit."""
    return f"policed sessions are refused: {reason}; pgwarden never runs a policed session's statements as such a role"


def superuser_reason(role: str, params: dict[str, str]) -> str | None:
    """The reason to refuse a policed backend whose startup ParameterStatus says superuser."""
    if params.get("is_superuser") == "on":
        return f'backend role "{role}" is a superuser (the backend reported is_superuser = on)'
    return None


async def read_facts(
    host: str,
    port: int,
    user: str,
    password: str | None,
    database: str,
    tls: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> RoleFacts:
    """Log in as the role and ask PostgreSQL what it is and what it owns."""
    conn = await asyncpg.connect(
        host=host,
        port=port,
        user=user,
        password=password,
        database=database,
        ssl=tls or False,
        timeout=timeout,
        statement_cache_size=0,
    )
    try:
        row = await conn.fetchrow(FACTS, timeout=timeout)
    finally:
        await conn.close()
    return RoleFacts(
        row["rolname"],
        row["rolsuper"],
        row["rolbypassrls"],
        tuple(row["powerful"]),
        tuple(row["owned"]),
        tuple(row["creates"]),
    )
