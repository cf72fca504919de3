"""Which replica takes a read: a healthy one that has replayed the watermark, least outstanding statements per weight."""

from __future__ import annotations

from collections.abc import Sequence

from proxy.routing.health import CLOSED, ServerState


def usable(server: ServerState) -> bool:
    """A replica that passed its last check, is in recovery (still a replica), within its lag
    limits and with its breaker closed."""
    return server.up and server.role == "standby" and server.breaker.state == CLOSED and not server.lagging()


def choose(replicas: Sequence[ServerState], watermark: int) -> ServerState | None:
    """The usable replica whose replay position has reached `watermark` with the fewest
    outstanding transactions per unit of weight; ties go to the one that was routed the fewest
    per unit of weight (so one client's sequential reads rotate by weight). None: no replica."""
    best: ServerState | None = None
    best_load = (0.0, 0.0)
    for server in replicas:
        if server.lsn < watermark or not usable(server):
            continue
        load = (server.outstanding / server.weight, server.routed / server.weight)
        if best is None or load < best_load:
            best, best_load = server, load
    return best


def behind(replicas: Sequence[ServerState], watermark: int) -> bool:
    """Some usable replica is only held back by the watermark (worth a check now)."""
    return any(server.lsn < watermark and usable(server) for server in replicas)
