"""Evaluating a policy for an identity: roles, grants, masks, tenant sources and signed tenant tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from policies import model
from policies.load import Policy
from policies.model import ACTIONS, MASK_OPTIONS

# pg_catalog / information_schema relations refused to non-bypass roles, schema-qualified.
# Everything else in the catalogs stays readable so ORMs and tools can introspect.
# Left readable on purpose: pg_settings (this session's own), pg_roles/pg_user (password
# column always '********'), pg_available_extensions.
SENSITIVE_CATALOG_RELATIONS = frozenset(
    {
        f"pg_catalog.{name}"
        for name in (
            # other sessions' statements, clients and locks
            "pg_stat_activity",
            "pg_stat_statements",
            "pg_stat_statements_info",
            "pg_locks",
            "pg_stat_ssl",
            "pg_stat_gssapi",
            "pg_backend_memory_contexts",
            # what a pooled backend holds for whichever client it serves (statement texts rewritten
            # for another tenant, cursors) and every session's prepared transactions
            "pg_prepared_statements",
            "pg_cursors",
            "pg_prepared_xacts",
            # replication origins and their progress (PostgreSQL revokes both from PUBLIC)
            "pg_replication_origin",
            "pg_replication_origin_status",
            # secrets: password hashes, foreign-server passwords, per-role settings
            "pg_authid",
            "pg_shadow",
            "pg_user_mapping",
            "pg_user_mappings",
            "pg_db_role_setting",
            # large objects are not owned by a tenant: every tenant's bytes
            "pg_largeobject",
            "pg_largeobject_metadata",
            # planner statistics: sample values and most-common values from every tenant's rows
            "pg_stats",
            "pg_statistic",
            "pg_stats_ext",
            "pg_stats_ext_exprs",
            "pg_statistic_ext_data",
            # server files: authentication rules, ident maps, configuration lines
            "pg_hba_file_rules",
            "pg_ident_file_mappings",
            "pg_file_settings",
            "pg_config",
            # replication: connection strings (with passwords) and standby addresses
            "pg_stat_replication",
            "pg_replication_slots",
            "pg_stat_wal_receiver",
            "pg_subscription",
            "pg_stat_subscription",
            # foreign servers and tables: options hold hosts, databases and other connection details
            "pg_foreign_server",
            "pg_foreign_table",
            # row-level security policies: their expressions can name tenants and sensitive values
            "pg_policy",
            "pg_policies",
        )
    }
    | {
        f"information_schema.{name}"
        for name in (
            # foreign-server options and user mappings carry connection strings and passwords
            "user_mappings",
            "user_mapping_options",
            "foreign_server_options",
        )
    }
)


class TokenError(Exception):
    """A signed tenant token that is malformed, forged or expired (the message says which)."""


@dataclass(frozen=True, slots=True)
class MaskRule:
    """A mask as the rewriter needs it: its kind and its options (only those the kind takes)."""

    kind: str
    options: dict[str, Any]


def roles_of(policy: Policy, user: str) -> frozenset[str]:
    """The roles that list this login user (a user in no role has only the "*" grants)."""
    return policy.user_roles.get(user, frozenset())


def is_bypass(policy: Policy, user: str) -> bool:
    return any(policy.roles[r].bypass for r in roles_of(policy, user))


def allowed_actions(policy: Policy, user: str, table: str) -> frozenset[str]:
    """Actions granted on `table` to any of the user's roles or to "*"; none for unlisted tables."""
    spec = policy.tables.get(table)
    if spec is None:
        return frozenset()
    roles = roles_of(policy, user) | {"*"}
    return frozenset(a for role, actions in spec.grants.items() if role in roles for a in actions)


def masks_for(policy: Policy, user: str, table: str) -> dict[str, MaskRule]:
    """Columns of `table` masked for this user: masked for any of its roles or for "*" (every
    role, and users in none); none for bypass users."""
    spec = policy.tables.get(table)
    if spec is None or is_bypass(policy, user):
        return {}
    roles = roles_of(policy, user) | {"*"}
    return {
        column: MaskRule(mask.mask, {k: getattr(mask, k) for k in MASK_OPTIONS.get(mask.mask, ())})
        for column, mask in spec.masks.items()
        if roles & set(mask.roles)
    }


