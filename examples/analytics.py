"""Analytics over workflow history: run a few hundred orders, then ask the archive with SQL.

Run it with ``./dev example analytics`` (or ``python examples/analytics.py [--orders N]``).
Every event the orders record streams into the archive (warm Parquet segments within about a
second, Iceberg tables every few seconds); ``client.sql`` answers from there with DuckDB:

* p95 duration per workflow type (``workflows``: one row per closed run);
* which activities needed most retries (``activities``: one row per activity execution);
* which orders are waiting on payment right now (``live_workflows`` joined with ``history``);
* how orders ended, with their activities (``workflows`` joined with ``activities``).

Orders pay by card or by invoice. Card orders have a short payment window ("2s" here, half an
hour in a shop): unpaid, they are cancelled and their reservation released. Invoice orders
have an hour; the unpaid ones are still waiting when the example asks. The inventory service
and the carrier are flaky, so some activities are retried. The data lives in
``./.duraflow-analytics``; a rerun starts the orders afresh (``id_conflict``) and the archive
keeps every run, so the answers then cover all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import numbers
import random
import time
import zlib
from typing import Any

import duraflow as df

DATA_DIR = ".duraflow-analytics"
CARD_WINDOW = "2s"  # half an hour in a shop; short so the example finishes quickly
INVOICE_WINDOW = "1h"  # fourteen days in a shop


def _bucket(order_id: str, modulo: int) -> int:
    return zlib.crc32(order_id.encode()) % modulo


def reserve_failures(order_id: str) -> int:
    """How many attempts of reserve_inventory fail for this order (a flaky inventory service)."""
    return 2 if _bucket(order_id, 25) == 0 else 1 if _bucket(order_id, 5) == 0 else 0


def carrier_failures(order_id: str) -> int:
    """How many attempts of book_carrier fail for this order (a flaky carrier API)."""
    return 1 if _bucket(order_id, 7) == 3 else 0


@df.activity(retry=df.RetryPolicy(initial_interval="50ms", maximum_attempts=5))
def reserve_inventory(order: dict) -> dict:
    if df.activity_info().attempt <= reserve_failures(order["id"]):
        raise TimeoutError("inventory service timed out")
    units = sum(item["qty"] for item in order["items"])
    return {"id": f"res-{order['id']}", "units": units}


@df.activity
def release_reservation(reservation_id: str) -> str:
    return f"released {reservation_id}"


@df.activity(retry=df.RetryPolicy(initial_interval="50ms", maximum_attempts=3))
def book_carrier(order_id: str) -> dict:
    if df.activity_info().attempt <= carrier_failures(order_id):
        raise ConnectionError("carrier API unavailable")
    return {"tracking": f"TRK-{order_id.upper()}"}


@df.activity(inline=True)  # cheap: runs in the partition's process, not as a Ray task
def send_receipt(order_id: str, amount: float) -> str:
    return f"receipt for {order_id}: {amount:.2f}"


@df.workflow
async def ship_order(ctx: df.WorkflowContext, order: dict) -> dict:
    await ctx.sleep("200ms")  # the warehouse picks the parcel; a durable timer
    return await ctx.activity(book_carrier, order["id"])


@df.workflow
async def process_order(ctx: df.WorkflowContext, order: dict) -> dict:
    reserved = await ctx.activity(reserve_inventory, order)
    window = CARD_WINDOW if order["method"] == "card" else INVOICE_WINDOW
    payment = await ctx.wait_for_signal("payment", timeout=window, default=None)
    if payment is None:
        await ctx.activity(release_reservation, reserved["id"])
        return {"status": "cancelled", "reason": "payment_timeout"}
    child = await ctx.start_child(ship_order, order, workflow_id=f"ship-{order['id']}")
    shipped = await child.result()
    await ctx.activity(send_receipt, order["id"], payment["amount"])
    return {"status": "shipped", "paid": payment["amount"], "tracking": shipped["tracking"]}


# -- the questions -------------------------------------------------------------------------

P95_BY_TYPE = """
SELECT workflow_type,
       count(*)                                      AS runs,
       round(quantile_cont(duration_ms, 0.50))       AS p50_ms,
       round(quantile_cont(duration_ms, 0.95))       AS p95_ms,
       max(duration_ms)                              AS max_ms
