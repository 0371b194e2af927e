"""WorkerPool against DPDK's net_memif with 2 queue pairs (issue 14 §3), both roles.

testpmd (``macswap``, ``--rxq=2 --txq=2``) forwards its rx queue i to its tx queue i, so a
frame a worker sends on queue pair i comes back on queue pair i.  Each worker (its own
process, its own queue pair) warms its queue up, sends tagged frames and checks that every
one comes back, in order, on its own queue, equal but for the swapped MACs.  The owner
keeps the control channel; testpmd's port counters must add up to what the workers sent.

(Named test_dpdk_workers.py, not test_workers.py: tests/test_workers.py has that basename,
and the tests directories are not packages.)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from _frames import ETH_PROBE, describe, frame, swap_macs

from memif_aio import Arguments, Interface, MemoryConfig, RxQueue, Socket, TxQueue
from memif_aio.testing.testpmd import CONNECT_SETTLE, TestPmd, link_up
from memif_aio.workers import WorkerEvent, WorkerPool

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

ROLES = pytest.mark.parametrize("role", ["master", "slave"], ids=["py-master", "py-slave"])
T_CONNECT = 15.0


async def echo_check(rx: RxQueue | None, tx: TxQueue | None, n: int) -> dict[str, int]:
    """Worker handler: warm the queue pair up with probes, then send ``n`` frames (windowed)
    and check each echo; returns the counts (an AssertionError is the worker's error)."""
    assert rx is not None and tx is not None
    qid = rx.qid
    probes = 0
    deadline = time.monotonic() + 10
    while True:  # testpmd drops its first frames: probe until one comes back
        await tx.write_packet(frame(probes, 60, qid, ETH_PROBE))
        probes += 1
        try:
            got = await asyncio.wait_for(rx.read_burst(64), 0.02)
        except TimeoutError:
            got = []
        assert all(p[12:14] == ETH_PROBE and p[14] == qid for p in got), got
        if got:
            break
        assert time.monotonic() < deadline, f"no probe came back on queue {qid}"
    rnd = random.Random(qid)
    frames = [frame(i, rnd.randint(60, 1514), qid) for i in range(n)]
    sent = back = late = 0
    async with asyncio.timeout(30):
        while back < n:
            k = min(128 - (sent - back), 32, n - sent)
            if k > 0:
                sent += await tx.write_burst(frames[sent:sent + k])
            for p in await rx.read_burst(256):
                if p[12:14] == ETH_PROBE:
                    late += 1
                    continue
                assert p == swap_macs(frames[back]), \
                    f"queue {qid}: frame {back} came back different: {describe(p)}"
                back += 1
    return {"qid": qid, "sent": sent, "back": back, "probes": probes, "late_probes": late}


@asynccontextmanager
async def link(role: str, path: str) -> AsyncIterator[tuple[Interface, TestPmd]]:
    mc = MemoryConfig(num_queue_pairs=2, log2_ring_size=10)
    async def setup(stack: AsyncExitStack) -> tuple[Interface, TestPmd]:
        if role == "master":
            sock = await stack.enter_async_context(Socket(path))
            itf = sock.new_interface(Arguments(id=0, is_master=True, name="py-master",
                                               memory_config=mc))
            tp = await stack.enter_async_context(TestPmd("client", path, queues=2))
        else:
            tp = await stack.enter_async_context(TestPmd("server", path, queues=2))
            sock = await stack.enter_async_context(Socket(path))
            itf = sock.new_interface(Arguments(id=0, is_master=False, name="py-slave",
                                               memory_config=mc, reconnect_min_delay=0.05,
                                               reconnect_max_delay=0.5))
        return itf, tp

    # a DPDK server with more than one queue pair may crash as the link comes up (pitfall 39)
    settle = CONNECT_SETTLE if role == "slave" else 0.0
    async with link_up(setup, T_CONNECT, settle=settle) as (itf, tp):
        yield itf, tp


async def finished(pool: WorkerPool, evs: Any, n: int) -> list[WorkerEvent]:
    done: list[WorkerEvent] = []
    async with asyncio.timeout(60):
        async for ev in evs:
            assert ev.kind != "exited", ev
            if ev.kind == "finished":
                assert not ev.error, f"worker {ev.worker}: {ev.error}"
                done.append(ev)
                if len(done) == n:
                    return sorted(done, key=lambda e: e.worker)
    raise AssertionError(f"pool events ended: {done}")


@ROLES
@pytest.mark.both_loops
async def test_two_workers_two_queues(role: str, dpdk: str, sock_path: str) -> None:
    """Each worker drives its own queue pair against testpmd; traffic is verified per
    queue (by the worker) and in total (testpmd's counters)."""
    n = 2000
    loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
    async with link(role, sock_path) as (itf, tp):
        pool = WorkerPool(itf, echo_check, 2, handler_args=[n], loop=loop)
        evs = pool.events()
        async with pool:
            done = await finished(pool, evs, 2)
            pids = pool.get_pids()
        results = [e.result for e in done]
        assert [r["qid"] for r in results] == [0, 1]
        assert [(r["sent"], r["back"]) for r in results] == [(n, n), (n, n)]
        assert [e.pid for e in done] == pids and len(set(pids)) == 2
        assert all(e.rx_packets >= n and e.tx_packets == n + e.result["probes"] for e in done)
        total = sum(n + r["probes"] for r in results)
        st = await tp.wait_stats(lambda s: s.rx_packets >= total, timeout=10)
        assert st.rx_packets == total  # nothing else reached testpmd
        assert itf.is_connected()
