"""ORMs run as a tenant through pgwarden with masks on: every query they emit is accepted, results right."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy import ForeignKey, Numeric, String, create_engine, delete, func, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, joinedload, mapped_column, relationship, selectinload

from tests.harness import PG_PORT, ROOT
from tests.policy.conftest import DB, reset_data

DIRECT = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname={DB}"


class Base(DeclarativeBase):
    pass


class Customer(Base):
    """The tenant column is deliberately not mapped: pgwarden fills it in."""

    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String)
    email: Mapped[str | None]
    ssn: Mapped[str | None]
    orders: Mapped[list[Order]] = relationship(back_populates="customer")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    customer: Mapped[Customer] = relationship(back_populates="orders")


def _refusals(proxy, offset: int) -> list[str]:
    return [line for line in proxy.logs()[offset:].splitlines() if "refused for user=acme_app" in line]


def _direct(sql: str) -> list[tuple]:
    with psycopg.connect(DIRECT) as conn:
        return conn.execute(sql).fetchall()


def test_sqlalchemy_as_a_tenant(guarded):
    reset_data()
    offset = len(guarded.logs())
    engine = create_engine(f"postgresql+psycopg://acme_app@127.0.0.1:{guarded.port}/{DB}?sslmode=disable")
    try:
        with Session(engine) as session:
            customers = session.scalars(
                select(Customer).options(selectinload(Customer.orders)).order_by(Customer.id)
            ).all()
            assert [(c.id, c.name, c.ssn) for c in customers] == [(1, "Ann", "****"), (2, "Bob", "****")]
            assert [[o.total for o in c.orders] for c in customers] == [[Decimal("100.00")], [Decimal("50.50")]]
            joined = session.scalars(select(Order).options(joinedload(Order.customer)).order_by(Order.id)).all()
            assert [(o.id, o.customer.name, o.customer.ssn) for o in joined] == [
                (10, "Ann", "****"),
                (11, "Bob", "****"),
            ]
            rows = session.execute(
                select(Customer.name, func.count(Order.id), func.sum(Order.total))
                .join(Order, Order.customer_id == Customer.id, isouter=True)
                .group_by(Customer.name)
                .order_by(Customer.name)
            ).all()
            assert [tuple(r) for r in rows] == [("Ann", 1, Decimal("100.00")), ("Bob", 1, Decimal("50.50"))]
            assert session.scalar(select(func.count()).select_from(Customer).where(Customer.ssn.like("1%"))) == 0
            assert session.get(Customer, 3) is None  # globex's row does not exist for acme
            session.add(Customer(id=41, name="Cy", email="cy@acme.io", ssn="999-99-9999"))
            session.add(Order(id=40, customer_id=41, total=Decimal("3.00")))
            session.commit()
            assert session.get(Customer, 41).ssn == "****"  # reloaded after the commit: masked
            session.commit()
            with session.begin():
                nested = session.begin_nested()
                session.add(Order(id=42, customer_id=2, total=Decimal("1.00")))
                session.flush()
                nested.rollback()
                session.get(Order, 40).total = Decimal("4.00")
                assert session.execute(update(Order).values(total=Order.total)).rowcount == 3  # acme's only
            session.delete(session.get(Order, 40))
            session.commit()
            assert session.execute(delete(Customer).where(Customer.id == 41)).rowcount == 1
            session.commit()
    finally:
        engine.dispose()
    assert _refusals(guarded, offset) == []
    # what PostgreSQL held after each write: the tenant filled in, nothing of globex touched
    assert _direct("select count(*) from orders where id in (40, 42)") == [(0,)]
    assert _direct("select id, tenant_id, total from orders order by id") == [
        (10, "acme", Decimal("100.00")),
        (11, "acme", Decimal("50.50")),
        (12, "globex", Decimal("999.99")),
    ]


def test_sqlalchemy_inserts_get_the_tenant_and_keep_the_real_value(guarded):
    reset_data()
    engine = create_engine(f"postgresql+psycopg://acme_app@127.0.0.1:{guarded.port}/{DB}?sslmode=disable")
    try:
        with Session(engine) as session, session.begin():
            session.add(Customer(id=43, name="Di", email="di@acme.io", ssn="444-44-4444"))
    finally:
        engine.dispose()
    assert _direct("select tenant_id, ssn from customers where id = 43") == [("acme", "444-44-4444")]
    reset_data()


@pytest.fixture(scope="module")
def django_run(guarded):
    reset_data()
    offset = len(guarded.logs())
    out = subprocess.run(
        [sys.executable, "-m", "tests.policy.orm_django", str(guarded.port), DB],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    state = (
        _direct("select id, tenant_id, name from customers order by id"),
        _direct("select id, tenant_id, total from orders order by id"),
    )
    yield json.loads(out.stdout.strip().splitlines()[-1]), _refusals(guarded, offset), state
    reset_data()


def test_django_reads_as_a_tenant(django_run):
    seen, refused, _ = django_run
    assert refused == []
    assert seen["customers"] == [[1, "Ann", "****"], [2, "Bob", "****"]]
    assert seen["filtered"] == ["Bob"]
    assert seen["ssn_filters"] == [2, 0, False]
    assert seen["select_related"] == [[10, "Ann", "****"], [11, "Bob", "****"]]
    assert seen["prefetch"] == [["Ann", ["100.00"]], ["Bob", ["50.50"]]]
    assert seen["aggregate"] == "150.50"
    assert seen["annotate"] == [["Ann", 1], ["Bob", 1]]
    assert seen["iterator"] == ["Ann", "Bob"]
    assert seen["in_bulk"] == [1, 2]
    assert seen["globex_visible"] is False


def test_django_writes_as_a_tenant(django_run):
    seen, refused, (customers, orders) = django_run
    assert refused == []
    assert seen["updated_all"] == 5  # 10, 11, 30, 32, 33: never globex's 12
    assert seen["deleted_in_savepoint"] == 6
    assert seen["after_writes"] == [[10, "100.00"], [11, "50.50"], [30, "8.00"], [32, "1.00"], [33, "2.00"]]
    assert seen["update_or_create"] == ["Cyril", False, "****"]
    assert customers == [(1, "acme", "Ann"), (2, "acme", "Bob"), (3, "globex", "Gus")]
    assert orders == [
        (10, "acme", Decimal("100.00")),
        (11, "acme", Decimal("50.50")),
        (12, "globex", Decimal("999.99")),
    ]
