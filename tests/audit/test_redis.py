"""The Redis Stream sink, against a real Redis (tests.services provides one)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import redis

from proxy.audit.trail import Audit, AuditConfig, verify_files
from tests.audit.trail import numbered, write_trail
from tests.harness import REDIS_URL

pytestmark = pytest.mark.integration  # a real Redis


@pytest.fixture
def stream():
    name = f"pgwarden-test-audit-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS_URL)
    yield client, name
    client.delete(name)
    client.close()


def test_records_go_to_the_file_and_the_stream_alike(tmp_path, stream):
    client, name = stream
    path = tmp_path / "audit.jsonl"
    write_trail(path, numbered(30), redis_stream=name, redis_url=REDIS_URL)
    entries = client.xrange(name)
    assert [int(fields[b"seq"]) for _, fields in entries] == list(range(1, 31))
    from_stream = [fields[b"record"].decode() for _, fields in entries]
    assert from_stream == path.read_text().splitlines()
    assert all("secret-" not in line for line in from_stream)
    copy = tmp_path / "from-stream.jsonl"  # the stream alone verifies too
    copy.write_text("\n".join(from_stream) + "\n")
    assert verify_files([copy], None).records == 30


def test_an_unreachable_redis_blocks_statements_and_the_file_waits_for_it(tmp_path):
    async def body() -> None:
        audit = Audit(
            AuditConfig(
                path=tmp_path / "audit.jsonl",
                redis_stream="never",
                redis_url="redis://127.0.0.1:1/0",
                block_timeout=0.2,
            )
        )
        await audit.start()
        assert "127.0.0.1:1" in audit.stats["last_error"] and not audit.writable()
        assert audit.offer(numbered(1)[0]) is False
        await audit.stop()

    asyncio.run(body())
    assert (tmp_path / "audit.jsonl").read_text() == ""


def test_a_restart_continues_the_stream_where_the_file_stops(tmp_path, stream):
    client, name = stream
    path = tmp_path / "audit.jsonl"
    write_trail(path, numbered(4), redis_stream=name, redis_url=REDIS_URL)
    write_trail(path, numbered(3, 4), redis_stream=name, redis_url=REDIS_URL)
    seqs = [json.loads(fields[b"record"])["seq"] for _, fields in client.xrange(name)]
    assert seqs == list(range(1, 8))
