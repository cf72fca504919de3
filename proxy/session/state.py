"""The declared state of one client session: who it is, where it is, and what pgwarden tracks for it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from proxy.enforce.router import Identity

NO_PARAMS: Mapping[str, str] = MappingProxyType({})

# Where a session is (`SessionState.phase`).
STARTUP, TLS, AUTH, LOGIN, READY, CLOSED = "startup", "tls", "auth", "login", "ready", "closed"


def reason_class(reason: str) -> str:
    """A bounded label for a disconnect reason (`SessionState.reason`), for the metrics."""
    if "Terminate" in reason:
        return "terminate"
    if "shutting down" in reason or "shutdown" in reason:
        return "shutdown"
    if reason[:5].isalnum() and reason[5:6] == " ":
        return "error"  # "<SQLSTATE> message": pgwarden closed it with a FATAL
    return "network"


class Refusal(NamedTuple):
    """An ErrorResponse for one statement (the connection stays usable)."""

    sqlstate: str
    message: str
    hint: str | None


class TimeoutCap(NamedTuple):
    """`limits:`: the most statement_timeout a session may set (ms), and how a refusal is counted."""

    ms: int
    rejected: Callable[[], None]


@dataclass(slots=True, eq=False)
class SessionState:
    """Every per-session field that is not a part's own (see `core.SessionCore` for the parts).

    The settings and tenant fields are what a rollback restores (`savepoints.State`): the
    transaction part writes them when a ROLLBACK, ROLLBACK TO or a failed cycle restores
    state, the statement path when a SET, RESET or DISCARD is sent.
    """

    pid: int
    secret: int
    peer: str = "?"
    phase: str = STARTUP
    tls: bool = False
    user: str = ""
    database: str = ""
    since: float = field(default_factory=time.monotonic)
    reason: str = ""  # why it disconnected (the first reason given)
    client_params: dict[str, str] = field(default_factory=dict)  # its startup parameters
    tx_mode: bool = True  # transaction pooling (else session pooling)
    ident: Identity | None = None  # under a policy; None: no policy loaded, or a bypass role
    settings: dict[str, str] = field(default_factory=dict)  # SET/RESET tracked: setting -> SQL replaying it
    reported_base: Mapping[str, str] = field(
        default_factory=lambda: NO_PARAMS
    )  # ParameterStatus shown at login (the pool's, shared)
    reported: dict[str, str] | None = None  # ... and those told since, where they differ (`reported.py`)
    local_tenant: str | None = None  # SET LOCAL of the tenant: this transaction only
    tenant_unknown: bool = False  # a tenant change or savepoint failed: what PostgreSQL kept is unknown
    skipping: bool = False  # after an error the proxy raised mid-pipeline: skip to Sync
    pinned: bool = False  # transaction mode: keeps its backend (it holds session state)
    ran_statements: bool = False  # session mode: ran anything, so DISCARD ALL on release
    wrote: bool = False  # read routing: a transaction on the primary may write; its watermark is taken at its end
    timeout_cap: TimeoutCap | None = None  # limits: the most statement_timeout this session may set
    ddl_sent: bool = False  # a bypass role sent DDL: read the schema again when it is over
