"""Strict YAML reading and error formatting, on a model that knows nothing of policies."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError

from policies.source import SourceError, format_errors, load_yaml, parse_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tls(_Strict):
    cert: str
    key: str | None = None


class Listen(_Strict):
    port: int = 6432
    tls: Tls | None = None


class Tcp(_Strict):
    kind: Literal["tcp"]
    keepalive: int = 0


class Unix(_Strict):
    kind: Literal["unix"]
    directory: str = "/tmp"


Target = Annotated[
    Annotated[Tcp, Tag("tcp")] | Annotated[Unix, Tag("unix")],
    Discriminator(lambda v: v.get("kind") if isinstance(v, dict) else v.kind),
]


class Config(_Strict):
    listen: Listen = Listen()
    targets: list[Target] = []
    names: dict[str, Listen] = {}


def errors_for(text: str, file: str | None = None) -> list[str]:
    doc = parse_yaml(text, "c.yaml")
    with pytest.raises(ValidationError) as info:
        Config.model_validate(doc.data)
    return format_errors(info.value, doc, file, model=Config)


def test_lines_of_keys_and_items_are_kept():
    doc = parse_yaml("listen:\n  port: 1\ntargets:\n  - kind: tcp\n  - {kind: unix}\n", "c.yaml")
    assert doc.data == {"listen": {"port": 1}, "targets": [{"kind": "tcp"}, {"kind": "unix"}]}
    assert doc.lines[("listen", "port")] == 2 and doc.lines[("targets", 1)] == 5
    assert doc.lines[("targets", 1, "kind")] == 5 and doc.line(("listen", "port", "nope")) == 2


def test_unknown_keys_suggest_the_model_field_at_that_place():
    errors = errors_for("listen:\n  prot: 1\n  tls:\n    cret: x\n")
    assert "c.yaml:2: listen.prot: unknown key `prot` (did you mean `port`?)" in errors
    assert "c.yaml:4: listen.tls.cret: unknown key `cret` (did you mean `cert`?)" in errors


def test_suggestions_follow_lists_dicts_and_tagged_unions():
    errors = errors_for("targets:\n  - kind: unix\n    directroy: /run\nnames:\n  a: {prt: 2}\n")
    assert "c.yaml:3: targets.0.directroy: unknown key `directroy` (did you mean `directory`?)" in errors
    assert "c.yaml:5: names.a.prt: unknown key `prt` (did you mean `port`?)" in errors


def test_far_off_keys_list_what_is_allowed_and_file_names_the_lines():
    errors = errors_for("listen:\n  zzz: 1\n", file="shown.yaml")
    assert errors == ["shown.yaml:2: listen.zzz: unknown key `zzz` (allowed: port, tls)"]


def test_wrong_values_say_what_to_write():
    errors = errors_for("listen:\n  port: many\n  tls: {}\ntargets:\n  - kind: udp\n")
    assert "c.yaml:2: listen.port: must be a whole number, not `many`" in errors
    assert "c.yaml:3: listen.tls.cert: this key is required: add it" in errors
    assert any(e.startswith("c.yaml:5: targets.0") for e in errors), errors


def test_duplicate_keys_name_both_lines():
    with pytest.raises(SourceError) as info:
        parse_yaml("listen:\n  port: 1\n  port: 2\n", "c.yaml")
    assert info.value.errors == ["c.yaml:3: listen.port: defined twice (first at line 2); keep one"]


def test_syntax_errors_name_the_line():
    with pytest.raises(SourceError) as info:
        parse_yaml("listen:\n  port: [1\nnext: 2\n", "c.yaml")
    assert len(info.value.errors) == 1 and "not valid YAML" in str(info.value)
    assert str(info.value).startswith("c.yaml:3:")


def test_merge_keys_and_recursive_aliases_are_refused():
    with pytest.raises(SourceError, match=r"c.yaml:3: listen: merge keys"):
        parse_yaml("base: &b {port: 1}\nlisten:\n  <<: *b\n", "c.yaml")
    with pytest.raises(SourceError, match="an alias refers to"):
        parse_yaml("a: &x [1, *x]\n", "c.yaml")


def test_an_unreadable_file_is_one_error(tmp_path):
    with pytest.raises(SourceError, match="cannot read it"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"a: \xe9\n")
    with pytest.raises(SourceError, match="cannot read it"):
        load_yaml(tmp_path / "latin1.yaml")


def test_yaml_typing_is_kept_and_an_empty_file_is_an_empty_mapping():
    doc = parse_yaml("a: 1\nb: true\nc: null\nd: '1'\n", "c.yaml")
    assert doc.data == {"a": 1, "b": True, "c": None, "d": "1"}
    assert parse_yaml("# nothing\n", "c.yaml").data == {}