def tables(policy: Policy) -> dict[str, str | None]:
    """Every table the policy names, with its tenant column (None: shared)."""
    return {name: policy.tenant_column(name) for name in policy.tables}


def masked_columns(policy: Policy) -> dict[str, list[str]]:
    """Every masked column by table, whoever it is masked for."""
    return {name: list(spec.masks) for name, spec in policy.tables.items() if spec.masks}


def allowed_functions(policy: Policy) -> frozenset[str]:
    """User-defined functions that may be called, schema-qualified."""
    return policy.functions


def tenant_sources(policy: Policy) -> list[dict[str, Any]]:
    """The tenant sources in order, as plain mappings."""
    return [source.model_dump() for source in policy.tenancy.sources]


def tenant_from_users(policy: Policy, user: str) -> str | None:
    """The tenant a `users` source maps this login user to (the first that does)."""
    for source in policy.tenancy.sources:
        if isinstance(source, model.UsersSource) and user in source.users:
            return source.users[user]
    return None


@dataclass(frozen=True, slots=True)
class SettingSource:
    """`SET <name> = 'tenant'`, honoured only for `trusted_users` (setting names fold to lower case)."""

    name: str
    trusted_users: frozenset[str]


@dataclass(frozen=True, slots=True)
class SignedSettingSource:
    """`SET <name> = '<token>'` from any user, verified with the key in environment variable `key_env`."""

    name: str
    key_env: str


def setting_source(policy: Policy) -> SettingSource | None:
    """The policy's first `setting` tenant source, if it has one."""
    for source in policy.tenancy.sources:
        if isinstance(source, model.SettingSource) and source.setting:
            return SettingSource(source.setting.lower(), frozenset(source.trusted_users))
    return None


def signed_setting_source(policy: Policy) -> SignedSettingSource | None:
    """The policy's first `signed_setting` tenant source, if it has one."""
    for source in policy.tenancy.sources:
        if isinstance(source, model.SignedSource) and source.signed_setting:
            return SignedSettingSource(source.signed_setting.lower(), source.key_env)
    return None


def _sign(body: bytes, key: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, body, hashlib.sha256).digest()).rstrip(b"=").decode()


def make_tenant_token(tenant: str, expiry: int, key: bytes) -> str:
    """`<tenant>.<expiry>.<sig>`: sig is the unpadded base64url HMAC-SHA256 of `<tenant>.<expiry>`.

    >>> t = make_tenant_token("acme", 2_000_000_000, b"k"); verify_tenant_token(t, b"k", 0)
    'acme'
    """
    return f"{tenant}.{expiry}.{_sign(f'{tenant}.{expiry}'.encode(), key)}"


def verify_tenant_token(token: str, key: bytes, now: float) -> str:
    """The tenant of a valid, unexpired token; TokenError saying what is wrong otherwise.

    The signature is checked before the expiry, so an expired-token answer is only given
    for tokens this key signed.
    """
    if not key:
        raise TokenError("no key: tokens cannot be checked without the signing key")
    body, _, sig = token.rpartition(".")
    tenant, _, expiry_text = body.rpartition(".")
    if not tenant or not expiry_text.isascii() or not expiry_text.isdigit() or not sig:
        raise TokenError("malformed token: expected <tenant>.<expiry seconds>.<signature>")
    try:
        signed = body.encode()
    except UnicodeEncodeError:
        raise TokenError("malformed token: it is not valid text") from None
    if not hmac.compare_digest(_sign(signed, key).encode(), sig.encode("utf-8", "replace")):
        raise TokenError("bad signature")
    if int(expiry_text) <= now:
        raise TokenError(f"expired at {expiry_text} (Unix time)")
    return tenant


__all__ = [
    "ACTIONS",
    "SENSITIVE_CATALOG_RELATIONS",
    "MaskRule",
    "SettingSource",
    "SignedSettingSource",
    "TokenError",
    "allowed_actions",
    "allowed_functions",
    "is_bypass",
    "make_tenant_token",
    "masked_columns",
    "masks_for",
    "roles_of",
    "setting_source",
    "signed_setting_source",
    "tables",
    "tenant_from_users",
    "tenant_sources",
    "verify_tenant_token",
]