FROM workflows
WHERE status = 'completed'
GROUP BY workflow_type
ORDER BY workflow_type
"""

MOST_RETRIES = """
SELECT activity,
       count(*)                                      AS executions,
       sum(attempts - 1)                             AS retries,
       count(*) FILTER (WHERE attempts > 1)          AS retried,
       max(attempts)                                 AS max_attempts,
       count(*) FILTER (WHERE outcome <> 'completed') AS not_completed
FROM activities
GROUP BY activity
ORDER BY retries DESC, activity
"""

# Open order runs (live_workflows: runs in the partitions now) whose last recorded event is
# the timer of the payment window, with no payment signal received: they wait on payment.
WAITING_ON_PAYMENT = """
WITH last_event AS (
    SELECT DISTINCT ON (workflow_id, run_id) workflow_id, run_id, event_type, data
    FROM history
    ORDER BY workflow_id, run_id, event_id DESC
),
paid AS (
    SELECT DISTINCT workflow_id, run_id FROM history
    WHERE event_type = 'workflow.signal_received' AND data ->> '$.name' = 'payment'
)
SELECT l.workflow_id                                             AS order_id,
       s.data ->> '$.args[0].customer'                           AS customer,
       CAST(s.data ->> '$.args[0].total' AS DECIMAL(10, 2))      AS total,
       l.start_time                                              AS ordered_at,
       to_timestamp(CAST(e.data ->> '$.fire_at_us' AS BIGINT) / 1e6)  AS payment_due
FROM live_workflows l
JOIN last_event e USING (workflow_id, run_id)
JOIN history s ON s.workflow_id = l.workflow_id AND s.run_id = l.run_id
              AND s.event_type = 'workflow.started'
WHERE l.status = 'running'
  AND l.workflow_type = 'process_order'
  AND e.event_type = 'workflow.timer_started'
  AND NOT EXISTS (SELECT 1 FROM paid p WHERE p.workflow_id = l.workflow_id
                                         AND p.run_id = l.run_id)
ORDER BY total DESC, order_id
"""

OUTCOMES = """
WITH per_run AS (
    SELECT workflow_id, run_id,
           bool_or(activity = 'release_reservation') AS released,
           count(*)                                  AS activities,
           sum(attempts - 1)                         AS retries
    FROM activities
    GROUP BY workflow_id, run_id
)
SELECT CASE WHEN p.released THEN 'cancelled (payment timeout)' ELSE 'shipped' END AS outcome,
       count(*)                                      AS orders,
       sum(p.activities)                             AS activities,
       sum(p.retries)                                AS retries,
       round(avg(w.duration_ms))                     AS avg_ms,
       round(quantile_cont(w.duration_ms, 0.95))     AS p95_ms
