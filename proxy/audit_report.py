"""The compliance report: who read which tables and masked columns, writes, refusals, bypass activity."""

from __future__ import annotations

import csv
import html
import io
import json
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

WRITES = ("insert", "update", "delete", "merge", "copy")


def load(paths: list[Path], start: datetime | None, end: datetime | None) -> list[dict]:
    """Audit records from the files, within [start, end) when given."""
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    when = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
                except (ValueError, KeyError):
                    continue
                if (start is None or when >= start) and (end is None or when < end):
                    record["_when"] = when
                    out.append(record)
    return out


def summarize(records: list[dict]) -> dict:
    """Every section of the report, as plain data."""
    statements = [r for r in records if r.get("event") == "statement"]
    access: dict[tuple, dict] = defaultdict(lambda: {"statements": 0, "tables": Counter(), "masked": Counter()})
    for r in statements:
        if r.get("decision") == "refused":
            continue
        key = (",".join(r.get("roles") or []) or "-", r.get("tenant") or "-", r.get("user"))
        entry = access[key]
        entry["statements"] += 1
        entry["tables"].update(r.get("tables") or [])
        entry["masked"].update(r.get("masked") or [])
    activity = Counter(r["_when"].strftime("%Y-%m-%d %H:%M") for r in statements)
    return {
        "period": (min((r["_when"] for r in records), default=None),
                   max((r["_when"] for r in records), default=None)),
        "access": sorted(access.items()),
        "writes": Counter((r.get("user"), r.get("tenant") or "-", r.get("sql", "")[:120]) for r in statements
                          if r.get("decision") != "refused"
                          and r.get("sql", "").lstrip().lower().startswith(WRITES)).most_common(50),
        "refusals": Counter((r.get("rule"), r.get("reason", "")[:160]) for r in statements
                            if r.get("decision") == "refused").most_common(50),
        "bypass": Counter((r.get("user"), r.get("sql", "")[:120]) for r in statements
                          if r.get("bypass")).most_common(20),
        "top": Counter(r.get("sql", "")[:160] for r in statements).most_common(20),
        "logins": Counter((r.get("user"), r.get("event")) for r in records
                          if r.get("event") in ("login", "logout")),
        "activity": sorted(activity.items()),
        "refusals_by_rule": Counter(r.get("rule") for r in statements if r.get("decision") == "refused"),
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
        f'y="{24 + i * row + 12}" font-size="11">{n}</text>' for i, (label, n) in enumerate(pairs))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="{html.escape(title)}"><text x="0" y="14" font-size="13" '
            f'font-weight="bold">{html.escape(title)}</text>{bars}</svg>')


def _rows(summary: dict) -> dict[str, tuple[list[str], list[list]]]:
    return {
        "Access by role and tenant": (["roles", "tenant", "user", "statements", "tables", "masked columns"], [
            [roles, tenant, user, e["statements"], ", ".join(sorted(e["tables"])), ", ".join(sorted(e["masked"]))]
            for (roles, tenant, user), e in summary["access"]]),
        "Writes": (["user", "tenant", "statement", "count"], [[u, t, s, n] for (u, t, s), n in summary["writes"]]),
        "Refusals": (["rule", "reason", "count"], [[r, why, n] for (r, why), n in summary["refusals"]]),
        "Bypass-role activity": (["user", "statement", "count"], [[u, s, n] for (u, s), n in summary["bypass"]]),
        "Top statements": (["statement", "count"], [[s, n] for s, n in summary["top"]]),
        "Logins and logouts": (["user", "event", "count"], [[u, e, n] for (u, e), n in summary["logins"].items()]),
    }


def render(summary: dict, fmt: str) -> str:
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
            out += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
            out.append("")
        return "\n".join(out)
    charts = _bars([(t[-5:], n) for t, n in summary["activity"][-40:]], "Statements per minute") + \
        _bars(sorted(summary["refusals_by_rule"].items(), key=lambda kv: -kv[1])[:20], "Refusals by rule")
    body = "".join(
        f"<h2>{html.escape(title)}</h2><table><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in columns)}</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
        + "</table>" for title, (columns, rows) in sections.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>pgwarden compliance report</title>"
            f"<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;"
            f"padding:2px 6px;font-size:12px}}</style></head><body><h1>pgwarden compliance report</h1>"
            f"<p>Period: {html.escape(period)}</p>{charts}{body}</body></html>")


def report(paths: list[Path], start: str | None, end: str | None, fmt: str) -> str:
    def when(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc) if text else None
    return render(summarize(load(paths, when(start), when(end))), fmt)
