"""The compliance report: who read which tables and masked columns, writes, refusals, bypass activity."""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import os
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.audit.redact import statement_kind

REFUSALS = ("refused", "monitor-would-refuse")  # monitor mode: the statement ran, the policy would refuse it
WRITES = frozenset({"insert", "update", "delete", "merge", "copy", "truncate"})


def load(paths: list[Path], start: datetime | None, end: datetime | None) -> list[dict[str, Any]]:
    """Audit records from the files, within [start, end) when given."""
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    when = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
                except (ValueError, KeyError, TypeError, AttributeError):  # not a record: skipped
                    continue
                if (start is None or when >= start) and (end is None or when < end):
                    record["_when"] = when
                    out.append(record)
    return out


def _kind(record: dict[str, Any]) -> str:
    return record.get("kind") or statement_kind(record.get("sql") or "")


BUCKETS = ((60, "%H:%M", "minute"), (3600, "%m-%d %H:00", "hour"), (86400, "%Y-%m-%d", "day"))


def _activity(times: list[datetime]) -> tuple[str, list[tuple[str, int]]]:
    """Statements per minute, hour or day (the finest that gives at most 60 columns)."""
    if not times:
        return "minute", []
    span = (max(times) - min(times)).total_seconds()
    seconds, fmt, unit = next((b for b in BUCKETS if span / b[0] < 60), BUCKETS[-1])
    counts = Counter(int(t.timestamp() // seconds) for t in times)
    first, last = min(counts), max(counts)
    return unit, [
        (datetime.fromtimestamp(b * seconds, UTC).strftime(fmt), counts.get(b, 0)) for b in range(first, last + 1)
    ]


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Every section of the report, as plain data."""
    statements = [r for r in records if r.get("event") == "statement"]
    access: dict[tuple[str, str, str | None], dict[str, Any]] = defaultdict(
        lambda: {"statements": 0, "tables": Counter(), "masked": Counter()}
    )
    for r in statements:
        if r.get("decision") == "refused":
            continue
        key = (",".join(r.get("roles") or []) or "-", r.get("tenant") or "-", r.get("user"))
        entry = access[key]
        entry["statements"] += 1
        entry["tables"].update(r.get("tables") or [])
        entry["masked"].update(r.get("masked") or [])
    activity = _activity([r["_when"] for r in statements])
    return {
        "period": (min((r["_when"] for r in records), default=None), max((r["_when"] for r in records), default=None)),
        "access": sorted(access.items()),
        "writes": Counter(
            (r.get("user"), r.get("tenant") or "-", r.get("sql", "")[:120])
            for r in statements
            if r.get("decision") != "refused" and _kind(r) in WRITES
        ).most_common(50),
        "refusals": Counter(
            (r.get("user"), r.get("tenant") or "-", r["decision"], r.get("rule"), r.get("reason", "")[:160])
            for r in statements
            if r.get("decision") in REFUSALS
        ).most_common(50),
        "bypass": Counter((r.get("user"), r.get("sql", "")[:120]) for r in statements if r.get("bypass")).most_common(
            20
        ),
        "top": Counter(r.get("sql", "")[:160] for r in statements).most_common(20),
        "logins": Counter((r.get("user"), r.get("event")) for r in records if r.get("event") in ("login", "logout")),
        "activity": activity,
        "refusals_by_rule": Counter(
            f"{r.get('rule')}{' (monitor)' if r['decision'] != 'refused' else ''}"
            for r in statements
            if r.get("decision") in REFUSALS
        ),
    }


def _bars(pairs: list[tuple[str, int]], title: str, width: int = 600) -> str:
    """A horizontal bar chart as inline SVG (no script, no network)."""
    if not pairs:
        return f"<p>No data for {html.escape(title)}.</p>"
    top, row = max(n for _, n in pairs) or 1, 18
    height = row * len(pairs) + 24
    bars = "".join(
        f'<text x="0" y="{24 + i * row + 12}" font-size="11">{html.escape(str(label))[:40]}</text>'
        f'<rect x="260" y="{24 + i * row}" width="{max(1, int((width - 320) * n / top))}" '
        f'height="{row - 4}" fill="#3b6ea5"/><text x="{265 + int((width - 320) * n / top)}" '
        f'y="{24 + i * row + 12}" font-size="11">{n}</text>'
        for i, (label, n) in enumerate(pairs)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}"><text x="0" y="14" font-size="13" '
        f'font-weight="bold">{html.escape(title)}</text>{bars}</svg>'
    )


def _rows(summary: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    return {
        "Access by role and tenant": (
            ["roles", "tenant", "user", "statements", "tables", "masked columns"],
            [
                [roles, tenant, user, e["statements"], ", ".join(sorted(e["tables"])), ", ".join(sorted(e["masked"]))]
                for (roles, tenant, user), e in summary["access"]
            ],
        ),
        "Writes": (["user", "tenant", "statement", "count"], [[u, t, s, n] for (u, t, s), n in summary["writes"]]),
        "Refusals": (
            ["user", "tenant", "decision", "rule", "reason", "count"],
            [[u, t, d, r, why, n] for (u, t, d, r, why), n in summary["refusals"]],
        ),
        "Bypass-role activity": (["user", "statement", "count"], [[u, s, n] for (u, s), n in summary["bypass"]]),
        "Top statements": (["statement", "count"], [[s, n] for s, n in summary["top"]]),
        "Logins and logouts": (["user", "event", "count"], [[u, e, n] for (u, e), n in summary["logins"].items()]),
    }


def _columns(unit: str, points: list[tuple[str, int]], width: int = 640, height: int = 160) -> str:
    """Activity over time as an inline SVG column chart (no script, no network)."""
    title = f"Statements per {unit}"
    if not points:
        return f"<p>No data for {html.escape(title)}.</p>"
    top = max(n for _, n in points) or 1
    step = (width - 40) / len(points)
    plot = height - 40
    cols = "".join(
        f'<rect x="{40 + i * step:.1f}" y="{20 + plot - plot * n / top:.1f}" width="{max(1.0, step - 1):.1f}" '
        f'height="{plot * n / top:.1f}" fill="#3b6ea5"><title>{html.escape(label)}: {n}</title></rect>'
        for i, (label, n) in enumerate(points)
    )
    axis = (
        f'<text x="0" y="28" font-size="10">{top}</text><text x="0" y="{20 + plot}" font-size="10">0</text>'
        f'<text x="40" y="{height - 4}" font-size="10">{html.escape(points[0][0])}</text>'
        f'<text x="{width}" y="{height - 4}" font-size="10" text-anchor="end">'
        f"{html.escape(points[-1][0])}</text>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}"><text x="0" y="12" font-size="13" font-weight="bold">'
        f"{html.escape(title)}</text>{cols}{axis}</svg>"
    )


def render(summary: dict[str, Any], fmt: str) -> str:
    """The report as html, md or csv."""
    sections = _rows(summary)
    start, end = summary["period"]
    period = f"{start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC" if start else "no records"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        for title, (columns, rows) in sections.items():
            for row in rows:
                writer.writerow([title, *[f"{c}={v}" for c, v in zip(columns, row)]])
        return buf.getvalue()
    if fmt == "md":
        out = [f"# pgwarden compliance report\n\nPeriod: {period}\n"]
        for title, (columns, rows) in sections.items():
            out.append(f"## {title}\n\n| {' | '.join(columns)} |\n|{' --- |' * len(columns)}")
            out += [
                "| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |" for row in rows
            ]
            out.append("")
        return "\n".join(out)
    charts = _columns(*summary["activity"]) + _bars(
        sorted(summary["refusals_by_rule"].items(), key=lambda kv: -kv[1])[:20], "Refusals by rule"
    )
    body = "".join(
        f"<h2>{html.escape(title)}</h2><table><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in columns)}</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
        + "</table>"
        for title, (columns, rows) in sections.items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>pgwarden compliance report</title>"
        f"<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;"
        f"padding:2px 6px;font-size:12px}}</style></head><body><h1>pgwarden compliance report</h1>"
        f"<p>Period: {html.escape(period)}</p>{charts}{body}</body></html>"
    )


def _when(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def render_report(paths: list[Path], start: datetime | str | None, end: datetime | str | None, fmt: str) -> str:
    """The report of the records in [start, end) (naive times are UTC) as html, md or csv."""
    return render(summarize(load(paths, _when(start), _when(end))), fmt)


report = render_report  # the name proxy/app/cli.py calls


# --- command line ----------------------------------------------------------------------------------


def cmd_audit_verify(args: Any) -> int:
    """`pgwarden audit verify FILE... [--key-env VAR]`: exit 1 naming the first broken record."""
    from proxy.audit.trail import verify_files

    key = os.environ.get(args.key_env, "").encode() or None
    try:
        result = verify_files([Path(f) for f in args.files], key)
    except OSError as exc:
        print(f"pgwarden: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    if not result.ok:
        print(
            f"pgwarden: audit chain broken after {result.records} good records: {result.first_problem}", file=sys.stderr
        )
        return 1
    since = (
        "" if result.first_seq in (None, 1) else f" from record {result.first_seq} (the files before it were not given)"
    )
    print(f"ok: {result.records} records, chain intact{since} ({'HMAC-SHA256' if key else 'SHA-256, no key'})")
    return 0


def cmd_audit_report(args: Any) -> int:
    """`pgwarden audit report FILE... [--from] [--to] [--format html|md|csv] [--out FILE]`."""
    try:
        text = render_report([Path(f) for f in args.files], args.start, args.end, args.format)
    except ValueError as exc:
        print(f"pgwarden: --from/--to must be ISO date/times: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pgwarden: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def add_audit_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`pgwarden audit verify` and `pgwarden audit report`, for proxy/app/cli.py's main parser."""
    audit = subparsers.add_parser("audit", help="the audit trail").add_subparsers(dest="audit", required=True)
    verify = audit.add_parser("verify", help="check the audit files' hash chain (any order: sorted by seq)")
    verify.add_argument("files", nargs="+")
    verify.add_argument(
        "--key-env",
        default="PGWARDEN_AUDIT_KEY",
        help="environment variable holding the HMAC key (as audit.hmac_key_env)",
    )
    verify.set_defaults(func=cmd_audit_verify)
    rep = audit.add_parser("report", help="a compliance report of the audit files")
    rep.add_argument("files", nargs="+")
    rep.add_argument("--from", dest="start", help="ISO date/time (UTC unless it has an offset), inclusive")
    rep.add_argument("--to", dest="end", help="ISO date/time (UTC unless it has an offset), exclusive")
    rep.add_argument("--format", choices=["html", "md", "csv"], default="html")
    rep.add_argument("--out", help="write to this file instead of standard output")
    rep.set_defaults(func=cmd_audit_report)
