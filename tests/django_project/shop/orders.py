from django.db import transaction

import taskharbor as th
from shop.models import Order
from shop.tasks import charge, ship
from taskharbor.contrib.django import enqueue


def place_order(order_id: int, *, refuse: bool = False) -> int:
    with transaction.atomic():  # the order and its workflow commit together, or neither
        Order.objects.create(id=order_id)
        flow = th.chain(charge.s(order_id), ship.s())
        handle = enqueue(flow, idempotency_key=f"order-{order_id}")
        if refuse:
            raise RuntimeError("payment refused")  # rolls back the order and its jobs
    return handle.id
