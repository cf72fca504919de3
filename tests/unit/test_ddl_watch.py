"""Which statements a bypass role sends make pgwarden read the schema again."""

from __future__ import annotations

import pytest

from proxy.session.session_sql import sends_ddl
from proxy.wire import protocol


@pytest.mark.parametrize("pad", range(256))
def test_ddl_is_seen_whatever_the_message_length(pad):
    """The byte before the text is the length's low byte: a letter there must not hide `create`."""
    sql = "create function public.lower(varchar) returns text language sql as $$ select 'S' $$" + " " * pad
    assert sends_ddl(protocol.query(sql))
    assert sends_ddl(protocol.parse("s1", sql))


@pytest.mark.parametrize(
    "sql", ["select 1", "insert into creates values (1)", "select dropped from t", "update t set altered = true"]
)
def test_plain_statements_are_not_ddl(sql):
    assert not sends_ddl(protocol.query(sql))


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE t ADD c int",
        "drop function f",
        "COMMENT ON TABLE t IS 'x'",
        "select 1; create operator === (function = f, leftarg = int, rightarg = int)",
    ],
)
def test_ddl_anywhere_in_the_text(sql):
    assert sends_ddl(protocol.query(sql))
