"""Typed payloads: arguments and results encoded by the App's codec at enqueue, stored
as plain JSON, decoded by the handler's annotations in the worker and on reads.

The end-to-end tests run a real worker on memory and SQLite (one on PostgreSQL);
the codec's own rules are checked without a store.
"""

from __future__ import annotations

import asyncio
import enum
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pydantic
import pytest

from driver_registry import DRIVERS
from taskharbor import (
    App,
    DefaultCodec,
    InvalidRequest,
    JobState,
    PayloadError,
    Worker,
    WorkflowState,
    chain,
    chord,
)
from taskharbor.codec import DecodeError
from taskharbor.spec import Driver

ORDER_ID = UUID("12345678-1234-5678-1234-567812345678")
PLACED = datetime(2026, 12, 3, 9, 30, 15, 250_000, tzinfo=UTC)


class Speed(enum.Enum):
    STANDARD = "standard"
    EXPRESS = "express"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass(frozen=True)
class Line:
    sku: str
    price: Decimal
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Order:
    id: UUID
    placed: datetime
    lines: list[Line]
    speed: Speed
    deliver_on: date | None = None
    window: tuple[time, time] | None = None
    notes: dict[str, Decimal] = field(default_factory=dict)


class Address(pydantic.BaseModel):
    street: str
    since: date


class Quote(pydantic.BaseModel):
    order: UUID
    total: Decimal
    address: Address


ORDER = Order(
    ORDER_ID,
    PLACED,
    [Line("book", Decimal("12.50"), ("paper", "used")), Line("pen", Decimal("0.99"))],
    Speed.EXPRESS,
    date(2026, 12, 24),
    (time(9, 0), time(12, 30)),
    {"discount": Decimal("-1.00")},
)
ORDER_JSON = {
    "id": str(ORDER_ID),
    "placed": "2026-12-03T09:30:15.250000+00:00",
    "lines": [
        {"sku": "book", "price": "12.50", "tags": ["paper", "used"]},
        {"sku": "pen", "price": "0.99", "tags": []},
    ],
    "speed": "express",
    "deliver_on": "2026-12-24",
    "window": ["09:00:00", "12:30:00"],
    "notes": {"discount": "-1.00"},
}
ADDRESS = Address(street="1 Harbour Row", since=date(2020, 1, 2))


