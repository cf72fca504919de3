"""SQLAlchemy 2 through pgwarden: sync over psycopg and async over asyncpg; ORM, relationships, savepoints."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from sqlalchemy import ForeignKey, Numeric, String, create_engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, joinedload, mapped_column, relationship, selectinload

from tests.clients.support import direct_execute, unique

pytestmark = pytest.mark.timeout(60)


class Base(DeclarativeBase):
    pass


AUTHOR, BOOK = unique("pgw_sa_author"), unique("pgw_sa_book")


class Author(Base):
    __tablename__ = AUTHOR
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    books: Mapped[list[Book]] = relationship(
        back_populates="author", cascade="all, delete-orphan", order_by="Book.title"
    )


class Book(Base):
    __tablename__ = BOOK
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    price: Mapped[Decimal] = mapped_column(Numeric(8, 2))
    author_id: Mapped[int] = mapped_column(ForeignKey(f"{AUTHOR}.id"))
    author: Mapped[Author] = relationship(back_populates="books")


LIBRARY = {
    "Le Guin": [("A Wizard of Earthsea", "9.99"), ("The Dispossessed", "12.50")],
    "Lem": [("Solaris", "8.00")],
    "Borges": [("Ficciones", "11.00"), ("El Aleph", "10.00"), ("Labyrinths", "14.25")],
}


def _library() -> list[Author]:
    return [
        Author(name=name, books=[Book(title=t, price=Decimal(p)) for t, p in books]) for name, books in LIBRARY.items()
    ]


@pytest.fixture
def no_tables():
    """The test creates the tables through the proxy; they are dropped directly afterwards."""
    drop = f"DROP TABLE IF EXISTS {BOOK}, {AUTHOR}"
    direct_execute(drop)
    yield
    direct_execute(drop)


def test_sync_psycopg_orm(proxy, no_tables):
    engine = create_engine(proxy.url(scheme="postgresql+psycopg"), pool_size=5, max_overflow=5)
    try:
        Base.metadata.create_all(engine)
        with Session(engine) as session, session.begin():
            session.add_all(_library())

        with Session(engine) as session:
            authors = session.scalars(select(Author).options(selectinload(Author.books)).order_by(Author.name)).all()
            assert [(a.name, [b.title for b in a.books]) for a in authors] == [
                ("Borges", ["El Aleph", "Ficciones", "Labyrinths"]),
                ("Le Guin", ["A Wizard of Earthsea", "The Dispossessed"]),
                ("Lem", ["Solaris"]),
            ]
            books = session.scalars(
                select(Book).options(joinedload(Book.author)).where(Book.price > 10).order_by(Book.price)
            ).all()
            assert [(b.title, b.author.name, b.price) for b in books] == [
                ("Ficciones", "Borges", Decimal("11.00")),
                ("The Dispossessed", "Le Guin", Decimal("12.50")),
                ("Labyrinths", "Borges", Decimal("14.25")),
            ]
            total = session.execute(
                select(Author.name, func.sum(Book.price)).join(Author.books).group_by(Author.name).order_by(Author.name)
            ).all()
            assert total == [("Borges", Decimal("35.25")), ("Le Guin", Decimal("22.49")), ("Lem", Decimal("8.00"))]

        # Update and delete, then a rolled-back transaction.
        with Session(engine) as session, session.begin():
            lem = session.scalars(select(Author).where(Author.name == "Lem")).one()
            lem.books[0].price = Decimal("9.00")
            session.delete(session.scalars(select(Author).where(Author.name == "Borges")).one())
        with Session(engine) as session:
            session.add(Author(name="Ghost"))
            session.flush()
            assert session.scalar(select(func.count()).select_from(Author)) == 3
            session.rollback()
            assert session.scalar(select(func.count()).select_from(Author)) == 2
            assert session.scalar(select(func.count()).select_from(Book)) == 3
            assert session.scalar(select(Book.price).where(Book.title == "Solaris")) == Decimal("9.00")

        # Savepoints: the inner rolled back, the next one committed, the outer commits both outcomes.
        with Session(engine) as session:
            with session.begin():
                session.add(Author(name="Outer"))
                nested = session.begin_nested()
                session.add(Author(name="Rolled back"))
                nested.rollback()
                with session.begin_nested():
                    session.add(Author(name="Kept"))
                with pytest.raises(IntegrityError), session.begin_nested():
                    session.add(Author(name="Lem"))  # unique violation inside a savepoint
                    session.flush()
            names = session.scalars(select(Author.name).order_by(Author.name)).all()
            assert names == ["Kept", "Le Guin", "Lem", "Outer"]

        # The same statements many times over the pool (psycopg prepares them after 5 runs).
        for _ in range(3):
            with Session(engine) as session:
                for name in ["Lem", "Le Guin", "Kept"]:
                    assert session.scalars(select(Author).where(Author.name == name)).one().name == name
        with engine.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {BOOK} WHERE price < :p"), {"p": 10}).scalar() == 2
    finally:
        engine.dispose()


def test_async_asyncpg_orm(proxy, no_tables):
    async def main():
        engine = create_async_engine(proxy.url(scheme="postgresql+asyncpg"), pool_size=5, max_overflow=5)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            async with AsyncSession(engine) as session, session.begin():
                session.add_all(_library())

            async with AsyncSession(engine, expire_on_commit=False) as session:
                authors = (
                    await session.scalars(select(Author).options(selectinload(Author.books)).order_by(Author.name))
                ).all()
                assert [(a.name, len(a.books)) for a in authors] == [("Borges", 3), ("Le Guin", 2), ("Lem", 1)]
                books = (
                    await session.scalars(select(Book).options(joinedload(Book.author)).order_by(Book.title))
                ).all()
                assert [b.author.name for b in books] == ["Le Guin", "Borges", "Borges", "Borges", "Lem", "Le Guin"]

            async with AsyncSession(engine) as session:
                async with session.begin():
                    session.add(Author(name="Outer"))
                    nested = await session.begin_nested()
                    session.add(Author(name="Rolled back"))
                    await nested.rollback()
                    async with session.begin_nested():
                        session.add(Author(name="Kept"))
                async with session.begin():
                    borges = (await session.scalars(select(Author).where(Author.name == "Borges"))).one()
                    await session.delete(borges)
                    await session.rollback()
                names = (await session.scalars(select(Author.name).order_by(Author.name))).all()
                assert names == ["Borges", "Kept", "Le Guin", "Lem", "Outer"]

            # Concurrent sessions over the engine's pool.
            async def count_books(name: str) -> int:
                async with AsyncSession(engine) as session:
                    return await session.scalar(
                        select(func.count(Book.id)).join(Book.author).where(Author.name == name)
                    )

            counts = await asyncio.gather(*(count_books(n) for n in ["Borges", "Lem", "Le Guin"] * 10))
            assert counts == [3, 1, 2] * 10
        finally:
            await engine.dispose()

    asyncio.run(main())
