"""The floor for a Python proxy on uvloop: each client pinned to its own backend connection, bytes relayed, nothing parsed.

    python bench/byte_relay.py LISTEN_PORT BACKEND_PORT      (both on 127.0.0.1; bench/cpu_split.py starts it)

Not a proxy anyone should run: no pooling, no auth of its own, no limits. It is what the interpreter and
the event loop cost per transaction with no work of pgwarden's on top.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop

HOST = "127.0.0.1"


class Backend(asyncio.Protocol):
    """The backend side: its bytes go to the client as they come."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's transports do not subclass asyncio's)

    def data_received(self, data: bytes) -> None:
        assert self.client.transport is not None
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class Client(asyncio.Protocol):
    """The client side: bytes held until its backend is connected, then relayed as they come."""

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.transport: asyncio.Transport | None = None
        self.backend: Backend | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's transports do not subclass asyncio's)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.backend = await loop.create_connection(lambda: Backend(self), HOST, self.backend_port)
        assert self.backend.transport is not None
        if self.early:
            self.backend.transport.write(b"".join(self.early))

    def data_received(self, data: bytes) -> None:
        if self.backend is None or self.backend.transport is None:
            self.early.append(data)
        else:
            self.backend.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.close()


async def serve(port: int, backend_port: int) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: Client(backend_port), HOST, port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))
