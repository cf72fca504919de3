"""A session's limits (`limits:`): statements counted and refused with 53400 before they reach a backend, its connection quota, its statement_timeout."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

from proxy.config.limits import Limits
from proxy.limits.limiter import Decision, Limiter
from proxy.limits.rules import (
    CONCURRENCY,
    CONNECTIONS,
    RATE,
    TIMEOUT,
    Applied,
    Entity,
    applicable,
    lookup,
    message,
    timeout_cap,
    timeout_ms,
)
from proxy.ops.metrics import Metrics
from proxy.pooling.backend import Backend
from proxy.session import params
from proxy.session.state import Refusal, SessionState, TimeoutCap
from proxy.wire import protocol
from proxy.wire.protocol import MSG_EXECUTE, MSG_QUERY

SQLSTATE = "53400"  # configuration_limit_exceeded
# A statement refused by a limit travels on to `SessionCore.forward` under one of these kinds (no
# message type byte is above 0xFF), its payload the refusal (`encode`), so it is refused in order.
LIMITED_QUERY, LIMITED_EXECUTE = 0x100, 0x101
LIMITED = frozenset((LIMITED_QUERY, LIMITED_EXECUTE))
_STATEMENTS = {MSG_QUERY: LIMITED_QUERY, MSG_EXECUTE: LIMITED_EXECUTE}
_SETTING = "statement_timeout"
_VALUE = re.compile(r"statement_timeout\s*(?:=|\bto\b)\s*('[^']*'|[^\s;]+)", re.I)
_RESETS = frozenset(("reset", "reset_all", "discard_all"))
Msgs = list[tuple[int, bytes]]


def encode(refusal: Refusal) -> bytes:
    return f"{refusal.message}\x00{refusal.hint or ''}".encode()


def decode(payload: bytes) -> Refusal:
    """The refusal `encode` carried.

    >>> decode(encode(Refusal("53400", "over", "wait")))
    Refusal(sqlstate='53400', message='over', hint='wait')
    """
    text, _, hint = payload.decode().partition("\x00")
    return Refusal(SQLSTATE, text, hint or None)


def statements(msgs: Msgs) -> int:
    """The statements of a batch: simple Queries and extended-protocol Executes."""
    return sum(1 for kind, _ in msgs if kind in (MSG_QUERY, MSG_EXECUTE))


def mark(msgs: Msgs, admitted: int, refusal: Refusal) -> Msgs:
    """The batch with every statement after the first `admitted` replaced by its refusal.

    >>> mark([(MSG_QUERY, b"Q1"), (MSG_QUERY, b"Q2")], 1, Refusal(SQLSTATE, "no", None))[1][0] == LIMITED_QUERY
    True
    """
    out, seen, payload = [], 0, encode(refusal)
    for kind, msg in msgs:
        limited = _STATEMENTS.get(kind)
        if limited is not None:
            seen += 1
            if seen > admitted:
                out.append((limited, payload))
                continue
        out.append((kind, msg))
    return out


class Ask(NamedTuple):
    """A batch whose rate Redis decides (`SessionLimits.decide`)."""

    msgs: Msgs
    rated: Sequence[Applied]
    took: bool  # this batch took the concurrency places: given back if nothing is admitted


def timeout_refusal(effects: Sequence[params.Effect], sql: str, limit: TimeoutCap) -> Refusal | None:
    """A `SET [LOCAL] statement_timeout` above the session's cap, or 0 (none), refused (and counted)."""
    cap = limit.ms
    for effect in effects:
        if effect.name == _SETTING and effect.kind in ("set", "local"):
            found = _VALUE.search(effect.text or sql)
            value = timeout_ms(found.group(1)) if found else None
            if value is None or value == 0 or value > cap:
                limit.rejected()
                return Refusal(
                    SQLSTATE,
                    f"statement_timeout limit exceeded: at most {cap} ms (and not 0) for this session",
                    f"set statement_timeout to {cap} ms or less (limits.*.statement_timeout_ms)",
                )
    return None


def restore_timeout(state: SessionState, effect: params.Effect, cap: int) -> None:
    """After RESET (ALL) or DISCARD ALL the cap is the session's default again (replayed on the next backend)."""
    if effect.kind in _RESETS and (effect.kind != "reset" or effect.name == _SETTING):
        state.settings[_SETTING] = f"SET statement_timeout TO '{cap}'"


