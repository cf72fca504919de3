"""Config sections owned by subsystems above the config layer (audit, metrics, slow query log), as plain models."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AuditConfig(BaseModel):
    """`audit:` in the proxy config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(Path("audit.jsonl"), description="JSON Lines file (relative to the config file).")
    rotate_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="Rotate the file past this size.")
    rotate_seconds: float | None = Field(
        None, gt=0, description=("Also rotate the file once its first record is this many seconds old.")
    )
    redis_stream: str | None = Field(
        None, description=("Also append every record to this Redis Stream (XADD; fields `seq` and `record`).")
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="The Redis for `redis_stream`.")
    redis_maxlen: int | None = Field(
        None,
        ge=1000,
        description=("Trim the stream to about this many entries (XADD MAXLEN ~); omitted: never trimmed."),
    )
    hmac_key_env: str | None = Field(
        None,
        description=(
            "Environment variable with the HMAC-SHA256 chain key; without it the chain is plain "
            "SHA-256 (detects edits, not forgeries by someone who can rewrite the whole file)."
        ),
    )
    log_parameters: bool = Field(False, description="Keep literals and parameter values in the text.")
    on_failure: Literal["block", "drop"] = Field(
        "block",
        description=("`block`: refuse statements while records cannot be queued; `drop`: run them, count the loss."),
    )
    queue_size: int = Field(10_000, ge=10, description="Records held in memory before on_failure applies.")
    block_timeout: float = Field(
        5.0, ge=0, description=("How long `block` lets a statement wait for room before refusing it.")
    )
    fsync: bool = Field(
        False, description=("fsync after every batch (else on rotation and stop; a batch is always flushed to the OS).")
    )


class MetricsConfig(BaseModel):
    """`metrics:` in the config: per-tenant series are off unless asked for, and capped."""

    model_config = ConfigDict(extra="forbid")
    per_tenant: bool = Field(False, description=("Also count statements by tenant (pgwarden_tenant_statements_total)."))
    max_tenants: int = Field(
        100, ge=1, description=("Tenants with their own label; later ones share the label `other`.")
    )


class SlowQueryConfig(BaseModel):
    """`slow_query:` in the proxy config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold_ms: float = Field(200.0, gt=0, description="Statements slower than this are logged.")
    path: Path | None = Field(None, description="JSON Lines file for slow statements; omitted: the log.")
    explain: bool = Field(
        False,
        description=("Log the plan of slow SELECTs: EXPLAIN (FORMAT JSON) on a separate control-plane connection."),
    )
    explain_timeout_ms: float = Field(2000.0, gt=0, description="statement_timeout for that EXPLAIN.")
    explain_every_s: float = Field(60.0, ge=0, description="Explain one statement shape at most this often.")
