"""The README's runnable stories run end to end, as a user would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run_example(name: str, folder: Path) -> str:
    """Run ``examples/<name>.py`` in ``folder`` (where it keeps its data directory), as a user
    would; its standard output, once it has exited with 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py")],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == done.returncode, done.stderr
    return done.stdout


def test_order_example_runs_and_one_order_times_out(tmp_path: Path) -> None:
    out = _run_example("order", tmp_path)
    assert (
        "result    order-o-1: {'status': 'completed', 'paid': 25.0, 'tracking': 'TRK-O-1'}" in out
    )
    assert "result    order-o-2: {'status': 'cancelled', 'reason': 'payment_timeout'" in out
    assert (
        "result    order-o-3: {'status': 'completed', 'paid': 31.5, 'tracking': 'TRK-O-3'}" in out
    )
    assert "open orders left: 0" in out
    assert (tmp_path / ".duraflow" / "deployment.json").exists()


def _table(out: str, title: str) -> dict[str, list[str]]:
    """The rows of a table the analytics example printed under ``title``, by first cell."""
    lines = out.split(f"\n{title}\n", 1)[1].splitlines()
    assert set(lines[1]) <= {"-", " "}, lines[:2]  # header, then the dashes
    rows = {}
    for line in lines[2:]:
        if not line.strip() or line.startswith("..."):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


def _number(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_analytics_example_answers_with_sql(tmp_path: Path) -> None:
    out = _run_example("analytics", tmp_path)
    summary = re.search(
        r"300 orders: (\d+) shipped, (\d+) cancelled \(payment timeout\), "
        r"(\d+) waiting on payment",
        out,
    )
    assert summary, out
    shipped, cancelled, waiting = (int(g) for g in summary.groups())
    assert shipped > 0 and cancelled > 0 and waiting > 0
    failed_attempts = int(re.search(r"flaky services: (\d+) activity attempts failed", out)[1])

    p95 = _table(out, "p95 duration per workflow type")
    assert shipped + cancelled == _number(p95["process_order"][0])
    assert shipped == _number(p95["ship_order"][0])
    p50_ms, p95_ms = _number(p95["process_order"][1]), _number(p95["process_order"][2])
    assert 0 < p50_ms <= p95_ms

    retries = _table(out, "activities with most retries")
    assert ["reserve_inventory", "book_carrier"] == list(retries)[:2]  # most retries first
    assert "300" == retries["reserve_inventory"][0]
    assert "0" == retries["send_receipt"][1]
    assert failed_attempts == sum(_number(row[1]) for row in retries.values())

    waiting_rows = _table(out, "workflows waiting on payment (times in UTC)")
    assert min(waiting, 10) == len(waiting_rows)
    assert all(order_id.startswith("order-o-") for order_id in waiting_rows)
    assert f"\n{waiting} orders waiting on payment\n" in out

    ended = _table(out, "how orders ended (workflows joined with activities)")
    assert shipped == _number(ended["shipped"][0])
    assert cancelled == _number(ended["cancelled (payment timeout)"][0])
    assert (tmp_path / ".duraflow-analytics" / "archive").is_dir()


def test_coordinator_example_children_signal_back_and_the_parent_publishes(
    tmp_path: Path,
) -> None:
    out = _run_example("coordinator", tmp_path)
    assert "audit     3/3 regions counted" in out
    assert "rows      3500, approved by auditor" in out
    for region in ("amer", "apac", "emea"):
        assert f"closed    report-2026-01-05-{region}: completed" in out
    assert "published s3://reports/apac.parquet (800 rows)" in out


def test_cart_example_answers_updates_and_races_onto_one_run(tmp_path: Path) -> None:
    out = _run_example("cart", tmp_path)
    assert "alice added a mug: total 31.00" in out
    assert "refused: we do not sell 'unicorn'" in out
    assert "failed: KeyError 'lamp'" in out
    assert "result: {'customer': 'alice', 'status': 'ordered', 'total': 25.0}" in out
    assert "20 shoppers raced on one cart: 1 run, total 120.00" in out


def test_billing_example_loops_month_after_month_with_continue_as_new(tmp_path: Path) -> None:
    out = _run_example("billing", tmp_path)
    for name, billed in (("acme", "15.00"), ("globex", "30.00")):
        closed = re.search(rf"closed    billing-{name}: (\d+) monthly invoices, billed (\S+),", out)
        assert closed, out
        assert closed[2] == billed  # every usage signal billed once, whichever month took it
        runs = re.search(
            rf"history   billing-{name}: (\d+) runs, (\d+) continued as new, "
            r"at most (\d+) events per run",
            out,
        )
        assert runs, out
        invoices, count, continued = int(closed[1]), int(runs[1]), int(runs[2])
        assert count == invoices >= 2 and continued == count - 1
    assert "pro plan: ['billing-acme']" in out
