"""``python -m benchmarks.binding``: memif_aio beside a libmemif C-extension binding (issue 14).

The binding is python-memif (module ``memif``, class ``NativeMemif``, the version with the
``up`` property and keyword arguments): a CPython C extension over libmemif 4.0, one C call per
packet sent and a Python callback per packet received.  It is on no package registry; build
libmemif and the binding as the binding's README says, then run this.  Neither is a
dependency of memif_aio, and no test needs them.

Both sides are the slave of the same kind of dpdk-testpmd server (on CPU 1; this process on
CPU 0), with the binding's default geometry (a 1024-slot ring, 2048-byte buffers) and 64-byte
frames.  The sides alternate, row by row, in one run (the order flips each round):

* ``rx``: testpmd ``txonly``.  memif_aio: ``read_burst(256)`` in interrupt mode.  The
  binding: ``poll()`` in a loop; on each interrupt libmemif hands it 16 packets at most, and
  it calls a Python callback for each one (the callback only counts).  With more than 16
  packets waiting, libmemif's rx burst reports "not enough memif buffers"; the binding raises
  and never refills those 16 slots, so against a peer that keeps the ring full it starves.
  The calls that raised are counted.
* ``tx-burst``: testpmd ``rxonly``.  memif_aio: ``write_burst`` of 256.  The binding:
  ``send()`` per packet (its only way to transmit), counting the ones it accepted (a full
  ring raises ConnectionError, counted).
* ``tx-single``: the same, memif_aio with ``write_packet`` per packet.  On every tx row, every
  packet a side counted as sent must reach testpmd (its port counters say so).
* ``pingpong-busy-poll``: testpmd ``macswap``, one packet in flight.  memif_aio in polling
  mode, ``write_packet`` then ``read_packet``.  The binding: ``send()``, then ``poll()`` in a
  spin until its callback has run.

Printed per row and side: the median with min and max over every window of every round, and
the ratio of the medians, memif_aio / binding (for the round trip, binding / memif_aio).  A
ratio above 1 means memif_aio is ahead.  What the binding wrote to stderr (libmemif's and its
own messages) is kept out of the table and counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from memif_aio import MemoryConfig, RxMode
from memif_aio.testing.testpmd import PortStats, TestPmd, find_testpmd

from .runner import (
    OUR_CPU,
    PEER_CPU,
    Settings,
    _rate,
    frame,
    machine_info,
    measure_pingpong,
    measure_rx,
    measure_tx,
    our_interface,
)

ROWS = ("rx", "tx-burst", "tx-single", "pingpong-busy-poll")
#: testpmd's forwarding mode for each row
MODE = {"rx": "txonly", "tx-burst": "rxonly", "tx-single": "rxonly",
        "pingpong-busy-poll": "macswap"}
UNIT = {"rx": "Mpps", "tx-burst": "Mpps", "tx-single": "Mpps", "pingpong-busy-poll": "us RTT"}
#: the binding's fixed geometry (python-memif: PYMEMIF_RING_CAPACITY_LOG2, PYMEMIF_DATAROOM)
GEOMETRY = MemoryConfig(log2_ring_size=10, packet_buffer_size=2048)
#: spins of the binding's poll() between two looks at the clock
SPIN_CHECK = 1024
CONNECT_TIMEOUT = 15.0
#: the binding's calls per timed step (poll() or send())
STEP = 256


class BindingMissing(RuntimeError):
    """The binding cannot be imported (or is not the one this module drives)."""


def load_binding(name: str = "memif") -> ModuleType:
    """The binding's module; :class:`BindingMissing` says how to get it when it is absent."""
    try:
        mod = importlib.import_module(name)
    except ImportError as exc:
        raise BindingMissing(
            f"the libmemif binding (module {name!r}) cannot be imported: {exc}. Build "
            "libmemif 4.0 (FD.io VPP, extras/libmemif) into /usr/local, then install "
            "python-memif (github.com/yoursunny/python-memif) with pip") from None
    cls = getattr(mod, "NativeMemif", None)
    if not callable(cls):
        raise BindingMissing(f"module {name!r} ({getattr(mod, '__file__', '?')}) has no "
                             "NativeMemif: it is not python-memif")
    if not hasattr(cls, "up"):
        raise BindingMissing(f"{name}.NativeMemif has no 'up' property: an older "
                             "python-memif, whose API this runner does not drive")
    return mod


