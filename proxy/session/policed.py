"""What a policed statement carries: the Prepared record, and the tenant and search path read from tracked SET texts (pure)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from proxy.enforce.router import Refuse, Router
from proxy.session.state import SessionState
from rewriter import pgparser

HIDDEN_DETAIL = "detail hidden by pgwarden: it can show other tenants' data"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A client's statement as the client wrote it, and the policy and tenant it was rewritten under."""

    query: str
    param_types: bytes
    checks: tuple[tuple[int, str], ...]
    router: Router
    tenant: str | None
    generation: int = 0  # the router's schema generation it was rewritten under


@functools.lru_cache(maxsize=1024)
def set_value(text: str) -> str | None:
    """The string value of a tracked `SET name TO 'value'` text (None if not a single string).

    >>> set_value("SET pgwarden.tenant TO 'acme'")
    'acme'
    """
    try:
        (raw,) = json.loads(pgparser.parse_sql_json(text))["stmts"]
        args = raw["stmt"]["VariableSetStmt"].get("args") or []
        return args[0]["A_Const"]["sval"]["sval"] if len(args) == 1 else None
    except Exception:
        return None


@functools.lru_cache(maxsize=256)
def search_path_of(text: str) -> tuple[str, ...] | None:
    """The schemas of a tracked `SET search_path ...` text.

    >>> search_path_of("SET search_path TO app, public")
    ('app', 'public')
    """
    try:
        (raw,) = json.loads(pgparser.parse_sql_json(text))["stmts"]
        args = raw["stmt"]["VariableSetStmt"].get("args") or []
    except Exception:
        return None
    out = []
    for arg in args:
        const = arg.get("A_Const", {})
        if "sval" in const:
            out += [s.strip() for s in const["sval"]["sval"].split(",") if s.strip()]
        elif "String" in arg:
            out.append(arg["String"]["sval"])
    return tuple(out)


def unknown_tenant(decision: Refuse, setting: str | None) -> Refuse:
    """A refusal for want of a tenant, told as what it is: the tenant was lost, not never set."""
    if not decision.message.endswith("this session has no tenant"):
        return decision
    return Refuse(
        decision.sqlstate,
        decision.message.replace(
            "this session has no tenant",
            "this session's tenant is unknown: a statement that "
            "changed it, or a SAVEPOINT, RELEASE or ROLLBACK TO, failed or ran in a batch that "
            "failed, so pgwarden cannot tell what PostgreSQL kept",
        ),
        f"SET {setting or 'pgwarden.tenant'} again (outside a failed transaction)",
        decision.rule,
    )


def current_tenant(state: SessionState, router: Router | None) -> str | None:
    """The tenant a session's statements run for: SET LOCAL's, else the tracked SET's, else its
    login tenant (None when unknown or none)."""
    if state.local_tenant is not None:
        return state.local_tenant
    if state.tenant_unknown:
        return None
    text = state.settings.get(router.tenant_setting) if router and router.tenant_setting else None
    if text is not None:
        return set_value(text)
    return state.ident.tenant if state.ident is not None else None
