"""Config of the result cache (`cache:`, docs/caching.md): which tables, where entries live, the staleness bound."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cache(_Strict):
    """The result cache: reads of the listed tables answered from memory or Redis, never stale for a
    write through pgwarden, within `max_lag_ms` for one that bypasses it (read from the WAL)."""

    tables: list[str] = Field(
        [],
        description=(
            "Tables whose reads may be cached, as `schema.table` (plain, logged tables without row "
            "security; each table name unique in its database). A statement reading anything else is never cached."
        ),
    )
    redis: str | None = Field(
        None,
        description=(
            "Redis URL shared by every pgwarden process and instance: table versions and cached answers "
            "(`redis://127.0.0.1:6379/0`). Omitted: one process, its own memory only. While Redis fails, "
            "nothing is served from the cache."
        ),
    )
    ttl_s: float = Field(30.0, gt=0, description="Seconds a cached answer lives in Redis and in memory at most.")
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Bytes of answers each process keeps in memory (least recently used go first).",
    )
    max_result_bytes: int = Field(
        1024 * 1024, ge=1, description="A larger answer is never cached (it still reaches the client)."
    )
    stable_functions: bool = Field(
        False,
        description=(
            "Cache statements calling stable functions (now(), current_setting(), ...): their answer is then "
            "reused for `ttl_s` although the function would return something else. Off: only immutable ones."
        ),
    )
    max_lag_ms: int = Field(
        1000,
        ge=10,
        description=(
            "Bound on how late a write that bypasses pgwarden (psql to the database, a cron job) is seen: while "
            "pgwarden's WAL consumer is further behind, or disconnected, nothing is served from the cache."
        ),
    )
    commit_wait_ms: int = Field(
        2000,
        ge=1,
        description=(
            "How long a write's answer waits for the WAL consumer to have seen its commit; past it, every cached "
            "answer of the database is dropped before the answer goes out."
        ),
    )
    key_prefix: str = Field("pgwarden:cache:", description="Prefix of the Redis keys.")
    replication_user: str | None = Field(
        None,
        description=(
            "Role the WAL consumer logs in as (it needs REPLICATION, and to own the tables or be a superuser to "
            "create the publication `pgwarden_cache`); default: backend_auth.user."
        ),
    )

    @field_validator("tables")
    @classmethod
    def _qualified(cls, tables: list[str]) -> list[str]:
        out = []
        for name in tables:
            schema, dot, table = name.partition(".")
            if not dot or not schema or not table or "." in table:
                raise ValueError(f"cache.tables: {name!r} must be schema.table (`public.orders`)")
            if schema.lower() in SYSTEM_SCHEMAS or schema.lower().startswith("pg_"):
                raise ValueError(f"cache.tables: {name!r} is a system catalog; catalogs are never cached")
            out.append(name)
        return out
