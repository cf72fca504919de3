"""Config of rate limits and quotas per tenant, role or user (`limits:`, docs/limits.md)."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT = "*"  # the entry for every tenant, role or user not named


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limit(_Strict):
    """The limits of one tenant, role or user (each value has its own: two tenants never share a bucket)."""

    statements_per_second: float | None = Field(
        None,
        gt=0,
        description=(
            "Statements (a simple Query or an extended-protocol Execute) admitted per second, shared by every "
            "pgwarden process with `limits.redis` (GCRA); over it a statement fails with SQLSTATE 53400."
        ),
    )
    burst: int | None = Field(
        None,
        ge=1,
        description="Statements admitted at once above the steady rate (default: the rate, at least 1).",
    )
    concurrent_statements: int | None = Field(
        None,
        ge=1,
        description=(
            "Sessions with a statement in flight (sent, its ReadyForQuery not yet back; a pipeline counts once), "
            "per pgwarden process; one more fails with 53400."
        ),
    )
    client_connections: int | None = Field(
        None,
        ge=1,
        description="Client connections at once, per pgwarden process; one more is refused at login (FATAL 53400).",
    )
    statement_timeout_ms: int | None = Field(
        None,
        ge=1,
        description=(
            "The session's default statement_timeout, and its ceiling: `SET statement_timeout` above it (or 0) "
            "fails with 53400."
        ),
    )

    @model_validator(mode="after")
    def _burst(self) -> Limit:
        if self.burst is not None and self.statements_per_second is None:
            raise ValueError("`burst` needs `statements_per_second`")
        return self

    def burst_size(self) -> int:
        """`burst`, else the rate rounded up (at least 1)."""
        rate = self.statements_per_second or 1.0
        return self.burst if self.burst is not None else max(1, math.ceil(rate))


class Limits(_Strict):
    """Rate limits and quotas; each map is keyed by tenant value, policy role or user name, `"*"` for the rest."""

    redis: str | None = Field(
        None,
        description=(
            "Redis URL sharing the statement rates between every pgwarden process and instance "
            "(`redis://127.0.0.1:6379/0`). Omitted, or while Redis fails: each process enforces the full rate on its own."
        ),
    )
    key_prefix: str = Field("pgwarden:limit:", description="Prefix of the Redis keys (one per limit and entity).")
    tenants: dict[str, Limit] = Field(
        {}, description='Limits per tenant value (from the policy), `"*"` for the others.'
    )
    roles: dict[str, Limit] = Field({}, description='Limits per policy role, `"*"` for the others.')
    users: dict[str, Limit] = Field({}, description='Limits per user (the client\'s login name), `"*"` for the others.')
