"""What the control plane knows of each backend: its circuit breaker and the state its last check found."""

from __future__ import annotations

from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# ServerState.kind
PRIMARY_CANDIDATE, REPLICA = "primary", "replica"
# ServerState.role
PRIMARY, STANDBY, DOWN, FENCED, UNKNOWN = "primary", "standby", "down", "fenced", "unknown"


class Breaker:
    """A circuit breaker (pure: every call is given the monotonic time `now`).

    CLOSED lets everything through and counts consecutive failures; at `failures` it OPENs and
    refuses for `open_s` seconds, then HALF_OPEN lets one probe through: its success closes the
    breaker, its failure opens it again. A probe that never reports is replaced after `open_s`.

    >>> b = Breaker(failures=2, open_s=5.0)
    >>> b.failure(0.0); b.state, b.allow(0.1)
    ('closed', True)
    >>> b.failure(1.0); b.state, b.allow(1.1), b.opened
    ('open', False, 1)
    >>> b.allow(6.0), b.state, b.allow(6.1)
    (True, 'half_open', False)
    >>> b.success(6.2); b.state, b.allow(6.3)
    ('closed', True)
    """

    __slots__ = ("_changed_at", "_count", "failures", "open_s", "opened", "state")

    def __init__(self, failures: int, open_s: float) -> None:
        self.failures = failures
        self.open_s = open_s
        self.state = CLOSED
        self.opened = 0  # times it opened (a half-open probe that fails opens it again)
        self._count = 0  # consecutive failures while closed
        self._changed_at = 0.0  # when it opened, or when the half-open probe went through

    def allow(self, now: float) -> bool:
        """May a check or a connect go to this backend now?"""
        if self.state == CLOSED:
            return True
        if now - self._changed_at < self.open_s:
            return False
        self.state, self._changed_at = HALF_OPEN, now  # one probe; another only if it is lost for open_s
        return True

    def success(self, now: float) -> None:
        self.state, self._count, self._changed_at = CLOSED, 0, now

    def failure(self, now: float) -> None:
        if self.state == OPEN:
            return  # a late report of an attempt made before it opened: it stays open as it was
        if self.state == CLOSED:
            self._count += 1
            if self._count < self.failures:
                return
        self.state, self._count, self._changed_at = OPEN, 0, now
        self.opened += 1


@dataclass(slots=True)
class ServerState:
    """One backend as the control plane sees it: configured limits and what the last check found."""

    name: str  # "host:port"
    host: str
    port: int
    kind: str  # PRIMARY_CANDIDATE (primary.host or primary.hosts) | REPLICA (an entry of `replicas:`)
    role: str  # what the last check found: PRIMARY | STANDBY | DOWN | FENCED | UNKNOWN
    weight: float
    max_lag_bytes: int
    max_lag_ms: int
    breaker: Breaker
    up: bool = False
    in_recovery: bool | None = None
    lsn: int = 0  # primary: pg_current_wal_lsn(); standby: pg_last_wal_replay_lsn()
    lag_bytes: int | None = None  # the primary's lsn minus this standby's replay lsn (None: no primary seen yet)
    lag_ms: float | None = None  # 0 when everything received is replayed, else now() - last replayed commit
    timeline: int = 0  # a writable server's timeline (0 while in recovery)
    outstanding: int = 0  # statements routed here and not yet answered (kept by the balancer)
    routed: int = 0  # statements routed here in all
    last_error: str | None = None
    checked_at: float = 0.0  # monotonic time of the last check that finished (0: never)

    def lagging(self) -> bool:
        """Is this server's replay further behind than its limits allow (unknown lag counts as behind)?

        >>> s = ServerState("r:1", "r", 1, "replica", "standby", 1.0, 100, 50, Breaker(3, 5.0))
        >>> s.lagging()
        True
        >>> s.lag_bytes, s.lag_ms = 100, 50.0
        >>> s.lagging()
        False
        >>> s.lag_ms = 50.5
        >>> s.lagging()
        True
        """
        if self.lag_bytes is None or self.lag_ms is None:
            return True
        return self.lag_bytes > self.max_lag_bytes or self.lag_ms > self.max_lag_ms
