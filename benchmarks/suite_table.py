"""The suite's one table: duraflow in-process and on Ray beside DBOS and Restate from the same
run, with how many times better the Ray column did than each peer, and its targets."""

from __future__ import annotations

import argparse
from typing import Any

SYSTEMS = ("local", "ray", "dbos", "restate")
PEERS = ("dbos", "restate")
HEADER = (
    "workload",
    "in-process",
    "Ray",
    "DBOS",
    "Restate",
    "Ray vs DBOS",
    "Ray vs Restate",
    "target (Ray)",
)


def _get(results: dict[str, Any], system: str, *path: str) -> Any:
    value: Any = results.get(system)
    if system in PEERS:  # the peers have one kind of step: their keys carry no "_inline"/"_pool"
        path = tuple(key.removesuffix("_inline").removesuffix("_pool") for key in path)
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _pair(result: Any, fmt: str = "{:.1f}") -> str:
    if not isinstance(result, dict) or "p50_ms" not in result:
        return "-" if not isinstance(result, dict) else _dnf(result)
    return f"{fmt.format(result['p50_ms'])} / {fmt.format(result['p99_ms'])} ms"


def _dnf(result: dict[str, Any]) -> str:
    return "did not finish" if "did_not_finish" in result else "-"


def _ratio(ours: Any, theirs: Any, higher_is_better: bool) -> str:
    if not ours or not theirs:
        return "-"
    times = ours / theirs if higher_is_better else theirs / ours
    return f"{times:,.1f}x"


def _mark(value: Any, target: float, higher_is_better: bool) -> str:
    if value is None:
        return ""
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "NOT met"


def _row(
    label: str,
    local: str = "",
    ray: str = "",
    dbos: str = "",
    goal: str = "",
    *,
    restate: str = "",
    versus: tuple[str, ...] = ("", ""),
) -> tuple[str, ...]:
    """One row in HEADER's order (the peers' cells by name: most rows have none)."""
    return (label, local, ray, dbos, restate, *versus, goal)


