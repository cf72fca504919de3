"""Strict YAML reading with the line of every key, and validation errors as `file:line: path: sentence`."""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

Loc = tuple[object, ...]
"""A place in a YAML document: the mapping keys (YAML scalars) and list indexes leading to it."""


class SourceError(Exception):
    """A file that cannot be used; `.errors` holds one `file:line: sentence` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class Document:
    """Parsed YAML as plain data, with the 1-based line of every mapping key and list item."""

    path: Path
    text: str
    data: Any = None
    lines: dict[Loc, int] = field(default_factory=dict)

    def line(self, loc: Loc) -> int:
        """The line of the longest prefix of `loc` that is written in the file (1 if none)."""
        for end in range(len(loc), 0, -1):
            if tuple(loc[:end]) in self.lines:
                return self.lines[tuple(loc[:end])]
        return 1

    def where(self, loc: Loc) -> str:
        """`file:line` of `loc`, for the start of an error line."""
        return f"{self.path}:{self.line(loc)}"


def load_yaml(path: str | Path) -> Document:
    """Read one YAML file; duplicate keys and syntax errors become SourceError with lines."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError([f"{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}"]) from exc
    return parse_yaml(text, path)


def parse_yaml(text: str, path: str | Path) -> Document:
    """Parse YAML `text` (read from `path`, which errors name) into a Document."""
    doc = Document(Path(path), text)
    errors: list[str] = []
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc.data = _plain(node, (), doc, errors, frozenset()) if node is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{doc.path}:{mark.line + 1}" if mark else str(doc.path)
        problem = getattr(exc, "problem", None) or exc
        raise SourceError([f"{where}: not valid YAML: {problem}; fix the syntax on this line"]) from exc
    if errors:
        raise SourceError(errors)
    return doc


def _plain(node: yaml.Node, loc: Loc, doc: Document, errors: list[str], above: frozenset[int]) -> Any:
    """The plain value of `node`, recording lines; `above` holds the nodes enclosing it."""
    if id(node) in above:
        errors.append(
            f"{doc.path}:{node.start_mark.line + 1}: {_dotted(loc)}: an alias refers to "
            "a mapping or list that contains it; write the value out"
        )
        return None
    above = above | {id(node)}
    if isinstance(node, yaml.MappingNode):
        return _mapping(node, loc, doc, errors, above)
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            doc.lines[loc + (i,)] = item.start_mark.line + 1
            items.append(_plain(item, loc + (i,), doc, errors, above))
        return items
    return _scalar(node)


def _mapping(
    node: yaml.MappingNode, loc: Loc, doc: Document, errors: list[str], above: frozenset[int]
) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == "tag:yaml.org,2002:merge":
            errors.append(
                f"{doc.path}:{line}: {_dotted(loc)}: merge keys (<<) are not accepted; "
                "write the keys out so reviewers see them"
            )
            continue
        key = _scalar(key_node)
        if key in out:
            errors.append(
                f"{doc.path}:{line}: {_dotted(loc + (key,))}: defined twice (first at "
                f"line {doc.lines[loc + (key,)]}); keep one"
            )
            continue
        doc.lines[loc + (key,)] = line
        out[key] = _plain(value_node, loc + (key,), doc, errors, above)
    return out


_LOADER = yaml.SafeLoader("")


def _scalar(node: yaml.Node) -> Any:
    """A scalar's value with YAML's own typing (ints, booleans, null); other keys as text."""
    if isinstance(node, yaml.ScalarNode):
        return _LOADER.construct_object(node, deep=True)
    return yaml.safe_dump(_LOADER.construct_object(node, deep=True)).strip()


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def format_errors(
    exc: ValidationError, doc: Document, file: str | Path | None = None, model: type[BaseModel] | None = None
) -> list[str]:
    """One `FILE:LINE: dotted.path: sentence` per pydantic error in validating `doc.data`.

    `file` starts each line (default: the document's path). Given the root `model`, an
    unknown key gets the closest key the model allows at that place (`did you mean`).
    """
    out = []
    for err in exc.errors():
        loc = _written(tuple(err["loc"]), doc, err["type"] in ("missing", "extra_forbidden"))
        head = f"{doc.where(loc) if file is None else f'{file}:{doc.line(loc)}'}: {_dotted(loc)}: "
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, tuple(err["loc"][:-1])) if model else []
            out.append(f"{head}unknown key `{loc[-1]}`{suggest(str(loc[-1]), allowed)}")
        else:
            out.append(head + sentence(err))
    return out


def _fields_at(model: Any, loc: Loc) -> list[str]:
    """The keys allowed by the model that pydantic's `loc` leads to from `model` ([] if none)."""
    for part in loc:
        model = _follow(model, part)
        if model is None:
            return []
    fields = getattr(_unwrap(model), "model_fields", None)
    return [f.alias or name for name, f in fields.items()] if fields else []


def _follow(tp: Any, part: Any) -> Any:
    """The type one step (a field, a mapping key, a list index or a union tag) inside `tp`."""
    tp = _unwrap(tp)
    fields = getattr(tp, "model_fields", None)
    if fields is not None:
        return next((f.annotation for name, f in fields.items() if part in (name, f.alias)), None)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict:
        return args[1]
    if origin in (list, tuple, set, frozenset):
        return args[0]
    return next((m for m in _members(tp) if part in _tags(m)), None)


def _unwrap(tp: Any) -> Any:
    """`tp` without Annotated and without `| None`."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        members = _members(tp)
        if len(members) == 2 and type(None) in members:
            tp = next(m for m in members if m is not type(None))
            continue
        return tp


def _members(tp: Any) -> tuple[Any, ...]:
    """The members of a union type (also inside Annotated); () for other types."""
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()


def _tags(member: Any) -> set[object]:
    """The names pydantic may put in a location for a union member (its Tag, its class name)."""
    tags = {getattr(m, "tag", None) for m in getattr(member, "__metadata__", ())}
    return tags | {getattr(_unwrap(member), "__name__", None)}


_KINDS = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "string": "text",
    "list": "a list",
    "dict": "a mapping (key: value)",
    "model": "a mapping (key: value)",
}


def sentence(err: ErrorDetails) -> str:
    """A pydantic error as a sentence that says what to write instead."""
    kind, ctx, given = err["type"], err.get("ctx", {}), err.get("input")
    base = kind.removesuffix("_type").removesuffix("_parsing")
    if kind == "missing":
        return "this key is required: add it"
    if kind == "literal_error":
        return f"`{given}` is not allowed here; write {ctx['expected']}"
    if kind == "too_short":
        return f"list at least {ctx['min_length']} item(s) here"
    if kind == "greater_than_equal":
        return f"must be {ctx['ge']} or more, not {given}"
    if base in _KINDS and kind != base:
        return f"must be {_KINDS[base]}, not `{given}`"
    return err["msg"].removeprefix("Value error, ")


def _written(loc: Loc, doc: Document, keep_last: bool) -> Loc:
    """`loc` without the parts pydantic adds (union tags): only what the file spells, plus
    the last part when it names a key that is missing or unknown."""
    kept: Loc = ()
    for i, part in enumerate(loc):
        if kept + (part,) in doc.lines or (keep_last and i == len(loc) - 1):
            kept += (part,)
    return kept


def suggest(word: str, allowed: list[str]) -> str:
    """' (did you mean `x`?)' for the closest allowed word, else the list of allowed words."""
    close = difflib.get_close_matches(word, allowed, n=1, cutoff=0.6)
    if close:
        return f" (did you mean `{close[0]}`?)"
    return f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""
