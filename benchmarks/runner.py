"""Benchmark scenarios, measured side by side in one run.

Every scenario connects memif_aio to a peer process (a second memif_aio
process, or DPDK's dpdk-testpmd), measures several windows of traffic, and
reports the median with min and max.  On a 2-core machine the benchmark
process is pinned to CPU 0 and the peer to CPU 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import memif_aio
from memif_aio import Arguments, MemoryConfig, RxMode, Socket

from . import floors

OUR_CPU = 0
PEER_CPU = 1


@dataclass
class Result:
    scenario: str
    peer: str
    loop: str
    unit: str
    values: list[float]
    size: int = 64
    extra: dict[str, Any] = field(default_factory=dict)
    #: the floor this row is compared with (a ``floor-*`` scenario of the same run and loop)
    floor: str | None = None
    #: median / the floor's median: a rate's share of its floor (higher is better), or a
    #: round trip's multiple of its floor (lower is better)
    ratio: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(median=self.median, min=min(self.values), max=max(self.values))
        return d


def frame(size: int) -> bytes:
    """An Ethernet/IPv4/UDP-looking frame of ``size`` bytes (testpmd forwards anything)."""
    hdr = bytes.fromhex("020000000002" "020000000001" "0800")
    body = bytes((i * 7) & 0xFF for i in range(max(0, size - len(hdr))))
    return (hdr + body)[:size]


# --------------------------------------------------------------------------------------------
# Scenario names (as the table prints them)
# --------------------------------------------------------------------------------------------
#: scenario -> the floor it is reported against (``*-size`` rows: the floor at the same size)
FLOOR_OF = {
    "rx-burst": "floor-rx", "rx-single": "floor-rx", "rx-lease": "floor-rx",
    "tx-burst": "floor-tx", "tx-single": "floor-tx", "tx-reserve": "floor-tx",
    "pingpong-interrupt": "floor-interrupt", "pingpong-busy-poll": "floor-busy-poll",
    "rx-burst-size": "floor-rx-size", "tx-burst-size": "floor-tx-size",
}
FLOORS = ("floor-rx", "floor-tx", "floor-busy-poll", "floor-interrupt", "floor-rx-size",
          "floor-tx-size")
SCENARIOS = (*FLOOR_OF, *FLOORS)
#: older names accepted by ``--only``
ALIASES = {"rx-sizes": "rx-burst-size", "tx-sizes": "tx-burst-size"}


def resolve_only(text: str) -> set[str]:
    """``--only a,b``: the scenario names, aliases resolved; ValueError names the valid ones."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(n for n in names if n not in SCENARIOS and n not in ALIASES)
    if unknown or not names:
        valid = ", ".join([*SCENARIOS, *ALIASES])
        what = f"unknown scenario(s): {', '.join(unknown)}" if unknown else "no scenario named"
        raise ValueError(f"{what}; valid names: {valid}")
    return {ALIASES.get(n, n) for n in names}


def floors_needed(only: set[str] | None) -> set[str]:
    """The floors the selected scenarios are compared with, plus floors selected by name."""
    if only is None:
        return set(FLOORS)
    need = {n for n in only if n in FLOORS}
    for n in only:
        if n in FLOOR_OF:
            need.add(FLOOR_OF[n])
            if n.endswith("-size"):  # the 64-byte point of a size sweep is the headline floor
                need.add(FLOOR_OF[n].removesuffix("-size"))
    return need


def floor_key(r: Result) -> tuple[str, int]:
    """The ``(floor scenario, size)`` a row is compared with (a floor: itself)."""
    if r.scenario in FLOORS:
        if r.scenario.endswith("-size"):
            return (r.scenario.removesuffix("-size"), r.size) if r.size == 64 else \
                (r.scenario, r.size)
        return r.scenario, r.size
    name = FLOOR_OF[r.scenario]
    if name.endswith("-size") and r.size == 64:
        name = name.removesuffix("-size")
    return name, r.size


def attach_ratios(results: list[Result], floors: list[Result]) -> None:
    """Set ``floor`` and ``ratio`` of every row that has a floor among ``floors``."""
    by_key = {floor_key(f): f for f in floors}
    for r in results:
        if r.scenario in FLOORS:
            continue
        f = by_key.get(floor_key(r))
        if f is not None and f.median:
            r.floor = f.scenario
            r.ratio = r.median / f.median