@pytest.fixture(params=["memory", "sqlite"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    with DRIVERS[request.param](tmp_path) as factory:
        store = factory(None)
        store.migrate()
        yield store


@pytest.fixture
def app(driver: Driver) -> Iterator[App]:
    with App(driver=driver) as app:
        yield app


def work(app: App) -> None:
    Worker(app, concurrency=2, poll_interval=0.01).run(burst=True, handle_signals=False)


def register_shop(app: App) -> Any:
    """Tasks taking and returning typed values; ``seen`` records what the handlers got."""
    seen: dict[str, Any] = {}

    @app.task(name="quote")
    def quote(order: Order, address: Address, *, priority: Priority, rush: bool = False) -> Quote:
        seen["quote"] = (order, address, priority, rush)
        total = sum((line.price for line in order.lines), Decimal(0))
        return Quote(order=order.id, total=total, address=address)

    @app.task(name="confirm")
    def confirm(quote: Quote, copies: list[UUID]) -> dict[str, Decimal]:
        seen["confirm"] = (quote, copies)
        return {"total": quote.total}

    @app.task(name="total")
    def total(quotes: list[Quote]) -> Decimal:
        seen["total"] = quotes
        return sum((q.total for q in quotes), Decimal(0))

    return quote, confirm, total, seen


def test_typed_arguments_reach_the_handler_as_their_types(app: App) -> None:
    quote, _, _, seen = register_shop(app)
    job = quote.enqueue(ORDER, ADDRESS, priority=Priority.HIGH)
    work(app)
    assert seen["quote"] == (ORDER, ADDRESS, Priority.HIGH, False)
    order = seen["quote"][0]
    assert isinstance(order.lines[0].price, Decimal) and order.lines[0].tags == ("paper", "used")
    assert isinstance(seen["quote"][2], Priority)
    done = app.get_job(job)
    assert done.state == JobState.SUCCEEDED
    assert done.result == Quote(order=ORDER_ID, total=Decimal("13.49"), address=ADDRESS)


def test_the_store_keeps_plain_json(app: App) -> None:
    quote, _, _, _ = register_shop(app)
    job = quote.enqueue(ORDER, ADDRESS, priority=Priority.HIGH)
    work(app)
    stored = app.driver.get([job.id])[0]
    assert stored.args == (ORDER_JSON, {"street": "1 Harbour Row", "since": "2020-01-02"})
    assert stored.kwargs == {"priority": 2}
    assert stored.result == {
        "order": str(ORDER_ID),
        "total": "13.49",
        "address": {"street": "1 Harbour Row", "since": "2020-01-02"},
    }
    assert app.get_job(job).stored_result == stored.result


def test_a_chain_and_a_chord_decode_each_result_by_the_next_parameter(app: App) -> None:
    quote, confirm, total, seen = register_shop(app)
    copies = [UUID(int=1), UUID(int=2)]
    flow = chain(quote.s(ORDER, ADDRESS, priority=Priority.LOW), confirm.s(copies))
    handle = app.enqueue(flow)
    gathered = app.enqueue(
        chord([quote.s(ORDER, ADDRESS, priority=Priority.LOW) for _ in range(2)], total.s())
    )
    work(app)
    assert handle.wait(timeout=5) == WorkflowState.SUCCEEDED
    quoted = Quote(order=ORDER_ID, total=Decimal("13.49"), address=ADDRESS)
    assert seen["confirm"] == (quoted, copies)
    assert handle.result() == {"total": Decimal("13.49")}
    assert gathered.wait(timeout=5) == WorkflowState.SUCCEEDED
    assert [type(q) for q in seen["total"]] == [Quote, Quote]
    assert gathered.result() == Decimal("26.98")


def test_a_payload_the_new_type_cannot_read_is_dead_at_once(driver: Driver) -> None:
    """A deploy changed a parameter's type while a job waited: no retry can help."""
    before, after = App(driver=driver), App(driver=driver)  # the fixture closes the store

    @before.task(name="ship", max_attempts=5)
    def ship_v1(order: str) -> None: ...

    @after.task(name="ship", max_attempts=5)
    def ship_v2(order: Order) -> None: ...

    job = ship_v1.enqueue("order 7")
    work(after)
    dead = after.get_job(job.id)
    assert (dead.state, dead.attempt) == (JobState.DEAD, 1)
    assert dead.last_error is not None and dead.last_error.type == "PayloadError"
    assert dead.last_error.message == (
        "task ship: argument 'order' does not decode as Order: "
        "expected an object of Order, got 'order 7'"
    )


def test_the_error_names_the_field_deep_inside(app: App) -> None:
    @app.task(name="pack")
    def pack(orders: list[Order]) -> None: ...

    broken = {**ORDER_JSON, "lines": [{"sku": "x", "price": "twelve"}]}
    job = pack.enqueue([broken])
    work(app)
    error = app.get_job(job).last_error
    assert error is not None
    assert error.message == (
        "task pack: argument 'orders' does not decode as list[Order]: "
        "[0].lines[0].price: 'twelve' is not a decimal number"
    )


def test_an_unknown_object_is_refused_at_enqueue_naming_the_argument(app: App) -> None:
    @app.task(name="remind")
    def remind(who: str, when: Any) -> None: ...

    with pytest.raises(InvalidRequest) as refused:
        remind.enqueue("ann", when=object())
    assert str(refused.value).startswith(
        "cannot enqueue remind: argument 'when': object is not JSON"
    )
    with pytest.raises(InvalidRequest, match=r"argument 'when'\[0\]: tuple is not JSON"):
        remind.enqueue("ann", [(1, 2)])
    with pytest.raises(InvalidRequest, match="argument 'who': set is not JSON"):
        remind.enqueue({"a"}, 1)  # type: ignore[arg-type]
    assert app.list_jobs() == []


def test_a_result_that_no_longer_decodes_is_an_error_on_read(driver: Driver) -> None:
    before, after = App(driver=driver), App(driver=driver)  # the fixture closes the store

    @before.task(name="price")
    def price_v1() -> str:
        return "cheap"

    @after.task(name="price")
    def price_v2() -> Decimal: ...

    job = price_v1.enqueue()
    work(before)
    read = after.get_job(job.id)
    assert read.stored_result == "cheap"
    with pytest.raises(PayloadError, match=f"job {job.id}: task price: the result"):
        read.result  # noqa: B018
    assert App(driver=driver).get_job(job.id).result == "cheap"  # no such task: as stored


def test_a_result_the_codec_cannot_store_is_an_invalid_result(app: App) -> None:
    @app.task(name="odd")
    def odd() -> Any:
        return {"when": PLACED, "what": object()}

    job = odd.enqueue()
    work(app)
    dead = app.get_job(job)
    assert dead.state == JobState.DEAD and dead.last_error is not None
    assert dead.last_error.type == "InvalidResult"


class TextOnly:
    """A codec of its own: every value is stored as its repr, decoded by ``annotation``."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def encode(self, value: Any, /) -> Any:
        self.calls.append("encode")
        return str(value)

    def decode(self, data: Any, annotation: Any, /) -> Any:
        self.calls.append("decode")
        return annotation(data)


def test_an_app_takes_a_codec_of_its_own(driver: Driver) -> None:
    codec = TextOnly()
    app = App(driver=driver, codec=codec)

    @app.task(name="double")
    def double(n: int) -> int:
        return n * 2

    job = double.enqueue(21)
    assert app.driver.get([job.id])[0].args == ("21",)
    work(app)
    assert app.get_job(job).result == 42
    assert app.get_job(job).stored_result == "42"
    assert codec.calls == ["encode", "decode", "encode", "decode"]
    with pytest.raises(InvalidRequest, match="codec must have encode"):
        App(driver=driver, codec=object())  # type: ignore[arg-type]


def test_postgres_runs_a_typed_chain(tmp_path: Path) -> None:
    with DRIVERS["postgres"](tmp_path) as factory, App(driver=factory(None)) as app:
        quote, confirm, _, seen = register_shop(app)
        handle = app.enqueue(chain(quote.s(ORDER, ADDRESS, priority=2), confirm.s([ORDER_ID])))
        work(app)
        assert handle.wait(timeout=5) == WorkflowState.SUCCEEDED
        assert seen["quote"][0] == ORDER and seen["confirm"][1] == [ORDER_ID]
        assert handle.result() == {"total": Decimal("13.49")}


# -- the default codec on its own ------------------------------------------------------


CODEC = DefaultCodec()


@pytest.mark.parametrize(
    ("value", "annotation", "stored"),
    [
        (PLACED, datetime, "2026-12-03T09:30:15.250000+00:00"),
        (datetime(2026, 1, 2, 3, 4), datetime, "2026-01-02T03:04:00"),
        (date(2026, 1, 2), date, "2026-01-02"),
        (time(23, 59, 1), time, "23:59:01"),
        (ORDER_ID, UUID, str(ORDER_ID)),
        (Decimal("1E+3"), Decimal, "1E+3"),
        (Speed.STANDARD, Speed, "standard"),
        (Priority.HIGH, Priority, 2),
        (None, Order | None, None),
        (ORDER, Order | None, ORDER_JSON),
        ({Speed.EXPRESS: [ORDER_ID]}, dict[Speed, list[UUID]], {"express": [str(ORDER_ID)]}),
        ([1, "a"], list[Any], [1, "a"]),
        (ADDRESS, Address, {"street": "1 Harbour Row", "since": "2020-01-02"}),
        ([ADDRESS], list[Address], [{"street": "1 Harbour Row", "since": "2020-01-02"}]),
    ],
)
def test_each_type_round_trips(value: Any, annotation: Any, stored: Any) -> None:
    assert CODEC.encode(value) == stored
    decoded = CODEC.decode(stored, annotation)
    assert decoded == value and type(decoded) is type(value)


@pytest.mark.parametrize(
    ("stored", "annotation", "message"),
    [
        (5, datetime, "expected an ISO 8601 date and time as text, got 5"),
        ("2026-01-02T03:04", date, "'2026-01-02T03:04' is not an ISO 8601 date"),
        ("nope", UUID, "'nope' is not a UUID"),
        (True, Decimal, "expected a decimal number as text, got True"),
        ("fast", Speed, "'fast' is not a value of Speed ('standard', 'express')"),
        ({**ORDER_JSON, "colour": "red"}, Order, "Order has no field colour"),
        ({"sku": "x"}, Line, "missing field price of Line"),
        ([1, 2, 3], tuple[int, int], "expected 2 items, got 3"),
        ({"a": "x"}, dict[str, UUID], "['a']: 'x' is not a UUID"),
        ("x", UUID | date, "'x' fits none of UUID | date"),
        ({"street": 1}, Address, "street: Input should be a valid string; since: Field required"),
    ],
)
def test_a_payload_that_does_not_fit_says_why(stored: Any, annotation: Any, message: str) -> None:
    with pytest.raises(DecodeError) as refused:
        CODEC.decode(stored, annotation)
    assert message in str(refused.value)


def test_plain_annotations_are_not_checked() -> None:
    """As before typed payloads: an ``int`` parameter given ``"7"`` gets ``"7"``."""
    for annotation in (int, str, dict, list, list[int], dict[str, Any], Any, object):
        assert CODEC.decoder(annotation) is None
    assert CODEC.decode("7", int) == "7"


def test_an_unresolvable_annotation_leaves_the_payload_as_stored(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="later")
    def later(when: NotDefinedAnywhere, n: int) -> None:  # type: ignore[name-defined]  # noqa: F821
        ...

    args, _ = later.payloads.decode_call(["2026-01-02", 1], {})
    assert args == ["2026-01-02", 1]
    assert "parameter 'when' cannot be resolved" in caplog.text


def test_pydantic_support_names_its_extra_when_missing() -> None:
    probe = "import sys; sys.modules['pydantic'] = None; import taskharbor.contrib.pydantic"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode != 0
    assert "pip install 'taskharbor[pydantic]'" in done.stderr


def test_options_and_async_enqueue_encode_typed_values(app: App) -> None:

    @app.task(name="remind_at")
    def remind_at(when: datetime) -> datetime:
        return when + timedelta(days=1)

    job = remind_at.options(priority=3).enqueue(PLACED)
    later = asyncio.run(remind_at.enqueue_async(PLACED + timedelta(days=1)))
    work(app)
    assert app.get_job(job).result == PLACED + timedelta(days=1)
    assert app.get_job(later).result == PLACED + timedelta(days=2)
