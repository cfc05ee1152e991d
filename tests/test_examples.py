"""The README's runnable stories run end to end, as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_order_example_runs_and_one_order_times_out(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "order.py")],
        cwd=tmp_path,  # the example keeps its data in ./.duraflow
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == done.returncode, done.stderr
    out = done.stdout
    assert (
        "result    order-o-1: {'status': 'completed', 'paid': 25.0, 'tracking': 'TRK-O-1'}" in out
    )
    assert "result    order-o-2: {'status': 'cancelled', 'reason': 'payment_timeout'" in out
    assert (
        "result    order-o-3: {'status': 'completed', 'paid': 31.5, 'tracking': 'TRK-O-3'}" in out
    )
    assert "open orders left: 0" in out
    assert (tmp_path / ".duraflow" / "deployment.json").exists()