def summarize(ours: list[float], theirs: list[float], unit: str) -> dict[str, Any]:
    """Medians with min and max of both sides, and the ratio of the medians, oriented so that
    above 1 means memif_aio is ahead (a rate: ours / theirs; a round trip: theirs / ours)."""
    if not ours or not theirs:
        raise ValueError("both sides need at least one value")
    mo, mt = statistics.median(ours), statistics.median(theirs)
    if unit.endswith("RTT"):
        ratio = mt / mo if mo > 0 else float("inf")
    else:
        ratio = mo / mt if mt > 0 else float("inf")
    return {"unit": unit, "ratio": ratio,
            "memif_aio": {"median": mo, "min": min(ours), "max": max(ours), "values": ours},
            "binding": {"median": mt, "min": min(theirs), "max": max(theirs),
                        "values": theirs}}


@contextlib.contextmanager
def stderr_into(path: str) -> Iterator[None]:
    """Send file descriptor 2 (where libmemif and the binding print) to ``path`` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


# --------------------------------------------------------------------------------------------
# The binding's side
# --------------------------------------------------------------------------------------------
class _Counter:
    """The binding's rx callback ``rx(data, has_next)``: counts packets, the least a Python
    callback can do."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, _pkt: bytes, _has_next: bool) -> None:
        self.n += 1


