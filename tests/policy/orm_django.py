"""Runs Django's ORM as tenant acme through pgwarden and prints what it saw (as JSON)."""

from __future__ import annotations

import json
import sys

import django
from django.conf import settings

port, dbname = int(sys.argv[1]), sys.argv[2]
settings.configure(
    INSTALLED_APPS=["tests.policy.orm_app"], USE_TZ=True, TIME_ZONE="UTC",
    DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": dbname,
                           "USER": "acme_app", "HOST": "127.0.0.1", "PORT": port,
                           "OPTIONS": {"sslmode": "disable"}}})
django.setup()

from django.db import transaction  # noqa: E402

from tests.policy.orm_app.models import Customer, Order  # noqa: E402

seen = {"customers": [[c.id, c.name, c.ssn] for c in Customer.objects.order_by("id")]}
seen["filtered"] = list(Customer.objects.filter(name__startswith="B").values_list("name", flat=True))
seen["select_related"] = [[o.id, o.customer.name] for o in Order.objects.select_related("customer").order_by("id")]
seen["prefetch"] = [[c.name, [str(o.total) for o in c.orders.all()]]
                    for c in Customer.objects.prefetch_related("orders").order_by("id")]
Order.objects.create(id=30, customer_id=1, total="7.00")
with transaction.atomic():
    Order.objects.filter(id=30).update(total="8.00")
    try:
        with transaction.atomic():
            Order.objects.create(id=31, customer_id=1, total="1.00")
            raise RuntimeError("roll back the savepoint")
    except RuntimeError:
        pass
seen["after_writes"] = [[o.id, str(o.total)] for o in Order.objects.order_by("id")]
Order.objects.filter(id=30).delete()
seen["globex_visible"] = Customer.objects.filter(id=3).exists()
print(json.dumps(seen))
