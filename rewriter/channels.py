"""Notification channels of a policed session, scoped per tenant: NOTIFY and pg_notify() rewritten to the tenant's channel."""

from __future__ import annotations

import hashlib

from .pgparser import Node
from .refuse import Refused
from .result import Deny, Rewrite

PREFIX = "pgwarden_"
_HINT = "Send NOTIFY channel, 'payload' (or SELECT pg_notify('channel', 'payload')) as a statement of its own."


def scoped_channel(tenant: str, channel: str) -> str:
    """The backend channel of `channel` for `tenant`: a digest of both, within PostgreSQL's 63 bytes.

    >>> scoped_channel("acme", "jobs")
    'pgwarden_3294cc984a951152c578ec3ca10f196877f15ab0e8'
    >>> len(scoped_channel("a" * 200, "b" * 63)) <= 63
    True
    """
    digest = hashlib.sha256(f"{tenant}\x00{channel}".encode()).hexdigest()
    return PREFIX + digest[:42]


def literal(text: str) -> str:
    """A string constant (standard_conforming_strings is on for policed sessions)."""
    return "'" + text.replace("'", "''") + "'"


def refuse_notify(kind: str) -> None:
    """NOTIFY inside a message of several statements (or wrapped) is refused: only a lone one is scoped."""
    if kind == "NotifyStmt":
        raise Refused("NOTIFY is refused in a message of several statements under a policy", _HINT, "statements")


def notify_rewrite(kind: str, fields: Node, tenant: str | None) -> Rewrite | Deny | None:
    """A lone NOTIFY or SELECT pg_notify('ch', 'payload') sent to the tenant's channel; None for other statements.

    >>> notify_rewrite("NotifyStmt", {"conditionname": "jobs", "payload": "x"}, "acme").sql[:17]
    'NOTIFY pgwarden_3'
    """
    if kind == "NotifyStmt":
        channel, payload, alias = fields.get("conditionname", ""), fields.get("payload"), None
    else:
        call = _pg_notify_call(kind, fields)
        if call is None:
            return None
        channel, payload, alias = call
    if tenant is None:
        return Deny(
            "NOTIFY is refused without a tenant: notification channels are scoped per tenant",
            "SET the tenant first (pgwarden scopes channels to it).",
            "tenancy.sources",
        )
    scoped = scoped_channel(tenant, channel)
    if kind == "NotifyStmt":
        return Rewrite(f"NOTIFY {scoped}" + (f", {literal(payload)}" if payload else ""))
    named = f' AS "{alias}"' if alias else ""
    return Rewrite(f"SELECT pg_catalog.pg_notify({literal(scoped)}, {literal(payload or '')}){named}")


def _pg_notify_call(kind: str, fields: Node) -> tuple[str, str | None, str | None] | None:
    """(channel, payload, column alias) of `SELECT pg_notify('ch', 'payload')` with nothing else."""
    if kind != "SelectStmt" or set(fields) - {"targetList", "limitOption", "op"}:
        return None
    targets = fields.get("targetList") or []
    if len(targets) != 1:
        return None
    target = targets[0].get("ResTarget") or {}
    call = (target.get("val") or {}).get("FuncCall") or {}
    name = [n.get("String", {}).get("sval") for n in call.get("funcname") or []]
    if name not in (["pg_notify"], ["pg_catalog", "pg_notify"]) or set(call) - {
        "funcname",
        "args",
        "funcformat",
        "location",
    }:
        return None
    args = [((a.get("A_Const") or {}).get("sval") or {}) for a in call.get("args") or []]
    if len(args) != 2 or not all("sval" in a for a in args):
        return None
    return args[0]["sval"], args[1]["sval"], target.get("name")
