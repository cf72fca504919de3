"""Runs Django's ORM as tenant acme through pgwarden and prints what it saw (as JSON)."""

from __future__ import annotations

import json
import sys

import django
from django.conf import settings

port, dbname = int(sys.argv[1]), sys.argv[2]
settings.configure(
    INSTALLED_APPS=["tests.policy.orm_app"],
    USE_TZ=True,
    TIME_ZONE="UTC",
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": dbname,
            "USER": "acme_app",
            "HOST": "127.0.0.1",
            "PORT": port,
            "OPTIONS": {"sslmode": "disable"},
        }
    },
)
django.setup()

from django.db import transaction  # noqa: E402
from django.db.models import Count, F, Sum  # noqa: E402

from tests.policy.orm_app.models import Customer, Order  # noqa: E402

seen = {"customers": [[c.id, c.name, c.ssn] for c in Customer.objects.order_by("id")]}
seen["filtered"] = list(Customer.objects.filter(name__startswith="B").values_list("name", flat=True))
seen["ssn_filters"] = [
    Customer.objects.filter(ssn="****").count(),
    Customer.objects.filter(ssn__startswith="1").count(),
    Customer.objects.filter(ssn="111-11-1111").exists(),
]
seen["select_related"] = [
    [o.id, o.customer.name, o.customer.ssn] for o in Order.objects.select_related("customer").order_by("id")
]
seen["prefetch"] = [
    [c.name, [str(o.total) for o in c.orders.all()]] for c in Customer.objects.prefetch_related("orders").order_by("id")
]
seen["aggregate"] = str(Order.objects.aggregate(s=Sum("total"))["s"])
seen["annotate"] = list(
    Order.objects.values("customer__name")
    .annotate(n=Count("id"))
    .order_by("customer__name")
    .values_list("customer__name", "n")
)
# a server-side cursor (WITH HOLD outside a transaction), in both pooling modes
seen["iterator"] = [c.name for c in Customer.objects.order_by("id").iterator(chunk_size=1)]
seen["in_bulk"] = sorted(Customer.objects.in_bulk([1, 2, 3]))
Order.objects.create(id=30, customer_id=1, total="7.00")
Customer.objects.create(id=31, name="Cy", email="cy@acme.io", ssn="999-99-9999")
Order.objects.bulk_create([Order(id=32, customer_id=31, total="1.00"), Order(id=33, customer_id=31, total="2.00")])
with transaction.atomic():
    Order.objects.filter(id=30).update(total="8.00")
    seen["updated_all"] = Order.objects.update(total=F("total"))  # acme's rows only
    list(Customer.objects.select_for_update().filter(id=1))
    try:
        with transaction.atomic():
            Order.objects.create(id=34, customer_id=1, total="1.00")
            seen["deleted_in_savepoint"] = Order.objects.all().delete()[0]
            raise RuntimeError("roll back the savepoint")
    except RuntimeError:
        pass
seen["after_writes"] = [[o.id, str(o.total)] for o in Order.objects.order_by("id")]
obj, created = Customer.objects.update_or_create(id=31, defaults={"name": "Cyril"})
seen["update_or_create"] = [obj.name, created, Customer.objects.get(id=31).ssn]
Order.objects.filter(id__in=[30, 32, 33]).delete()
Customer.objects.filter(id=31).delete()
seen["globex_visible"] = Customer.objects.filter(id=3).exists()
print(json.dumps(seen))