# --------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------
class PythonPeer:
    """A second memif_aio process (benchmarks.peer) on the other CPU."""

    name = "python"

    def __init__(self, path: str, mode: str, size: int = 64, rx_mode: str = "interrupt",
                 uvloop: bool = True, role: str = "master") -> None:
        self.argv = [sys.executable, "-m", "benchmarks.peer", "--socket", path, "--role", role,
                     "--mode", mode, "--size", str(size), "--rx-mode", rx_mode,
                     "--cpu", str(PEER_CPU)] + (["--uvloop"] if uvloop else [])
        self.proc: asyncio.subprocess.Process | None = None
        self.counts: dict[str, int] = {}

    async def __aenter__(self) -> PythonPeer:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=here)
        return self

    async def ready(self, timeout: float = 30) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if line.strip() != b"READY":
            raise RuntimeError(f"python peer did not get ready: {line!r}")

    async def __aexit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
            lines = out.decode().strip().splitlines()
            if lines:
                with contextlib.suppress(ValueError):
                    self.counts = json.loads(lines[-1])
        except TimeoutError:
            proc.kill()
            await proc.wait()


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------
@dataclass
class Settings:
    repeats: int = 5
    window: float = 1.0
    warmup: float = 0.3
    pingpongs: int = 2000


async def _rate(settings: Settings, step: Callable[[], Awaitable[int]]) -> list[float]:
    """Packets per second of ``step`` (returns packets done), per window."""
    end = time.perf_counter() + settings.warmup
    while time.perf_counter() < end:
        await step()
    rates = []
    for _ in range(settings.repeats):
        n = 0
        t0 = time.perf_counter()
        end = t0 + settings.window
        while True:
            n += await step()
            t = time.perf_counter()
            if t >= end:
                break
        rates.append(n / (t - t0))
    return rates


async def measure_rx(itf: memif_aio.Interface, settings: Settings, api: str) -> list[float]:
    rx = itf.get_rx_queue(0)
    if api == "burst":
        async def step() -> int:
            return len(await rx.read_burst(256))
    elif api == "single":
        async def step() -> int:
            for _ in range(64):
                await rx.read_packet()
            return 64
    else:  # lease
        async def step() -> int:
            async with rx.lease(256) as views:
                return len(views)
    return await _rate(settings, step)


async def measure_tx(itf: memif_aio.Interface, settings: Settings, api: str,
                     size: int) -> list[float]:
    tx = itf.get_tx_queue(0)
    pkt = frame(size)
    burst = [pkt] * 256
    if api == "burst":
        async def step() -> int:
            return await tx.write_burst(burst)
    elif api == "single":
        async def step() -> int:
            for _ in range(64):
                await tx.write_packet(pkt)
            return 64
    else:  # reserve
        async def step() -> int:
            async with tx.reserve(64, size) as bufs:
                for b in bufs:
                    b[:14] = pkt[:14]
            return 64
    return await _rate(settings, step)


async def measure_pingpong(itf: memif_aio.Interface, settings: Settings,
                           size: int = 64) -> list[float]:
    """Round-trip times in microseconds, one packet in flight."""
    rx, tx = itf.get_rx_queue(0), itf.get_tx_queue(0)
    pkt = frame(size)
    for _ in range(200):  # warm-up; also drains anything left in flight
        await tx.write_packet(pkt)
        await asyncio.wait_for(rx.read_packet(), 5)
    rtts = []
    clock = time.perf_counter_ns
    for _ in range(settings.pingpongs):
        t0 = clock()
        await tx.write_packet(pkt)
        await rx.read_packet()
        rtts.append((clock() - t0) / 1000)
    return rtts


@contextlib.asynccontextmanager
async def our_interface(path: str, rx_mode: RxMode, role: str = "slave",
                        mc: MemoryConfig | None = None) -> AsyncIterator[memif_aio.Interface]:
    async with Socket(path, app_name="memif_aio-bench") as sock:
        itf = sock.new_interface(Arguments(
            id=0, is_master=role == "master", name="bench", rx_mode=rx_mode,
            memory_config=mc or MemoryConfig(), reconnect_min_delay=0.05))
        await itf.wait_connected(30)
        yield itf


