"""What the router decides for a statement (the session carries it out), and who a session is."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a session is under the policy: fixed at login."""

    user: str
    roles: frozenset[str]
    bypass: bool
    tenant: str | None  # from the `users` tenant source, if any
    may_set_tenant: bool  # listed in the `setting` source's trusted_users


# --- decisions (the session carries them out; the router does no I/O) -------------------------


@dataclass(frozen=True, slots=True)
class Forward:
    """Send `sql` (None: the client's own text, unchanged)."""

    sql: str | None = None
    param_checks: tuple[tuple[int, str], ...] = ()
    tables: tuple[str, ...] = ()
    masked: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer ErrorResponse(sqlstate, message, hint); nothing is run."""

    sqlstate: str
    message: str
    hint: str
    rule: str


@dataclass(frozen=True, slots=True)
class SetTenant:
    """The session's tenant changes (None: back to its login tenant); forward `sql` for the reply."""

    tenant: str | None
    local: bool
    sql: str


ORIGINAL = Forward()
Decision = Forward | Refuse | SetTenant


TENANT_PARAMETER_TYPES = frozenset({0, 25, 1043, 20, 21, 23})


def tenant_parameter_types(param_types: bytes, checks: tuple[tuple[int, str], ...]) -> Refuse | None:
    """A Parse that declares a tenant-column parameter of a type that could change the value.

    The Bind check compares the bytes sent; PostgreSQL stores what the declared type's
    input function makes of them ('acme' as "char" is 'a').
    >>> tenant_parameter_types(bytes([0, 2, 0, 0, 0, 23, 0, 0, 0, 18]), ((2, "acme"),)).sqlstate
    '42501'
    >>> tenant_parameter_types(bytes([0, 1, 0, 0, 0, 18]), ((2, "acme"),)) is None
    True
    """
    count = int.from_bytes(param_types[:2], "big") if len(param_types) >= 2 else 0
    for number, _ in checks:
        if number > count:
            continue
        oid = int.from_bytes(param_types[2 + 4 * (number - 1) : 6 + 4 * (number - 1)], "big")
        if oid not in TENANT_PARAMETER_TYPES:
            return Refuse(
                "42501",
                f"Parse refused: parameter ${number} sets the tenant column but is declared "
                f"of type oid {oid}, whose input could change the value written",
                "declare the tenant parameter as text (or leave its type unspecified)",
                "tenancy.column",
            )
    return None
