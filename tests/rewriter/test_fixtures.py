"""Every `.sql` fixture case: the rewriter's answer, and PostgreSQL accepting what it produces."""

from __future__ import annotations

import psycopg
import pytest

from rewriter import Allow, Deny, Rewrite, rewrite

from .fixtures import Case, all_cases
from .schema import session

CASES = all_cases()


def _answer(case: Case):
    return rewrite(case.sql, session(case.session))


@pytest.mark.parametrize("case", CASES, ids=[f"{c.path}:{c.name}" for c in CASES])
def test_fixture(case: Case) -> None:
    result = _answer(case)
    if case.expect == "allow":
        assert result == Allow(case.sql)
    elif case.expect == "deny":
        assert isinstance(result, Deny), result
        assert result.rule == case.rule and result.message and result.hint
    else:
        assert isinstance(result, Rewrite), result
        assert result.sql == case.expected_sql
        assert result.param_checks == case.params


def _run(conn: psycopg.Connection, sql: str, bind: tuple[str, ...]) -> None:
    """Run `sql` in a transaction that is rolled back; raise if PostgreSQL reports an error."""
    pg = conn.pgconn
    assert pg.exec_(b"BEGIN").status == psycopg.pq.ExecStatus.COMMAND_OK
    try:
        if sql.lstrip().upper().startswith("COPY"):
            with conn.cursor().copy(sql) as copy:
                for _ in copy:
                    pass
            return
        res = pg.exec_params(sql.encode(), [b.encode() for b in bind]) if bind else pg.exec_(sql.encode())
        assert res.status not in (psycopg.pq.ExecStatus.FATAL_ERROR, psycopg.pq.ExecStatus.BAD_RESPONSE), (
            res.error_message.decode()
        )
    finally:
        pg.exec_(b"ROLLBACK")


RUNNABLE = [c for c in CASES if c.run and c.expect in ("allow", "rewrite")]


@pytest.mark.parametrize("case", RUNNABLE, ids=[f"{c.path}:{c.name}" for c in RUNNABLE])
def test_fixture_output_runs_on_postgresql(case: Case, databases) -> None:
    result = _answer(case)
    assert not isinstance(result, Deny)
    _run(databases[0], result.sql, case.bind)
