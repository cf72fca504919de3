"""The layout's guardrails, read from the source with `ast`: no import cycles, no private imports, small modules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("proxy", "policies", "rewriter")
MAX_LINES = 500


@dataclass(frozen=True)
class Module:
    """One module of the tree: its dotted name, file, and whether it is a package's __init__."""

    name: str
    path: Path
    package: bool


@dataclass(frozen=True)
class Import:
    """One imported name as written: the importing module, the module it resolves to, the name, the line."""

    source: str
    target: str
    name: str
    line: int


def modules() -> dict[str, Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            found[name] = Module(name, path, is_package)
    return found


def imports(module: Module, known: dict[str, Module]) -> list[Import]:
    """Every import statement of a module, wherever it stands (functions, TYPE_CHECKING blocks
    included), resolved to the module of this tree it loads; imports from outside are dropped."""
    found = []
    here = module.name if module.package else module.name.rpartition(".")[0]
    for node in ast.walk(ast.parse(module.path.read_text(), str(module.path))):
        if isinstance(node, ast.Import):
            found += [Import(module.name, a.name, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append(Import(module.name, submodule if submodule in known else base, alias.name, node.lineno))
    resolved = []
    for imp in found:
        target = imp.target
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != module.name:
            resolved.append(Import(imp.source, target, imp.name, imp.line))
    return resolved


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for module in known.values():
        for imp in imports(module, known):
            graph[imp.source].add(imp.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_private_name_is_imported_from_another_module():
    known = modules()
    private = [
        f"{i.source}:{i.line} imports {i.name} from {i.target}"
        for m in known.values()
        for i in imports(m, known)
        if any(part.startswith("_") and not part.startswith("__") for part in i.name.split("."))
    ]
    assert private == []


def test_import_resolution():
    known = modules()
    found = {(i.target, i.name) for i in imports(known["proxy.ops.admin"], known)}
    assert ("proxy.ops.stats", "COLUMNS") in found and ("proxy.wire.protocol", "protocol") in found


def _line_counts() -> dict[str, int]:
    return {
        str(m.path.relative_to(ROOT)): len(m.path.read_text().splitlines())
        for m in sorted(modules().values(), key=lambda m: m.name)
    }


def test_modules_within_the_limit():
    over = {path: n for path, n in _line_counts().items() if n > MAX_LINES}
    assert over == {}


def test_loading_the_config_imports_no_network_or_parser_library():
    """`proxy.config.model` reads a YAML file: it must not pull in the data plane's libraries,
    nor any layer of proxy above the config."""
    heavy = ("redis", "asyncpg", "pglast", "prometheus_client", "uvloop")
    code = "import json, sys, proxy.config.model\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert [m for m in loaded if m.split(".")[0] in heavy] == []
    assert [m for m in loaded if m.startswith("proxy.") and not m.startswith("proxy.config")] == []
