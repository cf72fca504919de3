"""The config model: defaults, validation, and the generated reference in docs/configuration.md."""

from pathlib import Path

import pytest

from proxy.app.configdoc import reference
from proxy.config.model import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_docs_reference_is_generated_from_the_model():
    text = (ROOT / "docs/configuration.md").read_text()
    assert reference() in text, "run: python -m proxy.app.configdoc docs/configuration.md"


def test_example_config_is_valid():
    config = load_config(ROOT / "config/pgwarden.yaml")
    assert config.pool.mode == "transaction" and config.listen.port == 6432


def test_paths_are_relative_to_the_config_file(tmp_path):
    config = parse_config(
        {"listen": {"tls": {"mode": "allow", "cert": "c.pem", "key": "k.pem"}}, "primary": {"host": "db"}},
        tmp_path / "pgwarden.yaml",
    )
    assert config.listen.tls.cert == tmp_path.resolve() / "c.pem"


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"pool": {"size": 0}}, "pool.size"),
        ({"pool": {"min_idle": 5, "size": 2}}, "min_idle (5) cannot exceed size (2)"),
        ({"auth": {"users": {"a": {}}}}, "exactly one of"),
        ({"auth": {"users": {"a": {"password": "x", "password_env": "Y"}}}}, "exactly one of"),
        ({"listen": {"tls": {"mode": "require"}}}, "needs both `cert` and `key`"),
        ({"primary": {"tls": {"mode": "verify-full"}}}, "needs a `ca` file"),
        ({"replicas": [{"host": "r1", "weight": 0}]}, "replicas.0.weight"),
        ({"replicas": [{"hst": "r1"}]}, "replicas.0"),
        ({"cache": {"tables": ["orders"]}}, "must be schema.table"),
        ({"cache": {"tables": ["pg_catalog.pg_class"]}}, "catalogs are never cached"),
        ({"cache": {}, "workers": 2}, "needs cache.redis"),
        ({"poool": {}}, "did you mean `pool`"),
    ],
)
def test_invalid_configs_are_refused_with_a_sentence(tmp_path, data, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path / "c.yaml")
    assert fragment in str(info.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("listen:\n  port: 1\n bad indent: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}:3" in str(info.value) and "not valid YAML" in str(info.value)


def test_the_cache_and_the_audit_trail_go_together_in_one_worker(tmp_path):
    both = {"primary": {"host": "db"}, "cache": {}, "audit": {"path": "a.log"}}
    config = parse_config(both, tmp_path / "c.yaml")
    assert config.cache is not None and config.audit is not None and config.worker_count() == 1
    with pytest.raises(ConfigError, match="with `audit` is not available yet"):
        parse_config({**both, "workers": 2, "cache": {"redis": "redis://r/0"}}, tmp_path / "c.yaml")


def test_replicas_run_one_worker_unless_watermarks_are_shared(tmp_path):
    base = {"primary": {"host": "db"}, "replicas": [{"host": "r1"}]}
    assert parse_config(base, tmp_path / "c.yaml").worker_count() == 1
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "workers": 2}, tmp_path / "c.yaml")
    assert "needs routing.redis" in str(info.value)
    shared = parse_config({**base, "workers": 2, "routing": {"redis": "redis://r/0"}}, tmp_path / "c.yaml")
    assert shared.worker_count() == 2
