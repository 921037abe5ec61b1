from django.conf import settings

import taskharbor as th

app = th.App(f"{settings.URL}?schema={settings.SCHEMA}_jobs")


@app.task(name="charge")
def charge(order_id: int) -> int:
    return order_id


@app.task(name="ship")
def ship(order_id: int) -> str:
    from shop.models import Order  # handlers use the ORM: the worker has set Django up

    Order.objects.filter(id=order_id).update(shipped=True)
    return f"shipped {order_id}"
