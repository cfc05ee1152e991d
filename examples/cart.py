"""A shopping cart as a workflow that answers updates (DESIGN.md section 5).

Each cart is one workflow run. Adding an item is an *update*: a validator refuses unknown
products before anything is recorded, and the handler prices the item through an activity
and returns the new total once it is durable. ``update_with_start`` adds the first item and
creates the cart in one step, so shoppers racing to fill the same cart share one run.

Run it with ``./dev example cart`` (or ``python examples/cart.py``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import duraflow as df

CATALOG = {"book": 12.5, "lamp": 30.0, "mug": 6.0}
CART_TTL_S = 3600.0  # a cart not checked out is abandoned after an hour (a durable timer)


@df.activity
def price_of(sku: str, qty: int) -> float:
    return CATALOG[sku] * qty  # a pricing service, in a real shop


@df.workflow
async def cart(ctx: df.WorkflowContext, customer: str) -> dict[str, Any]:
    lines: dict[str, float] = {}
    checked_out = asyncio.Event()

    def in_catalog(item: dict[str, Any]) -> None:
        if item["sku"] not in CATALOG:
            raise ValueError(f"we do not sell {item['sku']!r}")
        if item["qty"] < 1:
            raise ValueError("qty must be at least 1")

    async def add_item(item: dict[str, Any]) -> float:
        price = await ctx.activity(price_of, item["sku"], item["qty"])
        # read the line after the await: other updates may have changed it meanwhile
        lines[item["sku"]] = lines.get(item["sku"], 0.0) + price
        return sum(lines.values())

    def remove_item(sku: str) -> float:
        del lines[sku]  # KeyError for an item not in the cart: that update fails
        return sum(lines.values())

    def checkout() -> dict[str, Any]:
        checked_out.set()
        return {"customer": customer, "lines": dict(lines), "total": sum(lines.values())}

    ctx.set_update_handler("add_item", add_item, validator=in_catalog)
    ctx.set_update_handler("remove_item", remove_item)
    ctx.set_update_handler("checkout", checkout)
    ctx.set_query_handler("total", lambda: sum(lines.values()))
    try:
        await asyncio.wait_for(checked_out.wait(), CART_TTL_S)
    except asyncio.TimeoutError:
        return {"customer": customer, "status": "abandoned"}
    return {"customer": customer, "status": "ordered", "total": sum(lines.values())}


def main() -> None:
    started = time.perf_counter()
    # In-process partitions keep the example quick; drop runtime= to host them on Ray.
    with df.Engine(".duraflow-cart", runtime="local") as engine:
        client = engine.client()
        wid = f"cart-alice-{int(time.time())}"
        total = client.update_with_start(
            cart, "alice", workflow_id=wid, update="add_item", payload={"sku": "book", "qty": 2}
        )
        print(f"alice added 2 books: total {total:.2f}")
        total = client.update_with_start(
            cart, "alice", workflow_id=wid, update="add_item", payload={"sku": "mug", "qty": 1}
        )
        print(f"alice added a mug: total {total:.2f}")
        handle = client.get_handle(wid)
        try:
            handle.update("add_item", {"sku": "unicorn", "qty": 1})
        except df.UpdateRejected as refused:
            print(f"refused: {refused}")
        try:
            handle.update("remove_item", "lamp")
        except df.UpdateFailed as failed:
            print(f"failed: {failed.cause_type} {failed.cause_message}")
        print(f"alice removed the mug: total {handle.update('remove_item', 'mug'):.2f}")
        order = handle.update("checkout")
        print(f"alice checked out: {order}")
        print(f"result: {handle.result(timeout=30)}")

        async def crowd() -> list[float]:
            return await asyncio.gather(
                *(
                    client.update_with_start_async(
                        cart,
                        "family",
                        workflow_id=f"{wid}-family",
                        update="add_item",
                        payload={"sku": "mug", "qty": 1},
                    )
                    for _ in range(20)
                )
            )

        totals = asyncio.run(crowd())  # the client's async calls work on any loop
        runs = client.list(workflow_type="cart")
        family = [r for r in runs if r.workflow_id == f"{wid}-family"]
        print(f"20 shoppers raced on one cart: {len(family)} run, total {max(totals):.2f}")
        client.get_handle(f"{wid}-family").update("checkout")
    print(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
