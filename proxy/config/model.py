"""The proxy config: an immutable, validated snapshot of the YAML file (reload swaps the whole snapshot)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from policies.source import Document, Loc, SourceError, format_errors, load_yaml
from proxy.config.cache import Cache
from proxy.config.environment import apply as apply_environment
from proxy.config.limits import Limits
from proxy.config.routing import Failover, HostPort, Replica, Routing
from proxy.config.sections import AuditConfig, MetricsConfig, SlowQueryConfig


class ConfigError(Exception):
    """A config file that cannot be used; `.errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenTLS(_Strict):
    """TLS offered to clients: disable (answer SSLRequest 'N'), allow, or require."""

    mode: Literal["disable", "allow", "require"] = Field(
        "disable",
        description="`disable`: answer SSLRequest with 'N'; `allow`: TLS for clients that ask; `require`: refuse clients that do not use TLS.",
    )
    cert: Path | None = Field(
        None, description="PEM certificate chain presented to clients (path relative to the config file)."
    )
    key: Path | None = Field(None, description="PEM private key of `cert`.")

    @model_validator(mode="after")
    def _files(self) -> ListenTLS:
        if self.mode != "disable" and (self.cert is None or self.key is None):
            raise ValueError(f"tls mode {self.mode!r} needs both `cert` and `key` files")
        return self


class Listen(_Strict):
    """pgwarden's own listener for clients."""

    host: str = Field("127.0.0.1", description="Address to listen on for clients.")
    port: int = Field(6432, ge=1, le=65535, description="TCP port for clients.")
    tls: ListenTLS = Field(ListenTLS(), description="TLS towards clients (see listen.tls.*).")
    max_message_size: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Largest protocol message a client may send, in bytes; a larger one closes that client with SQLSTATE 54000.",
    )
    startup_timeout: float = Field(10.0, gt=0, description="Seconds a client has to finish startup and authentication.")


class Http(_Strict):
    """The HTTP listener for /healthz (and, later, /metrics and /readyz)."""

    host: str = Field("127.0.0.1", description="Address of the HTTP listener (/healthz).")
    port: int = Field(9187, ge=0, le=65535, description="Port of the HTTP listener; 0 disables it.")


class BackendTLS(_Strict):
    """TLS to the backend, with libpq's sslmode meanings."""

    mode: Literal["disable", "prefer", "require", "verify-full"] = Field(
        "disable",
        description="libpq sslmode meanings: `disable`, `prefer` (TLS when offered), `require` (TLS, certificate not checked), `verify-full` (TLS, chain and host name checked against `ca`).",
    )
    ca: Path | None = Field(None, description="PEM CA bundle for `verify-full`.")

    @model_validator(mode="after")
    def _ca(self) -> BackendTLS:
        if self.mode == "verify-full" and self.ca is None:
            raise ValueError("tls mode 'verify-full' needs a `ca` file")
        return self


class Primary(_Strict):
    """The primary PostgreSQL server."""

    host: str = Field(
        ..., description="Host of the primary PostgreSQL (required: in the file or as PGWARDEN__PRIMARY__HOST)."
    )
    port: int = Field(5432, ge=1, le=65535, description="Port of the primary PostgreSQL.")
    tls: BackendTLS = Field(BackendTLS(), description="TLS towards the backend (see primary.tls.*).")
    hosts: list[HostPort] = Field(
        [],
        description=(
            "More hosts that may hold the primary after a failover (`[{host:, port:}]`); with them, "
            "health checks find the writable one (`pg_is_in_recovery()`), `host` first."
        ),
    )


class UserEntry(_Strict):
    """A client login: exactly one of password, password_env, scram_verifier."""

    password: str | None = Field(None, description="The user's password, in the config file.")
    password_env: str | None = Field(
        None, description="Name of an environment variable holding the password (read at start and on reload)."
    )
    scram_verifier: str | None = Field(
        None,
        description="A stored SCRAM-SHA-256 verifier (`pgwarden passwd` prints one); works with `scram-sha-256` only.",
    )

    @model_validator(mode="after")
    def _one(self) -> UserEntry:
        given = [k for k in ("password", "password_env", "scram_verifier") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of `password`, `password_env`, `scram_verifier`")
        if self.scram_verifier:
            from proxy.wire.auth import parse_scram_verifier

            try:
                parse_scram_verifier(self.scram_verifier)
            except ValueError as exc:
                raise ValueError(
                    f"`scram_verifier` is not a SCRAM-SHA-256 verifier ({exc}); `pgwarden passwd` prints one"
                ) from None
        return self

    def secret(self) -> str | None:
        """The plain password, reading `password_env` now (None when only a verifier is stored)."""
        if self.password_env:
            return os.environ.get(self.password_env)
        return self.password


class Auth(_Strict):
    """How clients authenticate to pgwarden."""

    method: Literal["trust", "md5", "scram-sha-256"] = Field(
        "scram-sha-256", description="How clients prove who they are: `trust`, `md5` or `scram-sha-256`."
    )
    users: dict[str, UserEntry] = Field(
        {}, description="Logins pgwarden accepts, by user name. With `trust` and no users, every user name is accepted."
    )


class PolicedAuth(_Strict):
    """The least-privilege role policed (non-bypass) sessions log into backends as."""

    user: str = Field(
        description=(
            "Role policed sessions log into PostgreSQL as: not a superuser, no BYPASSRLS, owning no "
            "table and no CREATE on any schema, with only the grants the policy needs (`pgwarden init --policy` writes its SQL). "
            "pgwarden refuses policed sessions when it is not."
        )
    )
    password: str | None = Field(None, description="Password of that role (for md5 or SCRAM backends).")
    password_env: str | None = Field(None, description="Environment variable holding that password.")

    def secret(self) -> str | None:
        if self.password_env:
            return os.environ.get(self.password_env)
        return self.password


class BackendAuth(_Strict):
    """The role pgwarden logs into backends as (omit `user` to use the client's)."""

    user: str | None = Field(
        None, description="Role pgwarden logs into PostgreSQL as; omit it to log in as the client's user."
    )
    password: str | None = Field(None, description="Password of that role (for md5 or SCRAM backends).")
    password_env: str | None = Field(None, description="Environment variable holding that password.")
    policed: PolicedAuth | None = Field(
        None,
        description=(
            "The role policed (non-bypass) sessions log in as, in pools of their own; `user` and "
            "`password` above then serve bypass roles only. Omitted: policed sessions log in as "
            "`user` (or the client's user) too, and are refused when that role is a superuser, has "
            "BYPASSRLS, owns a table or may create one."
        ),
    )

    def secret(self) -> str | None:
        if self.password_env:
            return os.environ.get(self.password_env)
        return self.password


class Pool(_Strict):
    """Backend pools, one per (database, backend user). Times are in seconds."""

    mode: Literal["session", "transaction"] = Field(
        "transaction",
        description="`transaction`: a backend is lent for one transaction (released when ReadyForQuery says idle); `session`: for the client's whole connection.",
    )
    size: int = Field(20, ge=1, le=10_000, description="Most backends per (database, backend user).")
    min_idle: int = Field(0, ge=0, description="Idle backends kept open per pool once it exists.")
    max_client_connections: int = Field(
        1000, ge=1, description="Most client connections pgwarden accepts; more get SQLSTATE 53300."
    )
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect and log in to a backend.")
    idle_timeout: float = Field(
        600.0, gt=0, description="Seconds an idle backend is kept (beyond min_idle) before it is closed."
    )
    max_lifetime: float = Field(3600.0, gt=0, description="Seconds after which a backend is closed once it is idle.")
    query_wait_timeout: float = Field(
        30.0, gt=0, description="Seconds a client waits for a backend before it gets SQLSTATE 53300."
    )
    prepared_statements_per_backend: int = Field(
        1000,
        ge=1,
        description="Prepared statements kept per backend in transaction mode (least recently used are closed).",
    )

    @model_validator(mode="after")
    def _min_idle(self) -> Pool:
        if self.min_idle > self.size:
            raise ValueError(f"min_idle ({self.min_idle}) cannot exceed size ({self.size})")
        return self


class Log(_Strict):
    """Logging: level and format (text for people, json for log pipelines)."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="`debug`, `info`, `warning` or `error`."
    )
    format: Literal["text", "json"] = Field("text", description="`text` for people, `json` for log pipelines.")


# Keys of the config contract (docs/architecture.md, "Decisions") whose features this version does not have yet:
# they are rejected, never ignored (an ignored `policies` key would be a security hole).
NOT_YET: dict[str, str] = {}


class Admin(_Strict):
    """The admin console: `psql -p 6432 pgwarden` as one of these users (authenticated as usual)."""

    users: list[str] = Field([], description="Users allowed on the admin console (database `pgwarden`).")


class Config(_Strict):
    """The whole proxy config."""

    listen: Listen = Field(Listen(), description="Where clients connect.")
    http: Http = Field(Http(), description="The operators' HTTP endpoint.")
    primary: Primary = Field(..., description="The primary PostgreSQL server.")
    replicas: list[Replica] = Field(
        [], description="Read replicas `[{host:, port:, weight:}]` that take provably read-only statements."
    )
    routing: Routing = Field(Routing(), description="Read routing, the commit watermark and health checks.")
    failover: Failover = Field(Failover(), description="Following the primary through a promotion.")
    auth: Auth = Field(Auth(), description="How clients authenticate to pgwarden.")
    backend_auth: BackendAuth = Field(BackendAuth(), description="How pgwarden logs in to PostgreSQL.")
    pool: Pool = Field(Pool(), description="Connection pooling.")
    log: Log = Field(Log(), description="Logging to standard error.")
    admin: Admin = Field(Admin(), description="The admin console.")
    metrics: MetricsConfig = Field(
        MetricsConfig(), description=("Prometheus metrics: per-tenant statement counts and their cap.")
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=256,
        description=(
            "Worker processes serving the one listen port (SO_REUSEPORT: the kernel spreads clients). "
            "Default: the cores this process may use (CPU affinity, a container's CPU limit), at most pool.size (one with `audit`, which needs one process "
            "for now, one with `replicas` but no routing.redis, which shares the commit watermarks, and one with `cache` but no cache.redis, which shares the table versions); `1` runs one process. pool.size stays a cap for all workers together (each gets an "
            "equal share), so workers cannot exceed pool.size."
        ),
    )
    shutdown_timeout: float = Field(
        30.0, ge=0, description=("Seconds SIGTERM waits for open transactions before closing every client.")
    )
    policies: Path | None = Field(
        None,
        description=(
            "Policy file, or folder of `*.yaml` policy files (docs/policies.md). Without it, "
            "pgwarden pools and relays but enforces no policy."
        ),
    )
    audit: AuditConfig | None = Field(
        None,
        description=(
            "The audit trail (docs/operations.md): one HMAC-chained record per statement, login, "
            "logout, refusal and reload. Omit it for no audit trail."
        ),
    )
    slow_query: SlowQueryConfig | None = Field(
        None, description=("Log statements slower than a threshold (with fingerprint, redacted text, duration).")
    )
    limits: Limits | None = Field(
        None,
        description=(
            "Rate limits and quotas per tenant, role or user (docs/limits.md): statements per second, "
            "concurrent statements, client connections, statement_timeout. Omit it for none."
        ),
    )
    cache: Cache | None = Field(
        None,
        description=(
            "The result cache (docs/caching.md): reads of `cache.tables` answered without a backend, never stale "
            "for writes through pgwarden. Omit it for no cache."
        ),
    )
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _workers(self) -> Config:
        if self.workers is not None and self.workers > self.pool.size:
            raise ValueError(
                f"workers ({self.workers}) cannot exceed pool.size ({self.pool.size}): pool.size caps "
                "the backends of all workers together and each worker needs at least one"
            )
        if (self.workers or 1) > 1 and (self.replicas or self.primary.hosts) and self.routing.redis is None:
            raise ValueError(
                f"workers ({self.workers}) with `replicas` needs routing.redis: the commit watermarks that keep "
                "reads from missing writes must be shared by every worker; set routing.redis, or workers: 1"
            )
        if (self.workers or 1) > 1 and self.cache is not None and self.cache.redis is None:
            raise ValueError(
                f"workers ({self.workers}) with `cache` needs cache.redis: the table versions that keep cached "
                "answers from missing writes must be shared by every worker; set cache.redis, or workers: 1"
            )
        if (self.workers or 1) > 1 and self.audit is not None:
            raise ValueError(
                f"workers ({self.workers}) with `audit` is not available yet: the audit trail is one HMAC "
                "chain written by one process; set workers: 1"
            )
        return self

    def worker_count(self) -> int:
        """The worker processes to run: `workers`, else the machine's cores (at most pool.size; one with `audit`)."""
        if self.workers is not None:
            return self.workers
        if self.audit is not None or ((self.replicas or self.primary.hosts) and self.routing.redis is None):
            return 1
        if self.cache is not None and self.cache.redis is None:
            return 1
        return max(1, min(machine_cores(), self.pool.size))


def machine_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a container's limit)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _not_yet(data: dict[str, Any], doc: Document) -> list[str]:
    """Errors for contract keys whose features this version lacks (checked even when others fail)."""
    errors = []
    for key, feature in NOT_YET.items():
        if data.get(key) is not None:
            errors.append(
                f"{doc.where((key,))}: {key}: {feature} is not available in this version "
                f"of pgwarden; remove the `{key}` key (it is never silently ignored)"
            )
    return errors


def _no_primary(data: dict[str, Any], doc: Document) -> list[str]:
    """The one error of a config that does not say where PostgreSQL is (file nor environment)."""
    primary = data.get("primary")
    if primary is not None and not isinstance(primary, dict):
        return []  # not a mapping: the model's own error says so
    if (primary or {}).get("host") not in (None, ""):
        return []
    loc = ("primary", "host")  # an empty PGWARDEN__PRIMARY__HOST is named; another variable is not to blame
    where = doc.where(loc) if loc in getattr(doc, "variables", {}) else f"{doc.path}:{doc.line(loc)}"
    return [
        (
            f"{where}: primary.host: no primary PostgreSQL is given; set "
            f"`primary: {{host: ..., port: ...}}` in {doc.path} (in a container, mount your config "
            "there) or set the environment variables PGWARDEN__PRIMARY__HOST and PGWARDEN__PRIMARY__PORT"
        )
    ]


def load_config(path: str | Path) -> Config:
    """Read a config file, set PGWARDEN__* environment variables over it (proxy/config/environment.py) and
    validate the result; raise ConfigError listing every problem (with lines or variable names)."""
    try:
        doc = load_yaml(path)
    except SourceError as exc:
        raise ConfigError(exc.errors) from exc
    if not isinstance(doc.data, dict):
        raise ConfigError([f"{doc.path}: the config must be a mapping of keys (listen, primary, ...)"])
    doc, errors = apply_environment(doc, os.environ)
    if errors:
        raise ConfigError(errors)
    return parse_config(doc.data, doc.path, doc)


def parse_config(data: dict[str, Any], path: Path, doc: Document | None = None) -> Config:
    """Validate already-parsed config data; relative paths are resolved against the file's folder."""
    doc = doc or Document(Path(path), "", data, _paths(data))
    missing = _no_primary(data, doc)
    errors = _not_yet(data, doc) + missing
    if missing:  # validate the rest as if it were given
        data = {**data, "primary": {**(data.get("primary") or {}), "host": "-"}}
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors += format_errors(exc, doc, model=Config)
    if errors:
        raise ConfigError(errors)
    return _resolve_paths(config, Path(path).parent.resolve()).model_copy(update={"source": Path(path)})


def _paths(value: Any, loc: Loc = ()) -> dict[Loc, int]:
    """Every key path of in-memory config data (no file: line 1), so errors keep their path."""
    out: dict[Loc, int] = {}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, sub in items:
        out[loc + (key,)] = 1
        out |= _paths(sub, loc + (key,))
    return out


_Model = TypeVar("_Model", bound=BaseModel)


def _resolve_paths(config: Config, base: Path) -> Config:
    """Every path-valued key made absolute against the config file's folder."""

    def absolute(model: _Model, key: str) -> _Model:
        value = getattr(model, key)
        if value is None or value.is_absolute():
            return model
        return model.model_copy(update={key: base / value})

    listen_tls = absolute(absolute(config.listen.tls, "cert"), "key")
    updates: dict[str, Any] = {
        "listen": config.listen.model_copy(update={"tls": listen_tls}),
        "primary": config.primary.model_copy(update={"tls": absolute(config.primary.tls, "ca")}),
    }
    config = absolute(config.model_copy(update=updates), "policies")
    for section in ("audit", "slow_query"):
        if getattr(config, section) is not None:
            config = config.model_copy(update={section: absolute(getattr(config, section), "path")})
    return config