async def _until(m: Any, ready: Callable[[], bool], tp: TestPmd, what: str) -> None:
    """Poll the binding (it runs its control channel in ``poll()``) until ``ready()``."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    poll = functools.partial(m.poll)  # see binding_row
    while not ready():
        poll()
        if time.monotonic() > deadline:
            raise SystemExit(f"the binding: no {what} in {CONNECT_TIMEOUT:.0f} s\n"
                             f"{tp.log_tail()}")
        await asyncio.sleep(0.001)


async def _windows(settings: Settings, step: Callable[[], int]) -> list[float]:
    """Packets per second of the synchronous ``step`` per window, timed as memif_aio's rows
    are (runner._rate; the coroutine around a step of 256 calls costs under 1 %)."""
    async def astep() -> int:
        return step()
    return await _rate(settings, astep)


async def binding_row(mod: ModuleType, row: str, path: str, settings: Settings,
                      tp: TestPmd) -> tuple[list[float], int]:
    """One row of the binding on a running testpmd: the values, and the calls that raised
    (a full ring on send; on poll, libmemif's "not enough memif buffers", which the binding
    turns into an exception, dropping that burst)."""
    got = _Counter()
    m = mod.NativeMemif(path, 0, got, is_server=False, dataroom=GEOMETRY.packet_buffer_size,
                        ring_size_log2=GEOMETRY.log2_ring_size)
    pkt = frame(64)
    failed = [0]
    send = m.send
    # The binding's rx path sets an exception (libmemif's "not enough memif buffers") and
    # still returns None from poll(); CPython 3.11's specialised call of a bare C method
    # does not check for that, so it would surface at some later, unrelated call.  Called
    # through functools.partial (a checked vectorcall), poll() itself raises SystemError.
    poll = functools.partial(m.poll)
    try:
        await _until(m, lambda: bool(m.up), tp, "link up")
        if row == "rx":
            def rx_step() -> int:
                n0 = got.n
                for _ in range(STEP):
                    try:
                        poll()
                    except Exception:
                        failed[0] += 1
                return got.n - n0
            vals = [v / 1e6 for v in await _windows(settings, rx_step)]
        elif row in ("tx-burst", "tx-single"):
            accepted = [0]

            def tx_step() -> int:
                ok = 0
                for _ in range(STEP):
                    try:
                        send(pkt)
                        ok += 1
                    except ConnectionError:  # "Ring buffer full."
                        failed[0] += 1
                accepted[0] += ok
                return ok
            vals = [v / 1e6 for v in await _windows(settings, tx_step)]
            # while connected: testpmd's memif port counts from zero again after a disconnect
            await _all_reached(tp, accepted[0], "the binding")
        else:  # pingpong-busy-poll
            vals = _binding_pingpong(m, got, pkt, settings)
    finally:
        m.close()
    return vals, failed[0]


def _binding_pingpong(m: Any, got: _Counter, pkt: bytes, settings: Settings) -> list[float]:
    poll, send = m.poll, m.send
    clock = time.perf_counter_ns

    def one() -> int:
        before = got.n
        t0 = clock()
        send(pkt)
        spins = 0
        while got.n == before:
            poll()
            spins += 1
            if spins % SPIN_CHECK == 0 and clock() - t0 > 5e9:
                raise SystemExit("the binding: no echo from testpmd in 5 s")
        return clock() - t0

    # poll here is the bare method (the fastest call): with one packet in flight libmemif
    # never reports "not enough memif buffers"
    for _ in range(200):  # warm-up, as runner.measure_pingpong
        one()
    return [one() / 1000 for _ in range(settings.pingpongs)]


# --------------------------------------------------------------------------------------------
# A round: memif_aio then the binding (or the reverse), each on a testpmd of its own
# --------------------------------------------------------------------------------------------
def _testpmd(path: str, row: str) -> TestPmd:
    kw: dict[str, Any] = {"txpkts": 64} if MODE[row] == "txonly" else {}
    return TestPmd("server", path, forward_mode=MODE[row], cpu=PEER_CPU, **kw)


async def ours_row(row: str, path: str, settings: Settings) -> list[float]:
    rx_mode = RxMode.POLLING if row == "pingpong-busy-poll" else RxMode.INTERRUPT
    async with _testpmd(path, row) as tp, our_interface(path, rx_mode, mc=GEOMETRY) as itf:
        await tp.wait_connected(CONNECT_TIMEOUT)
        if row == "rx":
            return [v / 1e6 for v in await measure_rx(itf, settings, "burst")]
        if row == "pingpong-busy-poll":
            return await measure_pingpong(itf, settings)
        txq = itf.get_tx_queue(0)
        sent0 = txq.stats().packets
        vals = await measure_tx(itf, settings, row.removeprefix("tx-"), 64)
        await _all_reached(tp, txq.stats().packets - sent0, "memif_aio")
        return [v / 1e6 for v in vals]


async def _all_reached(tp: TestPmd, sent: int, who: str) -> PortStats:
    def arrived(s: PortStats) -> bool:
        return s.rx_packets >= sent
    try:
        return await tp.wait_stats(arrived, timeout=10)
    except Exception as exc:
        raise SystemExit(f"{who}: testpmd did not count the {sent} packets sent: {exc}") from exc


async def theirs_row(mod: ModuleType, row: str, path: str, settings: Settings,
                     log: str) -> tuple[list[float], int]:
    async with _testpmd(path, row) as tp:
        with stderr_into(log):
            return await binding_row(mod, row, path, settings, tp)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    mod = load_binding(args.module)
    if find_testpmd() is None:
        raise SystemExit("dpdk-testpmd not found: install dpdk-dev librte-net-memif23 "
                         "librte-mempool-ring23")
    settings = Settings(repeats=args.repeats, window=args.window, warmup=args.warmup,
                        pingpongs=args.pingpongs)
    rows = [r for r in ROWS if args.only is None or r in args.only]
    ours: dict[str, list[float]] = {r: [] for r in rows}
    theirs: dict[str, list[float]] = {r: [] for r in rows}
    failed: dict[str, int] = {r: 0 for r in rows}
    with tempfile.TemporaryDirectory(prefix="memif-bench-binding-") as d:
        path = os.path.join(d, "dpdk.sock")
        log = os.path.join(d, "binding-stderr.log")
        for rnd in range(args.rounds):
            for row in rows:
                order = ("ours", "theirs") if rnd % 2 == 0 else ("theirs", "ours")
                for side in order:
                    if side == "ours":
                        vals = await ours_row(row, path, settings)
                        ours[row] += vals
                    else:
                        vals, nfail = await theirs_row(mod, row, path, settings, log)
                        theirs[row] += vals
                        failed[row] += nfail
                    print(f"  round {rnd + 1} {row:<19} {side:<6} "
                          f"{statistics.median(vals):8.3f} {UNIT[row]}",
                          file=sys.stderr, flush=True)
        with open(log, "rb") as f:
            log_lines = f.read().count(b"\n")
    summaries = {r: summarize(ours[r], theirs[r], UNIT[r]) for r in rows}
    for r in rows:
        summaries[r]["binding"]["calls_that_raised"] = failed[r]
    return {"rows": summaries,
            "binding": getattr(mod, "__file__", "?"), "binding_stderr_lines": log_lines,
            "settings": {k: v for k, v in vars(args).items()}}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.binding", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop",
                   help="memif_aio's event loop (the binding needs none)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    p.add_argument("--repeats", type=int, default=5, help="measurement windows per row")
    p.add_argument("--window", type=float, default=1.0, help="seconds per window")
    p.add_argument("--warmup", type=float, default=0.3, help="seconds of warm-up per row")
    p.add_argument("--pingpongs", type=int, default=2000, help="round trips per row")
    p.add_argument("--only", type=_rows, default=None,
                   help=f"comma-separated rows out of {', '.join(ROWS)}")
    p.add_argument("--module", default="memif", help="the binding's module name")
    p.add_argument("--json", help="also write the figures to this file")
    return p


def _rows(text: str) -> set[str]:
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(ROWS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown row(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(ROWS)}")
    return names


def table(out: dict[str, Any]) -> str:
    lines = [f"{'row':<19} {'side':<10} {'median':>9} {'min':>9} {'max':>9}  unit      "
             "ratio (>1: memif_aio ahead)"]
    for row, s in out["rows"].items():
        for side in ("memif_aio", "binding"):
            v = s[side]
            if side == "memif_aio":
                ratio = f"{s['ratio']:.2f}"
            else:
                raised = v.get("calls_that_raised", 0)
                ratio = f"({raised} calls raised)" if raised else ""
            lines.append(f"{row:<19} {side:<10} {v['median']:9.3f} {v['min']:9.3f} "
                         f"{v['max']:9.3f}  {s['unit']:<9} {ratio}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1 or args.window <= 0 or args.pingpongs < 1 \
            or args.warmup < 0:
        p.error("--rounds, --repeats and --pingpongs must be at least 1, --window positive, "
                "--warmup not negative")
    try:
        load_binding(args.module)
    except BindingMissing as exc:
        print(f"python -m benchmarks.binding: {exc}", file=sys.stderr)
        return 2
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {OUR_CPU})
    load0 = os.getloadavg()
    try:
        if args.loop == "uvloop":
            import uvloop

            out = uvloop.run(run(args))
        else:
            out = asyncio.run(run(args))
    finally:
        os.sched_setaffinity(0, before)
    info = machine_info([args.loop])
    out["machine"] = {**info, "loadavg_before": list(load0), "loadavg_after": list(os.getloadavg())}
    print(f"# memif_aio ({args.loop}) beside the libmemif binding ({out['binding']}), slaves of "
          f"dpdk-testpmd, 64 B, {args.rounds} alternating rounds; {info['cpu']}, load "
          f"{load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after; the binding printed "
          f"{out['binding_stderr_lines']} stderr lines")
    print(table(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
