"""The shop's orders."""

from django.db import models


class Order(models.Model):
    id = models.IntegerField(primary_key=True)
    shipped = models.BooleanField(default=False)
