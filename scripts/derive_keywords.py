"""Regenerate rewriter/data/keywords.json from PostgreSQL's kwlist.h (or pglast's keywords.py) per major.

Usage: python scripts/derive_keywords.py 13=PATH 14=PATH ... > rewriter/data/keywords.json
Each PATH is PostgreSQL's src/include/parser/kwlist.h of that major (libpg_query's
<major>-latest branch ships it as src/postgres/include/parser/kwlist.h), or the
generated pglast/keywords.py of the pglast major built on it (5.x=15, 6.x=16, 7.x=17, 8.x=18).
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

CATEGORIES = {"UNRESERVED_KEYWORD": "unreserved", "COL_NAME_KEYWORD": "col_name",
              "TYPE_FUNC_NAME_KEYWORD": "type_func_name", "RESERVED_KEYWORD": "reserved"}
KWLIST = re.compile(r'^PG_KEYWORD\("([a-z_]+)",\s*\w+,\s*(\w+)', re.M)


def from_kwlist(text: str) -> dict[str, str]:
    """word -> category from the PG_KEYWORD lines of kwlist.h."""
    return {word: CATEGORIES[cat] for word, cat in KWLIST.findall(text)}


def from_pglast(text: str) -> dict[str, str]:
    """word -> category from pglast's generated keywords.py (its four sets)."""
    out: dict[str, str] = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id.removesuffix("S")
            if name in CATEGORIES:
                out.update({word: CATEGORIES[name] for word in ast.literal_eval(node.value)})
    return out


def source_version(text: str) -> str:
    """The PostgreSQL release a keywords.py says it was extracted from ('' for kwlist.h)."""
    found = re.search(r"kwlist\.h @ ([\d.]+)", text)
    return found.group(1) if found else ""


def main(args: list[str]) -> None:
    versions, sources = {}, {}
    for arg in args:
        major, path = arg.split("=", 1)
        text = Path(path).read_text()
        words = from_kwlist(text) if "PG_KEYWORD(" in text else from_pglast(text)
        if not words:
            raise SystemExit(f"{path}: no keywords found")
        versions[major] = dict(sorted(words.items()))
        sources[major] = ("pglast keywords.py from kwlist.h @ " + source_version(text)
                          if "PG_KEYWORD(" not in text else "PostgreSQL kwlist.h")
    json.dump({"sources": sources, "versions": versions}, sys.stdout, indent=0, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
