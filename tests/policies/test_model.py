"""The policy format's rules: each mask kind's options, names folded like SQL, all errors at once."""

from __future__ import annotations

import pytest

from policies.load import load_policy
from policies.source import SourceError

HEAD = "version: 1\nroles: {app: {users: [u]}}\ntables:\n  public.t:\n    masks:\n"
OPTIONS = {
    "redact": {},
    "null": {},
    "email": {},
    "partial": {"keep_first": 1, "keep_last": 2},
    "hash": {"salt_env": "SALT"},
    "year": {},
    "round": {"digits": 2},
    "constant": {"value": "x"},
}
ALL_OPTIONS = {k for opts in OPTIONS.values() for k in opts}


def errors_of(path) -> list[str]:
    with pytest.raises(SourceError) as info:
        load_policy(path)
    return info.value.errors


def mask_file(tmp_path, kind: str, options: dict):
    text = ", ".join(f"{k}: {v}" for k, v in {"mask": kind, **options, "roles": "[app]"}.items())
    path = tmp_path / "m.yaml"
    path.write_text(HEAD + f"      c: {{{text}}}\n")
    return path


@pytest.mark.parametrize("kind", sorted(OPTIONS))
def test_each_mask_kind_takes_its_own_options_and_no_other(tmp_path, kind):
    policy = load_policy(mask_file(tmp_path, kind, OPTIONS[kind]))
    assert policy.tables["public.t"].masks["c"].mask == kind
    for other in sorted(ALL_OPTIONS - set(OPTIONS[kind])):
        errors = errors_of(mask_file(tmp_path, kind, {other: 1}))
        assert any(
            e.startswith(f"{tmp_path / 'm.yaml'}:6: tables.public.t.masks.c.{other}: unknown key `{other}`")
            for e in errors
        ), errors


def test_names_fold_like_sql(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        'version: 1\nroles: {app: {}}\ntables:\n  Public."Orders":\n'
        "    tenant_column: Org_ID\n    masks:\n      Email: {mask: email, roles: [app]}\n"
        '      \'"Phone"\': {mask: "null", roles: [app]}\nfunctions:\n  allow: [Public.Total]\n'
    )
    policy = load_policy(path)
    assert set(policy.tables) == {"public.Orders"} and policy.tenant_column("public.Orders") == "org_id"
    assert set(policy.tables["public.Orders"].masks) == {"email", "Phone"}
    assert policy.functions == {"public.total"}


@pytest.mark.parametrize(
    "body, line, fragment",
    [
        (
            "masks:\n      SSN: {mask: redact, roles: [app]}\n      ssn: {mask: redact, roles: [app]}\n",
            5,
            "`SSN` and `ssn` are the same column",
        ),
        ("masks:\n      bad col: {mask: redact, roles: [app]}\n", 6, "is not a column name"),
        ("tenant_column: ''\n", 5, "is not a column name"),
        (
            "masks:\n      c: {mask: redact, roles: [app, ghost]}\n",
            6,
            "tables.public.t.masks.c: role `ghost` is not defined under `roles`",
        ),
        ("masks:\n      c: {mask: redact}\n", 6, "masks.c.roles: this key is required: add it"),
        ("masks:\n      c: {mask: partial, keep_last: -1, roles: [app]}\n", 6, "must be 0 or more, not -1"),
        ("grants: {app: [select, truncate]}\n", 5, "grants.app.1: `truncate` is not allowed here; write"),
    ],
)
def test_table_errors(tmp_path, body, line, fragment):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nroles: {app: {}}\ntables:\n  public.t:\n    " + body)
    errors = errors_of(path)
    assert any(e.startswith(f"{path}:{line}:") and fragment in e for e in errors), errors


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("roles: {app: {}}\n", 1, "version: this key is required: add it"),
        (
            "version: 1\nfunctions:\n  allow:\n    - order_total\n",
            4,
            "functions.allow.0: a function name must be schema-qualified, like public.order_total",
        ),
        ("version: 1\nroles:\n  '*': {users: [u]}\n", 3, "`*` means every role"),
        ("version: 1\nmode: audit\n", 2, "mode: `audit` is not allowed here; write 'enforce' or 'monitor'"),
        ("version: 1\ntenancy:\n  sources:\n    - {token: x}\n", 4, "a tenant source needs one of"),
        ("- version: 1\n", 1, "a policy file is a mapping"),
        ("version: 1\nroles:\n  app: {users: [a]}\nroles: {}\n", 4, "roles: defined twice (first at line 2)"),
        ("version: 1\nrolse: {}\n", 2, "unknown key `rolse` (did you mean `roles`?)"),
    ],
)
def test_file_errors(tmp_path, text, line, fragment):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    errors = errors_of(path)
    assert any(e.startswith(f"{path}:{line}:") and fragment in e for e in errors), errors


def test_every_error_of_every_file_is_reported_at_once_in_line_order(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "version: 1\nroles: {app: {}}\ntables:\n  t: {grants: {ghost: [select]}}\nmode: later\n"
    )
    (tmp_path / "b.yaml").write_text("version: 1\nroles:\n  app: {users: [a}\n")
    (tmp_path / "c.yaml").write_text("version: 2\nroles: {x: {bypas: true}}\n")
    errors = errors_of(tmp_path)
    a, b, c = (str(tmp_path / n) for n in ("a.yaml", "b.yaml", "c.yaml"))
    assert [e.split(": ")[0] for e in errors] == [f"{a}:4", f"{a}:4", f"{a}:5", f"{b}:3", f"{c}:1", f"{c}:2"]


def test_a_missing_path_or_empty_folder_is_one_error(tmp_path):
    assert errors_of(tmp_path) == [f"{tmp_path}: no *.yaml policy files in this folder"]
    assert errors_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: no such policy file or folder"]


def test_a_hash_mask_needs_a_salt(tmp_path):
    errors = errors_of(mask_file(tmp_path, "hash", {}))
    assert any(
        e.startswith(f"{tmp_path / 'm.yaml'}:6: tables.public.t.masks.c.salt_env: this key is required") for e in errors
    ), errors


def test_files_merge_and_disagreeing_tenancy_names_both_files(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "version: 1\ntenancy: {column: org}\nroles: {app: {}}\nfunctions: {allow: [public.f]}\nmode: monitor\n"
    )
    (tmp_path / "b.yaml").write_text(
        "version: 1\ntables:\n  public.t: {grants: {app: [select]}}\nfunctions: {allow: [public.g]}\nmode: monitor\n"
    )
    policy = load_policy(tmp_path)
    assert (policy.mode, policy.tenant_column("public.t")) == ("monitor", "org")
    assert policy.functions == {"public.f", "public.g"} and policy.files == (tmp_path / "a.yaml", tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("version: 1\ntenancy: {column: tenant}\n")
    errors = errors_of(tmp_path)
    assert errors == [
        f"{tmp_path / 'c.yaml'}:2: tenancy: already defined at {tmp_path / 'a.yaml'}:2; define it in one file only"
    ]