def table(args: argparse.Namespace, r: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows: workload, in-process, Ray, DBOS, Restate, Ray vs DBOS, Ray vs Restate, target for
    Ray (met or not)."""
    rows: list[tuple[str, ...]] = [HEADER]
    rows.extend(_core_rows(args, r))
    for size in args.parked:
        rows.extend(_parked_rows(r, size))
    rows.extend(_message_rows(args, r))
    rows.extend(_restart_rows(r.get("restart") or {}))
    rows.extend(_archive_rows(r))
    rows.extend(_floor_rows(r))
    return rows


def _core_rows(args: argparse.Namespace, r: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []

    def throughput(label: str, key: str, target: float | None) -> None:
        vals = [_get(r, s, key, "workflows_per_s") for s in SYSTEMS]
        goal = f">= {target:,.0f}: {_mark(vals[1], target, True)}" if target else ""
        cells = [_num(v, "{:,.0f} wf/s") for v in vals]
        versus = (_ratio(vals[1], vals[2], True), _ratio(vals[1], vals[3], True))
        rows.append(_row(label, *cells[:3], goal, restate=cells[3], versus=versus))

    def latency(label: str, key: str, stat: str = "p50_ms", target: float | None = None) -> None:
        cells = [_pair(_get(r, s, key)) for s in SYSTEMS]
        ours = _get(r, "ray", key, stat)
        versus = tuple(f"{_ratio(ours, _get(r, p, key, stat), False)} ({stat[:3]})" for p in PEERS)
        goal = ""
        if target is not None:
            goal = f"{stat[:3]} <= {target:g} ms: {_mark(ours, target, False)}"
        rows.append(_row(label, *cells[:3], goal, restate=cells[3], versus=versus))

    n = args.workflows
    throughput(f"W1 {n} x 3 activities, inline", "w1_throughput_inline", 1100)
    latency("W1 latency under load p50/p99", "w1_throughput_inline")
    latency("W1 unloaded p50/p99", "w1_unloaded_inline", target=10)
    rows.append(_in_flight_row(r, n, "inline"))
    throughput(f"W1 {n} x 3 plain activities (default pool)", "w1_throughput_pool", 1000)
    latency("W1 plain activities unloaded p50/p99", "w1_unloaded_pool", target=10)
    rows.append(_in_flight_row(r, n, "pool", restate_times=2))
    rows.append(_pool_share_row(r))
    ray_tasks = _get(r, "ray", "w1_throughput_ray_tasks", "workflows_per_s")
    unloaded = _pair(_get(r, "ray", "w1_unloaded_ray_tasks"))
    rows.append(
        _row(
            "W1 with activities as Ray tasks",
            "",
            f"{_num(ray_tasks, '{:,.0f} wf/s')}, {unloaded} unloaded",
        )
    )
    latency(f"W2 {args.signals} signalled at once p50/p99", "w2_signal_loaded")
    latency("W2 signal unloaded p50/p99", "w2_signal_unloaded", target=5)
    latency(f"U {args.signals} updated at once p50/p99", "u_update_loaded")
    latency("U update round trip p50/p99", "u_update_unloaded")
    rows.append(_update_ratio_row(r))
    latency(
        f"W3 {args.timers} x 1 s timers, lateness p50/p99",
        "w3_timer_lateness",
        "p99_ms",
        target=20,
    )
    return rows


def _update_ratio_row(r: dict[str, Any]) -> tuple[str, ...]:
    """An update's round trip over a signal's (W2 unloaded), in the same run: the target is
    at most 2x."""
    ratios = []
    for system in ("local", "ray"):
        update = _get(r, system, "u_update_unloaded", "p50_ms")
        signal = _get(r, system, "w2_signal_unloaded", "p50_ms")
        ratios.append(update / signal if update and signal else None)
    goal = f"<= 2x: {_mark(ratios[1], 2.0, False)}" if ratios[1] is not None else ""
    cells = [_num(v, "{:.2f}x") for v in ratios]
    return _row("U update p50 / W2 signal p50", *cells, "", goal)


def _in_flight_row(
    r: dict[str, Any], n: int, kind: str, restate_times: float | None = None
) -> tuple[str, ...]:
    """W1 with a fixed number in flight (a new one starts as one finishes), its activities of
    ``kind``; with ``restate_times``, the target: at least that many times Restate's."""
    results = [_get(r, s, f"w1_in_flight_{kind}") for s in SYSTEMS]
    cells = [
        f"{res['workflows_per_s']:,.0f} wf/s, {_pair(res)}" if res and "p50_ms" in res else "-"
        for res in results
    ]
    rates = [res.get("workflows_per_s") if res else None for res in results]
    in_flight = next((res["in_flight"] for res in results if res and "in_flight" in res), 32)
    versus = (_ratio(rates[1], rates[2], True), _ratio(rates[1], rates[3], True))
    label = f"W1 {n} with {in_flight} in flight" + (", plain activities" if kind == "pool" else "")
    goal = ""
    if restate_times is not None and rates[1] and rates[3]:
        goal = f">= {restate_times:g}x Restate: {_mark(rates[1] / rates[3], restate_times, True)}"
    return _row(label, *cells[:3], goal, restate=cells[3], versus=versus)


def _pool_share_row(r: dict[str, Any]) -> tuple[str, ...]:
    """W1 all at once on the default pool as a share of the inline path's (same run)."""
    pool = _get(r, "ray", "w1_throughput_pool", "workflows_per_s")
    inline = _get(r, "ray", "w1_throughput_inline", "workflows_per_s")
    share = pool / inline if pool and inline else None
    goal = f">= 60%: {_mark(share, 0.6, True)}" if share is not None else ""
    return _row("W1 default pool / inline, all at once", "", _num(share, "{:.0%}"), goal=goal)


def _peer_parked_text(peer: dict[str, Any], metric: str, value: Any, fmt: str) -> str:
    """A peer's W4 cell, saying how far it got when it did not finish."""
    unfinished = peer.get("did_not_finish")
    if not unfinished or value is not None:
        return _num(value, fmt)
    if metric == "start all":
        return f"{peer.get('started', 0):,} started, then {unfinished}"
    if metric == "total RSS" and peer.get("rss_mib_at_stop"):
        return f"{peer['rss_mib_at_stop']:,.0f} MiB at stop"
    return "did not finish"


def _parked_rows(r: dict[str, Any], size: int) -> list[tuple[str, ...]]:
    key = f"w4_parked_{size}"
    peers = [_get(r, p, "w4_parked", str(size)) or {} for p in PEERS]
    rows = []
    for metric, ours, theirs, fmt in (
        ("start all", "start_s", "start_s", "{:,.1f} s"),
        ("total RSS", "rss_parked_mib", "rss_mib", "{:,.0f} MiB"),
        ("signal, complete all", "signal_and_complete_s", "complete_s", "{:,.1f} s"),
    ):
        vals = [_get(r, s, key, ours) for s in ("local", "ray")]
        theirs_vals = [peer.get(theirs) for peer in peers]
        texts = [_num(v, fmt) for v in vals]
        texts += [
            _peer_parked_text(peer, metric, v, fmt)
            for peer, v in zip(peers, theirs_vals, strict=True)
        ]
        goal = ""
        if metric == "total RSS" and size >= 100_000:
            goal = f"<= 4,096 MiB: {_mark(vals[1], 4096, False)}"
        versus = tuple(_ratio(vals[1], v, False) for v in theirs_vals)
        rows.append(
            _row(f"W4 {size:,} parked: {metric}", *texts[:3], goal, restate=texts[3], versus=versus)
        )
    return rows


def _message_rows(args: argparse.Namespace, r: dict[str, Any]) -> list[tuple[str, ...]]:
    """W6: a signal between workflows across partitions; ping-pong per round trip (DBOS ran
    fewer round trips: its figure is per round trip too)."""
    cells = [_pair(_get(r, s, "w6_signal")) for s in ("local", "ray")]
    rows = [_row(f"W6 {args.signals} workflow->workflow signals p50/p99", *cells, "n/a")]
    results = [_get(r, s, "w6_ping_pong") for s in SYSTEMS]
    texts = [
        f"{res['ms_per_round_trip']:,.1f} ms ({res['round_trips']:,})"
        if res and "ms_per_round_trip" in res
        else "-"
        for res in results
    ]
    per = [res.get("ms_per_round_trip") if res else None for res in results]
    times = per[2] / per[1] if per[1] and per[2] else None
    goal = f">= 5x DBOS: {_mark(times, 5, True)}" if times else ""
    versus = (_ratio(per[1], per[2], False), _ratio(per[1], per[3], False))
    label = "W6 ping-pong, per round trip (round trips)"
    rows.append(_row(label, *texts[:3], goal, restate=texts[3], versus=versus))
    return rows


def _seconds(result: dict[str, Any], measure: str) -> str:
    value = result["kill_to"][measure]
    return f"{value['p50_s']:.1f} / {value['max_s']:.1f} s"


def _restart_rows(restart: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per restart scenario: kill -9 -> a signal served again (and the new PID seen)."""
    rows: list[tuple[str, ...]] = []
    for key, result in restart.items():
        if not key.startswith("parked_"):
            continue
        load = result["load_in_flight"]
        where = f"{result['parked']:,} open, " + (f"W1 {load} in flight" if load else "idle")
        served = _seconds(result, "serving")
        rows.append(
            _row(
                f"R kill -9 -> served p50/max, {where}",
                "",
                f"{served} (new PID in status {_seconds(result, 'new_pid')})",
                "n/a",
                restate="n/a",
            )
        )
    return rows


def _archive_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    """W5: neither peer has an archive (n/a)."""
    rows = []
    archives = r.get("archive") or {}
    if archives:  # each DuckDB size is archived by a throughput run of its own: one row for all
        rates = [archived["a1"]["end_to_end_events_per_s"] for archived in archives.values()]
        events = next(iter(archives.values()))["a1"]["events"]
        runs = f" ({len(rates)} runs)" if len(rates) > 1 else ""
        rates_text = " / ".join(f"{rate:,.0f}" for rate in rates) + " events/s"
        goal = f">= 50,000/s: {_mark(min(rates), 50_000, True)}"
        label = f"W5 archive, {events:,} events into Iceberg{runs}"
        rows.append(_row(label, rates_text, "", "n/a", goal, restate="n/a"))
    for size, archived in archives.items():
        queries = archived["queries_after"]
        for title in ("group by event_type (full scan)", "workflows join activities"):
            label = f"W5 DuckDB, {int(size):,} rows: {title}"
            cell = _num(queries.get(title), "{:,.0f} ms")
            rows.append(_row(label, cell, "", "n/a", restate="n/a"))
    lag = r.get("lag") or {}
    if lag:
        cells = [_pair(_get(lag, s, "visible"), "{:,.0f}") for s in ("local", "ray")]
        goal = f"p99 <= 5,000 ms: {_mark(_get(lag, 'ray', 'visible', 'p99_ms'), 5000, False)}"
        rows.append(_row("W5 lag completed -> in SQL p50/p99", *cells, "n/a", goal, restate="n/a"))
    return rows


def _floor_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    floor = r["sqlite_floor"]
    rows = [
        _row("floor: SQLite 1-row commits", f"{floor['commits_per_s']:,.0f}/s"),
        _row(
            "floor: SQLite W1 rows, 1 / 50 per commit",
            f"{floor['w1_one_per_commit_workflows_per_s']:,.0f} / "
            f"{floor['w1_batched_workflows_per_s']:,.0f} wf/s",
        ),
    ]
    ray_floor = _get(r, "ray", "ray_floor")
    if ray_floor:
        call = (
            f"{_pair(ray_floor['round_trip'], '{:.2f}')} round trip, "
            f"{ray_floor['pipelined_calls_per_s']:,.0f} calls/s pipelined, "
            f"{ray_floor['batched_us_per_request']:.0f} us/request in batches of 100"
        )
        rows.append(_row("floor: Ray actor call", "", call))
    restart_floor = (r.get("restart") or {}).get("ray_floor")
    if restart_floor:
        label = "floor: Ray restarts a bare actor p50/max"
        rows.append(_row(label, "", _seconds(restart_floor, "new_pid")))
    return rows


def render(rows: list[tuple[str, ...]]) -> str:
    """The rows as a Markdown table (README's Performance section takes it as it is)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
