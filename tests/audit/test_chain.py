"""The HMAC chain: verify names edited, deleted, reordered and truncated records, across rotation and restarts."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.audit.sinks import rotated_files
from proxy.audit.trail import Audit, AuditConfig, AuditError, statement_record, verify_files
from tests.audit.trail import KEY_ENV, numbered, write_trail
from tests.harness import ROOT

KEY = b"k3y-for-tests"


@pytest.fixture
def trail(tmp_path, monkeypatch) -> list[Path]:
    """60 records over several rotated files (rotation every ~1 KiB, batches of 5)."""
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    path = tmp_path / "audit.jsonl"
    for start in range(0, 60, 5):  # each run is a restart: the chain must continue across it
        write_trail(path, numbered(5, start), rotate_bytes=1024, hmac_key_env=KEY_ENV)
    return [*rotated_files(path), path]


def lines_of(paths: list[Path]) -> list[tuple[Path, list[str]]]:
    return [(p, p.read_text().splitlines()) for p in paths]


def test_an_intact_trail_verifies_in_any_file_order(trail):
    assert len(trail) >= 4
    shuffled = random.Random(7).sample(trail, len(trail))
    result = verify_files(shuffled, KEY)
    assert result.ok and result.records == 60 and result.first_seq == 1
    seqs = [json.loads(line)["seq"] for _, lines in lines_of(trail) for line in lines]
    assert seqs == list(range(1, 61))  # numbered across restarts and rotations


def test_another_key_fails_at_the_first_record(trail):
    result = verify_files(trail, b"wrong")
    assert not result.ok and result.records == 0 and f"{trail[0]}:1" in result.first_problem


def damage(trail: list[Path], how: str) -> tuple[Path, int]:
    """Damage the second file's second record (or the last line); return where verify must point."""
    if how == "truncated":
        path = next(p for p in reversed(trail) if p.stat().st_size)
        text = path.read_text()
        path.write_text(text[: len(text) - 30])
        return path, len(text.splitlines())
    path = trail[1]
    lines = path.read_text().splitlines()
    if how == "edited":
        lines[1] = lines[1].replace('"acme"', '"globex"')
    elif how == "deleted":
        del lines[1]
    elif how == "reordered":
        lines[1], lines[2] = lines[2], lines[1]
    elif how == "resealed without key":  # recomputing the chain needs the key: without it, no match
        record = json.loads(lines[1])
        record["user"] = "mallory"
        lines[1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    return path, 2


@pytest.mark.parametrize("how", ["edited", "deleted", "reordered", "truncated", "resealed without key"])
def test_damage_is_named_by_file_and_line(trail, how):
    path, line = damage(trail, how)
    result = verify_files(trail, KEY)
    assert not result.ok
    assert result.first_problem.startswith(f"{path}:{line}:"), result.first_problem
    if how in ("deleted", "reordered"):
        assert "expected" in result.first_problem


def test_a_missing_rotated_file_is_named(trail):
    gone = trail.pop(1)
    first_missing = json.loads(gone.read_text().splitlines()[0])["seq"]
    result = verify_files(trail, KEY)
    assert not result.ok and f"records {first_missing} to" in result.first_problem
    assert result.first_problem.startswith(f"{trail[1]}:1:")


def test_later_files_alone_verify_from_their_first_record(trail):
    result = verify_files(trail[2:], KEY)
    assert result.ok and result.first_seq > 1 and result.records == 60 - result.first_seq + 1


def test_a_crash_cut_last_line_stays_evidence_and_the_chain_resumes_before_it(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    path = tmp_path / "audit.jsonl"
    write_trail(path, numbered(3), hmac_key_env=KEY_ENV)
    path.write_text(path.read_text()[:-25])  # the third record half-written
    write_trail(path, numbered(2, 3), hmac_key_env=KEY_ENV)
    lines = path.read_text().splitlines()
    assert [json.loads(x)["seq"] for x in lines[3:]] == [3, 4]  # resumed after the last whole record
    result = verify_files([path], KEY)
    assert not result.ok and result.first_problem.startswith(f"{path}:3:") and result.records == 2
    del lines[2]
    path.write_text("\n".join(lines) + "\n")
    assert verify_files([path], KEY).ok  # the rest of the chain is sound


def test_a_configured_but_unset_key_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(AuditError, match=KEY_ENV):
        write_trail(tmp_path / "a.jsonl", [], hmac_key_env=KEY_ENV)


def test_the_cli_verifies_and_names_the_break(trail):
    env = {**os.environ, "PGWARDEN_AUDIT_KEY": KEY.decode()}
    ok = subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", *map(str, trail)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "60 records" in ok.stdout, ok.stderr
    path, line = damage(trail, "edited")
    bad = subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", *map(str, trail)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and f"{path}:{line}" in bad.stderr


def test_rotation_by_age_happens_while_idle_and_keeps_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"

    async def body() -> None:
        audit = Audit(AuditConfig(path=path, rotate_seconds=0.3))
        await audit.start()
        for r in numbered(3):
            audit.offer(r)
        await asyncio.sleep(1.5)  # no traffic: the writer's idle tick rotates the old file
        assert len(rotated_files(path)) == 1
        for r in numbered(2, 3):
            audit.offer(r)
        await audit.stop()

    asyncio.run(body())
    files = [*rotated_files(path), path]
    assert [len(p.read_text().splitlines()) for p in files] == [3, 2]
    assert verify_files(files, None).records == 5


def test_text_with_undecodable_bytes_is_written_and_verifies(tmp_path):
    """A LATIN1 client's byte that is not UTF-8 arrives as a lone surrogate: the record is kept
    (ASCII-escaped) and the chain still verifies."""
    path = tmp_path / "audit.jsonl"
    write_trail(path, [statement_record(sql="select 1 -- caf\udce9", user="u", log_parameters=True), *numbered(2)])
    assert len(path.read_text().splitlines()) == 3 and "\\udce9" in path.read_text()
    assert verify_files([path], None).ok
