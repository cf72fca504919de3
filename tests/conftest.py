"""Shared fixtures (real pgwarden processes in front of the local PostgreSQL) and the unit/integration markers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import ProxyProcess, base_config

TESTS = Path(__file__).resolve().parent

# Every test is marked `unit` or `integration` here, never by hand (`make unit` runs `-m unit`).
# A test is `integration` when it lives in one of these folders (all of their tests need
# PostgreSQL, Redis, a pgwarden process or an outside tool) ...
INTEGRATION_DIRS = frozenset({"clients", "demo", "deploy", "integration", "ops", "policy"})
# ... or uses one of these fixtures (directly or through another fixture) ...
SERVICE_FIXTURES = frozenset(
    {"make_proxy", "proxy", "tx_proxy", "fresh_proxy", "fresh_tx_proxy", "databases", "pg_cluster", "shop_db"}
)
# ... or carries `pytest.mark.integration` (a module's `pytestmark`) for a service it reaches on its own.
# Every other test (tests/unit, tests/policies, most of tests/rewriter and tests/audit, and any new
# file there) is `unit`: `make unit` runs them with PostgreSQL and Redis pointed at a closed port and
# pgwarden processes and clusters refused (tests.harness.refuse_without_services), so a `unit` test that
# reaches a service fails loudly instead of passing by luck.


def is_integration(item: pytest.Item) -> bool:
    """Does this test need a service (see INTEGRATION_DIRS, SERVICE_FIXTURES)?"""
    folder = Path(str(item.path)).resolve().relative_to(TESTS).parts[0]
    fixtures = set(getattr(item, "fixturenames", ()))
    marked = item.get_closest_marker("integration") is not None
    return folder in INTEGRATION_DIRS or bool(fixtures & SERVICE_FIXTURES) or marked


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration if is_integration(item) else pytest.mark.unit)


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
