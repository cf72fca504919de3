"""Hypothesis strategies for the isolation oracle: legitimate queries over the shop (customers, orders, countries)."""

from __future__ import annotations

from hypothesis import strategies as st

# (alias, expression, kind) of what a FROM shape makes visible
CUSTOMER_COLS = [
    ("c.id", "int"),
    ("c.tenant_id", "text"),
    ("c.name", "text"),
    ("c.email", "text"),
    ("c.ssn", "text"),
    ("c.phone", "text"),
    ("c.born", "date"),
]
ORDER_COLS = [("o.id", "int"), ("o.tenant_id", "text"), ("o.customer_id", "int"), ("o.total", "num")]
COUNTRY_COLS = [("k.code", "text"), ("k.name", "text")]

FROMS = {
    "c": ("customers c", CUSTOMER_COLS),
    "o": ("orders o", ORDER_COLS),
    "k": ("countries k", COUNTRY_COLS),
    "c-sub": ("(select * from customers where id > 0) c", CUSTOMER_COLS),
    "c-only": ("only public.customers c", CUSTOMER_COLS),
    "co": ("customers c {join} orders o on o.customer_id = c.id", CUSTOMER_COLS + ORDER_COLS),
    "ck": ("customers c {join} countries k on k.code = split_part(c.email, '.', 2)", CUSTOMER_COLS + COUNTRY_COLS),
    "cok": (
        "customers c join orders o on o.customer_id = c.id {join} countries k on k.name = c.name",
        CUSTOMER_COLS + ORDER_COLS + COUNTRY_COLS,
    ),
    "c-lateral": (
        "customers c cross join lateral (select count(*) as n, sum(o.total) as s from orders o "
        "where o.customer_id = c.id) o",
        CUSTOMER_COLS + [("o.n", "int"), ("o.s", "num")],
    ),
    "cte": ("big c", CUSTOMER_COLS),
    "cte-shadow": ("customers c", CUSTOMER_COLS),
    "cte-recursive": ("customers c join r on r.n = c.id % 4", CUSTOMER_COLS + [("r.n", "int")]),
    "table": ("(table customers) c", CUSTOMER_COLS),
    "union-sub": (
        "(select * from customers where id < 9 union select * from customers where name < 'C') c",
        CUSTOMER_COLS,
    ),
}
PREFIXES = {
    "cte": "with big as (select c.* from customers c "
    "where exists (select 1 from orders o where o.customer_id = c.id)) ",
    "cte-shadow": "with customers as (select * from public.customers where id > 2) ",
    "cte-recursive": "with recursive r(n) as (select 0 union all select n + 1 from r where n < 3) ",
}
JOINS = ["join", "left join", "right join", "full join"]


def _atoms(cols: list[tuple[str, str]]) -> list[str]:
    atoms = ["true"]
    for expr, kind in cols:
        atoms.append(f"{expr} is null")
        if kind == "int":
            atoms += [f"{expr} > {n}" for n in (1, 4, 7)] + [f"{expr} in (1, 2, 5, 8)"]
        elif kind == "num":
            atoms += [f"{expr} > 60", f"{expr} between 10 and 200"]
        elif kind == "date":
            atoms += [f"{expr} > date '1985-01-01'"]
        else:
            atoms += [
                f"{expr} like 'A%'",
                f"{expr} = '****'",
                f"{expr} like '%1%'",
                f"{expr} = 'acme'",
                f"{expr} = 'globex'",
                f"upper({expr}) < 'M'",
            ]
    if any(e == "c.id" for e, _ in cols):
        atoms += [
            "exists (select 1 from orders o2 where o2.customer_id = c.id)",
            "c.id in (select customer_id from orders where total > 50)",
            "(select count(*) from orders o3 where o3.customer_id = c.id) > 1",
            "c.name in (select name from countries)",
        ]
    if any(e == "o.customer_id" for e, _ in cols):
        atoms += [
            "o.customer_id in (select id from customers where name like 'B%')",
            "o.total > (select avg(total) from orders)",
        ]
    return atoms


@st.composite
def predicate(draw, cols, depth: int = 0) -> str:
    if depth >= 2 or draw(st.booleans()):
        return draw(st.sampled_from(_atoms(cols)))
    op = draw(st.sampled_from(["and", "or", "not"]))
    left = draw(predicate(cols, depth + 1))
    if op == "not":
        return f"not ({left})"
    return f"({left} {op} {draw(predicate(cols, depth + 1))})"


