"""Runs the Django ORM through pgwarden in a fresh process and prints what it observed as JSON.

Usage: python -m tests.django_app.scenario HOST PORT DBNAME [--server-side-binding] [--local-time]
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal


class Rollback(Exception):
    """Raised inside an atomic block to roll its savepoint back."""


def run() -> dict:
    from django.core.management import call_command
    from django.db import IntegrityError, connection, transaction
    from django.db.migrations.recorder import MigrationRecorder
    from django.test.utils import CaptureQueriesContext

    from tests.django_app.models import Author, Book, Tag

    seen: dict = {}
    call_command("migrate", verbosity=0, interactive=False)
    seen["migrations"] = sorted(f"{m.app}.{m.name}" for m in MigrationRecorder.Migration.objects.all())
    with connection.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'pgw_dj_%%' ORDER BY 1")
        seen["tables"] = [r[0] for r in cur.fetchall()]

    # CRUD
    fiction, classic, short = (Tag.objects.create(label=x) for x in ("fiction", "classic", "short"))
    borges = Author.objects.create(name="Borges")
    lem = Author.objects.create(name="Lem")
    ficciones = Book.objects.create(title="Ficciones", price=Decimal("11.00"), author=borges)
    ficciones.tags.add(fiction, short)
    solaris = Book.objects.create(title="Solaris", price=Decimal("8.00"), author=lem)
    solaris.tags.set([fiction, classic])
    Book.objects.filter(title="Solaris").update(price=Decimal("9.50"))
    doomed = Book.objects.create(title="Doomed", price=Decimal("1.00"), author=lem)
    doomed.delete()
    seen["books"] = list(Book.objects.order_by("title").values_list("title", "price", "author__name"))

    # select_related: one query with a join.
    with CaptureQueriesContext(connection) as q:
        seen["select_related"] = [
            (b.title, b.author.name) for b in Book.objects.select_related("author").order_by("title")
        ]
    seen["select_related_queries"] = len(q)

    # prefetch_related: one query per relation.
    with CaptureQueriesContext(connection) as q:
        seen["prefetch_related"] = [
            (a.name, sorted(t.label for b in a.books.all() for t in b.tags.all()))
            for a in Author.objects.prefetch_related("books__tags").order_by("name")
        ]
    seen["prefetch_related_queries"] = len(q)

    # bulk_create, with its M2M rows.
    bulk = Book.objects.bulk_create([Book(title=f"Bulk {i:03d}", price=Decimal(i) / 4, author=lem) for i in range(300)])
    Book.tags.through.objects.bulk_create(
        [Book.tags.through(book_id=b.id, tag_id=short.id) for b in bulk if b.id % 2 == 0]
    )
    seen["bulk_ids_returned"] = all(b.id is not None for b in bulk)
    seen["bulk_count"] = Book.objects.filter(title__startswith="Bulk").count()
    seen["short_count"] = Tag.objects.get(label="short").books.count()

    # Nested atomic blocks: savepoints rolled back and released inside a committed transaction.
    with transaction.atomic():
        Author.objects.create(name="Outer")
        try:
            with transaction.atomic():
                Author.objects.create(name="Inner rolled back")
                raise Rollback
        except Rollback:
            pass
        with transaction.atomic():
            Author.objects.create(name="Inner kept")
            try:
                with transaction.atomic():
                    Author.objects.create(name="Borges")  # unique violation in a savepoint
            except IntegrityError:
                seen["integrity_error"] = True
        seen["in_atomic"] = connection.in_atomic_block
    try:
        with transaction.atomic():
            Author.objects.create(name="Outer rolled back")
            raise Rollback
    except Rollback:
        pass
    seen["authors"] = list(Author.objects.order_by("name").values_list("name", flat=True))

    # select_for_update inside a transaction, and an aggregate.
    with transaction.atomic():
        book = Book.objects.select_for_update().get(title="Ficciones")
        book.price += 1
        book.save()
    from django.db.models import Count, Sum

    seen["per_author"] = list(
        Author.objects.annotate(n=Count("books"), total=Sum("books__price"))
        .filter(n__gt=0)
        .order_by("name")
        .values_list("name", "n", "total")
    )
    return seen


LOCAL_TIME_ZONE = "Asia/Tokyo"


def run_local_time() -> dict:
    """USE_TZ off: naive datetimes are Tokyo time, written and read by many threads (one connection each)."""
    import datetime as dt
    from concurrent.futures import ThreadPoolExecutor

    from django.core.management import call_command
    from django.db import connection, connections

    from tests.django_app.models import Author, Book

    call_command("migrate", "django_app", verbosity=0, interactive=False)
    author = Author.objects.create(name="Clock")

    def worker(n: int) -> bool:
        try:
            ok = True
            for i in range(5):
                published = dt.datetime(2024, 1, 1, 12, n, i)
                book = Book.objects.create(title=f"t{n}-{i}", price=Decimal(1), author=author, published=published)
                ok &= Book.objects.get(pk=book.pk).published == published
            return ok
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=12) as pool:
        round_trips = all(pool.map(worker, range(12)))
    with connection.cursor() as cur:
        # An unambiguous instant: 12:xx in Tokyo is 03:xx UTC.
        cur.execute(
            "SELECT count(*) FROM pgw_dj_book WHERE published >= '2024-01-01 03:00:00+00'"
            " AND published < '2024-01-01 04:00:00+00'"
        )
        in_utc = cur.fetchone()[0]
    return {"round_trips": round_trips, "books": Book.objects.count(), "stored_as_tokyo_time": in_utc}


def main(argv: list[str]) -> None:
    from tests.django_app.settings import configure

    host, port, dbname = argv[:3]
    local_time = "--local-time" in argv
    configure(
        host,
        int(port),
        dbname,
        server_side_binding="--server-side-binding" in argv,
        local_time_zone=LOCAL_TIME_ZONE if local_time else None,
    )
    print(json.dumps(run_local_time() if local_time else run(), default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
