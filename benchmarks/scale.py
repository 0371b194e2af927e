"""``python3 -m benchmarks.scale``: many interfaces on one socket in one process (issue 14 §3).

Scenarios (``--only``, comma-separated; all by default):

``rx``, ``tx``
    memif_aio is the master of ``--interfaces`` (64) interfaces on ONE socket; the peers
    are dpdk-testpmd clients (``txonly`` for rx, ``rxonly`` for tx).  This DPDK build
    allows at most 32 ports per process (``RTE_MAX_ETHPORTS``), so the 64 ports come from
    two testpmd processes of 32 ports each (ids 0..31 and 32..63), both on CPU 1.  The
    single-interface case is interface 64 on the same socket, served by a third testpmd
    with one port, in the same process and the same run.  The peers not in use are
    frozen (SIGSTOP), so that every case has all of CPU 1 for its peer; rounds alternate
    single / 64 driven by one task per queue (``tasks``) / 64 swept by one task
    (``sweep``).  Each window gives the rate (Mpps, wall clock) and the CPU time of the
    loop thread per packet (``time.thread_time_ns``), which the load of a shared machine
    disturbs far less than the rate.
``idle``
    Cost of links that are up and carry no traffic: fds, RSS and mapped shared memory
    per interface, and the wake-ups of the process: the context switches of every thread
    (``/proc/self/task/*/status``) over ``--idle`` seconds, counted by a thread of the
    benchmark that is not itself counted, plus the loop's pending timers (asyncio).
    Two cases: memif_aio as 64 masters (the testpmd peers frozen), and memif_aio as 64
    slaves of a second memif_aio process (64 masters on one socket, ``--serve``).
``churn``
    Connect/disconnect cycles per second of one slave interface, and of 64 at once
    (``disconnect()`` then ``request_connection()``), against a memif_aio master process
    (DPDK's memif client does not reconnect by itself, and its server has 32 ports at
    most); fds and mappings are compared before and after.

Examples::

    python3 -m benchmarks.scale --loop both --rounds 5 --window 1.0
    python3 -m benchmarks.scale --only idle --idle 5
    python3 -m benchmarks.scale --only rx --rounds 3 --json scale.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from memif_aio import Arguments, ConnectionRefused, Interface, RxMode, Socket
from memif_aio.testing.testpmd import TestPmd, find_testpmd

from .runner import OUR_CPU, PEER_CPU, frame, machine_info

#: ports one testpmd process may have in this DPDK build (RTE_MAX_ETHPORTS)
MAX_PORTS = 32
SCENARIOS = ("rx", "tx", "idle", "churn")
BURST = 256


@dataclass
class Row:
    scenario: str
    loop: str
    unit: str
    values: list[float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "loop": self.loop, "unit": self.unit,
                "values": self.values, "median": self.median, "min": min(self.values),
                "max": max(self.values), "extra": self.extra}


# --------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------
def testpmd_clients(path: str, first_id: int, count: int, mode: str) -> TestPmd:
    """One testpmd process with ``count`` memif client ports, ids ``first_id``.., on
    socket ``path``."""
    extra = [f"--vdev=net_memif{i},role=client,id={first_id + i},socket={path},"
             "socket-abstract=no" for i in range(1, count)]
    return TestPmd("client", path, id=first_id, forward_mode=mode,
                   txpkts=64 if mode == "txonly" else None, cpu=PEER_CPU, eal_args=extra,
                   memory_mb=512, total_num_mbufs=65536, start_timeout=60)


@contextlib.asynccontextmanager
async def testpmd_fleet(path: str, n: int, mode: str) -> AsyncIterator[list[TestPmd]]:
    """Testpmd processes serving interfaces 0..n-1 (at most MAX_PORTS ports each)."""
    async with contextlib.AsyncExitStack() as stack:
        fleet = []
        for first in range(0, n, MAX_PORTS):
            fleet.append(await stack.enter_async_context(
                testpmd_clients(path, first, min(MAX_PORTS, n - first), mode)))
        yield fleet


def master_socket(path: str) -> Socket:
    """Our socket for testpmd clients.  A DPDK client that starts 32 ports sends INIT late
    on a loaded machine, and does not reconnect once refused: the default ``init_timeout``
    (2 s) closes some of them ("handshake timeout (no INIT)").  Give them 30 s."""
    return Socket(path, app_name="memif_aio-scale", init_timeout=30, handshake_timeout=30)


def serve_main(path: str, count: int, uv: bool) -> None:
    """``--serve``: ``count`` master interfaces on ``path`` until stdin closes."""
    os.sched_setaffinity(0, {PEER_CPU})

    async def main() -> None:
        # 64 slaves of one uid reconnecting at once: the default max_pending_per_uid (32)
        # would evict some of them on a loaded machine (docs/scale.md)
        async with Socket(path, app_name="scale-peer", max_pending=2 * count,
                          max_pending_per_uid=2 * count) as sock:
            for i in range(count):
                sock.new_interface(Arguments(id=i, is_master=True, name=f"peer{i}"))
            print("READY", flush=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, sys.stdin.read)

    if uv:
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


@contextlib.asynccontextmanager
async def python_masters(path: str, count: int, uv: bool) -> AsyncIterator[int]:
    """A second memif_aio process with ``count`` masters on ``path``; yields its pid."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [sys.executable, "-m", "benchmarks.scale", "--serve", path, "--count", str(count)]
    if uv:
        argv.append("--uvloop")
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, cwd=here)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line.strip() != b"READY":
            raise RuntimeError(f"the memif_aio peer did not get ready: {line!r}")
        yield proc.pid
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# --------------------------------------------------------------------------------------------
# Measuring the process
# --------------------------------------------------------------------------------------------
def thread_switches(exclude: int = -1) -> dict[int, int]:
    """Context switches (voluntary + not) of every thread of this process but ``exclude``."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == exclude:
            continue
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                out[int(tid)] = sum(int(line.split()[1]) for line in f if line.startswith(
                    ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
        except OSError:
            continue
    return out


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def shared_mapped_bytes() -> int:
    """Bytes mapped from memfds (the memif regions, ours or the peer's)."""
    total = 0
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and "memfd:" in parts[5]:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                total += hi - lo
    return total


def loop_timers(loop: asyncio.AbstractEventLoop) -> list[str] | None:
    """The loop's pending timers (asyncio only: uvloop does not show them)."""
    scheduled = getattr(loop, "_scheduled", None)
    if scheduled is None:
        return None
    return [repr(getattr(h, "_callback", h)) for h in scheduled if not h.cancelled()]


async def idle_wakeups(seconds: float) -> tuple[int, dict[int, int]]:
    """Context switches of every thread of this process (the measuring thread excepted)
    while the loop sits idle for ``seconds``.  The loop waits on a future that a
    separate thread resolves after its second reading, so the loop arms no timer."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[int, dict[int, int]]] = loop.create_future()

    def measure() -> None:
        me = threading.get_native_id()
        time.sleep(0.2)  # let the loop settle into its wait
        before = thread_switches(me)
        time.sleep(seconds)
        after = thread_switches(me)
        per = {tid: after[tid] - before[tid] for tid in after if tid in before}
        loop.call_soon_threadsafe(done.set_result, (sum(per.values()), per))

    threading.Thread(target=measure, daemon=True).start()
    return await done


# --------------------------------------------------------------------------------------------
# Driving the queues
# --------------------------------------------------------------------------------------------
@dataclass
class Window:
    packets: int
    calls: int
    seconds: float
    cpu_ns: int

    @property
    def mpps(self) -> float:
        return self.packets / self.seconds / 1e6

    @property
    def ns_per_packet(self) -> float:
        return self.cpu_ns / max(1, self.packets)


async def drive(itfs: Sequence[Interface], direction: str, pattern: str,
                seconds: float) -> Window:
    """Move packets on queue 0 of every interface for ``seconds``.

    ``tasks``: one task per queue, each awaiting ``read_burst(256)`` / ``write_burst``.
    ``sweep``: one task calling ``read_burst_nowait`` / ``write_burst_nowait`` on every
    queue in turn, yielding to the loop once per pass."""
    counts = [0, 0]  # packets, calls
    burst = [frame(64)] * BURST
    end = time.perf_counter() + seconds
    clock = time.perf_counter

    async def one_rx(itf: Interface) -> None:
        rx = itf.get_rx_queue(0)
        while clock() < end:
            got = len(await rx.read_burst(BURST))  # not counts[0] += await ...: that
            counts[0] += got  # loads counts[0] before the await and loses other tasks' counts
            counts[1] += 1

    async def one_tx(itf: Interface) -> None:
        tx = itf.get_tx_queue(0)
        while clock() < end:
            sent = await tx.write_burst(burst)
            counts[0] += sent
            counts[1] += 1

    async def sweep() -> None:
        if direction == "rx":
            rxs = [itf.get_rx_queue(0) for itf in itfs]
            while clock() < end:
                for rx in rxs:
                    counts[0] += len(rx.read_burst_nowait(BURST))
                counts[1] += len(rxs)
                await asyncio.sleep(0)
        else:
            txs = [itf.get_tx_queue(0) for itf in itfs]
            while clock() < end:
                for tx in txs:
                    counts[0] += tx.write_burst_nowait(burst)
                counts[1] += len(txs)
                await asyncio.sleep(0)

    def ring_count() -> int:
        return sum((itf.get_rx_queue(0) if direction == "rx" else itf.get_tx_queue(0))
                   .stats().packets for itf in itfs)

    ring0 = ring_count()
    t0, c0 = time.perf_counter(), time.thread_time_ns()
    if pattern == "sweep":
        tasks = [asyncio.ensure_future(sweep())]
    else:
        one = one_rx if direction == "rx" else one_tx
        tasks = [asyncio.ensure_future(one(itf)) for itf in itfs]
    # a reader waiting for an interrupt at the end is cancelled (it consumed nothing)
    _done, pending = await asyncio.wait(tasks, timeout=seconds + 0.05)
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    t1, c1 = time.perf_counter(), time.thread_time_ns()
    for t in tasks:
        if not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    moved = ring_count() - ring0
    if moved != counts[0]:  # what the calls returned is what left (or entered) the rings
        raise RuntimeError(f"counted {counts[0]} packets, the queues' counters moved {moved}")
    return Window(counts[0], counts[1], t1 - t0, c1 - c0)


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------
@dataclass
class Settings:
    interfaces: int = 64
    rounds: int = 5
    window: float = 1.0
    warmup: float = 0.3
    idle: float = 5.0
    churn: float = 3.0
    patterns: tuple[str, ...] = ("tasks", "sweep")


async def throughput(settings: Settings, loop_name: str, direction: str,
                     results: list[Row]) -> None:
    n = settings.interfaces
    mode = "txonly" if direction == "rx" else "rxonly"
    with tempfile.TemporaryDirectory(prefix="memif-scale-") as d:
        path = os.path.join(d, "scale.sock")
        async with master_socket(path) as sock:
            many = [sock.new_interface(Arguments(id=i, is_master=True, name=f"m{i}",
                                                 rx_mode=RxMode.INTERRUPT)) for i in range(n)]
            single = sock.new_interface(Arguments(id=n, is_master=True, name="single",
                                                  rx_mode=RxMode.INTERRUPT))
            async with testpmd_fleet(path, n, mode) as fleet, \
                    testpmd_clients(path, n, 1, mode) as alone:
                await asyncio.gather(*(i.wait_connected(60) for i in (*many, single)))
                cases: list[tuple[str, list[Interface], list[TestPmd], str]] = [
                    ("1", [single], [alone], "tasks")]
                cases += [(f"{n}-{p}", many, fleet, p) for p in settings.patterns]
                every = [alone, *fleet]
                windows: dict[str, list[Window]] = {c[0]: [] for c in cases}
                for _round in range(settings.rounds):
                    for name, itfs, peers, pattern in cases:
                        for tp in every:
                            (tp.resume if tp in peers else tp.pause)()
                        await drive(itfs, direction, pattern, settings.warmup)
                        windows[name].append(await drive(itfs, direction, pattern,
                                                         settings.window))
                for tp in every:
                    tp.resume()
        base = windows["1"]
        for name, ws in windows.items():
            extra: dict[str, Any] = {
                "packets_per_call": statistics.median(w.packets / max(1, w.calls) for w in ws)}
            if name != "1":  # per round: aggregate over single of the same round
                extra["ratio_to_single"] = [w.mpps / b.mpps for w, b in zip(ws, base)]
                extra["cpu_ns_extra_per_packet"] = [w.ns_per_packet - b.ns_per_packet
                                                    for w, b in zip(ws, base)]
            results.append(Row(f"{direction}-{name}", loop_name, "Mpps",
                               [w.mpps for w in ws], extra))
            results.append(Row(f"{direction}-{name}", loop_name, "CPU ns/pkt",
                               [w.ns_per_packet for w in ws], extra))
            if "ratio_to_single" in extra:
                results.append(Row(f"{direction}-{name}/1", loop_name, "ratio",
                                   extra["ratio_to_single"]))


async def idle(settings: Settings, loop_name: str, results: list[Row]) -> None:
    n = settings.interfaces
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="memif-scale-") as d:
        path = os.path.join(d, "idle.sock")
        # 1. masters, DPDK clients (frozen once connected)
        base = (fds(), rss_bytes(), shared_mapped_bytes())
        async with master_socket(path) as sock:
            itfs = [sock.new_interface(Arguments(id=i, is_master=True, name=f"m{i}",
                                                 rx_mode=RxMode.INTERRUPT)) for i in range(n)]
            async with testpmd_fleet(path, n, "rxonly") as fleet:
                await asyncio.gather(*(i.wait_connected(60) for i in itfs))
                for tp in fleet:
                    tp.pause()
                up = (fds(), rss_bytes(), shared_mapped_bytes())
                vals = []
                timers = loop_timers(loop)
                for _ in range(settings.rounds):
                    total, _per = await idle_wakeups(settings.idle)
                    vals.append(total / settings.idle)
                for tp in fleet:
                    tp.resume()
        _costs(results, loop_name, "idle-master", n, base, up, vals, timers)
        # 2. slaves of a memif_aio master process
        base = (fds(), rss_bytes(), shared_mapped_bytes())
        async with python_masters(path, n, loop_name == "uvloop"), \
                Socket(path, app_name="memif_aio-scale") as sock:
            itfs = [sock.new_interface(Arguments(id=i, is_master=False, name=f"s{i}",
                                                 rx_mode=RxMode.INTERRUPT)) for i in range(n)]
            await asyncio.gather(*(i.wait_connected(60) for i in itfs))
            up = (fds(), rss_bytes(), shared_mapped_bytes())
            vals = []
            timers = loop_timers(loop)
            for _ in range(settings.rounds):
                total, _per = await idle_wakeups(settings.idle)
                vals.append(total / settings.idle)
        _costs(results, loop_name, "idle-slave", n, base, up, vals, timers)


def _costs(results: list[Row], loop_name: str, name: str, n: int, base: tuple[int, int, int],
           up: tuple[int, int, int], wakeups: list[float], timers: list[str] | None) -> None:
    results.append(Row(name, loop_name, "wake-ups/s", wakeups,
                       {"timers": timers if timers is not None else "n/a (uvloop)"}))
    results.append(Row(f"{name} fds", loop_name, "per interface", [(up[0] - base[0]) / n]))
    results.append(Row(f"{name} rss", loop_name, "KiB per interface",
                       [(up[1] - base[1]) / n / 1024]))
    results.append(Row(f"{name} mapped", loop_name, "KiB per interface",
                       [(up[2] - base[2]) / n / 1024]))


async def churn(settings: Settings, loop_name: str, results: list[Row]) -> None:
    n = settings.interfaces
    with tempfile.TemporaryDirectory(prefix="memif-scale-") as d:
        path = os.path.join(d, "churn.sock")
        async with python_masters(path, n, loop_name == "uvloop"):
            for count in (1, n):
                before = (fds(), shared_mapped_bytes())
                async with Socket(path, app_name="memif_aio-scale") as sock:
                    itfs = [sock.new_interface(Arguments(
                        id=i, is_master=False, name=f"s{i}", reconnect_min_delay=0.01,
                        reconnect_max_delay=0.05)) for i in range(count)]
                    await asyncio.gather(*(i.wait_connected(60) for i in itfs))
                    rates = []
                    refused = 0
                    for _ in range(settings.rounds):
                        cycles = 0
                        t0 = time.perf_counter()
                        end = t0 + settings.churn
                        while time.perf_counter() < end:
                            await asyncio.gather(*(i.disconnect() for i in itfs))
                            outcomes = await asyncio.gather(
                                *(_reconnect(i) for i in itfs))
                            refused += sum(outcomes)
                            cycles += 1
                        rates.append(cycles * count / (time.perf_counter() - t0))
                after = (fds(), shared_mapped_bytes())
                results.append(Row(f"churn-{count}", loop_name, "connections/s", rates,
                                   {"refused": refused, "fds_left": after[0] - before[0],
                                    "mapped_left": after[1] - before[1]}))


async def _reconnect(itf: Interface) -> int:
    """request_connection() until the link is up; how many attempts were refused."""
    refused = 0
    while True:
        try:
            await itf.request_connection()
            return refused
        except ConnectionRefused:
            refused += 1
            await asyncio.sleep(0.001)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    head = f"{'scenario':22} {'loop':8} {'median':>10} {'min':>10} {'max':>10}  unit"
    lines = [head, "-" * len(head)]
    for r in rows:
        notes = {k: v for k, v in r.extra.items() if k in ("refused", "fds_left", "mapped_left",
                                                           "timers", "packets_per_call")}
        note = "  " + json.dumps(notes, default=str) if notes else ""
        lines.append(f"{r.scenario:22} {r.loop:8} {r.median:10.3f} {min(r.values):10.3f} "
                     f"{max(r.values):10.3f}  {r.unit}{note}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    p.add_argument("--only", default=",".join(SCENARIOS),
                   help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--interfaces", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (windows)")
    p.add_argument("--window", type=float, default=1.0, help="seconds per throughput window")
    p.add_argument("--warmup", type=float, default=0.3, help="seconds before each window")
    p.add_argument("--idle", type=float, default=5.0, help="seconds per idle measurement")
    p.add_argument("--churn", type=float, default=3.0, help="seconds per churn window")
    p.add_argument("--patterns", default="tasks,sweep", help="tasks, sweep or both")
    p.add_argument("--json", default=None, help="write the rows to this file")
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    ns = parser().parse_args(argv)
    if ns.serve:
        serve_main(ns.serve, ns.count, ns.uvloop)
        return 0
    only = [s.strip() for s in ns.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SCENARIOS]
    if bad or not only:
        parser().error(f"unknown scenario(s) {bad}; valid: {', '.join(SCENARIOS)}")
    if {"rx", "tx", "idle"} & set(only) and find_testpmd() is None:
        raise SystemExit("dpdk-testpmd not found (needed by rx, tx and idle)")
    settings = Settings(ns.interfaces, ns.rounds, ns.window, ns.warmup, ns.idle, ns.churn,
                        tuple(p for p in ns.patterns.split(",") if p))
    os.sched_setaffinity(0, {OUR_CPU})
    loops = ["asyncio", "uvloop"] if ns.loop == "both" else [ns.loop]
    load0 = os.getloadavg()[0]
    rows: list[Row] = []
    for loop_name in loops:
        async def run(loop_name: str = loop_name) -> None:
            for name in only:
                if name in ("rx", "tx"):
                    await throughput(settings, loop_name, name, rows)
                elif name == "idle":
                    await idle(settings, loop_name, rows)
                else:
                    await churn(settings, loop_name, rows)
        if loop_name == "uvloop":
            import uvloop
            uvloop.run(run())
        else:
            asyncio.run(run())
    info = machine_info(loops)
    info["load"] = [load0, os.getloadavg()[0]]
    print(f"# {info['cpu']} ({info['cores']} cores), Python {info['python']}, "
          f"DPDK {info['dpdk']}, load average {load0:.2f} before, {info['load'][1]:.2f} after")
    print(table(rows))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"machine": info, "settings": vars(settings),
                       "rows": [r.as_dict() for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
