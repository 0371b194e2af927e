"""``python -m benchmarks.micro_tx``: in-process CPU cost of the transmit hot path, per packet.

No peer process and no wall clock: each round times ``--calls`` steps with
``time.thread_time_ns()`` (the CPU time of this thread only, so other processes on a busy
machine cost it little), and the table gives the p10 and the median over ``--rounds`` rounds in
nanoseconds per packet.  Every round times ``floor-tx`` (benchmarks/floors.py) and then each
scenario, on a running loop, so each round gives a ratio ``floor ns / scenario ns`` (1.0 = as
cheap as the floor); the table prints the median ratio and its p10-p90 spread.

Scenarios (a consumer is imitated by moving the peer's index back after every step):

* ``ring-burst``: ``S2MProducer.write_burst`` of 256 packets (client transmit);
* ``ring-one``: 256 x ``S2MProducer.write_one``;
* ``ring-chain``: ``S2MProducer.write_burst`` of 16 packets of 3 buffers (chains);
* ``m2s-burst``, ``m2s-one``, ``m2s-chain``: the same on ``M2SProducer`` (server transmit);
* ``queue-burst``: ``await TxQueue.write_burst`` of 256 packets, on a running loop;
* ``queue-single``: 256 x ``await TxQueue.write_packet``, on a running loop.

``--memif DIR`` imports ``memif_aio`` from DIR (e.g. a worktree of an older commit), so that
old and new code can be timed in alternating runs of the same sitting::

    for i in 1 2 3; do
      python3 -m benchmarks.micro_tx --memif /tmp/base; python3 -m benchmarks.micro_tx
    done
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

BURST = 256
BSIZE = 2048
LOG2 = 10


def _sizes(spec: str, n: int) -> list[int]:
    """``64`` -> [64]*n; ``mixed`` -> a repeating 64/1500/576/128/9000-free IMIX-like list."""
    if spec == "mixed":
        cycle = [64, 1500, 576, 64, 128, 64, 1024, 64]
        return [cycle[i % len(cycle)] for i in range(n)]
    return [int(spec)] * n


def _packets(sizes: list[int]) -> list[bytes]:
    return [bytes((i + j) & 0xFF for j in range(m)) for i, m in enumerate(sizes)]


class _Rig:
    """One client region with a ring pair, both ends of both directions (as tests/test_ring)."""

    def __init__(self) -> None:
        from memif_aio.memory import ClientLayout, Region
        from memif_aio.ring import M2SConsumer, M2SProducer, S2MProducer
        from memif_aio.wire import RingLayout, RingType

        rl = RingLayout.for_cache_line(64)
        self.layout = ClientLayout(1, 1, LOG2, BSIZE, rl)
        self.region = Region.create(self.layout.region_size)
        self.layout.initialise(self.region)
        regions = [self.region]
        R = 1 << LOG2
        s2m, m2s = RingType.S2M, RingType.M2S
        self.s2m_tx = S2MProducer(regions, 0, self.layout.ring_offset(s2m, 0), LOG2, rl,
                                  [self.layout.buffer_offset(s2m, 0, j) for j in range(R)],
                                  BSIZE)
        self.m2s_rx = M2SConsumer(regions, 0, self.layout.ring_offset(m2s, 0), LOG2, rl,
                                  [self.layout.buffer_offset(m2s, 0, j) for j in range(R)],
                                  BSIZE)
        self.m2s_rx.refill()
        self.m2s_tx = M2SProducer(regions, 0, self.layout.ring_offset(m2s, 0), LOG2, rl)
        self.rings: list[Any] = [self.s2m_tx, self.m2s_rx, self.m2s_tx]

    def s2m_drain(self) -> None:
        """The server consumed everything: ``tail = head``."""
        r = self.s2m_tx
        r.idx[r._tail_i] = r.idx[r._head_i]

    def m2s_repost(self) -> None:
        """The client reposted everything the server filled, with full-size capacities."""
        rx = self.m2s_rx
        rx._pos = self.m2s_tx._pos
        rx.refill()

    def close(self) -> None:
        for r in self.rings:
            r.release()
        self.region.close()


def _time(step: Callable[[], Any], calls: int, rounds: int, per_call: int) -> list[float]:
    """ns per packet of each round (thread CPU time)."""
    out = []
    tt = time.thread_time_ns
    for _ in range(rounds):
        t0 = tt()
        for _ in range(calls):
            step()
        out.append((tt() - t0) / (calls * per_call))
    return out


def _floor(size: str) -> Callable[[], int]:
    from .floors import make_tx_step, ring
    cm = ring(_sizes(size, 1)[0] if size != "mixed" else 1500)
    rg = cm.__enter__()
    _KEEP.append(cm)
    if size == "mixed":  # the floor copies the same packets the scenario sends
        rg.pkts = _packets(_sizes(size, BURST))
    return make_tx_step(rg)


_KEEP: list[Any] = []


def ring_scenarios(rig: _Rig, size: str) -> dict[str, tuple[Callable[[], Any], int]]:
    pkts = _packets(_sizes(size, BURST))
    chains = _packets([3 * BSIZE - 100] * 16)
    s2m, m2s = rig.s2m_tx, rig.m2s_tx

    def ring_burst() -> None:
        assert s2m.write_burst(pkts) == BURST
        rig.s2m_drain()

    def ring_one() -> None:
        w = s2m.write_one
        for p in pkts:
            w(p)
        rig.s2m_drain()

    def ring_chain() -> None:
        assert s2m.write_burst(chains) == len(chains)
        rig.s2m_drain()

    def m2s_burst() -> None:
        assert m2s.write_burst(pkts) == BURST
        rig.m2s_repost()

    def m2s_one() -> None:
        w = m2s.write_one
        for p in pkts:
            w(p)
        rig.m2s_repost()

    def m2s_chain() -> None:
        assert m2s.write_burst(chains) == len(chains)
        rig.m2s_repost()

    return {"ring-burst": (ring_burst, BURST), "ring-one": (ring_one, BURST),
            "ring-chain": (ring_chain, len(chains)), "m2s-burst": (m2s_burst, BURST),
            "m2s-one": (m2s_one, BURST), "m2s-chain": (m2s_chain, len(chains))}


class _Owner:
    interface_id = 0

    def protocol_violation(self, reason: str) -> None:
        raise AssertionError(reason)


def queue_scenarios(rig: _Rig, size: str) -> tuple[dict[str, tuple[Any, int]], Callable[[], None]]:
    """``queue-burst`` and ``queue-single`` (coroutine functions), and how to close them."""
    from memif_aio.queue import TxQueue
    from memif_aio.wire import RING_FLAG_MASK_INT

    ring = rig.s2m_tx
    ring.idx[ring._flags_i] = RING_FLAG_MASK_INT  # the peer polls (as DPDK does): no signal
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    tx = TxQueue(_Owner(), 0, ring, efd)
    pkts = _packets(_sizes(size, BURST))

    async def queue_burst() -> None:
        assert await tx.write_burst(pkts) == BURST
        rig.s2m_drain()

    async def queue_single() -> None:
        w = tx.write_packet
        for p in pkts:
            await w(p)
        rig.s2m_drain()

    def close() -> None:
        tx._release()
        os.close(efd)
    return {"queue-burst": (queue_burst, BURST), "queue-single": (queue_single, BURST)}, close


SCENARIOS = ("ring-burst", "ring-one", "ring-chain", "m2s-burst", "m2s-one", "m2s-chain",
             "queue-burst", "queue-single")


async def measure(ns: argparse.Namespace, names: set[str]) -> dict[str, list[float]]:
    """Every round times the floor, then each scenario: a ratio per round, in one sitting."""
    tt = time.thread_time_ns
    floor = _floor(ns.size)
    rig = _Rig()
    steps: dict[str, tuple[Any, int]] = {"floor-tx": (floor, BURST)}
    steps.update((k, v) for k, v in ring_scenarios(rig, ns.size).items() if k in names)
    qsteps, close = queue_scenarios(rig, ns.size)
    steps.update((k, v) for k, v in qsteps.items() if k in names)
    rows: dict[str, list[float]] = {k: [] for k in steps}
    try:
        for _ in range(ns.rounds):
            for name, (step, per) in steps.items():
                if name.startswith("queue"):
                    t0 = tt()
                    for _ in range(ns.calls):
                        await step()
                else:
                    t0 = tt()
                    for _ in range(ns.calls):
                        step()
                rows[name].append((tt() - t0) / (ns.calls * per))
    finally:
        close()
        rig.close()
        for cm in _KEEP:
            cm.__exit__(None, None, None)
        _KEEP.clear()
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.micro_tx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memif", default=None, metavar="DIR",
                   help="import memif_aio from DIR (a checkout) instead of the usual path")
    p.add_argument("--size", default="64", help="packet size in bytes, or 'mixed'")
    p.add_argument("--calls", type=int, default=100, help="steps per round")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    p.add_argument("--only", default=",".join(SCENARIOS))
    p.add_argument("--label", default=None, help="a name for the first line")
    return p


def report(ns: argparse.Namespace, label: str, rows: dict[str, list[float]]) -> None:
    """Print the table: p10 and median ns per packet, the median ratio to floor-tx and its
    p10-p90 spread over the rounds."""
    floor = rows["floor-tx"]
    print(f"# {label}  size={ns.size} loop={ns.loop} calls={ns.calls} rounds={ns.rounds}")
    print(f"{'scenario':14} {'p10 ns/pkt':>11} {'median':>9} {'ratio':>6} {'(p10-p90)':>12}")
    for name, v in rows.items():
        line = f"{name:14} {_p10(v):11.1f} {statistics.median(v):9.1f}"
        if name != "floor-tx" and not name.endswith("chain"):
            ratios = sorted(f / x for f, x in zip(floor, v))  # floor / scenario, per round
            p90 = ratios[-1 - len(ratios) // 10]
            line += f" {statistics.median(ratios):6.2f} {_p10(ratios):5.2f}-{p90:.2f}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    ns = p.parse_args(argv)
    if ns.memif:
        sys.path.insert(0, os.path.abspath(ns.memif))
    import memif_aio
    label = ns.label or os.path.dirname(os.path.dirname(os.path.abspath(memif_aio.__file__)))
    names = set(ns.only.split(","))
    unknown = names - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {sorted(unknown)}")
    if ns.loop == "uvloop":
        import uvloop
        rows = uvloop.run(measure(ns, names))
    else:
        rows = asyncio.run(measure(ns, names))
    report(ns, label, rows)
    return 0


def _p10(v: list[float]) -> float:
    return sorted(v)[max(0, len(v) // 10)]


if __name__ == "__main__":
    sys.exit(main())
