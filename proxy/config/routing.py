"""Config sections for read replicas, read routing, the commit watermark, health checks and failover."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostPort(_Strict):
    """One more host that may hold the primary (after a failover)."""

    host: str = Field(..., description="Host name or address.")
    port: int = Field(5432, ge=1, le=65535, description="Port.")


class Replica(_Strict):
    """A streaming replica that takes provably read-only statements (docs/high-availability.md)."""

    host: str = Field(..., description="Host of the replica.")
    port: int = Field(5432, ge=1, le=65535, description="Port of the replica.")
    weight: float = Field(
        1.0, gt=0, description="Share of reads relative to the other replicas (balanced by outstanding statements)."
    )
    max_lag_bytes: int | None = Field(
        None,
        ge=0,
        description="Take this replica out of rotation past this replay lag in WAL bytes (default: routing.max_lag_bytes).",
    )
    max_lag_ms: int | None = Field(
        None,
        ge=0,
        description="Take this replica out of rotation past this replay delay in ms (default: routing.max_lag_ms).",
    )


class Routing(_Strict):
    """How reads are routed to `replicas` and how their health is judged. Times are in seconds."""

    reads_on_primary: bool = Field(
        True, description="The primary takes reads when no replica is usable; `false`: such reads fail with 08006."
    )
    read_your_writes: bool = Field(
        True,
        description=(
            "Route a read only to a replica that has replayed the last write committed by the same "
            "(database, tenant or user) — the commit watermark. `false` turns it off (reads may be stale)."
        ),
    )
    redis: str | None = Field(
        None,
        description=(
            "Redis URL sharing commit watermarks between pgwarden processes and instances "
            "(`redis://127.0.0.1:6379/0`). Omitted: watermarks are per process."
        ),
    )
    max_lag_bytes: int = Field(
        16 * 1024 * 1024,
        ge=0,
        description="A replica whose replay is further behind than this many WAL bytes is skipped.",
    )
    max_lag_ms: int = Field(
        10_000, ge=0, description="A replica whose replay is further behind than this many milliseconds is skipped."
    )
    check_interval: float = Field(0.5, gt=0, description="Seconds between health and lag checks of each server.")
    check_timeout: float = Field(
        2.0, gt=0, description="Seconds a health check may take; a check that times out counts as a failure."
    )
    breaker_failures: int = Field(
        3, ge=1, description="Consecutive failures (checks or connects) that open a server's circuit breaker."
    )
    breaker_open: float = Field(
        5.0, gt=0, description="Seconds an open breaker fails fast before it half-opens and lets one probe through."
    )
    connect_retries: int = Field(
        2, ge=0, description="Retries of a failed backend connect (exponential backoff from 50 ms, with jitter)."
    )
    default: Literal["auto", "primary", "replica"] = Field(
        "auto",
        description="Route for sessions that do not `SET pgwarden.route`: `auto` (reads to replicas), `primary`, `replica`.",
    )


class Failover(_Strict):
    """Finding the primary again after a promotion. Times are in seconds."""

    detect_s: float = Field(
        5.0, gt=0, description="A promotion (or a primary found in recovery) is followed within this many seconds."
    )
    wait_s: float = Field(
        10.0, ge=0, description="New statements wait this long for a writable primary, then fail with 08006."
    )
