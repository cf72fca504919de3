"""PGWARDEN__SECTION__KEY environment variables over a config file: set, validated, errors naming the variable."""

from __future__ import annotations

import pytest

from proxy.config.environment import overrides, value
from proxy.config.model import ConfigError, load_config

FILE = "listen: {host: 127.0.0.1, port: 6432}\nprimary: {host: filehost, port: 5432}\npool: {size: 5}\n"


def _load(tmp_path, monkeypatch, env: dict[str, str], text: str = FILE):
    for name, val in env.items():
        monkeypatch.setenv(name, val)
    path = tmp_path / "pgwarden.yaml"
    path.write_text(text)
    return load_config(path)


def test_variables_set_nested_keys_over_the_file(tmp_path, monkeypatch):
    config = _load(
        tmp_path,
        monkeypatch,
        {
            "PGWARDEN__PRIMARY__HOST": "db.internal",
            "PGWARDEN__PRIMARY__PORT": "5433",
            "PGWARDEN__POOL__MODE": "session",
            "PGWARDEN__BACKEND_AUTH__PASSWORD_ENV": "PG_PASS",
            "PGWARDEN__AUTH__USERS__APP__PASSWORD_ENV": "APP_PASSWORD",
            "PGWARDEN__ADMIN__USERS": "[ops, dba]",
        },
    )
    assert (config.primary.host, config.primary.port) == ("db.internal", 5433)
    assert config.pool.mode == "session" and config.pool.size == 5  # the file's other keys stay
    assert config.backend_auth.password_env == "PG_PASS"
    assert config.auth.users["app"].password_env == "APP_PASSWORD"
    assert config.admin.users == ["ops", "dba"]


def test_the_primary_may_come_from_the_environment_alone(tmp_path, monkeypatch):
    config = _load(tmp_path, monkeypatch, {"PGWARDEN__PRIMARY__HOST": "db"}, "listen: {port: 6432}\n")
    assert (config.primary.host, config.primary.port) == ("db", 5432)


@pytest.mark.parametrize(
    "env, fragment",
    [
        (
            {"PGWARDEN__PRIMARY__HOTS": "db"},
            "environment variable PGWARDEN__PRIMARY__HOTS: primary.hots: unknown key `hots` (did you mean `hosts`?)",
        ),
        (
            {"PGWARDEN__POOOL__SIZE": "3"},
            "environment variable PGWARDEN__POOOL__SIZE: poool: unknown key `poool` (did you mean `pool`?)",
        ),
        (
            {"PGWARDEN__POOL__SIZE": "many"},
            "environment variable PGWARDEN__POOL__SIZE: pool.size: must be a whole number, not `many`",
        ),
        (
            {"PGWARDEN__POOL__MODE": "sometimes"},
            "environment variable PGWARDEN__POOL__MODE: pool.mode: `sometimes` is not allowed",
        ),
        (
            {"PGWARDEN__PRIMARY__HOST__NAME": "db"},
            "environment variable PGWARDEN__PRIMARY__HOST__NAME: `primary.host` is a value, not a section",
        ),
        ({"PGWARDEN__PRIMARY____HOST": "db"}, "environment variable PGWARDEN__PRIMARY____HOST: an empty key"),
        (
            {"PGWARDEN__CACHE__TTL_S": "-1"},
            "environment variable PGWARDEN__CACHE__TTL_S: cache.ttl_s:",
        ),
        ({"pgwarden__primary__hots": "db"}, "environment variable pgwarden__primary__hots: primary.hots: unknown key"),
    ],
)
def test_a_bad_variable_is_refused_naming_the_variable(tmp_path, monkeypatch, env, fragment):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, monkeypatch, env)
    assert fragment in str(info.value)


def test_an_empty_primary_host_variable_counts_as_no_primary(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, monkeypatch, {"PGWARDEN__PRIMARY__HOST": ""})
    (line,) = info.value.errors
    assert line.startswith("environment variable PGWARDEN__PRIMARY__HOST: primary.host: no primary PostgreSQL")


def test_no_primary_in_file_nor_environment_is_one_error_saying_how_to_give_it(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, monkeypatch, {}, "listen: {host: 0.0.0.0}\n")
    (line,) = info.value.errors
    assert "primary.host: no primary PostgreSQL is given" in line and "PGWARDEN__PRIMARY__HOST" in line
    assert str(tmp_path / "pgwarden.yaml") in line


def test_other_errors_are_still_reported_beside_a_missing_primary(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, monkeypatch, {}, "pool: {size: 0}\n")
    assert len(info.value.errors) == 2 and "pool.size" in str(info.value)


def test_file_errors_keep_their_line_when_variables_are_set(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, monkeypatch, {"PGWARDEN__PRIMARY__PORT": "5433"}, FILE + "log: {levl: info}\n")
    assert f"{tmp_path / 'pgwarden.yaml'}:4: log.levl: unknown key" in str(info.value)


def test_only_the_double_underscore_prefix_is_read():
    found = overrides(
        {
            "PGWARDEN_BACKEND_PASSWORD": "x",
            "PGWARDEN_TEST_PG_PORT": "1",
            "PGWARDEN__PRIMARY__HOST": "db",
            "PATH": "/bin",
        }
    )
    assert [(o.variable, o.path, o.value) for o in found] == [("PGWARDEN__PRIMARY__HOST", ("primary", "host"), "db")]


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("db", "db"),
        ("5433", "5433"),
        ("no", "no"),
        ("", ""),
        ("[a, b]", ["a", "b"]),
        ("{host: db}", {"host": "db"}),
        ("[unclosed", "[unclosed"),
    ],
)
def test_values_are_text_unless_a_flow_list_or_mapping(text, parsed):
    assert value(text) == parsed


def test_a_missing_primary_is_not_blamed_on_another_variable_of_its_section(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, monkeypatch, {"PGWARDEN__PRIMARY__PORT": "5433"}, "listen: {port: 6432}\n")
    (line,) = info.value.errors
    assert line.startswith(f"{tmp_path / 'pgwarden.yaml'}:1: primary.host: no primary PostgreSQL")
