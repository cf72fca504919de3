"""The rewriter tests' schema: its DDL, sample rows for two tenants, and the session Contexts over it."""

from __future__ import annotations

from rewriter import Column, Context, MaskSpec, TableRule

ALL = frozenset({"select", "insert", "update", "delete"})

TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "public.customers": (
        ("id", "integer"),
        ("tenant_id", "text"),
        ("name", "text"),
        ("ssn", "text"),
        ("email", "character varying(100)"),
        ("phone", "text"),
        ("born", "date"),
        ("score", "numeric"),
    ),
    "public.orders": (
        ("id", "integer"),
        ("tenant_id", "text"),
        ("customer_id", "integer"),
        ("total", "numeric"),
        ("note", "text"),
    ),
    "public.items": (("id", "integer"), ("tenant_id", "text"), ("label", "text")),
    "public.countries": (("code", "text"), ("name", "text")),
    "public.notes": (("id", "integer"), ("body", "text"), ("token", "text")),
    "public.secrets": (("id", "integer"), ("s", "text")),
}

DDL = """
CREATE TABLE customers (id integer PRIMARY KEY, tenant_id text NOT NULL, name text, ssn text,
    email character varying(100), phone text, born date, score numeric);
CREATE TABLE orders (id integer PRIMARY KEY, tenant_id text NOT NULL, customer_id integer,
    total numeric, note text);
CREATE TABLE items (id serial PRIMARY KEY, tenant_id text NOT NULL DEFAULT 'nobody', label text);
CREATE TABLE countries (code text PRIMARY KEY, name text);
CREATE TABLE notes (id integer PRIMARY KEY, body text, token text);
CREATE TABLE secrets (id integer PRIMARY KEY, s text);
CREATE FUNCTION order_total(integer) RETURNS numeric LANGUAGE sql AS 'SELECT 42::numeric';
"""

ROWS = {
    "acme": """
INSERT INTO customers VALUES (1, 'acme', 'Ann', '111-11-1111', 'ann@acme.test', '555-0101', '1980-05-17', 10.4),
                             (2, 'acme', 'Bob', '222-22-2222', 'bob@acme.test', '555-0102', '1991-11-02', 3.6);
INSERT INTO orders VALUES (10, 'acme', 1, 100, 'first'), (11, 'acme', 2, 50, NULL), (12, 'acme', 1, 7.5, 'x');
""",
    "globex": """
INSERT INTO customers VALUES (3, 'globex', 'Gus', '333-33-3333', 'gus@globex.test', '555-0303', '1975-01-01', 99);
INSERT INTO orders VALUES (20, 'globex', 3, 1000, 'big'), (21, 'globex', 3, 1, 'small');
""",
    "shared": """
INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan');
INSERT INTO notes VALUES (1, 'hello', 'tok-1'), (2, 'bye', 'tok-2');
INSERT INTO secrets VALUES (1, 'launch codes');
""",
}

APP_MASKS = {"ssn": MaskSpec("redact")}
ALL_MASKS = {
    "ssn": MaskSpec("redact"),
    "email": MaskSpec("email"),
    "phone": MaskSpec("partial", (("keep_first", 0), ("keep_last", 4))),
    "born": MaskSpec("year"),
    "score": MaskSpec("round", (("digits", 0),)),
}


def schema() -> dict[str, tuple[Column, ...]]:
    return {name: tuple(Column(c, t) for c, t in cols) for name, cols in TABLES.items()}


def rules(masks: str = "app") -> dict[str, TableRule]:
    """Table rules with no masks ("none"), an app role's ("app": ssn redacted) or every kind ("all")."""
    customer_masks = {"none": {}, "app": APP_MASKS, "all": ALL_MASKS}[masks]
    return {
        "public.customers": TableRule("public.customers", "tenant_id", ALL, customer_masks),
        "public.orders": TableRule("public.orders", "tenant_id", ALL),
        "public.items": TableRule("public.items", "tenant_id", ALL),
        "public.countries": TableRule("public.countries", None, frozenset({"select"})),
        "public.notes": TableRule(
            "public.notes",
            None,
            frozenset({"select", "update"}),
            {"token": MaskSpec("hash", (("salt", "pepper"),))} if masks != "none" else {},
        ),
    }


def context(tenant: str | None = "acme", masks: str = "app") -> Context:
    """The fixtures' session: tenant acme, masks as an `app` role sees them."""
    return Context(rules(masks), schema(), tenant, frozenset({"public.order_total"}))


def session(name: str) -> Context:
    """The Context a fixture's `-- session:` line names ("" is the default)."""
    if name == "sharedwrites":  # countries granted every action
        ctx = context()
        tables = {**ctx.tables, "public.countries": TableRule("public.countries", None, ALL)}
        return Context(tables, ctx.schema, ctx.tenant, ctx.allowed_functions)
    return {
        "": context(),
        "notenant": context(None),
        "nomasks": context(masks="none"),
        "allmasks": context(masks="all"),
    }[name]
