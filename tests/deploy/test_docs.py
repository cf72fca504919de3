"""The documentation site builds with `mkdocs build --strict` (broken links and missing pages fail)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_mkdocs_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is a dev dependency: pip install -e '.[dev]'")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-q",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "policies" / "index.html").exists()


def test_grafana_dashboard_queries_metrics_pgwarden_exports():
    import json
    import re

    dashboard = json.loads((ROOT / "docs/grafana/pgwarden.json").read_text())
    exported = set(re.findall(r"`(pgwarden_\w+)`", (ROOT / "docs/operations.md").read_text()))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"pgwarden_\w+", target["expr"]):
                base = re.sub(r"_(bucket|total)$", "", name)
                assert name in exported or base in exported or base + "_total" in exported, name
