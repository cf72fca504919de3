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
    for number, _ in checks:
        oid = declared_type(param_types, number)
        if oid not in TENANT_PARAMETER_TYPES:
            return Refuse(
                "42501",
                f"Parse refused: parameter ${number} sets the tenant column but is declared "
                f"of type oid {oid}, whose input could change the value written",
                "declare the tenant parameter as text (or leave its type unspecified)",
                "tenancy.column",
            )
    return None


_TEXT_TYPES = frozenset({25, 1043})  # text, varchar: their binary form is the text's bytes
_INTEGER_WIDTHS = {21: 2, 23: 4, 20: 8}  # int2, int4, int8: a big-endian integer of this many bytes


def declared_type(param_types: bytes, number: int) -> int:
    """The type OID a Parse declares for parameter `number` (1-based; 0: unspecified)."""
    count = int.from_bytes(param_types[:2], "big") if len(param_types) >= 2 else 0
    return int.from_bytes(param_types[4 * number - 2 : 4 * number + 2], "big") if 0 < number <= count else 0


def tenant_bound(value: bytes | None, tenant: str, binary: bool, oid: int) -> bool:
    """Does a Bind's value for a tenant-column parameter write exactly `tenant`?

    In text format its bytes must be the tenant's. In binary format PostgreSQL reads them with the
    type's receive function: text and varchar take the bytes as they are; int2, int4 and int8 read a
    big-endian integer. An unspecified type is the column's, which the check does not know: its binary
    value is taken only for a tenant that no fixed-width type could read as another value (not a
    number: b"42" read as an int2 is 13362).

    >>> tenant_bound(b"acme", "acme", False, 23), tenant_bound(b"acme", "acme", True, 23)
    (True, False)
    >>> tenant_bound(b"\\x00\\x2a", "42", True, 21), tenant_bound(b"42", "42", True, 0), tenant_bound(b"acme", "acme", True, 0)
    (True, False, True)
    """
    if value is None:
        return False
    if not binary or oid in _TEXT_TYPES:
        return value == tenant.encode()
    width = _INTEGER_WIDTHS.get(oid)
    if width is not None:
        number = int(tenant) if tenant.lstrip("-").isdigit() and tenant.isascii() else None
        return number is not None and str(number) == tenant and value == number.to_bytes(width, "big", signed=True)
    return oid == 0 and value == tenant.encode() and not _numeric(tenant)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
