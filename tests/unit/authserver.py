"""A small threaded listener that authenticates real clients with ClientAuth (optionally over TLS)."""

from __future__ import annotations

import socket
import ssl
import threading

from proxy.wire import protocol as p
from proxy.wire.auth import AuthFailed, ClientAuth, Credential


class AuthServer:
    """A listener that authenticates clients with ClientAuth, then reports ReadyForQuery."""

    def __init__(self, method: str, users: dict[str, Credential], tls: ssl.SSLContext | None = None) -> None:
        self.method, self.users, self.tls = method, users, tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.done: list[bool] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    self._handle(conn)
                except (OSError, ssl.SSLError):
                    self.done.append(False)  # the client gave up (e.g. TLS verification failed)

    def _handle(self, conn: socket.socket) -> None:
        startup = p.StartupFramer()
        while (packet := startup.next_packet()) is None or not isinstance(packet, p.StartupMessage):
            if isinstance(packet, p.SSLRequest) and self.tls is not None:
                conn.sendall(b"S")
                conn = self.tls.wrap_socket(conn, server_side=True)
            elif packet is not None:  # GSSENCRequest, or SSLRequest without TLS
                conn.sendall(b"N")
            data = conn.recv(4096)
            if not data:
                raise ConnectionError("the client left during startup")
            startup.feed(data)
        user = packet.params["user"]
        auth = ClientAuth(self.method, user, self.users.get(user))
        framer = p.Framer()
        framer.feed(startup.take_rest())
        try:
            conn.sendall(auth.start())
            while not auth.done:
                for _, msg in framer.messages():
                    conn.sendall(auth.receive(msg))
                if not auth.done:
                    framer.feed(conn.recv(4096))
        except AuthFailed as exc:
            self.done.append(False)  # recorded before the client can see the outcome
            conn.sendall(p.error_response(exc.sqlstate, exc.message, severity="FATAL", hint=exc.hint))
            return
        self.done.append(True)
        conn.sendall(
            p.parameter_status("server_version", "15.0")
            + p.parameter_status("client_encoding", "UTF8")
            + p.parameter_status("standard_conforming_strings", "on")
            + p.backend_key_data(1, 2)
            + p.ready_for_query()
        )
        conn.recv(4096)  # Terminate

    def close(self) -> None:
        self.sock.close()
