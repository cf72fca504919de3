"""Django models of the shop's customers and orders; the tenant column is deliberately not mapped."""

from django.db import models


class Customer(models.Model):
    id = models.IntegerField(primary_key=True)
    name = models.TextField()
    email = models.TextField(null=True)
    ssn = models.TextField(null=True)

    class Meta:
        app_label = "orm_app"
        db_table = "customers"
        managed = False


class Order(models.Model):
    id = models.IntegerField(primary_key=True)
    customer = models.ForeignKey(Customer, on_delete=models.DO_NOTHING, db_column="customer_id", related_name="orders")
    total = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        app_label = "orm_app"
        db_table = "orders"
        managed = False
