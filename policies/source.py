"""Strict YAML reading with the line of every key, and validation errors as `file:line: sentence`."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import ValidationError


class SourceError(Exception):
    """A file that cannot be used; `.errors` holds one `file:line: sentence` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class Document:
    """Parsed YAML as plain data, with the 1-based line of every mapping key and list item."""

    path: Path
    data: Any
    lines: dict[tuple, int] = field(default_factory=dict)

    def line(self, loc: tuple) -> int:
        """The line of the longest prefix of `loc` that is written in the file (1 if none)."""
        for end in range(len(loc), 0, -1):
            if tuple(loc[:end]) in self.lines:
                return self.lines[tuple(loc[:end])]
        return 1

    def where(self, loc: tuple) -> str:
        return f"{self.path}:{self.line(loc)}"


def load_yaml(path: str | Path) -> Document:
    """Read one YAML file; duplicate keys and syntax errors become SourceError with lines."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SourceError([f"{path}: cannot read it: {exc.strerror}"]) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SourceError([f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from exc
    doc = Document(path, None)
    errors: list[str] = []
    doc.data = _plain(node, (), doc, errors) if node is not None else {}
    if errors:
        raise SourceError(errors)
    return doc


def _plain(node: yaml.Node, loc: tuple, doc: Document, errors: list[str]) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            line = key_node.start_mark.line + 1
            if key in out:
                errors.append(f"{doc.path}:{line}: {'.'.join(map(str, loc + (key,)))}: defined twice "
                              f"(first at line {doc.lines[loc + (key,)]}); keep one")
                continue
            doc.lines[loc + (key,)] = line
            out[key] = _plain(value_node, loc + (key,), doc, errors)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            doc.lines[loc + (i,)] = item.start_mark.line + 1
            items.append(_plain(item, loc + (i,), doc, errors))
        return items
    return _scalar(node)


_LOADER = yaml.SafeLoader("")


def _scalar(node: yaml.Node) -> Any:
    """A scalar's value with YAML's own typing (ints, booleans, null); other keys as text."""
    if isinstance(node, yaml.ScalarNode):
        return _LOADER.construct_object(node, deep=True)
    return yaml.safe_dump(_LOADER.construct_object(node, deep=True)).strip()


def format_errors(exc: ValidationError, doc: Document,
                  allowed_at: Callable[[tuple, Any], list[str]] | None = None) -> list[str]:
    """One `file:line: dotted.path: sentence` per pydantic error; unknown keys get a suggestion.

    `allowed_at(loc, data)` names the keys allowed where an unknown key was found.
    """
    out = []
    for err in exc.errors():
        loc = _written(tuple(err["loc"]), doc)
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = allowed_at(loc[:-1], doc.data) if allowed_at else []
            out.append(f"{doc.where(loc)}: {dotted}: unknown key `{loc[-1]}`{suggest(str(loc[-1]), allowed)}")
        else:
            message = err["msg"].removeprefix("Value error, ")
            out.append(f"{doc.where(loc)}: {dotted}: {message}")
    return out


def _written(loc: tuple, doc: Document) -> tuple:
    """`loc` without the parts pydantic adds (union tags): only what the file itself spells."""
    kept: tuple = ()
    for i, part in enumerate(loc):
        if kept + (part,) in doc.lines or i == len(loc) - 1:
            kept += (part,)
    return kept


def suggest(word: str, allowed: list[str]) -> str:
    """' (did you mean `x`?)' for the closest allowed word, else the list of allowed words."""
    close = difflib.get_close_matches(word, allowed, n=1, cutoff=0.6)
    if close:
        return f" (did you mean `{close[0]}`?)"
    return f" (allowed: {', '.join(allowed)})" if allowed else ""
