"""The policy file format, version 1 (POLICY_FORMAT.md), as strict pydantic models."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

ACTIONS = ("select", "insert", "update", "delete")
Action = Literal["select", "insert", "update", "delete"]
_NAME = re.compile(r'^(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")$')


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Mask(_Strict):
    roles: list[str] = Field(
        min_length=1, description=("Roles that see the masked value; everyone else sees the column.")
    )


class RedactMask(_Mask):
    """A fixed placeholder: '****' for text, NULL for other types."""

    mask: Literal["redact"]


class NullMask(_Mask):
    """NULL. (`mask: null` unquoted is YAML's null, read as this kind.)"""

    mask: Literal["null"]

    @field_validator("mask", mode="before")
    @classmethod
    def _yaml_null(cls, kind: object) -> object:
        return "null" if kind is None else kind


class EmailMask(_Mask):
    """'****@domain': keeps the domain."""

    mask: Literal["email"]


class PartialMask(_Mask):
    """Keeps keep_first and/or keep_last characters; the rest become '*'."""

    mask: Literal["partial"]
    keep_first: int = Field(0, ge=0)
    keep_last: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _keeps_something(self) -> PartialMask:
        if self.keep_first == 0 and self.keep_last == 0:
            raise ValueError("a partial mask keeps nothing: set keep_first or keep_last (or use redact)")
        return self


class HashMask(_Mask):
    """Hex SHA-256 of the value with a salt: equal values stay joinable, none is revealed."""

    mask: Literal["hash"]
    salt_env: str = Field(
        description=("Environment variable holding the salt (unsalted, short values are found by brute force).")
    )


class YearMask(_Mask):
    """A date or timestamp truncated to January 1st of its year."""

    mask: Literal["year"]


class RoundMask(_Mask):
    """A number rounded to `digits`."""

    mask: Literal["round"]
    digits: int = 0


class ConstantMask(_Mask):
    """A fixed `value`."""

    mask: Literal["constant"]
    value: str | int | float | bool | None


def _mask_kind(value: object) -> str | None:
    if isinstance(value, dict):
        return "null" if "mask" in value and value["mask"] is None else value.get("mask")
    return getattr(value, "mask", None)


Mask = Annotated[
    Annotated[RedactMask, Tag("redact")]
    | Annotated[NullMask, Tag("null")]
    | Annotated[EmailMask, Tag("email")]
    | Annotated[PartialMask, Tag("partial")]
    | Annotated[HashMask, Tag("hash")]
    | Annotated[YearMask, Tag("year")]
    | Annotated[RoundMask, Tag("round")]
    | Annotated[ConstantMask, Tag("constant")],
    Discriminator(
        _mask_kind,
        custom_error_type="mask_kind",
        custom_error_message=(
            "unknown mask kind: use one of redact, null, email, partial, hash, year, round, constant"
        ),
    ),
]

MASK_OPTIONS = {
    "partial": ("keep_first", "keep_last"),
    "hash": ("salt_env",),
    "round": ("digits",),
    "constant": ("value",),
}


def _column(name: str) -> str:
    """A column name as PostgreSQL reads it: unquoted names fold to lower case."""
    if not _NAME.match(name):
        raise ValueError(
            f'`{name}` is not a column name; write it as in SQL (quote it with "..." '
            "if it has capitals or other characters)"
        )
    return normal_name(name)


def _function(name: str) -> str:
    """A function name as PostgreSQL reads it; it must name its schema."""
    parts = split_name(name)
    if parts is None or len(parts) != 2:
        raise ValueError(f"a function name must be schema-qualified, like public.{name.split('.')[-1]}")
    return normal_name(name)


Column = Annotated[str, AfterValidator(_column)]


class Table(_Strict):
    """One table or view: who may do what with it, and which columns are masked for whom."""

    tenant_column: Column | None = Field(
        "", description=("The tenant column; null for a shared table; omitted: tenancy.column.")
    )
    grants: dict[str, list[Action]] = Field({}, description='Actions per role ("*" = every role).')
    masks: dict[Column, Mask] = Field({}, description="Masked columns.")

    @field_validator("masks", mode="before")
    @classmethod
    def _one_mask_per_column(cls, masks: object) -> object:
        seen: dict[str, str] = {}
        for name in masks if isinstance(masks, dict) else ():
            folded = normal_name(str(name))
            if folded in seen:
                raise ValueError(
                    f"`{seen[folded]}` and `{name}` are the same column (unquoted names fold to lower case); keep one"
                )
            seen[folded] = str(name)
        return masks


class UsersSource(_Strict):
    """A fixed map from login user to tenant."""

    users: dict[str, str]


class SettingSource(_Strict):
    """`SET <setting> = 'tenant'`, honoured for trusted_users only."""

    setting: str
    trusted_users: list[str] = []


class SignedSource(_Strict):
    """`SET <signed_setting> = '<tenant>.<expiry>.<sig>'`, an HMAC-SHA256 token under key_env."""

    signed_setting: str
    key_env: str


def _source_kind(value: object) -> str | None:
    if isinstance(value, dict):
        kind = next((k for k in ("users", "setting", "signed_setting") if k in value), None)
        return f"{kind} source" if kind else None
    kinds: dict[type, str] = {
        UsersSource: "users source",
        SettingSource: "setting source",
        SignedSource: "signed_setting source",
    }
    return kinds.get(type(value))


Source = Annotated[
    Annotated[UsersSource, Tag("users source")]
    | Annotated[SettingSource, Tag("setting source")]
    | Annotated[SignedSource, Tag("signed_setting source")],
    Discriminator(
        _source_kind,
        custom_error_type="source_kind",
        custom_error_message=("a tenant source needs one of `users`, `setting` or `signed_setting`"),
    ),
]


class Tenancy(_Strict):
    """How rows belong to tenants and how a session gets its tenant."""

    column: Column = "tenant_id"
    sources: list[Source] = []


class Role(_Strict):
    """A role: the login users that have it; `bypass` roles are not rewritten (still audited)."""

    users: list[str] = []
    bypass: bool = False


class Functions(_Strict):
    """User-defined functions that may be called (schema-qualified)."""

    allow: list[Annotated[str, AfterValidator(_function)]] = []


class PolicyFile(_Strict):
    """One policy file."""

    version: Literal[1] = Field(description="The format version: 1.")
    tenancy: Tenancy | None = None
    roles: dict[str, Role] = {}
    tables: dict[str, Table] = {}
    functions: Functions = Functions()
    default: Literal["deny"] = "deny"
    mode: Literal["enforce", "monitor"] = "enforce"


def split_name(name: str) -> list[str] | None:
    """Split `schema.table` respecting double quotes; None if malformed."""
    parts = re.findall(r'"(?:[^"]|"")+"|[^.]+', name)
    if ".".join(parts) != name or not all(_NAME.match(p) for p in parts):
        return None
    return parts


def normal_name(name: str) -> str:
    """Fold unquoted identifiers to lower case and drop quotes: `Public."Orders"` -> `public.Orders`.

    >>> normal_name('Public."Orders"')
    'public.Orders'
    """
    parts = split_name(name) or [name]
    return ".".join(p[1:-1].replace('""', '"') if p.startswith('"') else p.lower() for p in parts)
