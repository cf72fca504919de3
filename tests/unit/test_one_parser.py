"""Only rewriter/pgparser.py imports pglast: one grammar, one place (tests, bench and scripts included)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPORT = re.compile(r"^\s*(import pglast|from pglast\b)", re.M)


def test_no_other_module_imports_pglast():
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("proxy", "rewriter", "policies", "tests", "bench", "scripts")
        for p in (ROOT / folder).rglob("*.py")
        if IMPORT.search(p.read_text(errors="replace"))
    ]
    assert offenders == ["rewriter/pgparser.py"]
