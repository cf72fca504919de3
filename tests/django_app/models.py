"""Models with a ForeignKey and a ManyToMany, enough for joins, prefetches and bulk writes."""

from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100, unique=True)

    class Meta:
        db_table = "pgw_dj_author"


class Tag(models.Model):
    label = models.CharField(max_length=50, unique=True)

    class Meta:
        db_table = "pgw_dj_tag"


class Book(models.Model):
    title = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    published = models.DateTimeField(null=True)
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    tags = models.ManyToManyField(Tag, related_name="books", db_table="pgw_dj_book_tags")

    class Meta:
        db_table = "pgw_dj_book"
