"""Evaluating a loaded policy for an identity, and signed tenant tokens."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import evaluate
from policies.load import load_policy

POLICY = """
version: 1
tenancy:
  sources:
    - users: {acme_app: acme}
    - users: {acme_app: other, globex_app: globex}
    - setting: PGWarden.Tenant
      trusted_users: [saas]
    - signed_setting: pgwarden.tenant_token
      key_env: TENANT_KEY
roles:
  app: {users: [acme_app, globex_app, saas, both]}
  analyst: {users: [alice, both]}
  admin: {users: [root], bypass: true}
tables:
  public.customers:
    grants: {app: [select, insert], analyst: [select, update], admin: [select]}
    masks:
      ssn: {mask: redact, roles: [analyst, app]}
      phone: {mask: partial, keep_last: 4, roles: [analyst]}
      email: {mask: hash, salt_env: SALT, roles: ["*"]}
  public.countries:
    tenant_column: null
    grants: {"*": [select]}
"""


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "p.yaml"
    path.write_text(textwrap.dedent(POLICY))
    return load_policy(path)


def test_roles_and_grants_are_the_union_over_roles_and_star(policy):
    assert evaluate.roles_of(policy, "both") == {"app", "analyst"}
    assert evaluate.allowed_actions(policy, "both", "public.customers") == {"select", "insert", "update"}
    assert evaluate.allowed_actions(policy, "both", "public.countries") == {"select"}
    assert evaluate.allowed_actions(policy, "stranger", "public.customers") == frozenset()
    assert evaluate.allowed_actions(policy, "alice", "public.unlisted") == frozenset()


def test_masks_apply_for_any_role_and_star_but_never_to_bypass(policy):
    assert set(evaluate.masks_for(policy, "both", "public.customers")) == {"ssn", "phone", "email"}
    assert set(evaluate.masks_for(policy, "acme_app", "public.customers")) == {"ssn", "email"}
    assert set(evaluate.masks_for(policy, "stranger", "public.customers")) == {"email"}
    assert evaluate.masks_for(policy, "root", "public.customers") == {}
    assert evaluate.is_bypass(policy, "root") and not evaluate.is_bypass(policy, "both")
    hashed = evaluate.masks_for(policy, "alice", "public.customers")["email"]
    assert (hashed.kind, dict(hashed.options)) == ("hash", {"salt_env": "SALT"})


def test_tenant_sources(policy):
    assert evaluate.tenant_from_users(policy, "acme_app") == "acme"  # the first source wins
    assert evaluate.tenant_from_users(policy, "globex_app") == "globex"
    assert evaluate.tenant_from_users(policy, "saas") is None
    setting = evaluate.setting_source(policy)
    assert (setting.name, setting.trusted_users) == ("pgwarden.tenant", {"saas"})
    signed = evaluate.signed_setting_source(policy)
    assert (signed.name, signed.key_env) == ("pgwarden.tenant_token", "TENANT_KEY")
    assert evaluate.tables(policy) == {"public.customers": "tenant_id", "public.countries": None}


def test_the_policy_cannot_be_changed_after_loading(policy):
    with pytest.raises(TypeError):
        policy.tables["public.new"] = policy.tables["public.countries"]
    with pytest.raises(AttributeError):
        policy.mode = "monitor"


def test_sensitive_catalogs_are_qualified_and_agree_with_the_rewriter():
    from rewriter.resolve import SENSITIVE_CATALOGS

    assert {
        "pg_catalog.pg_stat_activity",
        "pg_catalog.pg_authid",
        "pg_catalog.pg_stats",
        "information_schema.user_mappings",
    } <= evaluate.SENSITIVE_CATALOG_RELATIONS
    assert {
        "pg_catalog.pg_prepared_statements",
        "pg_catalog.pg_cursors",
    } <= evaluate.SENSITIVE_CATALOG_RELATIONS  # per-backend state of other clients
    assert SENSITIVE_CATALOGS <= evaluate.SENSITIVE_CATALOG_RELATIONS


KEY = b"k" * 32


def test_tokens_good_tampered_expired_malformed():
    token = evaluate.make_tenant_token("acme.eu", 2000, KEY)
    assert evaluate.verify_tenant_token(token, KEY, 1999) == "acme.eu"
    with pytest.raises(evaluate.TokenError, match="expired"):
        evaluate.verify_tenant_token(token, KEY, 2000)
    forged = token.replace("acme.eu", "globex")
    with pytest.raises(evaluate.TokenError, match="bad signature"):
        evaluate.verify_tenant_token(forged, KEY, 0)
    longer = token.replace(".2000.", ".9999.")
    with pytest.raises(evaluate.TokenError, match="bad signature"):
        evaluate.verify_tenant_token(longer, KEY, 0)
    for bad in (
        "",
        "acme",
        "acme.2000",
        ".2000.sig",
        "acme.+2000.sig",
        "acme.2_000.sig",
        "acme.2000.",
        "acme.٢٠٠٠.sig",
    ):
        with pytest.raises(evaluate.TokenError, match="malformed"):
            evaluate.verify_tenant_token(bad, KEY, 0)
    with pytest.raises(evaluate.TokenError):
        evaluate.verify_tenant_token(token[:-1] + "é", KEY, 0)
    with pytest.raises(evaluate.TokenError, match="key"):
        evaluate.verify_tenant_token(evaluate.make_tenant_token("acme", 2000, b""), b"", 0)


@given(
    tenant=st.text(min_size=1, max_size=12).filter(lambda t: t.isprintable()),
    expiry=st.integers(0, 2**40),
    now=st.integers(0, 2**40),
    edit=st.tuples(st.integers(0, 200), st.text(max_size=3)),
)
def test_a_token_verifies_iff_untampered_and_unexpired(tenant, expiry, now, edit):
    token = evaluate.make_tenant_token(tenant, expiry, KEY)
    at, text = edit
    at %= len(token) + 1
    changed = token[:at] + text + token[at + len(text) :]
    try:
        got = evaluate.verify_tenant_token(changed, KEY, now)
    except evaluate.TokenError:
        assert changed != token or expiry <= now
    else:
        assert changed == token and expiry > now and got == tenant
