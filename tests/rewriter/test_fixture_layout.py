"""The fixture layout stays true: each file names a rule the rewriter has, and each case exercises its file's rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rewriter
from rewriter import api, rewrite

from .fixtures import ALLOW, ROOT, Case, all_cases, file_rule, reason
from .schema import session

CASES = all_cases()
# The rules of rewriter.api.RULES, and the channel rewrite of a lone NOTIFY or pg_notify() that runs before them.
REWRITE_RULES = {rule.__name__ for rule in api.RULES} | {api.notify_rewrite.__name__}


def _rule_argument(call: ast.Call) -> ast.expr | None:
    """The `rule` of a `Refused(message, hint, rule)` or `Deny(message, hint, rule)` call."""
    if len(call.args) > 2:
        return call.args[2]
    return next((k.value for k in call.keywords if k.arg == "rule"), None)


def refusal_reasons() -> set[str]:
    """Every reason rewriter/ refuses with, read from its `Refused(...)`/`Deny(...)` calls
    (an f-string's placeholder stands for a table: f"tables.{name}.masks" is tables.masks)."""
    reasons = set()
    for path in Path(rewriter.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("Refused", "Deny"):
                arg = _rule_argument(node)
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    reasons.add(reason(arg.value))
                elif isinstance(arg, ast.JoinedStr):
                    text = "".join(v.value if isinstance(v, ast.Constant) else "schema.table" for v in arg.values)
                    reasons.add(reason(text))
    return reasons


REASONS = refusal_reasons()


def test_the_reasons_are_read_from_the_rewriter() -> None:
    assert {"statements", "functions.allow", "tenancy.column", "tables", "tables.masks"} <= REASONS


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()))
def test_every_fixture_file_names_a_rule_of_the_rewriter(path: str) -> None:
    kind, rule = file_rule(path)
    assert path.endswith(".sql"), "fixture files are .sql"
    known = {"rewrite": REWRITE_RULES, "refuse": REASONS, ALLOW: {ALLOW}}
    assert rule in known.get(kind, ()), f"{path}: no {kind} rule {rule!r} (known: {sorted(known.get(kind, ()))})"


def _rules_fired(case: Case, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The rules (of rewriter.api.RULES, and the channel rewrite) that made edits for the case's statement."""
    fired: set[str] = set()

    def watched(rule):
        def run(checked, ctx, toks):
            out = list(rule(checked, ctx, toks))
            if out:
                fired.add(rule.__name__)
            return out

        return run

    def notify_watched(*args):
        result = notify_rewrite(*args)
        if result is not None:
            fired.add(notify_rewrite.__name__)
        return result

    notify_rewrite = api.notify_rewrite
    monkeypatch.setattr(api, "RULES", tuple(watched(rule) for rule in api.RULES))
    monkeypatch.setattr(api, "notify_rewrite", notify_watched)
    rewrite(case.sql, session(case.session))
    return fired


@pytest.mark.parametrize("case", CASES, ids=[f"{c.path}:{c.name}" for c in CASES])
def test_each_case_exercises_its_files_rule(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, rule = file_rule(case.path)
    if case.expect == "deny":
        assert (kind, rule) == ("refuse", reason(case.rule)), f"belongs in refuse/{reason(case.rule)}.sql"
    elif case.expect == "allow":
        assert kind == ALLOW, "belongs in allow.sql"
    else:
        fired = _rules_fired(case, monkeypatch)
        assert kind == "rewrite" and rule in fired, f"belongs in rewrite/<one of {sorted(fired)}>.sql"
