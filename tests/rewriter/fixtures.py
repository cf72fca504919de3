"""Reader of the rewrite fixtures: `.sql` files of input / expected-output cases, one file per rule.

The file says which rule its cases exercise (test_fixture_layout.py holds them to it):

    rewrite/<rule>.sql    a rewrite rule of rewriter.api.RULES edits the statement (e.g. guard_inserts)
    refuse/<reason>.sql   refused with Deny.rule <reason>, tables.<schema>.<table>[.what] counting
                          as tables[.what] (e.g. refuse/tenancy.column.sql, refuse/tables.masks.sql)
    allow.sql             no rule applies: forwarded unchanged

Lines before a file's first case are comments about the file. A file holds cases; each case is

    -- name: what the case shows
    [-- session: notenant | nomasks]   (default: tenant acme, masks on)
    [-- bind: v1 | v2 ...]             (parameter values to run the output with)
    [-- norun]                         (do not run the output on PostgreSQL)
    <client SQL, one or more lines>
    -- expect: allow | deny <rule> | rewrite [params N=value ...]
    <for rewrite: the exact SQL pgwarden sends, one or more lines>
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).parent / "fixtures"
ALLOW = "allow"


@dataclass
class Case:
    path: str
    name: str
    sql: str = ""
    expect: str = ""
    rule: str = ""
    params: tuple[tuple[int, str], ...] = ()
    expected_sql: str = ""
    session: str = ""
    bind: tuple[str, ...] = ()
    run: bool = True
    lines: list[str] = field(default_factory=list)


def _expect(case: Case, words: list[str]) -> None:
    case.expect = words[0]
    if case.expect == "deny":
        case.rule = words[1]
    if case.expect == "rewrite" and len(words) > 1 and words[1] == "params":
        case.params = tuple((int(n), v) for n, _, v in (w.partition("=") for w in words[2:]))


def parse(path: Path) -> list[Case]:
    """The cases of one fixture file."""
    cases: list[Case] = []
    for line in path.read_text().splitlines():
        if line.startswith("-- name:"):
            cases.append(Case(path.relative_to(ROOT).as_posix(), line[8:].strip()))
        elif line.startswith("-- session:"):
            cases[-1].session = line[11:].strip()
        elif line.startswith("-- bind:"):
            cases[-1].bind = tuple(v.strip() for v in line[8:].split("|"))
        elif line.strip() == "-- norun":
            cases[-1].run = False
        elif line.startswith("-- expect:"):
            cases[-1].sql = "\n".join(cases[-1].lines).strip()
            cases[-1].lines = []
            _expect(cases[-1], line[10:].split())
        elif cases:
            cases[-1].lines.append(line)
    for case in cases:
        case.expected_sql = "\n".join(case.lines).strip()
    return cases


def all_cases() -> list[Case]:
    return [c for p in sorted(ROOT.rglob("*.sql")) for c in parse(p)]


def reason(rule: str) -> str:
    """The refusal reason a Deny.rule counts under: `tables.public.orders.masks` -> `tables.masks`."""
    parts = rule.split(".")
    return ".".join([parts[0], *parts[3:]]) if parts[0] == "tables" and len(parts) >= 3 else rule


def file_rule(path: str) -> tuple[str, str]:
    """(`rewrite` | `refuse` | `allow`, rule) that a fixture file's path (relative to ROOT) names."""
    folder, _, name = path.rpartition("/")
    return (folder or ALLOW, name.removesuffix(".sql"))
