"""Periodic maintenance, once a second: pools kept within their limits, policy files watched."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.ops.stats import QueryStats
    from proxy.pooling.pool import Pool

log = logging.getLogger("pgwarden.janitor")


class Maintained(Protocol):
    """What the janitor tends on the server: the pools, the statistics, the policy files."""

    @property
    def pools(self) -> Mapping[tuple[str, str], Pool]: ...
    @property
    def stats(self) -> QueryStats: ...

    def policy_files_changed(self) -> bool: ...
    def reload(self) -> bool: ...


class Janitor:
    """Runs `Pool.maintain` for every pool on a timer."""

    interval = 1.0

    def __init__(self, server: Maintained) -> None:
        self.server = server
        self._task: asyncio.Task | None = None
        self._spawned: set[asyncio.Task] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.server.stats.flush()
            try:
                if self.server.policy_files_changed():
                    log.info("policy files changed on disk: reloading")
                    self.server.reload()
            except OSError as exc:
                log.warning("cannot read the policy files: %s", exc)
            for pool in list(self.server.pools.values()):
                try:
                    pool.maintain(now, self._spawn)
                except Exception:  # maintenance must never stop the proxy
                    log.exception("maintenance of pool %s failed", pool.name)
