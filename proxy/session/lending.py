"""Backends lent to a client: given back as they are, through a reset, or closed; waiting requests refused when none came."""

from __future__ import annotations

import logging

from proxy.pooling.backend import Backend
from proxy.pooling.pool import Pool
from proxy.wire import protocol
from proxy.wire.protocol import MSG_FUNCTION_CALL, MSG_QUERY, MSG_SYNC, TX_IDLE

log = logging.getLogger("pgwarden.session")


def between_transactions(pool: Pool, backend: Backend) -> None:
    """Transaction pooling, the client between transactions: back as it is, or through
    DISCARD ALL when it holds session state (`Backend.needs_discard`)."""
    if backend.needs_discard:
        reset(pool, backend, [], discard=True)
    else:
        pool.release(backend)


def client_left(pool: Pool | None, backend: Backend, tx_mode: bool, ran_statements: bool) -> None:
    """The client left: its backend back clean, or closed when it cannot be made clean."""
    if backend.closed or not backend.tracker.idle or pool is None:
        log.info("closing backend pid=%s: client left with a request in flight", backend.pid)
        if pool is not None:
            pool.release(backend, reusable=False)
        else:
            backend.close()
        return
    first = ["ROLLBACK"] if backend.tracker.status != TX_IDLE else []
    if not first and not backend.needs_discard and (tx_mode or not ran_statements):
        pool.release(backend)
        return
    # After a ROLLBACK pgwarden no longer knows the backend's settings (the transaction's SET,
    # RESET or SET ROLE are undone on the server, not in `Backend.settings`): DISCARD ALL too.
    reset(pool, backend, first, discard=backend.needs_discard or not tx_mode or bool(first))


def reset(pool: Pool, backend: Backend, first: list[str], discard: bool) -> None:
    """Return a backend through `first` statements, and DISCARD ALL when `discard`."""
    statements = first + (["DISCARD ALL"] if discard else [])

    def done(ok: bool) -> None:
        if discard:
            backend.settings.clear()
            backend.statements.clear()
            backend.needs_discard = False
        pool.release(backend, reusable=ok)

    backend.clean(statements, done)


def refused_requests(msgs: list[tuple[int, bytes]], sqlstate: str, message: str, hint: str | None) -> bytes | None:
    """No backend came: an error and a ReadyForQuery for each request waiting (None: no request
    that ReadyForQuery answers, so the client must be closed)."""
    syncs = sum(1 for kind, _ in msgs if kind in (MSG_QUERY, MSG_SYNC, MSG_FUNCTION_CALL))
    if not syncs:
        return None
    hint = hint or "raise pool.size or pool.query_wait_timeout, or hold transactions shorter"
    return protocol.error_response(sqlstate, message, hint=hint) + protocol.ready_for_query(b"I") * syncs
