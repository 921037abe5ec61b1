"""A producer killed between its INSERT and its COMMIT (run by test_producer_crash.py).

``python producer_crash_app.py URL SCHEMA ORDER`` opens a transaction, inserts
the order row, enqueues the order's workflow (with the order as idempotency
key) and one more job in that transaction, prints ``inserted`` and waits for
the test to kill it with SIGKILL, so the transaction never commits.  With
``--commit`` it commits instead and prints ``committed``.
"""

from __future__ import annotations

import sys
import time

import psycopg
from psycopg import sql

import taskharbor as th


def main(url: str, schema: str, order: int, commit: bool) -> None:
    app = th.App(f"{url}?schema={schema}", migrate=False)

    @app.task(name="charge")
    def charge(order: int) -> int:
        return order

    @app.task(name="ship")
    def ship(order: int) -> str:
        return f"shipped {order}"

    with psycopg.connect(url) as conn:
        with conn.transaction():
            conn.execute(
                sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(schema, "orders")),
                (order,),
            )
            with app.using(conn):
                app.enqueue(chain_for(charge, ship, order), idempotency_key=f"order-{order}")
                charge.enqueue(order)
            if not commit:
                print("inserted", flush=True)
                time.sleep(600)  # until killed: the transaction stays open
        print("committed", flush=True)
    app.close()


def chain_for(charge: th.Task[...], ship: th.Task[...], order: int) -> th.Workflow:
    return th.chain(charge.s(order), ship.s())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), "--commit" in sys.argv[4:])
