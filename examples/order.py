"""The order workflow of DESIGN.md: reserve stock, wait for payment (with a timeout and a
compensation), then ship through a child workflow.

Run it with ``./dev example`` (or ``python examples/order.py``). Three orders are started;
two are paid, one never is and is cancelled when its payment window closes. Every step is
durable: kill the script half-way and run it again, and the open orders carry on where they
were (their activities are not run again).
"""

from __future__ import annotations

import time
import zlib

import duraflow as df

PAYMENT_WINDOW = "3s"  # "24h" in production; short so the example finishes quickly


@df.activity(retry=df.RetryPolicy(initial_interval="100ms", maximum_attempts=3))
def reserve_inventory(items: list[dict]) -> dict:
    total = sum(item["qty"] for item in items)
    skus = ",".join(item["sku"] for item in items)
    return {"id": f"res-{zlib.crc32(skus.encode()) % 10_000:04d}", "units": total}


@df.activity
def cancel_reservation(reservation_id: str) -> str:
    return f"released {reservation_id}"


@df.activity(start_to_close_timeout="10s")
def book_carrier(order_id: str) -> dict:
    return {"tracking": f"TRK-{order_id.upper()}"}


@df.workflow
async def ship_order(ctx: df.WorkflowContext, order: dict) -> dict:
    await ctx.sleep("1s")  # waiting for the warehouse pick; a durable timer
    return await ctx.activity(book_carrier, order["id"])


@df.workflow
async def process_order(ctx: df.WorkflowContext, order: dict) -> dict:
    step = {"step": "reserving"}
    ctx.set_query_handler("status", lambda: step)
    reserved = await ctx.activity(reserve_inventory, order["items"])
    step["step"] = "awaiting_payment"
    payment = await ctx.wait_for_signal("payment", timeout=PAYMENT_WINDOW, default=None)
    if payment is None:
        released = await ctx.activity(cancel_reservation, reserved["id"])
        return {"status": "cancelled", "reason": "payment_timeout", "compensation": released}
    step["step"] = "shipping"
    child = await ctx.start_child(ship_order, order, workflow_id=f"ship-{order['id']}")
    shipped = await child.result()
    return {"status": "completed", "paid": payment["amount"], "tracking": shipped["tracking"]}


def main() -> None:
    orders = [
        {"id": "o-1", "items": [{"sku": "book", "qty": 2}], "pays": 25.00},
        {"id": "o-2", "items": [{"sku": "lamp", "qty": 1}], "pays": None},
        {"id": "o-3", "items": [{"sku": "mug", "qty": 4}], "pays": 31.50},
    ]
    started = time.perf_counter()
    with df.Engine() as engine:  # embedded default: data in ./.duraflow
        client = engine.client()
        handles = {}
        for order in orders:
            handles[order["id"]] = client.start(
                process_order,
                order,
                workflow_id=f"order-{order['id']}",
                id_conflict="terminate_existing",  # re-running the example starts afresh
            )
            print(f"started   order-{order['id']}")
        time.sleep(0.3)
        for order in orders:
            handle = handles[order["id"]]
            print(f"status    order-{order['id']}: {handle.query('status')['step']}")
            if order["pays"] is not None:
                handle.signal("payment", {"amount": order["pays"]})
                print(f"paid      order-{order['id']}: {order['pays']:.2f}")
        for order in orders:
            result = handles[order["id"]].result(timeout=60)
            print(f"result    order-{order['id']}: {result}")
        still_open = client.list(status="running", workflow_type="process_order")
        print(f"open orders left: {len(still_open)}")
    print(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
