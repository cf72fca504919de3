"""Evaluating a policy for an identity: roles, grants, masks, tenant sources and signed tenant tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from policies.load import Policy
from policies.model import ACTIONS, MASK_OPTIONS


class TokenError(Exception):
    """A signed tenant token that is malformed, forged or expired (the message says which)."""


@dataclass(frozen=True, slots=True)
class MaskRule:
    """A mask as the rewriter needs it: its kind and its options (only those the kind takes)."""

    kind: str
    options: dict


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
    """Columns of `table` masked for this user: masked for any of its roles (none for bypass)."""
    spec = policy.tables.get(table)
    if spec is None or is_bypass(policy, user):
        return {}
    roles = roles_of(policy, user)
    return {column: MaskRule(mask.mask, {k: getattr(mask, k) for k in MASK_OPTIONS.get(mask.mask, ())})
            for column, mask in spec.masks.items() if roles & set(mask.roles)}


def tables(policy: Policy) -> dict[str, str | None]:
    """Every table the policy names, with its tenant column (None: shared)."""
    return {name: policy.tenant_column(name) for name in policy.tables}


def masked_columns(policy: Policy) -> dict[str, list[str]]:
    """Every masked column by table, whoever it is masked for."""
    return {name: list(spec.masks) for name, spec in policy.tables.items() if spec.masks}


def allowed_functions(policy: Policy) -> frozenset[str]:
    """User-defined functions that may be called, schema-qualified."""
    return policy.functions


def tenant_sources(policy: Policy) -> list[dict]:
    """The tenant sources in order, as plain mappings."""
    return [source.model_dump() for source in policy.tenancy.sources]


def tenant_from_users(policy: Policy, user: str) -> str | None:
    """The tenant a `users` source maps this login user to (the first that does)."""
    for source in policy.tenancy.sources:
        mapping = getattr(source, "users", None)
        if mapping and user in mapping:
            return mapping[user]
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
    """The tenant of a valid, unexpired token; TokenError saying what is wrong otherwise."""
    try:
        body, sig = token.rsplit(".", 1)
        tenant, expiry_text = body.rsplit(".", 1)
        expiry = int(expiry_text)
    except ValueError:
        raise TokenError("malformed token: expected <tenant>.<expiry>.<signature>") from None
    if not tenant:
        raise TokenError("malformed token: the tenant is empty")
    if not hmac.compare_digest(_sign(body.encode(), key), sig):
        raise TokenError("bad signature")
    if expiry <= now:
        raise TokenError(f"expired at {expiry} (Unix time)")
    return tenant


__all__ = ["ACTIONS", "MaskRule", "TokenError", "allowed_actions", "allowed_functions", "is_bypass",
           "make_tenant_token", "masked_columns", "masks_for", "roles_of", "tables",
           "tenant_from_users", "tenant_sources", "verify_tenant_token"]
