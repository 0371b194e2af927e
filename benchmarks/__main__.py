"""``python -m benchmarks``: run the benchmark scenarios and print a table (and JSON)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from .runner import Result, Settings, machine_info, python_scenarios, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    p.add_argument("--peer", choices=["python", "dpdk", "both"], default="both")
    p.add_argument("--repeats", type=int, default=5, help="measurement windows per scenario")
    p.add_argument("--window", type=float, default=1.0, help="seconds per window")
    p.add_argument("--pingpongs", type=int, default=2000)
    p.add_argument("--sizes", default="64,512,1500,9000")
    p.add_argument("--only", default=None, help="comma-separated scenario names")
    p.add_argument("--json", default=None, help="write results to this file ('-' for stdout)")
    ns = p.parse_args(argv)
    os.sched_setaffinity(0, {0})
    settings = Settings(repeats=ns.repeats, window=ns.window, pingpongs=ns.pingpongs)
    loops = ["asyncio", "uvloop"] if ns.loop == "both" else [ns.loop]
    sizes = [int(s) for s in ns.sizes.split(",")]
    only = set(ns.only.split(",")) if ns.only else None
    results: list[Result] = []
    for loop_name in loops:
        coro_factory = []
        if ns.peer in ("python", "both"):
            coro_factory.append(lambda ln=loop_name: python_scenarios(settings, ln, sizes, only))
        if ns.peer in ("dpdk", "both"):
            from .dpdk import dpdk_scenarios

            coro_factory.append(lambda ln=loop_name: dpdk_scenarios(settings, ln, sizes, only))
        for make in coro_factory:
            if loop_name == "uvloop":
                import uvloop

                results += uvloop.run(make())
            else:
                results += asyncio.run(make())
    info = machine_info(loops)
    print(f"# {info['cpu']} ({info['cores']} cores), Python {info['python']}, "
          f"memif_aio {info['memif_aio']}, DPDK {info['dpdk'] or '-'}")
    print(table(results))
    if ns.json:
        doc = {"machine": info, "settings": vars(ns), "results": [r.row() for r in results]}
        if ns.json == "-":
            json.dump(doc, sys.stdout, indent=1)
        else:
            with open(ns.json, "w") as f:
                json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
