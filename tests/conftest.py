"""Shared fixtures: real pgwarden processes in front of the local PostgreSQL."""

from __future__ import annotations

import pytest

from tests.harness import ProxyProcess, base_config


@pytest.fixture
def make_proxy(tmp_path):
    """Start a pgwarden with `base_config(**overrides)`; every one is stopped after the test."""
    started: list[ProxyProcess] = []

    def start(config: dict | None = None, env: dict | None = None, **overrides) -> ProxyProcess:
        proxy = ProxyProcess(config or base_config(**overrides), tmp_path / f"p{len(started)}", env)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


def _module_proxy(tmp_path_factory, mode: str):
    proxy = ProxyProcess(base_config(pool={"mode": mode, "size": 10}), tmp_path_factory.mktemp(f"pgwarden-{mode}"))
    proxy.start()
    return proxy


@pytest.fixture(scope="module", params=["transaction", "session"])
def proxy(request, tmp_path_factory):
    """A pgwarden in transaction mode, then in session mode (each test runs under both)."""
    p = _module_proxy(tmp_path_factory, request.param)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def tx_proxy(tmp_path_factory):
    """A pgwarden in transaction pooling mode."""
    p = _module_proxy(tmp_path_factory, "transaction")
    yield p
    p.stop()
