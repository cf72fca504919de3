"""The compliance report in html, md and csv, from a real trail."""

from __future__ import annotations

import argparse
import csv
import io
import re
import time
from datetime import UTC, datetime

import pytest

from proxy.audit.report import add_audit_commands, render_report
from tests.audit.trail import sample, write_trail

BASE = time.mktime((2026, 11, 2, 9, 0, 0, 0, 0, 0)) - time.timezone  # 2026-11-02 09:00 UTC


@pytest.fixture(scope="module")
def trail(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "audit.jsonl"
    write_trail(path, sample(BASE))
    return [path]


def test_html_has_every_section_two_svg_charts_and_no_network(trail):
    page = render_report(trail, None, None, "html")
    for section in (
        "Access by role and tenant",
        "Writes",
        "Refusals",
        "Bypass-role activity",
        "Top statements",
        "Logins and logouts",
        "Statements per minute",
        "Refusals by rule",
    ):
        assert f">{section}<" in page or f'aria-label="{section}"' in page, section
    assert page.count("<svg") == 2 and "<script" not in page
    assert not re.search(r"(?:src|href)=|url\(|https?://(?!www\.w3\.org/2000/svg)", page)
    assert "Period: 2026-11-02 09:00:00 to 2026-11-02 09:58:20 UTC" in page
    assert "ann@acme.io" not in page and "x@y.z" not in page  # the trail holds redacted text only
    refusals = re.search(r'aria-label="Refusals by rule">(.*?)</svg>', page).group(1)
    assert "tables.public.secrets" in refusals and ">7<" in refusals and ">1<" in refusals
    assert "tables.public.payroll (monitor)" in refusals


def test_markdown_lists_access_masks_writes_refusals_and_bypass(trail):
    md = render_report(trail, None, None, "md")
    access = md.split("## Access by role and tenant")[1].split("##")[0]
    assert "| app | acme | acme_app | 20 | public.customers | public.customers.ssn |" in access
    assert "| analyst | - | analyst | 2 | public.orders, public.payroll | public.customers.email |" in access
    writes = md.split("## Writes")[1].split("##")[0]
    assert "| globex_app | globex | insert into orders (id, customer_id, total) values (?, ?, ?) | 20 |" in writes
    assert "| postgres | - | update customers set email = ? where id = ? | 1 |" in writes
    refusals = md.split("## Refusals")[1].split("##")[0]
    secrets = "| acme_app | acme | refused | tables.public.secrets | table public.secrets is not granted to role app |"
    assert f"{secrets} 7 |" in refusals
    assert "| analyst | - | monitor-would-refuse | tables.public.payroll |" in refusals
    bypass = md.split("## Bypass-role activity")[1].split("##")[0]
    assert "postgres" in bypass and "acme_app" not in bypass


def test_csv_and_the_period_filter(trail):
    start = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    rows = list(csv.reader(io.StringIO(render_report(trail, start, "2026-11-02T09:40", "csv"))))
    access = [r for r in rows if r[0] == "Access by role and tenant"]
    # 09:30 to 09:40: minutes 30, 33, 36, 39 for acme; the analyst at 09:30, postgres at 09:33:20
    acme = next(r for r in access if "user=acme_app" in r)
    assert acme[1:5] == ["roles=app", "tenant=acme", "user=acme_app", "statements=4"]
    assert {r[3] for r in access} == {"user=acme_app", "user=globex_app", "user=analyst", "user=postgres"}
    assert render_report(trail, "2000-01-01", "2000-01-02", "csv") == ""


def test_cli_helper_registers_verify_and_report(trail, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="pgwarden")
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "r.md"
    args = parser.parse_args(["audit", "report", str(trail[0]), "--format", "md", "--out", str(out)])
    assert args.func(args) == 0 and out.read_text().startswith("# pgwarden compliance report")
    args = parser.parse_args(["audit", "verify", str(trail[0]), "--key-env", "NO_SUCH_KEY_VAR"])
    assert args.func(args) == 0
    assert f"ok: {len(sample(BASE))} records, chain intact (SHA-256, no key)" in capsys.readouterr().out
    args = parser.parse_args(["audit", "report", str(trail[0]), "--from", "yesterday"])
    assert args.func(args) == 2 and "ISO" in capsys.readouterr().err
