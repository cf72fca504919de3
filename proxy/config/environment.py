"""Config keys from the environment: PGWARDEN__PRIMARY__HOST=db sets `primary.host` (nested keys joined by `__`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml

from policies.source import Document, Loc

PREFIX = "PGWARDEN__"


class Override(NamedTuple):
    """One environment variable that sets one config key."""

    variable: str
    path: tuple[str, ...]
    value: Any


@dataclass
class EnvDocument(Document):
    """A config file's Document with environment overrides applied; errors in them name the variable."""

    variables: dict[Loc, str] = field(default_factory=dict)

    def where(self, loc: Loc) -> str:
        for end in range(len(loc), 0, -1):
            if tuple(loc[:end]) in self.variables:
                return f"environment variable {self.variables[tuple(loc[:end])]}"
        return super().where(loc)


def overrides(environ: Mapping[str, str]) -> list[Override]:
    """The PGWARDEN__* variables of `environ` as key paths (lower-cased), in name order."""
    found = []
    for name in sorted(environ):
        if name.upper().startswith(PREFIX):
            path = tuple(part.lower() for part in name[len(PREFIX) :].split("__"))
            found.append(Override(name, path, value(environ[name])))
    return found


def value(text: str) -> Any:
    """A variable's value: a flow list or mapping (`[a, b]`, `{k: v}`) is read as YAML, anything else is text."""
    if text.strip().startswith(("[", "{")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text
    return text


def apply(doc: Document, environ: Mapping[str, str]) -> tuple[EnvDocument, list[str]]:
    """`doc` with every PGWARDEN__* variable of `environ` set over the file's keys, and the errors."""
    data = copy.deepcopy(doc.data) if isinstance(doc.data, dict) else {}
    out = EnvDocument(doc.path, doc.text, data, dict(doc.lines))
    errors = []
    for override in overrides(environ):
        if not all(override.path):
            errors.append(
                f"environment variable {override.variable}: an empty key between `__`; "
                "write PGWARDEN__SECTION__KEY, e.g. PGWARDEN__PRIMARY__HOST"
            )
            continue
        problem = _set(data, override.path, override.value)
        if problem:
            errors.append(f"environment variable {override.variable}: {problem}")
            continue
        out.variables[override.path] = override.variable
        for end in range(1, len(override.path) + 1):
            prefix = override.path[:end]
            if prefix not in doc.lines:  # a section the variable created: its errors name the variable too
                out.variables.setdefault(prefix, override.variable)
                out.lines[prefix] = doc.line(prefix)
    return out, errors


def _set(data: dict[str, Any], path: tuple[str, ...], new: Any) -> str | None:
    """Set `path` in `data` (creating sections); a sentence when a value stands where a section must."""
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            dotted = ".".join(path[: i + 1])
            return (
                f"`{dotted}` is a value, not a section, so `{'.'.join(path)}` cannot be set; "
                f"set PGWARDEN__{'__'.join(path[: i + 1]).upper()} instead"
            )
        node = child
    node[path[-1]] = new
    return None
