"""Calls of tasks that a type checker must accept, and calls it must report.

tests/test_typing.py runs mypy on this file once: every line marked
``# refused`` must be reported, and no other line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import taskharbor as th

app = th.App("memory://")


@dataclass
class Order:
    id: int
    placed: datetime


@app.task
def ship(order: Order, speed: str = "standard", *, insured: bool = False) -> str:
    return f"{order.id} {speed} {insured}"


@app.task
def notify(message: str, urgent: bool) -> None: ...


@app.task
async def fetch(url: str) -> int:
    return len(url)


ORDER = Order(1, datetime(2026, 12, 3))

# Accepted: the handler's own signature.
ship.enqueue(ORDER)
ship.enqueue(ORDER, "express", insured=True)
ship.options(priority=5).enqueue(order=ORDER)
ship.s(ORDER, speed="express")
ship.si(ORDER)
fetch.s("https://example.com")
th.chain(ship.s(ORDER), notify.s(True))  # notify(<ship's result>, True)
notify.s(urgent=False)
notify.options(queue="mail").s(True)


async def produce() -> None:
    await fetch.enqueue_async("https://example.com")


# Refused: wrong types, unknown or missing arguments.
ship.enqueue("order 1")  # refused
ship.enqueue(ORDER, speed=2)  # refused
ship.enqueue(ORDER, insured="yes")  # refused
ship.enqueue(ORDER, colour="red")  # refused
ship.enqueue()  # refused
ship.options(priority=5).enqueue(ORDER, 1)  # refused
ship.s(ORDER, "express", "x")  # refused
ship.s(ORDER, speed=3)  # refused
ship.si()  # refused
ship.si(speed="express")  # refused
notify.s()  # refused
notify.s(True, "extra")  # refused
notify.options(queue="mail").s(1, 2, 3)  # refused
fetch.s(42)  # refused


async def produce_badly() -> None:
    await fetch.enqueue_async(url=1)  # refused