# --------------------------------------------------------------------------------------------
# Scenarios against a Python peer
# --------------------------------------------------------------------------------------------
async def python_scenarios(settings: Settings, loop_name: str, sizes: list[int],
                           only: set[str] | None) -> list[Result]:
    results: list[Result] = []
    uv = loop_name == "uvloop"

    def wanted(name: str) -> bool:
        return only is None or name in only

    with tempfile.TemporaryDirectory(prefix="memif-bench-") as d:
        path = os.path.join(d, "bench.sock")
        for api in ("burst", "single", "lease"):
            if wanted(f"rx-{api}"):
                async with PythonPeer(path, "blast", uvloop=uv) as peer, \
                        our_interface(path, RxMode.INTERRUPT) as itf:
                    await peer.ready()
                    vals = await measure_rx(itf, settings, api)
                results.append(Result(f"rx-{api}", "python", loop_name, "Mpps",
                                      [v / 1e6 for v in vals]))
            tx_api = "reserve" if api == "lease" else api
            if wanted(f"tx-{tx_api}"):
                async with PythonPeer(path, "sink", uvloop=uv) as peer, \
                        our_interface(path, RxMode.INTERRUPT) as itf:
                    await peer.ready()
                    vals = await measure_tx(itf, settings, tx_api, 64)
                results.append(Result(f"tx-{tx_api}", "python", loop_name, "Mpps",
                                      [v / 1e6 for v in vals]))
        for mode, rx_mode in (("interrupt", RxMode.INTERRUPT), ("busy-poll", RxMode.POLLING)):
            if wanted(f"pingpong-{mode}"):
                async with PythonPeer(path, "echo", uvloop=uv, rx_mode=rx_mode.value) as peer, \
                        our_interface(path, rx_mode) as itf:
                    await peer.ready()
                    vals = await measure_pingpong(itf, settings)
                results.append(Result(f"pingpong-{mode}", "python", loop_name, "us RTT", vals))
        for size in sizes:
            if wanted("rx-burst-size"):
                async with PythonPeer(path, "blast", size=size, uvloop=uv) as peer, \
                        our_interface(path, RxMode.INTERRUPT) as itf:
                    await peer.ready()
                    vals = await measure_rx(itf, settings, "burst")
                results.append(Result("rx-burst-size", "python", loop_name, "Mpps",
                                      [v / 1e6 for v in vals], size=size,
                                      extra={"gbps": statistics.median(vals) * size * 8 / 1e9}))
            if wanted("tx-burst-size"):
                async with PythonPeer(path, "sink", uvloop=uv) as peer, \
                        our_interface(path, RxMode.INTERRUPT) as itf:
                    await peer.ready()
                    vals = await measure_tx(itf, settings, "burst", size)
                results.append(Result("tx-burst-size", "python", loop_name, "Mpps",
                                      [v / 1e6 for v in vals], size=size,
                                      extra={"gbps": statistics.median(vals) * size * 8 / 1e9}))
    return results


# --------------------------------------------------------------------------------------------
# Floors (benchmarks/floors.py): no memif_aio, no peer library, same timing machinery
# --------------------------------------------------------------------------------------------
async def measure_floor_rate(settings: Settings, direction: str, size: int) -> list[float]:
    """Packets per second of the rx or tx floor at ``size``, per window (as ``_rate``)."""
    with floors.ring(size) as rg:
        sync_step = floors.make_rx_step(rg) if direction == "rx" else floors.make_tx_step(rg)

        async def step() -> int:
            return sync_step()
        return await _rate(settings, step)


async def floor_scenarios(settings: Settings, loop_name: str, sizes: list[int],
                          need: set[str]) -> list[Result]:
    """The floors in ``need``, on the running loop (``loop_name``); peer ``-``: no library."""
    results: list[Result] = []
    uv = loop_name == "uvloop"
    for direction in ("rx", "tx"):
        if f"floor-{direction}" in need:
            vals = await measure_floor_rate(settings, direction, 64)
            results.append(Result(f"floor-{direction}", "-", loop_name, "Mpps",
                                  [v / 1e6 for v in vals]))
    if "floor-interrupt" in need:
        vals = await floors.interrupt_rtts(settings.pingpongs, uv, PEER_CPU)
        results.append(Result("floor-interrupt", "-", loop_name, "us RTT", vals))
    if "floor-busy-poll" in need:
        vals = await floors.busy_poll_rtts(settings.pingpongs, uv, PEER_CPU)
        results.append(Result("floor-busy-poll", "-", loop_name, "us RTT", vals))
    for direction in ("rx", "tx"):
        if f"floor-{direction}-size" in need:
            for size in sizes:
                if size == 64:
                    continue  # that point is floor-rx / floor-tx
                vals = await measure_floor_rate(settings, direction, size)
                results.append(Result(f"floor-{direction}-size", "-", loop_name, "Mpps",
                                      [v / 1e6 for v in vals], size=size,
                                      extra={"gbps": statistics.median(vals) * size * 8 / 1e9}))
    return results


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
def machine_info(loops: list[str]) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dpdk = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        dpdk = subprocess.run(["pkg-config", "--modversion", "libdpdk"], capture_output=True,
                              text=True, timeout=5).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "implementation": platform.python_implementation(), "kernel": platform.release(),
            "memif_aio": memif_aio.__version__, "loops": loops, "dpdk": dpdk,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def table(results: list[Result]) -> str:
    """One line per row; ``ratio`` is the median over the median of the row's floor."""
    head = f"{'scenario':24} {'peer':7} {'loop':8} {'size':>5} {'median':>10} {'min':>10} " \
           f"{'max':>10} {'ratio':>6}  unit"
    lines = [head, "-" * len(head)]
    for r in results:
        extra = f"  ({r.extra['gbps']:.2f} Gbit/s)" if "gbps" in r.extra else ""
        ratio = f"{r.ratio:6.2f}" if r.ratio is not None else f"{'-':>6}"
        lines.append(f"{r.scenario:24} {r.peer:7} {r.loop:8} {r.size:5d} {r.median:10.3f} "
                     f"{min(r.values):10.3f} {max(r.values):10.3f} {ratio}  {r.unit}{extra}")
    return "\n".join(lines)
