"""``python -m benchmarks.rxmicro``: CPU cost of the receive path, in process, without a peer.

Each case fills a ring with a test producer (not timed), then times the receive calls with
``time.thread_time_ns()`` (CPU time of this thread: another process on the same core does not
inflate it the way it inflates wall time), and reports nanoseconds per packet: the p10 and the
median over many repetitions.  ``floor-rx`` is the rx floor of benchmarks/floors.py timed the
same way, so ``ratio`` (floor ns / case ns) reads like the runner's ratio column.

Cases (64-byte packets unless ``--size``, a 256-slot ring, 256 packets per repetition):

* ``ring-m2s-burst`` / ``ring-s2m-burst``: ``read_burst(256)`` on the client (M2SConsumer) and
  server (S2MConsumer) ring;
* ``ring-s2m-chain1`` / ``ring-s2m-bad1``: the same window with one 2-slot chain, or one
  zero-length descriptor, after the 16th packet;
* ``ring-m2s-bad1``: the client ring with one zero-length descriptor after the 16th packet;
* ``ring-s2m-2regions``: descriptors alternating between two regions (VPP zero-copy clients);
* ``ring-m2s-pingpong``: a raw server publishes one packet (a length and a tail store), the
  client ring reads it with ``read_burst(1)``, x 256: what a ping-pong pays per packet on the
  client ring, reposting included;
* ``q-single`` / ``q-burst`` / ``q-into``: ``await rx.read_packet()`` x 256,
  ``await rx.read_burst(256)``, ``await rx.read_packet_into(buf)`` x 256, on an ``RxQueue``
  in polling mode over the client ring, on the chosen loop;
* ``q-single-pingpong`` / ``q-into-pingpong``: a raw server publishes one packet, then one
  ``await rx.read_packet()`` / ``await rx.read_packet_into(buf)``, x 256.

``--compare DIR`` runs the cases alternately in child processes importing ``memif_aio`` from
this checkout and from ``DIR`` (e.g. a worktree at main), in one sitting, and prints both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

SIZE = 64
LOG2 = 8
R = 1 << LOG2
BSIZE = 2048

CASES = ["floor-rx", "ring-m2s-burst", "ring-s2m-burst", "ring-s2m-chain1", "ring-s2m-bad1",
         "ring-m2s-bad1", "ring-s2m-2regions", "ring-m2s-pingpong", "q-single", "q-burst",
         "q-into", "q-single-pingpong", "q-into-pingpong"]


class _Owner:
    interface_id = 0

    def protocol_violation(self, reason: str) -> None:
        raise AssertionError(f"protocol violation in a benchmark: {reason}")


@contextmanager
def _rings() -> Iterator[dict[str, Any]]:
    from memif_aio.memory import ClientLayout, Region
    from memif_aio.ring import M2SConsumer, M2SProducer, S2MConsumer, S2MProducer
    from memif_aio.wire import RingLayout, RingType

    rl = RingLayout.for_cache_line(64)
    layout = ClientLayout(1, 1, LOG2, BSIZE, rl)
    region = Region.create(layout.region_size)
    layout.initialise(region)
    extra = Region.create(R * BSIZE)
    regions = [region, extra]

    def bufs(t: int) -> list[int]:
        return [layout.buffer_offset(t, 0, j) for j in range(R)]

    s2m, m2s = RingType.S2M, RingType.M2S
    rings: dict[str, Any] = {
        "ctx": S2MProducer(regions, 0, layout.ring_offset(s2m, 0), LOG2, rl, bufs(s2m), BSIZE),
        "srx": S2MConsumer(regions, 0, layout.ring_offset(s2m, 0), LOG2, rl),
        "crx": M2SConsumer(regions, 0, layout.ring_offset(m2s, 0), LOG2, rl, bufs(m2s), BSIZE),
        "stx": M2SProducer(regions, 0, layout.ring_offset(m2s, 0), LOG2, rl),
        "regions": regions,
    }
    rings["crx"].refill()
    try:
        yield rings
    finally:
        for k in ("ctx", "srx", "crx", "stx"):
            rings[k].release()
        region.close()
        extra.close()


def _stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p10": s[len(s) // 10], "median": statistics.median(s), "n": len(s)}


def _timed(reps: int, setup: Callable[[], None], run: Callable[[], int]) -> list[float]:
    """ns per packet of ``run`` (returns packets), ``setup`` untimed before each repetition."""
    clock = time.thread_time_ns
    out = []
    for _ in range(reps):
        setup()
        t0 = clock()
        n = run()
        t1 = clock()
        assert n > 0
        out.append((t1 - t0) / n)
    return out


def _ring_case(name: str, reps: int) -> list[float]:
    pkts = [bytes((i * 7) & 0xFF for i in range(SIZE))] * R
    with _rings() as r:
        ctx, srx, crx, stx = r["ctx"], r["srx"], r["crx"], r["stx"]
        out: list[Any] = []
        d16, d32 = (srx.d16, srx.d32) if "s2m" in name else (crx.d16, crx.d32)

        def s2m_fill() -> None:
            out.clear()
            assert ctx.write_burst(pkts) == R
            if name == "ring-s2m-chain1":  # slots 16 and 17 become one 2-slot chain
                d16[16 * 8] = 1
            elif name == "ring-s2m-bad1":
                d32[16 * 4 + 1] = 0
            elif name == "ring-s2m-2regions":  # odd slots point into region 1
                for j in range(1, R, 2):
                    d16[j * 8 + 1] = 1
                    d32[j * 4 + 2] = j * BSIZE

        def m2s_fill() -> None:
            out.clear()
            assert stx.write_burst(pkts) == R
            if name == "ring-m2s-bad1":
                d32[16 * 4 + 1] = 0

        def drain(rx: Any) -> Callable[[], int]:
            def run() -> int:
                n = 0
                while True:
                    k = rx.read_burst(R, out)
                    if not k:
                        return n
                    n += k
            return run

        if name == "ring-m2s-pingpong":
            idx = crx.idx
            tail_i = crx._tail_i
            lens = memoryview(crx.d32)[1::4]

            def pp() -> int:
                # a raw server: the length and the tail, two stores; they are timed too (a
                # clock read costs ~1 us on this VM, more than what is measured)
                t = idx[tail_i]
                for _ in range(R):
                    lens[t & (R - 1)] = SIZE
                    t = (t + 1) & 0xFFFF
                    idx[tail_i] = t
                    out.clear()
                    crx.read_burst(1, out)
                return R

            return _timed(reps, lambda: None, pp)
        if "s2m" in name:
            return _timed(reps, s2m_fill, drain(srx))
        return _timed(reps, m2s_fill, drain(crx))


def _queue_case(name: str, reps: int, uvloop: bool) -> list[float]:
    from memif_aio.config import RxMode
    from memif_aio.queue import RxQueue

    pkts = [bytes((i * 7) & 0xFF for i in range(SIZE))] * R
    res: list[float] = []

    async def main() -> None:
        with _rings() as r:
            stx = r["stx"]
            rx = RxQueue(_Owner(), 0, r["crx"], -1, RxMode.POLLING)
            buf = bytearray(BSIZE)
            clock = time.thread_time_ns
            crx = r["crx"]
            idx, tail_i, lens = crx.idx, crx._tail_i, memoryview(crx.d32)[1::4]
            for _ in range(reps):
                if name.endswith("-pingpong"):
                    # a raw server publishes one packet (two stores, timed too), one read
                    t = idx[tail_i]
                    into = name.startswith("q-into")
                    t0 = clock()
                    for _ in range(R):
                        lens[t & (R - 1)] = SIZE
                        t = (t + 1) & 0xFFFF
                        idx[tail_i] = t
                        if into:
                            await rx.read_packet_into(buf)
                        else:
                            await rx.read_packet()
                    t1 = clock()
                    res.append((t1 - t0) / R)
                    continue
                assert stx.write_burst(pkts) == R
                if name == "q-single":
                    t0 = clock()
                    for _ in range(R):
                        await rx.read_packet()
                    t1 = clock()
                elif name == "q-into":
                    t0 = clock()
                    for _ in range(R):
                        await rx.read_packet_into(buf)
                    t1 = clock()
                else:
                    t0 = clock()
                    got = await rx.read_burst(R)
                    t1 = clock()
                    assert len(got) == R
                res.append((t1 - t0) / R)

    if uvloop:
        import uvloop as uv
        uv.run(main())
    else:
        asyncio.run(main())
    return res


def _floor_case(reps: int) -> list[float]:
    from .floors import make_rx_step, ring

    with ring(SIZE) as rg:  # the floor's buffers hold at least 2048 bytes
        step = make_rx_step(rg)
        return _timed(reps, lambda: None, step)


def run_case(name: str, reps: int, uvloop: bool) -> list[float]:
    if name == "floor-rx":
        return _floor_case(reps)
    if name.startswith("ring-"):
        return _ring_case(name, reps)
    return _queue_case(name, reps, uvloop)


#: the child: ``benchmarks`` from this checkout, then ``memif_aio`` from the tree measured
#: (``-P``: the working directory is not put first on sys.path)
_CHILD = ("import sys; sys.path[:0] = [sys.argv.pop(1)]; import benchmarks.rxmicro as m; "
          "sys.path.insert(0, sys.argv.pop(1)); m.main()")


def _child(tree: str, cases: list[str], reps: int, uvloop: bool) -> dict[str, list[float]]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = [sys.executable, "-P", "-c", _CHILD, here, tree, "--json", "--reps", str(reps),
            "--size", str(SIZE),
            "--cases", ",".join(cases)] + (["--uvloop"] if uvloop else [])
    proc = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=600,
                          check=True)
    data: dict[str, Any] = json.loads(proc.stdout)
    where = data.pop("memif_aio")
    if os.path.dirname(os.path.dirname(where)) != tree:
        raise RuntimeError(f"the child imported {where}, not memif_aio from {tree}")
    return data


def main() -> None:
    global SIZE
    p = argparse.ArgumentParser(prog="python -m benchmarks.rxmicro", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--reps", type=int, default=200, help="repetitions per case and round")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (--compare)")
    p.add_argument("--uvloop", action="store_true", help="queue cases on uvloop")
    p.add_argument("--size", type=int, default=SIZE, help="packet size (at most 2048)")
    p.add_argument("--compare", metavar="DIR", help="a second checkout to compare against")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    ns = p.parse_args()
    SIZE = ns.size
    cases = [c for c in ns.cases.split(",") if c]
    for c in cases:
        if c not in CASES:
            p.error(f"unknown case {c!r} (known: {', '.join(CASES)})")
    if ns.json:
        res: dict[str, Any] = {}
        for c in cases:
            try:
                res[c] = run_case(c, ns.reps, ns.uvloop)
            except Exception as exc:  # a case the other checkout cannot run
                print(f"{c}: {exc!r}", file=sys.stderr)
                res[c] = []
        import memif_aio
        print(json.dumps({**res, "memif_aio": memif_aio.__file__}))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this": here}
    if ns.compare:
        trees["other"] = os.path.abspath(ns.compare)
    acc: dict[str, dict[str, list[float]]] = {t: {c: [] for c in cases} for t in trees}
    for _ in range(ns.rounds if ns.compare else 1):
        for t, path in trees.items():  # alternating rounds, one sitting
            for c, v in _child(path, cases, ns.reps, ns.uvloop).items():
                acc[t][c] += v
    floor = {t: statistics.median(acc[t]["floor-rx"]) if acc[t].get("floor-rx") else None
             for t in trees}
    print(f"# ns per packet (thread CPU time), {SIZE}-byte packets, {R}-slot ring, "
          f"loop {'uvloop' if ns.uvloop else 'asyncio'}; ratio = floor-rx median / median")
    print(f"{'case':<20}" + "".join(f"{t + ' p10':>12}{t + ' med':>12}{t + ' ratio':>12}"
                                    for t in trees))
    for c in cases:
        line = f"{c:<20}"
        for t in trees:
            v = acc[t][c]
            if not v:
                line += f"{'-':>12}{'-':>12}{'-':>12}"
                continue
            s = _stats(v)
            f = floor[t]
            ratio = f"{f / s['median']:.2f}" if f else "-"
            line += f"{s['p10']:>12.1f}{s['median']:>12.1f}{ratio:>12}"
        print(line)


if __name__ == "__main__":
    main()
