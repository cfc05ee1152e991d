"""An eternal billing loop: one workflow per account, running month after month for as long
as the account is open, with a bounded history (continue-as-new).

Run it with ``./dev example billing`` (or ``python examples/billing.py``). Each run of an
account's workflow is one billing month: it adds up the usage signalled during the month,
sends the invoice (an activity), then continues as new for the next month, carrying only
the running totals. Usage signalled after the month closed and before the next run started
is not lost: signals a run did not take carry over to the next run. Closing the account
ends the loop. The accounts carry search attributes, so the client can find them by plan.
"""

from __future__ import annotations

import time

import duraflow as df

MONTH_S = 0.4  # a billing period: 30 days in production; short so the example finishes quickly


@df.activity(retry=df.RetryPolicy(initial_interval="100ms", maximum_attempts=5))
def send_invoice(account: str, month: int, amount: float) -> str:
    return f"INV-{account}-{month:03d}: {amount:.2f}"


@df.workflow
async def billing_account(ctx: df.WorkflowContext, account: str, month: int, totals: dict) -> dict:
    """One billing month of ``account``; the next month is the next run of the same ID."""
    ctx.set_search_attributes(month=month)
    month_ends = ctx.time() + MONTH_S
    usage, closing = 0.0, False
    while not closing and ctx.time() < month_ends:
        event = await ctx.wait_for_signal("account", timeout=month_ends - ctx.time(), default=None)
        if event is None:
            break  # the month is over
        if event["kind"] == "usage":
            usage += event["amount"]
        else:
            closing = True
    invoice = await ctx.activity(send_invoice, account, month, round(usage, 2))
    totals = {
        "invoices": totals["invoices"] + 1,
        "billed": round(totals["billed"] + usage, 2),
        "last_invoice": invoice,
    }
    if closing:
        return {"account": account, "months": month, **totals}
    await ctx.continue_as_new(account, month + 1, totals)  # history starts afresh


def main() -> None:
    accounts = {"acme": "pro", "globex": "basic"}
    started = time.perf_counter()
    # In-process partitions (runtime="local"); the default, Ray, runs the same code.
    with df.Engine(".duraflow-billing", runtime="local") as engine:
        client = engine.client()
        handles = {
            name: client.start(
                billing_account,
                name,
                1,
                {"invoices": 0, "billed": 0.0},
                workflow_id=f"billing-{name}",
                id_conflict="terminate_existing",  # re-running the example starts afresh
                search_attributes={"customer": name, "plan": plan},
            )
            for name, plan in accounts.items()
        }
        for name in accounts:
            print(f"opened    billing-{name}")
        for _ in range(12):  # usage comes in over about three billing months
            for i, handle in enumerate(handles.values()):
                handle.signal("account", {"kind": "usage", "amount": 1.25 * (i + 1)})
            time.sleep(0.1)
        for handle in handles.values():
            handle.signal("account", {"kind": "close"})
        for name, handle in handles.items():
            result = handle.result(timeout=60)
            print(
                f"closed    billing-{name}: {result['invoices']} monthly invoices, "
                f"billed {result['billed']:.2f}, last {result['last_invoice']}"
            )
            runs = [
                d
                for d in client.list(workflow_type="billing_account")
                if d.first_run_id == handle.first_run_id
            ]
            longest = max(d.history_length for d in runs)
            print(
                f"history   billing-{name}: {len(runs)} runs, "
                f"{sum(d.status == 'continued_as_new' for d in runs)} continued as new, "
                f"at most {longest} events per run"
            )
        pro = client.list(search={"plan": "pro"}, workflow_type="billing_account")
        print(f"pro plan: {sorted({d.workflow_id for d in pro})}")
    print(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
