"""Loading policies: one file or every *.yaml in a folder, validated strictly and merged into one Policy."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from pydantic import ValidationError

from policies.model import PolicyFile, Role, Table, Tenancy, normal_name, split_name
from policies.source import Document, SourceError, format_errors, load_yaml, suggest


@dataclass(frozen=True)
class Policy:
    """The merged, validated policy that is running. Immutable; a reload builds a new one."""

    version: str  # a digest of every file's bytes: keys caches
    files: tuple[Path, ...]
    mode: str
    tenancy: Tenancy
    roles: Mapping[str, Role]
    tables: Mapping[str, Table]  # by normalised "schema.table"
    functions: frozenset[str]
    user_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    origins: Mapping[str, Path] = field(default_factory=dict)  # "tables.public.t", "roles.app" -> file

    def file_of(self, rule: str) -> str:
        """The file that defines a rule like `tables.public.t.masks.c` (or every file, if none does)."""
        parts = rule.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in self.origins:
                return str(self.origins[".".join(parts[:end])])
        return ", ".join(str(f) for f in self.files)

    def tenant_column(self, table: str) -> str | None:
        """The table's tenant column (None for a shared table)."""
        spec = self.tables[table]
        if "tenant_column" in spec.model_fields_set:
            return spec.tenant_column
        return self.tenancy.column


def load_policy(path: str | Path) -> Policy:
    """Load and merge the policy at `path`; raise SourceError listing every problem."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
        if not files:
            raise SourceError([f"{path}: no *.yaml policy files in this folder"])
    elif path.exists():
        files = [path]
    else:
        raise SourceError([f"{path}: no such policy file or folder"])
    docs, errors = _read(files)
    roles = {r for doc in docs if isinstance(doc.data.get("roles"), dict) for r in doc.data["roles"]}
    parsed: list[tuple[Document, PolicyFile]] = []
    for doc in docs:
        found = _cross_check(doc, roles)
        try:
            parsed.append((doc, PolicyFile.model_validate(doc.data)))
        except ValidationError as exc:
            found += format_errors(exc, doc, model=PolicyFile)
        errors += found
    if errors:
        raise SourceError(sorted(errors, key=lambda e: (_file_index(e, files), _line_number(e))))
    policy = _merge(parsed, errors)
    if errors:
        raise SourceError(errors)
    return policy


def _read(files: list[Path]) -> tuple[list[Document], list[str]]:
    """The files that are YAML mappings, and the errors of those that are not."""
    docs, errors = [], []
    for file in files:
        try:
            doc = load_yaml(file)
        except SourceError as exc:
            errors += exc.errors
            continue
        if isinstance(doc.data, dict):
            docs.append(doc)
        else:
            errors.append(
                f"{file}:1: (top level): a policy file is a mapping of keys "
                "(version, tenancy, roles, tables, ...); start with `version: 1`"
            )
    return docs, errors


def _file_index(error: str, files: list[Path]) -> int:
    return next((i for i, file in enumerate(files) if error.startswith(f"{file}:")), len(files))


def _line_number(error: str) -> int:
    match = re.match(r"^.*?:(\d+): ", error)
    return int(match.group(1)) if match else 0


def _merge(parsed: list[tuple[Document, PolicyFile]], errors: list[str]) -> Policy:
    roles: dict[str, Role] = {}
    tables: dict[str, Table] = {}
    seen: dict[tuple[str, str], str] = {}
    tenancy: Tenancy | None = None
    functions: set[str] = set()
    origins: dict[str, Path] = {}
    digest = hashlib.sha256()
    for doc, pf in parsed:
        body = doc.text.encode()
        digest.update(f"{doc.path.name}\0{len(body)}\0".encode() + body)
        _define("role", doc, pf.roles, roles, seen, origins, errors)
        _define("table", doc, pf.tables, tables, seen, origins, errors)
        if pf.tenancy is not None:
            if tenancy is not None and tenancy != pf.tenancy:
                errors.append(
                    f"{doc.where(('tenancy',))}: tenancy: already defined at "
                    f"{seen[('tenancy', '')]}; define it in one file only"
                )
            tenancy = pf.tenancy
            origins["tenancy"] = doc.path
            seen.setdefault(("tenancy", ""), doc.where(("tenancy",)))
        functions |= set(pf.functions.allow)
    user_roles: dict[str, set[str]] = {}
    for role, spec in roles.items():
        for user in spec.users:
            user_roles.setdefault(user, set()).add(role)
    mode = "enforce" if any(pf.mode == "enforce" for _, pf in parsed) else "monitor"
    return Policy(
        digest.hexdigest()[:16],
        tuple(doc.path for doc, _ in parsed),
        mode,
        tenancy or Tenancy(),
        MappingProxyType(roles),
        MappingProxyType(tables),
        frozenset(functions),
        MappingProxyType({u: frozenset(r) for u, r in user_roles.items()}),
        MappingProxyType(origins),
    )


_Spec = TypeVar("_Spec", Role, Table)


def _define(
    kind: str,
    doc: Document,
    items: Mapping[str, _Spec],
    target: dict[str, _Spec],
    seen: dict[tuple[str, str], str],
    origins: dict[str, Path],
    errors: list[str],
) -> None:
    """Add one file's roles or tables to `target`; a name another file defined is an error."""
    for name, spec in items.items():
        key = normal_name(name) if kind == "table" else name
        where = doc.where((kind + "s", name))
        if (kind, key) in seen:
            errors.append(
                f"{where}: {kind}s.{name}: already defined at {seen[(kind, key)]}; define it in one file only"
            )
            continue
        seen[(kind, key)] = where
        origins[f"{kind}s.{key}"] = doc.path
        target[key] = spec


def _cross_check(doc: Document, roles: set[str]) -> list[str]:
    """Names that must refer to something defined (roles in grants and masks; qualified tables),
    checked on every file that is valid YAML, so they are reported with the other errors."""
    errors = []
    if isinstance(doc.data.get("roles"), dict) and "*" in doc.data["roles"]:
        errors.append(
            f"{doc.where(('roles', '*'))}: roles.*: `*` means every role in grants and masks; give this role a name"
        )
    tables = doc.data.get("tables")
    for name, table in tables.items() if isinstance(tables, dict) else ():
        parts = split_name(str(name))
        if parts is None or len(parts) != 2:
            errors.append(
                f"{doc.where(('tables', name))}: tables.{name}: a table name must be "
                f"schema-qualified, like public.{str(name).split('.')[-1]}"
            )
        if not isinstance(table, dict):
            continue
        grants = table.get("grants")
        for role in grants if isinstance(grants, dict) else ():
            if role != "*" and role not in roles:
                errors.append(
                    f"{doc.where(('tables', name, 'grants', role))}: tables.{name}."
                    f"grants: role `{role}` is not defined under `roles`"
                    f"{suggest(str(role), sorted(roles))}"
                )
        masks = table.get("masks")
        for column, mask in masks.items() if isinstance(masks, dict) else ():
            mask_roles = mask.get("roles") if isinstance(mask, dict) else None
            for i, role in enumerate(mask_roles if isinstance(mask_roles, list) else ()):
                if role != "*" and role not in roles:
                    errors.append(
                        f"{doc.where(('tables', name, 'masks', column, 'roles', i))}: "
                        f"tables.{name}.masks.{column}: role `{role}` is not defined "
                        f"under `roles`{suggest(str(role), sorted(roles))}"
                    )
    return errors
