"""ORMs run as a tenant through pgwarden with masks on: every query they emit is accepted, results right."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import psycopg
from sqlalchemy import ForeignKey, Numeric, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

from tests.harness import ROOT
from tests.policy.conftest import DB, reset_data

DIRECT = f"host=127.0.0.1 port=5432 user=postgres dbname={DB}"


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String)
    email: Mapped[str | None]
    ssn: Mapped[str | None]
    orders: Mapped[list["Order"]] = relationship(back_populates="customer")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    customer: Mapped[Customer] = relationship(back_populates="orders")


def test_sqlalchemy_as_a_tenant(guarded):
    reset_data()
    engine = create_engine(f"postgresql+psycopg://acme_app@127.0.0.1:{guarded.port}/{DB}?sslmode=disable")
    try:
        with Session(engine) as session:
            customers = session.scalars(select(Customer).options(selectinload(Customer.orders))
                                        .order_by(Customer.id)).all()
            assert [(c.id, c.name, c.ssn) for c in customers] == [(1, "Ann", "****"), (2, "Bob", "****")]
            assert [[o.total for o in c.orders] for c in customers] == [[Decimal("100.00")], [Decimal("50.50")]]
            session.add(Order(id=40, customer_id=2, total=Decimal("3.00")))
            session.commit()
            with session.begin():
                nested = session.begin_nested()
                session.add(Order(id=41, customer_id=2, total=Decimal("1.00")))
                session.flush()
                nested.rollback()
                session.get(Order, 40).total = Decimal("4.00")
            assert session.get(Customer, 3) is None  # globex's row does not exist for acme
            session.delete(session.get(Order, 40))
            session.commit()
    finally:
        engine.dispose()
    with psycopg.connect(DIRECT) as direct:  # what PostgreSQL holds: nothing of 40/41 left, tenant filled in
        assert direct.execute("select count(*) from orders where id in (40, 41)").fetchone() == (0,)
    assert "refused" not in guarded.logs()


def test_django_as_a_tenant(guarded):
    reset_data()
    out = subprocess.run([sys.executable, "-m", "tests.policy.orm_django", str(guarded.port), DB],
                         cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["customers"] == [[1, "Ann", "****"], [2, "Bob", "****"]]
    assert seen["filtered"] == ["Bob"]
    assert seen["select_related"] == [[10, "Ann"], [11, "Bob"]]
    assert seen["prefetch"] == [["Ann", ["100.00"]], ["Bob", ["50.50"]]]
    assert seen["after_writes"] == [[10, "100.00"], [11, "50.50"], [30, "8.00"]]
    assert seen["globex_visible"] is False
    assert "refused" not in guarded.logs()
