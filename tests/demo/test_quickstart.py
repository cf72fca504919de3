"""docs/quickstart.md: each `$ pgwarden`/`$ psql` line runnable against the demo prints what the page shows."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys

import pytest

from tests.harness import ROOT, free_port

PAGE = ROOT / "docs" / "quickstart.md"
SKIP = {
    "git clone": "needs the repository URL and the network",
    "cd ": "only changes the shell's directory",
    "make run": "the test starts the same demo with python -m proxy.app.demo on free ports",
    "pgwarden demo --port": "starts a second long-running demo",
    "pgwarden demo --database-url": "needs the reader's own PostgreSQL server",
    "pgwarden check --config pgwarden.yaml": "needs the reader's own config and database",
    "pgwarden run": "needs the reader's own config and database",
}
MODULES = {"demo": "proxy.app.demo", "init": "proxy.app.init_policy"}


def _commands() -> list[tuple[str, str]]:
    """(command, expected output) for each `$ ` line of the page's console blocks."""
    found = []
    for block in re.findall(r"```console\n(.*?)```", PAGE.read_text(), re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            found.append((command, output.strip()))
    return found


def _case(command: str, output: str):
    reason = next((why for start, why in SKIP.items() if command.startswith(start)), None)
    if reason is None and not command.startswith(("pgwarden ", "psql ")):
        reason = "not a pgwarden or psql command"
    marks = [pytest.mark.skip(reason=reason)] if reason else []
    return pytest.param(command, output, marks=marks, id=command[:70])


def _normal(text: str, port: int) -> str:
    text = text.replace(f"port={port}", "port=6432").replace(f":{port}/", ":6432/")
    text = re.sub(r"/tmp/pgwarden-demo-[^/]+/", "/tmp/pgwarden-demo-*/", text)
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


@pytest.fixture(scope="module")
def demo():
    port, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.app.demo", "--port", str(port), "--http-port", str(http_port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    while not (seen and seen[-1].startswith("(ready in")):
        line = proc.stdout.readline()
        if not line:
            pytest.fail("demo exited:\n" + "".join(seen))
        seen.append(line)
    banner = "".join(seen).replace(f"127.0.0.1:{http_port}/", "127.0.0.1:9187/")
    yield port, re.sub(r"ready in [\d.]+ s", "ready in 1.6 s", banner)
    proc.send_signal(signal.SIGINT)
    proc.wait(30)


def test_make_run_prints_the_banner_on_the_page(demo):
    port, banner = demo
    make_run = next(output for command, output in _commands() if command == "make run")
    assert _normal(banner, port) == _normal(make_run, port)


def test_the_page_has_runnable_commands():
    runnable = [c for c, _ in _commands() if c.startswith(("psql ", "pgwarden init"))]
    assert len(runnable) >= 7


@pytest.mark.parametrize("command,expected", [_case(c, o) for c, o in _commands()])
def test_quickstart_command(command, expected, demo):
    demo_port = demo[0]
    argv = shlex.split(command.replace("port=6432", f"port={demo_port}").replace(":6432/", f":{demo_port}/"))
    if argv[0] == "pgwarden":
        argv = [sys.executable, "-m", MODULES[argv[1]], *argv[2:]]
    result = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PGSSLMODE": "disable", "PATH": "/usr/bin:/bin"},
    )
    assert _normal(result.stdout + result.stderr, demo_port) == _normal(expected, demo_port)
