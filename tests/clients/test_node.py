"""node-postgres through pgwarden: a JS script (tests/node/smoke.js) whose JSON output is checked."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.clients.support import direct_execute, unique
from tests.harness import ROOT

NODE_DIR = ROOT / "tests" / "node"
TABLE = unique("pgw_node_items")

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules" / "pg").is_dir(),
        reason="node-postgres is not installed: run `npm install` in tests/node (make test does)",
    ),
]


@pytest.fixture
def items():
    direct_execute(f"DROP TABLE IF EXISTS {TABLE}")
    direct_execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, name text)")
    yield TABLE
    direct_execute(f"DROP TABLE IF EXISTS {TABLE}")


def test_node_postgres(proxy, items):
    result = subprocess.run(
        ["node", "smoke.js", proxy.url(), items], cwd=NODE_DIR, capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["plain"] == {"two": 2, "greeting": "héllo", "nothing": None}
    assert out["parameterized"] == {"doubled": 42, "echoed": "✓", "num": "1.50"}
    assert out["named"] == [i * 3 for i in range(8)]
    assert out["error"] == "22012"
    assert out["after_error"] == "usable"
    assert out["inside"] == 2
    assert out["committed"] == [{"id": 2, "name": "kept"}, {"id": 3, "name": "named"}]
    assert out["pool"] == [i + i % 3 for i in range(60)]
