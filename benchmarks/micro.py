"""In-process microbenchmarks of the round-trip paths: CPU cost and signal latency.

    python3 -m benchmarks.micro SCENARIO [--loop uvloop|asyncio] [--rounds 10]
        [--reps 400] [--against TREE]

End-to-end round trips move by 2x on a shared machine; these scenarios run both ends of an
interface pair in one process and time the library's own work:

* ``signal-cost``: the loop thread's CPU time per ``write_packet`` to a peer that wants
  interrupts (an INTERRUPT-mode receiver): 512 calls timed with ``time.thread_time_ns``, the
  receiver drained untimed, ``--reps`` times; ``signal-cost-polling`` is the same with a
  POLLING receiver (``MASK_INT`` set: no signal at all), the cost without interrupts;
  ``signal-overhead`` pairs the two in one process and gives their difference per
  repetition (a process's own speed moves both: it comes out bimodal from one process to
  the next, by about 1.5x, with or without interrupts);
* ``signal-latency``: wall time from a transmit queue's signal to the reader callback of the
  same eventfd running on the loop (the signaller thread's hand-off), against
  ``eventfd-latency``, the same with a direct ``os.eventfd_write``;
* ``busy-poll``: the CPU time of one busy-poll round trip, both ends polling: the client's
  ``write_packet``, the server's ``read_burst`` finding it after an empty read and a
  ``_wait_rx`` (what a polling reader does while it waits), its ``write_burst``, and the
  client's ``read_packet`` the same way; 256 round trips timed per repetition.

Each round prints p10 and median (ns per call, or µs of latency).  ``--against TREE`` alternates
rounds with the memif_aio found in TREE (e.g. a worktree at main: ``git worktree add
/tmp/base main``), each round in a fresh process, and prints both side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

SCENARIOS = ("signal-cost", "signal-cost-polling", "signal-overhead", "signal-latency",
             "eventfd-latency", "busy-poll")
WRITES = 512
ROUND_TRIPS = 256


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


async def _pair(path: str, rx_mode: Any, tx_mode: Any) -> tuple[Any, Any, Any]:
    """A socket with a master (receiving in ``rx_mode``) and a slave (in ``tx_mode``)."""
    from memif_aio import Arguments, Socket

    sock = Socket(path)
    await sock.__aenter__()
    m = sock.new_interface(Arguments(id=0, is_master=True, name="m", rx_mode=rx_mode))
    s = sock.new_interface(Arguments(id=0, is_master=False, name="s", rx_mode=tx_mode))
    await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), 10)
    return sock, m, s


async def signal_cost(reps: int, polling: bool) -> list[float]:
    """ns of loop-thread CPU per write_packet (slave -> master), per repetition."""
    from memif_aio import RxMode

    with tempfile.TemporaryDirectory(prefix="memif-micro-") as d:
        sock, m, s = await _pair(os.path.join(d, "s.sock"),
                                 RxMode.POLLING if polling else RxMode.INTERRUPT, RxMode.POLLING)
        try:
            tx, rx = s.get_tx_queue(0), m.get_rx_queue(0)
            pkt = bytes(64)
            clock = time.thread_time_ns
            out: list[float] = []
            for k in range(reps + reps // 10):
                t0 = clock()
                for _ in range(WRITES):
                    await tx.write_packet(pkt)
                t1 = clock()
                got = 0
                while got < WRITES:
                    got += len(await asyncio.wait_for(rx.read_burst(WRITES - got), 10))
                await asyncio.sleep(0)  # the loop turn a real program gives (signals run here)
                if k >= reps // 10:
                    out.append((t1 - t0) / WRITES)
            return out
        finally:
            await sock.__aexit__(None, None, None)


async def signal_overhead(reps: int) -> list[float]:
    """Paired repetitions in one process: ns/write to an INTERRUPT-mode receiver minus
    ns/write to a POLLING one (the same timing as ``signal-cost``), so that what moves a
    whole process (its memory layout, the CPU it got) cancels out."""
    from memif_aio import RxMode

    with tempfile.TemporaryDirectory(prefix="memif-micro-") as d:
        pairs = [await _pair(os.path.join(d, f"{mode.value}.sock"), mode, RxMode.POLLING)
                 for mode in (RxMode.INTERRUPT, RxMode.POLLING)]
        try:
            queues = [(s.get_tx_queue(0), m.get_rx_queue(0)) for _, m, s in pairs]
            pkt = bytes(64)
            clock = time.thread_time_ns
            out: list[float] = []
            for k in range(reps + reps // 10):
                cost = []
                for tx, rx in queues:
                    t0 = clock()
                    for _ in range(WRITES):
                        await tx.write_packet(pkt)
                    t1 = clock()
                    got = 0
                    while got < WRITES:
                        got += len(await asyncio.wait_for(rx.read_burst(WRITES - got), 10))
                    await asyncio.sleep(0)
                    cost.append((t1 - t0) / WRITES)
                if k >= reps // 10:
                    out.append(cost[0] - cost[1])
            return out
        finally:
            for sock, _, _ in pairs:
                await sock.__aexit__(None, None, None)


async def signal_latency(reps: int, direct: bool) -> list[float]:
    """µs from a signal of ours to the loop running the eventfd's reader callback."""
    from memif_aio import eventfd

    loop = asyncio.get_running_loop()
    efd = eventfd.new_eventfd()
    buf = bytearray(8)
    waiter: list[asyncio.Future[None] | None] = [None]

    def readable() -> None:
        eventfd.drain(efd, buf)
        f = waiter[0]
        if f is not None and not f.done():
            f.set_result(None)

    intr = eventfd.Interrupt(efd, lambda exc: None, loop)
    loop.add_reader(efd, readable)
    clock = time.perf_counter_ns
    out: list[float] = []
    try:
        for k in range(reps + reps // 10):
            f = waiter[0] = loop.create_future()
            t0 = clock()
            if direct:
                os.eventfd_write(efd, 1)
            else:
                intr.signal()
            guard = loop.call_later(10, f.cancel)  # never wait for ever (no wait_for: a task)
            await f
            guard.cancel()
            if k >= reps // 10:
                out.append((clock() - t0) / 1000)
            await asyncio.sleep(0)
    finally:
        loop.remove_reader(efd)
        intr.close()
        os.close(efd)
    return out


async def busy_poll(reps: int) -> list[float]:
    """ns of CPU per busy-poll round trip, both ends polling, including each reader's miss."""
    from memif_aio import RxMode

    with tempfile.TemporaryDirectory(prefix="memif-micro-") as d:
        sock, m, s = await _pair(os.path.join(d, "s.sock"), RxMode.POLLING, RxMode.POLLING)
        try:
            stx, srx = s.get_tx_queue(0), s.get_rx_queue(0)
            mtx, mrx = m.get_tx_queue(0), m.get_rx_queue(0)
            pkt = bytes(64)
            clock = time.thread_time_ns
            out: list[float] = []
            for k in range(reps + reps // 10):
                t0 = clock()
                for _ in range(ROUND_TRIPS):
                    # what a waiting reader does: an empty read, then the wait, then the read
                    mrx.read_burst_nowait(256)
                    await stx.write_packet(pkt)
                    await mrx._wait_rx()
                    pkts = await mrx.read_burst(256)
                    srx._fill()
                    await mtx.write_burst(pkts)
                    await srx._wait_rx()
                    await srx.read_packet()
                t1 = clock()
                if k >= reps // 10:
                    out.append((t1 - t0) / ROUND_TRIPS)
            return out
        finally:
            await sock.__aexit__(None, None, None)


def _job(name: str, reps: int) -> Callable[[], Awaitable[list[float]]]:
    if name in ("signal-cost", "signal-cost-polling"):
        return lambda: signal_cost(reps, name.endswith("polling"))
    if name == "signal-overhead":
        return lambda: signal_overhead(reps)
    if name in ("signal-latency", "eventfd-latency"):
        return lambda: signal_latency(reps, name == "eventfd-latency")
    return lambda: busy_poll(reps)


UNITS = {"signal-cost": "ns/write", "signal-cost-polling": "ns/write",
         "signal-overhead": "ns/write", "signal-latency": "us", "eventfd-latency": "us",
         "busy-poll": "ns/rtt"}


def run_round(name: str, loop_name: str, reps: int) -> list[float]:
    job = _job(name, reps)

    async def main() -> list[float]:
        return await job()

    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def _child(tree: str, ns: argparse.Namespace) -> list[float]:
    """One round in a fresh process importing memif_aio from ``tree``."""
    env = {**os.environ, "PYTHONPATH": tree}
    argv = [sys.executable, os.path.abspath(__file__), ns.scenario, "--loop", ns.loop,
            "--reps", str(ns.reps), "--rounds", "1", "--cpu", str(ns.cpu), "--raw"]
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=tree)
    if res.returncode:
        raise RuntimeError(f"round in {tree} failed: {res.stderr.strip()[-2000:]}")
    vals: list[float] = json.loads(res.stdout.strip().splitlines()[-1])
    return vals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.micro", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--reps", type=int, default=400, help="timed repetitions per round")
    p.add_argument("--against", default=None, metavar="TREE",
                   help="alternate rounds with the memif_aio of this source tree")
    p.add_argument("--cpu", type=int, default=0,
                   help="pin to this CPU, as the runner pins itself (-1: no pinning)")
    p.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.rounds < 1 or ns.reps < 1:
        p.error("--rounds and --reps must be at least 1")
    if ns.cpu >= 0:
        os.sched_setaffinity(0, {ns.cpu})  # the signaller thread inherits it
    if ns.raw:
        print(json.dumps(run_round(ns.scenario, ns.loop, ns.reps)))
        return 0
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [("this", here)] + ([("against", os.path.abspath(ns.against))] if ns.against else [])
    unit = UNITS[ns.scenario]
    print(f"# {ns.scenario} on {ns.loop}, {ns.reps} repetitions per round, p10 / median "
          f"in {unit}; load average {os.getloadavg()[0]:.2f}")
    summary: dict[str, tuple[list[float], list[float]]] = {t: ([], []) for t, _ in trees}
    for r in range(ns.rounds):
        cells = []
        for label, tree in (trees if r % 2 == 0 else trees[::-1]):
            vals = _child(tree, ns) if ns.against else run_round(ns.scenario, ns.loop, ns.reps)
            p10, med = _pct(vals, 0.1), statistics.median(vals)
            summary[label][0].append(p10)
            summary[label][1].append(med)
            cells.append(f"{label}: {p10:9.2f} / {med:9.2f}")
        print(f"round {r + 1:2d}  " + "   ".join(sorted(cells)), flush=True)
    for label, tree in trees:
        p10s, meds = summary[label]
        print(f"{label:8} median over rounds: p10 {statistics.median(p10s):9.2f}   median "
              f"{statistics.median(meds):9.2f} {unit}   ({tree})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
