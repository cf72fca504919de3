"""Statement shapes: literals out and back in, exactly, so a shape's rewrite serves every text of it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.enforce.shapes import restore, shape


def test_shape_and_restore_round_trip():
    sql = "select * from t where a = 'it''s' and b > 2.5 and c = $1 limit 10"
    text, base, literals = shape(sql)
    assert base == 1001 and literals == ["'it''s'", "2.5", "10"]
    assert "'" not in text and "$1 " in text
    assert restore(text, base, literals) == sql


def test_typed_and_escaped_literals_stay_in_the_text():
    text, _, literals = shape("select E'a\\nb', interval '1 day', 3")
    assert "E'a\\nb'" in text and literals == ["'1 day'", "3"]


def test_restore_refuses_an_unknown_placeholder():
    assert restore("select $1005", 1001, ["1"]) is None


def test_a_rewritten_shape_restores_each_text_of_it_in_any_order_of_its_parameters():
    """The rewrite may repeat or reorder the parameters; the text is scanned once (a template)."""
    text = "select $1002, $1001 from t where tenant_id = 'acme' and x = $1002 and y = $1"
    for literals in (["'a'", "7"], ["'b''c'", "81"]):
        restored = restore(text, 1001, literals)
        assert (
            restored
            == f"select {literals[1]}, {literals[0]} from t where tenant_id = 'acme' and x = {literals[1]} and y = $1"
        )
    assert restore(text, 1001, ["'a'"]) is None


@given(
    st.lists(
        st.one_of(
            st.integers(0, 10**6).map(str),
            st.text(alphabet="abc' %_", max_size=8).map(lambda s: "'" + s.replace("'", "''") + "'"),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_literals_come_back_exactly(values):
    sql = "select " + ", ".join(values) + " from t"
    text, base, literals = shape(sql)
    assert restore(text, base, literals) == sql