FROM workflows w
JOIN per_run p USING (workflow_id, run_id)
WHERE w.workflow_type = 'process_order' AND w.status = 'completed'
GROUP BY outcome
ORDER BY outcome DESC
"""


def show(title: str, table: Any, limit: int | None = None) -> None:
    """Print a pyarrow Table as an aligned text table (numbers right-aligned)."""
    names = table.column_names
    rows = table.to_pylist()
    shown = rows if limit is None else rows[:limit]
    cells = [[_cell(row[name]) for name in names] for row in shown]
    numeric = [
        bool(rows)
        and all(isinstance(row[name], numbers.Number) or row[name] is None for row in rows)
        for name in names
    ]
    widths = [max([len(name)] + [len(line[i]) for line in cells]) for i, name in enumerate(names)]
    print(f"\n{title}")

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(line(names))
    print(line(["-" * w for w in widths]))
    for values in cells:
        print(line(values))
    if len(rows) > len(shown):
        print(f"... and {len(rows) - len(shown)} more")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):  # UTC, to the second
        return (value.astimezone(dt.timezone.utc) if value.tzinfo else value).strftime("%H:%M:%S")
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,.2f}"
    return str(value)


def make_orders(count: int) -> list[dict]:
    rng = random.Random(7)  # the same orders on every run
    customers = ["ada", "bob", "chen", "dora", "emil", "fay", "gus", "hana"]
    orders = []
    for n in range(1, count + 1):
        items = [
            {"sku": rng.choice(["book", "lamp", "mug", "pen", "desk"]), "qty": rng.randint(1, 4)}
            for _ in range(rng.randint(1, 3))
        ]
        method = "invoice" if rng.random() < 0.3 else "card"
        pays = rng.random() < (0.7 if method == "invoice" else 0.85)
        total = round(sum(item["qty"] for item in items) * rng.uniform(4, 40), 2)
        orders.append(
            {
                "id": f"o-{n:04d}",
                "customer": rng.choice(customers),
                "items": items,
                "total": total,
                "method": method,
                "pays": pays,
            }
        )
    return orders


async def run_orders(client: df.Client, orders: list[dict]) -> dict[str, str]:
    """Check out every order (start it, and pay at once unless it never pays), 50 at a time
    with the client's async twins; wait for the orders that close; their outcomes by ID."""
    slots = asyncio.Semaphore(50)

    async def checkout(order: dict) -> df.WorkflowHandle:
        async with slots:
            handle = await client.start_async(
                process_order,
                order,
                workflow_id=f"order-{order['id']}",
                id_conflict="terminate_existing",  # a rerun starts the orders afresh
            )
            if order["pays"]:
                await handle.signal_async("payment", {"amount": order["total"]})
            return handle

    handles = await asyncio.gather(*(checkout(o) for o in orders))
    closing = [
        (o, h) for o, h in zip(orders, handles, strict=True) if o["pays"] or o["method"] == "card"
    ]
    results = await asyncio.gather(*(h.result_async(timeout=60) for _, h in closing))
    return {o["id"]: r["status"] for (o, _), r in zip(closing, results, strict=True)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=300, help="orders to run (default 300)")
    args = parser.parse_args(argv)
    orders = make_orders(args.orders)
    started = time.perf_counter()
    with df.Engine(DATA_DIR) as engine:  # the embedded default: a local Ray
        client = engine.client()
        outcomes = asyncio.run(run_orders(client, orders))
        shipped = sum(s == "shipped" for s in outcomes.values())
        closing = len(outcomes)
        waiting = len(orders) - closing
        print(
            f"{len(orders)} orders: {shipped} shipped, {closing - shipped} cancelled "
            f"(payment timeout), {waiting} waiting on payment "
            f"({time.perf_counter() - started:.1f}s)"
        )
        retries = sum(reserve_failures(o["id"]) for o in orders)
        retries += sum(carrier_failures(i) for i, s in outcomes.items() if s == "shipped")
        print(f"flaky services: {retries} activity attempts failed and were retried")

        engine.sync_archive(timeout=30)  # every event so far is queryable now
        queried = time.perf_counter()
        show("p95 duration per workflow type", client.sql(P95_BY_TYPE))
        show("activities with most retries", client.sql(MOST_RETRIES))
        waiting_rows = client.sql(WAITING_ON_PAYMENT)
        show("workflows waiting on payment (times in UTC)", waiting_rows, limit=10)
        print(f"{waiting_rows.num_rows} orders waiting on payment")
        show("how orders ended (workflows joined with activities)", client.sql(OUTCOMES))
        print(f"\nqueries took {time.perf_counter() - queried:.2f}s")
    print(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
