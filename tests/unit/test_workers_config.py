"""`workers`: the config key, each worker's share of the pools, and cancel keys that name their worker."""

import os
from pathlib import Path

import pytest

from proxy.app.workers import WorkerLink, share
from proxy.config.model import ConfigError, machine_cores, parse_config


def _config(**data):
    return parse_config({"primary": {"host": "db"}, **data}, Path("/tmp/pgwarden.yaml"))


def test_workers_default_to_the_cores_at_most_pool_size():
    assert _config().workers is None
    assert 1 <= machine_cores() <= (os.cpu_count() or 1)
    assert _config().worker_count() == min(machine_cores(), 20)
    assert _config(pool={"size": 1}).worker_count() == 1
    assert _config(workers=1).worker_count() == 1


def test_more_workers_than_pool_size_is_refused_clearly():
    with pytest.raises(ConfigError, match=r"workers \(4\) cannot exceed pool.size \(3\)"):
        _config(workers=4, pool={"size": 3})


def test_the_pool_cap_is_split_so_the_shares_add_up_to_it():
    for total in (2, 5, 7, 20):
        for count in (1, 2, 3):
            parts = [share(total, i, count) for i in range(count)]
            assert sum(parts) == total and max(parts) - min(parts) <= 1


def test_each_worker_gets_its_share_of_size_and_min_idle(tmp_path):
    config = _config(workers=2, pool={"size": 5, "min_idle": 1})
    first, second = (WorkerLink(i, 2, tmp_path, os.getpid()).shaped(config).pool for i in (0, 1))
    assert (first.size, second.size) == (3, 2)
    assert (first.min_idle, second.min_idle) == (1, 0)
    with pytest.raises(ValueError, match="below the 3 running workers"):
        WorkerLink(0, 3, tmp_path, os.getpid()).shaped(_config(workers=2, pool={"size": 2}))


def test_a_cancel_key_names_the_worker_that_issued_it(tmp_path):
    for count in (1, 2, 3, 7):
        for index in range(count):
            link = WorkerLink(index, count, tmp_path, os.getpid())
            for _ in range(200):
                pid = link.new_pid()
                assert 1 <= pid < 2**31 - 1 and link.owner(pid) == index


def test_the_audit_trail_keeps_one_process_for_now():
    audited = {"audit": {"path": "audit.jsonl", "hmac_key_env": "K"}}
    assert _config(**audited).worker_count() == 1
    with pytest.raises(ConfigError, match="with `audit` is not available yet"):
        _config(workers=2, **audited)
