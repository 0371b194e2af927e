"""``python -m benchmarks.workers``: aggregate receive rate of a WorkerPool (issue 14 §3).

dpdk-testpmd (memif server, ``txonly``, 64-byte frames, ``--rxq=2 --txq=2``) transmits on
both queues; memif_aio is the slave, its owner process keeps the control channel, and a
:class:`memif_aio.workers.WorkerPool` of 1 worker (queue pair 0) and of 2 workers (pairs 0
and 1) receives.  The two configurations alternate round by round in one run.  Every worker
counts what it receives in the same wall-clock windows (``--windows`` of ``--window``
seconds); a window's aggregate is the sum over the workers.  Printed: the median aggregate
with min and max per configuration, and the ratio of the medians (2 workers / 1 worker).

Placement (``--placement``), on a 2-core machine where testpmd's transmitter busy-polls:

* ``shared``: testpmd on CPU 1, worker 0 on CPU 0, worker 1 on CPU 1 beside testpmd (both at
  nice 0: the scheduler splits CPU 1 between them);
* ``nice``: the same CPUs, testpmd reniced to 19 once it is up, so that a runnable worker
  takes CPU 1 first and testpmd transmits in what is left (it needs little: it generates
  several times faster than one Python receiver drains);
* ``free``: testpmd on CPU 1, the owner and the workers unpinned (where the kernel puts them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from memif_aio import Arguments, MemoryConfig, RxMode, RxQueue, Socket, TxQueue
from memif_aio.testing.testpmd import TestPmd, find_testpmd
from memif_aio.workers import WorkerEvent, WorkerPool

PEER_CPU = 1


async def count_windows(rx: RxQueue | None, tx: TxQueue | None, start: float, windows: int,
                        window: float) -> dict[str, Any]:
    """Worker handler: packets received in each wall-clock window
    ``[start + i * window, start + (i + 1) * window)`` (drained, uncounted, before ``start``),
    and the worker's CPU time over the windows (``time.thread_time_ns``): the rate per
    CPU-second does not depend on how much of a core the worker got."""
    assert rx is not None
    counts = [0] * windows
    end = start + windows * window
    clock = time.time
    cpu0 = -1
    while True:
        pkts = await rx.read_burst(256)
        now = clock()
        if now >= end:
            return {"counts": counts, "cpu_ns": time.thread_time_ns() - cpu0}
        if now >= start:
            if cpu0 < 0:
                cpu0 = time.thread_time_ns()
            else:
                counts[int((now - start) / window)] += len(pkts)


async def one_round(path: str, workers: int, args: argparse.Namespace,
                    cpu_rates: list[float], cpu_share: list[float]) -> list[float]:
    """One configuration, one testpmd run: aggregate Mpps of each window; appends each
    worker's Mpps per CPU-second to ``cpu_rates`` and its share of a CPU to ``cpu_share``."""
    placement = args.placement
    mc = MemoryConfig(num_queue_pairs=2, log2_ring_size=args.log2_ring_size)
    cpus: list[list[int]] | None = None
    if placement != "free":
        cpus = [[0], [PEER_CPU]][:workers]
    async with TestPmd("server", path, forward_mode="txonly", queues=2, txpkts=64,
                       cpu=PEER_CPU) as tp:
        if placement == "nice" and tp.pid is not None:
            for tid in os.listdir(f"/proc/{tp.pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), 19)
        async with Socket(path) as sock:
            itf = sock.new_interface(Arguments(id=0, is_master=False, name="bench",
                                               memory_config=mc, rx_mode=RxMode.INTERRUPT))
            await itf.wait_connected(15)
            await tp.wait_connected(15)
            start = time.time() + args.settle
            pool = WorkerPool(itf, count_windows, workers, loop=args.loop,
                              handler_args=[start, args.windows, args.window], cpus=cpus,
                              rx_mode=RxMode(args.rx_mode))
            async with pool:
                evs = pool.events()
                done: list[WorkerEvent] = []
                async with asyncio.timeout(args.settle + args.windows * args.window + 30):
                    async for ev in evs:
                        if ev.kind == "finished":
                            if ev.error:
                                raise SystemExit(f"worker {ev.worker} failed:\n{ev.error}")
                            done.append(ev)
                            if len(done) == workers:
                                break
                        elif ev.kind == "exited":
                            raise SystemExit(f"worker {ev.worker} exited ({ev.returncode})")
    per = [e.result for e in sorted(done, key=lambda e: e.worker)]
    for r in per:
        cpu_rates.append(sum(r["counts"]) / (r["cpu_ns"] / 1e9) / 1e6)
        cpu_share.append(r["cpu_ns"] / 1e9 / (args.windows * args.window))
    return [sum(r["counts"][i] for r in per) / args.window / 1e6 for i in range(args.windows)]


def summary(vals: list[float]) -> tuple[float, float, float]:
    return statistics.median(vals), min(vals), max(vals)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if find_testpmd() is None:
        raise SystemExit("dpdk-testpmd not found: install dpdk-dev librte-net-memif23 "
                         "librte-mempool-ring23")
    before = os.sched_getaffinity(0)
    if args.placement != "free":
        os.sched_setaffinity(0, {0})  # the owner (control channel only) beside worker 0
    res: dict[int, list[float]] = {1: [], 2: []}
    per_cpu: dict[int, list[float]] = {1: [], 2: []}
    share: dict[int, list[float]] = {1: [], 2: []}
    try:
        with tempfile.TemporaryDirectory(prefix="memif-bench-workers-") as d:
            path = os.path.join(d, "dpdk.sock")
            for _ in range(args.rounds):
                for n in (1, 2):
                    vals = await one_round(path, n, args, per_cpu[n], share[n])
                    res[n].extend(vals)
                    print(f"  {n} worker(s): " + " ".join(f"{v:.3f}" for v in vals) + " Mpps",
                          file=sys.stderr, flush=True)
    finally:
        os.sched_setaffinity(0, before)
    m1, m2 = statistics.median(res[1]), statistics.median(res[2])
    return {"placement": args.placement, "loop": args.loop, "rx_mode": args.rx_mode,
            "windows": {"1": res[1], "2": res[2]}, "ratio": m2 / m1 if m1 else 0.0,
            "per_cpu_second": {"1": per_cpu[1], "2": per_cpu[2]},
            "cpu_share": {"1": share[1], "2": share[2]},
            "load": os.getloadavg()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.workers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--placement", choices=["shared", "nice", "free"], default="nice")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    p.add_argument("--rx-mode", choices=["interrupt", "polling", "adaptive"],
                   default="interrupt")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (1 then 2)")
    p.add_argument("--windows", type=int, default=3, help="measurement windows per round")
    p.add_argument("--window", type=float, default=1.0, help="seconds per window")
    p.add_argument("--settle", type=float, default=1.5,
                   help="seconds from the pool's start to the first window")
    p.add_argument("--log2-ring-size", type=int, default=10)
    p.add_argument("--json", help="also write the figures to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = asyncio.run(main_async(args))
    load = " ".join(f"{x:.2f}" for x in out["load"])
    print(f"# WorkerPool aggregate rx from testpmd txonly (2 queues, 64 B), slave, "
          f"placement {args.placement}, {args.loop}, {args.rx_mode}; load {load}")
    print(f"{'workers':>8} {'figure':<28} {'median':>8} {'min':>8} {'max':>8}  unit")
    for n in ("1", "2"):
        for key, what, unit in (("windows", "aggregate rx", "Mpps"),
                                ("per_cpu_second", "rx per CPU-second, a worker", "Mpps/CPU-s"),
                                ("cpu_share", "CPU used, a worker", "CPU")):
            med, lo, hi = summary(out[key][n])
            print(f"{n:>8} {what:<28} {med:8.3f} {lo:8.3f} {hi:8.3f}  {unit}")
    print(f"ratio 2/1 (medians): {out['ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
