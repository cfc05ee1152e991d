"""Recorded histories replay against the current workflow code (tests/histories/).

Each ``*.msgpack`` there holds the runs of one scenario, recorded by
``./dev python -m tests.histories.record``; its ``.json`` twin holds the same events for
people. A change to the engine or to tests/histories/flows.py that would break replay of runs
already recorded fails here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import duraflow as df
from duraflow.engine.run import PYTHON_VERSION
from duraflow.testing import Replayer, load_history
from tests.histories import flows, record

HISTORIES = Path(__file__).resolve().parent / "histories"
RECORDED = sorted(HISTORIES.glob("*.msgpack"))


def test_every_scenario_has_a_recorded_history_and_a_json_twin() -> None:
    assert sorted(record.SCENARIOS) == sorted(p.stem for p in RECORDED)
    assert [] == [p.name for p in RECORDED if not p.with_suffix(".json").exists()]


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_recorded_history_replays_against_the_current_code(path: Path) -> None:
    events = load_history(path)
    recorded_on = events[0].python
    if recorded_on != PYTHON_VERSION:
        pytest.skip(f"recorded on Python {recorded_on}; replay needs the same minor version")
    runs = len({(e.workflow_id, e.run_id) for e in events})

    assert runs == Replayer(workflows=flows.WORKFLOWS).replay(path)
    assert events == load_history(path.with_suffix(".json"))  # the twin says the same
    assert runs == Replayer(workflows=flows.WORKFLOWS).replay(path.with_suffix(".json"))


@df.workflow(name="hist_activities_changed")  # registered under its own name: see the mapping
async def activities_with_a_timer_first(ctx: df.WorkflowContext, order_id: str) -> dict:
    await asyncio.sleep(60)  # the change: a timer before the charge
    charged = await ctx.activity(flows.hist_charge, order_id, 12.5)
    return {"charged": charged}


def test_a_changed_workflow_is_refused_naming_the_first_divergence() -> None:
    path = HISTORIES / "activities.msgpack"
    if load_history(path)[0].python != PYTHON_VERSION:
        pytest.skip("recorded on another Python minor version")
    replayer = Replayer(workflows={"hist_activities": activities_with_a_timer_first})

    with pytest.raises(df.NonDeterminismError) as caught:
        replayer.replay(path)

    message = str(caught.value)
    assert "workflow 'hist-activities'" in message
    assert (
        "event 2: history recorded activity_scheduled 'hist_charge' (seq 1), "
        "replayed code issued timer_started (seq 1)"
    ) in message


RACY_SCENARIOS = {"messages"}
"""Scenarios whose workflows talk across partitions (see the comment in the test)."""


def test_the_recorder_still_records_histories_that_replay(tmp_path: Path) -> None:
    written = record.record(tmp_path)

    assert 2 * len(record.SCENARIOS) == len(written)
    for path in tmp_path.glob("*.msgpack"):
        recorded = load_history(path)
        stored = load_history(HISTORIES / path.name)
        # the same scenario records the same events (run IDs aside: they are random); where
        # workflows message each other, when a delivery's acknowledgement lands beside the
        # resolutions of the same run is timing, so only the events themselves must match
        stored_types = [type(e).__name__ for e in stored]
        recorded_types = [type(e).__name__ for e in recorded]
        if path.stem in RACY_SCENARIOS:
            assert sorted(stored_types) == sorted(recorded_types)
        else:
            assert stored_types == recorded_types
        assert Replayer(workflows=flows.WORKFLOWS).replay(path) >= 1
