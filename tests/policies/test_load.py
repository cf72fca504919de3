"""Policy loading: every error a security team can make is reported with file, line and a sentence."""

from __future__ import annotations

import textwrap
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import evaluate
from policies.load import load_policy
from policies.schema import json_schema
from policies.source import SourceError

GOOD = """
version: 1
tenancy:
  column: tenant_id
  sources:
    - users: {acme_app: acme}
    - setting: pgwarden.tenant
      trusted_users: [saas]
roles:
  app: {users: [acme_app, saas]}
  analyst: {users: [alice]}
  admin: {users: [postgres], bypass: true}
tables:
  public.customers:
    grants: {app: [select, insert], analyst: [select]}
    masks:
      ssn: {mask: redact, roles: [analyst, app]}
      phone: {mask: partial, keep_last: 4, roles: [analyst]}
  Public.Countries:
    tenant_column: null
    grants: {"*": [select]}
functions:
  allow: [public.order_total]
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def errors_of(path) -> list[str]:
    with pytest.raises(SourceError) as info:
        load_policy(path)
    return info.value.errors


def test_a_good_policy_evaluates_per_identity(tmp_path):
    policy = load_policy(write(tmp_path, "p.yaml", GOOD))
    assert evaluate.roles_of(policy, "acme_app") == {"app"}
    assert evaluate.is_bypass(policy, "postgres") and not evaluate.is_bypass(policy, "alice")
    assert evaluate.allowed_actions(policy, "acme_app", "public.customers") == {"select", "insert"}
    assert evaluate.allowed_actions(policy, "nobody", "public.countries") == {"select"}
    assert evaluate.allowed_actions(policy, "nobody", "public.customers") == frozenset()
    assert set(evaluate.masks_for(policy, "alice", "public.customers")) == {"ssn", "phone"}
    assert evaluate.masks_for(policy, "alice", "public.customers")["phone"].options == {"keep_first": 0, "keep_last": 4}
    assert set(evaluate.masks_for(policy, "acme_app", "public.customers")) == {"ssn"}
    assert evaluate.masks_for(policy, "postgres", "public.customers") == {}
    assert evaluate.tables(policy) == {"public.customers": "tenant_id", "public.countries": None}
    assert evaluate.tenant_from_users(policy, "acme_app") == "acme"
    assert evaluate.allowed_functions(policy) == {"public.order_total"}


@pytest.mark.parametrize(
    "bad, line, fragment",
    [
        ("version: 2\n", 1, "version: `2` is not allowed here; write 1"),
        ("version: 1\nroles:\n  app: {users: [a], bypas: true}\n", 3, "unknown key `bypas` (did you mean `bypass`?)"),
        ("version: 1\ntables:\n  public.t:\n    grants: {ghost: [select]}\n", 4, "role `ghost` is not defined"),
        (
            "version: 1\nroles: {app: {}}\ntables:\n  public.t:\n    grants: {app: [selct]}\n",
            5,
            "tables.public.t.grants.app.0",
        ),
        (
            "version: 1\nroles: {app: {}}\ntables:\n  public.t:\n    masks:\n      c: {mask: blur, roles: [app]}\n",
            6,
            "unknown mask kind",
        ),
        (
            "version: 1\nroles: {app: {}}\ntables:\n  public.t:\n    masks:\n      c: {mask: email, keep_last: 2, roles: [app]}\n",
            6,
            "unknown key `keep_last` (allowed: mask, roles)",
        ),
        (
            "version: 1\nroles: {app: {}}\ntables:\n  public.t:\n    masks:\n      c: {mask: partial, keep_lst: 2, roles: [app]}\n",
            6,
            "did you mean `keep_last`",
        ),
        (
            "version: 1\nroles: {app: {}}\ntables:\n  t:\n    grants: {app: [select]}\n",
            4,
            "must be schema-qualified, like public.t",
        ),
        ("version: 1\ndefault: allow\n", 2, "default: `allow` is not allowed here; write 'deny'"),
        ("version: 1\nroles:\n  app: {}\n  app: {}\n", 4, "defined twice (first at line 3)"),
        ("version: 1\nroles:\n  app: {users: [a}\n", 3, "not valid YAML"),
        ("version: 1\ntenancy:\n  sources:\n    - {setting: x, trusted: [a]}\n", 4, "did you mean `trusted_users`"),
    ],
)
def test_each_error_names_file_line_and_what_to_change(tmp_path, bad, line, fragment):
    path = write(tmp_path, "bad.yaml", bad)
    errors = errors_of(path)
    assert any(e.startswith(f"{path}:{line}:") and fragment in e for e in errors), errors


def test_a_folder_merges_and_a_duplicate_names_both_files(tmp_path):
    write(tmp_path, "a.yaml", "version: 1\nroles: {app: {users: [u]}}\nmode: monitor\n")
    write(tmp_path, "b.yaml", "version: 1\ntables:\n  public.t: {grants: {app: [select]}}\nmode: enforce\n")
    policy = load_policy(tmp_path)
    assert policy.mode == "enforce" and set(policy.tables) == {"public.t"}
    write(tmp_path, "c.yaml", "version: 1\nroles:\n  app: {users: [v]}\n")
    errors = errors_of(tmp_path)
    assert any(f"{tmp_path / 'c.yaml'}:3" in e and f"{tmp_path / 'a.yaml'}:2" in e for e in errors), errors


def test_a_folder_in_monitor_mode_everywhere_is_monitor(tmp_path):
    write(tmp_path, "a.yaml", "version: 1\nmode: monitor\n")
    assert load_policy(tmp_path).mode == "monitor"


def test_version_changes_with_content(tmp_path):
    path = write(tmp_path, "p.yaml", GOOD)
    first = load_policy(path).version
    path.write_text(path.read_text() + "\nmode: monitor\n")
    assert load_policy(path).version != first


def test_json_schema_describes_the_format():
    schema = json_schema()
    assert schema["title"].startswith("pgwarden policy") and "tables" in schema["properties"]


KEY = b"k" * 32


@given(
    st.text(alphabet=st.characters(blacklist_characters=".", blacklist_categories=("Cs",)), min_size=1, max_size=20),
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=60),
)
def test_token_verifies_iff_untampered_and_unexpired(tenant, expiry, flip):
    token = evaluate.make_tenant_token(tenant, expiry, KEY)
    if expiry > 1000:
        assert evaluate.verify_tenant_token(token, KEY, 1000) == tenant
    else:
        with pytest.raises(evaluate.TokenError, match="expired"):
            evaluate.verify_tenant_token(token, KEY, 1000)
    i = flip % len(token)
    tampered = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
    with pytest.raises(evaluate.TokenError):
        evaluate.verify_tenant_token(tampered, KEY, 0 if expiry > 0 else -1)


def test_token_errors_say_what_is_wrong():
    with pytest.raises(evaluate.TokenError, match="malformed"):
        evaluate.verify_tenant_token("no-dots", KEY, time.time())
    good = evaluate.make_tenant_token("acme", int(time.time()) + 60, KEY)
    with pytest.raises(evaluate.TokenError, match="bad signature"):
        evaluate.verify_tenant_token(good, b"other key", time.time())
