"""``python -m benchmarks``: run the benchmark scenarios and print a table (and JSON, a chart).

Every headline row is also given as a ratio to its floor (benchmarks/floors.py), measured in
the same run on the same loop: the least work any Python code must do for the same job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from .runner import (
    Result,
    Settings,
    attach_ratios,
    floor_scenarios,
    floors_needed,
    machine_info,
    python_scenarios,
    resolve_only,
    table,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    p.add_argument("--peer", choices=["python", "dpdk", "both"], default="both")
    p.add_argument("--repeats", type=int, default=5, help="measurement windows per scenario")
    p.add_argument("--window", type=float, default=1.0, help="seconds per window")
    p.add_argument("--warmup", type=float, default=0.3, help="seconds of warm-up per scenario")
    p.add_argument("--pingpongs", type=int, default=2000, help="round trips per ping-pong")
    p.add_argument("--sizes", default="64,512,1500,9000")
    p.add_argument("--only", default=None,
                   help="comma-separated scenario names, as the table prints them "
                        "(rx-sizes and tx-sizes: rx-burst-size, tx-burst-size); the floors "
                        "the selected rows are compared with always run too")
    p.add_argument("--json", default=None, help="write results to this file ('-' for stdout)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw throughput by frame size and round-trip CDFs (needs the "
                        "'plot' extra: matplotlib)")
    p.add_argument("--from", dest="sources", action="append", default=None, metavar="JSON",
                   help="with --plot: plot this file (this runner's --json, or memif-aio "
                        "bench --json output) instead of running; may be repeated")
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line (exits 2 with a message, as argparse does)."""
    p = parser()
    ns = p.parse_args(argv)
    try:
        ns.only_names = resolve_only(ns.only) if ns.only is not None else None
    except ValueError as exc:
        p.error(f"--only: {exc}")
    try:
        ns.size_list = [int(s) for s in ns.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes: not a comma-separated list of integers: {ns.sizes!r}")
    if any(s < 14 or s > 65535 for s in ns.size_list):
        p.error("--sizes: every size must be between 14 and 65535 bytes")
    if ns.repeats < 1 or ns.window <= 0 or ns.warmup < 0 or ns.pingpongs < 1:
        p.error("--repeats and --pingpongs must be at least 1, --window positive, "
                "--warmup not negative")
    if ns.sources and not ns.plot:
        p.error("--from needs --plot")
    return ns


def run_all(ns: argparse.Namespace) -> list[Result]:
    settings = Settings(repeats=ns.repeats, window=ns.window, warmup=ns.warmup,
                        pingpongs=ns.pingpongs)
    loops = ["asyncio", "uvloop"] if ns.loop == "both" else [ns.loop]
    sizes: list[int] = ns.size_list
    only: set[str] | None = ns.only_names
    need = floors_needed(only)
    results: list[Result] = []
    for loop_name in loops:
        jobs: list[Callable[[], Awaitable[list[Result]]]] = []
        if need:
            jobs.append(partial(floor_scenarios, settings, loop_name, sizes, need))
        if ns.peer in ("python", "both"):
            jobs.append(partial(python_scenarios, settings, loop_name, sizes, only))
        if ns.peer in ("dpdk", "both"):
            from .dpdk import dpdk_scenarios

            jobs.append(partial(dpdk_scenarios, settings, loop_name, sizes, only))
        got: list[Result] = []
        for make in jobs:
            got += _run_on(loop_name, make)
        attach_ratios(got, [r for r in got if r.peer == "-"])
        results += got
    return results


def _run_on(loop_name: str, make: Callable[[], Awaitable[list[Result]]]) -> list[Result]:
    async def main() -> list[Result]:
        return await make()

    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    if ns.sources:
        from .plot import PlotInputError, load, plot

        rows: list[dict[str, Any]] = []
        for src in ns.sources:
            try:
                rows += load(src)
            except (OSError, PlotInputError) as exc:
                print(f"python -m benchmarks: error: --from: {exc}", file=sys.stderr)
                return 2
        drawn = plot(rows, ns.plot, title=", ".join(os.path.basename(s) for s in ns.sources))
        print(f"{ns.plot}: {len(drawn)} series from {len(rows)} rows")
        return 0
    os.sched_setaffinity(0, {0})
    load_before = os.getloadavg()
    results = run_all(ns)
    loops = sorted({r.loop for r in results}, key=["asyncio", "uvloop"].index)
    info = machine_info(loops)
    # what else ran: a loaded machine moves every row, and two-process rows more than floors
    info["loadavg_before"] = [round(x, 2) for x in load_before]
    info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"# {info['cpu']} ({info['cores']} cores), Python {info['python']}, "
          f"memif_aio {info['memif_aio']}, DPDK {info['dpdk'] or '-'}, load average "
          f"{info['loadavg_before'][0]:.2f} before, {info['loadavg_after'][0]:.2f} after")
    print(table(results))
    settings = {k: v for k, v in vars(ns).items() if k not in ("only_names", "size_list")}
    doc: dict[str, Any] = {"machine": info, "settings": settings,
                           "results": [r.row() for r in results]}
    if ns.json:
        if ns.json == "-":
            json.dump(doc, sys.stdout, indent=1)
            print()
        else:
            with open(ns.json, "w") as f:
                json.dump(doc, f, indent=1)
    if ns.plot:
        from .plot import plot

        drawn = plot(doc["results"], ns.plot, title=f"{info['cpu']}, {info['date']}")
        print(f"{ns.plot}: {len(drawn)} series", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