class SessionLimits:
    """What `limits:` asks of one session: one per logged-in client when limits are configured.

    Statements are counted per batch (`admit`): the concurrency quota first (this session holds a
    place from its first statement in flight until the backend is idle again, `settle`), then the
    rate, decided here or, with `limits.redis`, asynchronously in Redis (`decide`).
    """

    __slots__ = ("_tenant", "active", "by_tenant", "connected", "fixed", "limiter")

    def __init__(self, limiter: Limiter, state: SessionState, tenant: Callable[[], str | None]) -> None:
        self.limiter = limiter
        roles = state.ident.roles if state.ident is not None else ()
        self.fixed = applicable(limiter.config, state.user, roles, None)  # the user's and its roles'
        self._tenant = tenant
        self.by_tenant: dict[str, tuple[Applied, ...]] = {}
        self.active: tuple[Applied, ...] | None = None  # the places held while a statement is in flight
        self.connected: tuple[Applied, ...] = ()

    def applied(self) -> tuple[Applied, ...]:
        """The limits that apply now (the tenant may change with SET)."""
        tenant = self._tenant()
        if tenant is None:
            return self.fixed
        found = self.by_tenant.get(tenant)
        if found is None:
            limit = lookup(self.limiter.config.tenants, tenant)
            extra = (Applied(Entity("tenant", tenant), limit),) if limit is not None else ()
            found = self.by_tenant[tenant] = self.fixed + extra
        return found

    def login(self, state: SessionState) -> Refusal | None:
        """At login: the connection quota taken (or a refusal), the statement_timeout cap applied."""
        applied = self.applied()
        over = self.limiter.take(CONNECTIONS, applied)
        if over is not None:
            hint = "close idle connections, or raise limits.*.client_connections"
            return Refusal(SQLSTATE, message(CONNECTIONS, over.entity, over.limit), hint)
        self.connected = applied
        cap = timeout_cap(applied)
        if cap is not None:
            capped_by = next(a for a in applied if a.limit.statement_timeout_ms == cap)
            state.timeout_cap = TimeoutCap(cap, partial(self.limiter.rejected, TIMEOUT, capped_by))
            asked = {k.lower(): v for k, v in params.startup_pairs(state.client_params)}.get(_SETTING)
            value = timeout_ms(asked) if asked is not None else None
            if value is None or value == 0 or value > cap:
                state.settings[_SETTING] = f"SET statement_timeout TO '{cap}'"
        return None

    def admit(self, msgs: Msgs) -> Msgs | Ask:
        """The batch, its statements over a limit marked; or, when Redis must decide, what `decide` needs."""
        n = statements(msgs)
        if n == 0:
            return msgs
        applied = self.applied()
        took = False
        if self.active is None:
            over = self.limiter.take(CONCURRENCY, applied)
            if over is not None:
                for _ in range(n - 1):
                    self.limiter.rejected(CONCURRENCY, over)
                hint = "wait for a running statement to finish, or raise limits.*.concurrent_statements"
                return mark(msgs, 0, Refusal(SQLSTATE, message(CONCURRENCY, over.entity, over.limit), hint))
            self.active, took = applied, True
        rated = [a for a in applied if a.limit.statements_per_second is not None]
        if not rated:
            return msgs
        if self.limiter.shared():
            return Ask(msgs, rated, took)
        return self.apply(msgs, self.limiter.local(rated, n), n, took)

    async def decide(self, ask: Ask) -> Msgs:
        """The rate decided in Redis (or here, if it fails)."""
        n = statements(ask.msgs)
        return self.apply(ask.msgs, await self.limiter.remote(ask.rated, n), n, ask.took)

    def apply(self, msgs: Msgs, decision: Decision, n: int, took: bool) -> Msgs:
        over = decision.limiting
        if over is None or decision.admitted >= n:
            return msgs
        for _ in range(n - decision.admitted):
            self.limiter.rejected(RATE, over)
        if decision.admitted == 0 and took:
            self.settle()
        retry = max(1, round(decision.retry_after * 1000))
        hint = f"retry in {retry} ms; the connection stays usable (limits.*.statements_per_second)"
        return mark(msgs, decision.admitted, Refusal(SQLSTATE, message(RATE, over.entity, over.limit), hint))

    def settle(self) -> None:
        """Nothing in flight any more: the concurrency places are given back."""
        if self.active is not None:
            self.limiter.give(CONCURRENCY, self.active)
            self.active = None

    def close(self) -> None:
        """The client left."""
        self.settle()
        self.limiter.give(CONNECTIONS, self.connected)
        self.connected = ()


def limiter_for(config: Limits | None, metrics: Metrics, running: Limiter | None = None) -> Limiter | None:
    """The process's limiter for a config snapshot: the running one (and its counts) while `limits:` is unchanged."""
    if config is None:
        return None
    if running is not None and running.config == config:
        return running
    return Limiter(config, metrics.limit_rejected, metrics.limit_fallbacks.inc)


def answer_alone(msgs: Msgs, write: Callable[[bytes], None]) -> bool:
    """A batch of refused simple Queries and nothing else, answered without a backend."""
    if not all(kind == LIMITED_QUERY for kind, _ in msgs):
        return False
    for _, payload in msgs:
        refusal = decode(payload)
        write(protocol.error_response(SQLSTATE, refusal.message, hint=refusal.hint) + protocol.ready_for_query(b"I"))
    return True


def after(limits: SessionLimits, backend: Backend | None) -> None:
    """The backend answered (or the batch went without one): settled once nothing is in flight."""
    if limits.active is not None and (backend is None or backend.tracker.idle):
        limits.settle()
