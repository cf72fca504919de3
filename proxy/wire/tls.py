"""TLS contexts: pgwarden's listener for clients, and its connections to backends (libpq sslmode meanings)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Protocol

BACKEND_MODES = ("disable", "prefer", "require", "verify-full")
ALPN = ["postgresql"]  # the protocol name PostgreSQL 17 registered; older servers ignore it


class ListenTLSSettings(Protocol):
    """What `listen_tls` reads of the config's `listen.tls` (proxy.config.model.ListenTLS)."""

    @property
    def mode(self) -> str: ...
    @property
    def cert(self) -> Path | None: ...
    @property
    def key(self) -> Path | None: ...


class BackendTLSSettings(Protocol):
    """What `backend_tls` reads of the config's `primary.tls` (proxy.config.model.BackendTLS)."""

    @property
    def mode(self) -> str: ...
    @property
    def ca(self) -> Path | None: ...


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The context that serves clients' TLS (after their SSLRequest): TLS 1.2 or newer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    context.load_cert_chain(cert_file, key_file)
    return context


def backend_context(mode: str, ca_file: str | None) -> ssl.SSLContext | None:
    """The context for TLS to a backend, or None when TLS is disabled.

    `prefer` and `require` encrypt without checking who answers, as libpq's sslmode does; like
    libpq, when a CA file is given they still verify the chain (not the host name).
    `verify-full` verifies the chain against `ca_file` and the host name against the certificate
    (wrap with server_hostname=<the configured backend host>).
    """
    if mode not in BACKEND_MODES:
        raise ValueError(f"unknown backend TLS mode {mode!r}; expected one of {BACKEND_MODES}")
    if mode == "disable":
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    if mode == "verify-full":
        if ca_file is None:
            raise ValueError("backend TLS mode 'verify-full' needs a CA file")
        context.load_verify_locations(ca_file)
        return context  # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and check_hostname by default
    context.check_hostname = False
    if ca_file is None:
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(ca_file)
    return context


def listen_tls(tls: ListenTLSSettings) -> ssl.SSLContext | None:
    """The listener's context for the config's `listen.tls` (None when TLS is off)."""
    return None if tls.mode == "disable" else server_context(str(tls.cert), str(tls.key))


def backend_tls(tls: BackendTLSSettings) -> ssl.SSLContext | None:
    """The context for connections to backends, for the config's `primary.tls` (None when off)."""
    return None if tls.mode == "disable" else backend_context(tls.mode, str(tls.ca) if tls.ca else None)