def _scalar_exprs(cols) -> list[str]:
    out = []
    for expr, kind in cols:
        out.append(expr)
        if kind == "text":
            out += [f"upper({expr})", f"length({expr})", f"coalesce({expr}, 'none')", f"md5({expr})", f"{expr} || '!'"]
        elif kind in ("int", "num"):
            out += [f"{expr} * 2", f"case when {expr} > 5 then 'big' else 'small' end"]
        else:
            out += [f"extract(year from {expr})"]
    return out


@st.composite
def select_query(draw, allow_order: bool = True) -> str:
    shape = draw(st.sampled_from(sorted(FROMS)))
    source, cols = FROMS[shape]
    source = source.format(join=draw(st.sampled_from(JOINS)))
    prefix = PREFIXES.get(shape, "")
    where = draw(predicate(cols))
    exprs = _scalar_exprs(cols)
    kind = draw(st.sampled_from(["plain", "plain", "aggregate", "window", "distinct"]))
    if kind == "aggregate":
        groups = draw(st.lists(st.sampled_from([e for e, _ in cols]), max_size=2, unique=True))
        numeric = [e for e, k in cols if k in ("int", "num")] or ["1"]
        aggs = draw(
            st.lists(
                st.sampled_from(
                    [
                        "count(*)",
                        f"count(distinct {cols[0][0]})",
                        f"sum({draw(st.sampled_from(numeric))})",
                        f"max({draw(st.sampled_from(cols))[0]})",
                        f"min({draw(st.sampled_from(cols))[0]})",
                        f"string_agg({cols[0][0]}::text, ',' order by {cols[0][0]}::text)",
                        "bool_or(true)",
                    ]
                ),
                min_size=1,
                max_size=3,
                unique=True,
            )
        )
        outputs = groups + aggs
        select = ", ".join(outputs)
        tail = (" group by " + ", ".join(groups)) if groups else ""
        if groups and draw(st.booleans()):
            tail += " having count(*) >= 1"
        sql = f"{prefix}select {select} from {source} where {where}{tail}"
    else:
        items = draw(st.lists(st.sampled_from(exprs), min_size=1, max_size=4, unique=True))
        if kind == "window":
            key = cols[0][0]
            items.append(f"count(*) over (partition by {draw(st.sampled_from(cols))[0]})")
            items.append(f"rank() over (order by {key} nulls first)")
        distinct = "distinct " if kind == "distinct" else ""
        outputs = items
        sql = f"{prefix}select {distinct}{', '.join(items)} from {source} where {where}"
    if allow_order and draw(st.booleans()):
        # every output column: rows that tie are equal, so LIMIT keeps the same multiset in both databases
        sql += " order by " + ", ".join(str(i) for i in range(1, len(outputs) + 1))
        if draw(st.booleans()):
            sql += f" limit {draw(st.integers(0, 5))}"
    return sql


@st.composite
def text_column_query(draw) -> str:
    """A one-column text query, for set operations."""
    source = draw(st.sampled_from(["customers c", "countries c", "orders c"]))
    column = {
        "customers c": draw(st.sampled_from(["c.name", "c.ssn", "c.email", "c.tenant_id"])),
        "countries c": draw(st.sampled_from(["c.name", "c.code"])),
        "orders c": draw(st.sampled_from(["c.tenant_id", "c.total::text"])),
    }[source]
    cond = draw(st.sampled_from(["true", f"{column} like '%a%'", f"{column} is not null", f"{column} < 'M'"]))
    return f"select {column} as v from {source} where {cond}"


@st.composite
def queries(draw) -> str:
    form = draw(st.sampled_from(["select"] * 4 + ["setop", "subquery", "scalar"]))
    if form == "setop":
        op = draw(st.sampled_from(["union", "union all", "intersect", "intersect all", "except", "except all"]))
        return f"{draw(text_column_query())} {op} {draw(text_column_query())}"
    if form == "subquery":
        return f"select * from ({draw(select_query(False))}) as t"
    if form == "scalar":
        inner = draw(
            st.sampled_from(
                [
                    "select count(*) from orders o where o.customer_id = c.id",
                    "select max(total) from orders o where o.customer_id = c.id",
                    "select string_agg(o.id::text, ',' order by o.id) from orders o where o.customer_id = c.id",
                    "select k.code from countries k where k.name = c.name",
                ]
            )
        )
        return f"select c.id, c.ssn, ({inner}) from customers c where {draw(predicate(CUSTOMER_COLS))}"
    return draw(select_query())
