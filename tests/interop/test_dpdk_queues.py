"""Unequal queue counts and cache-line inference against DPDK's net_memif (issue 12 §3, §4).

testpmd's ``--rxq=R --txq=T`` make DPDK's memif lay out (client) or accept (server)
R rings in the direction it receives on and T in the other.  memif_aio sees the
mirror image in both roles: its rx queues are testpmd's T tx queues, its tx queues
testpmd's R rx queues.

Which testpmd forwarding works with unequal counts (DPDK 22.11, observed from the
stream table testpmd prints at start, "RX P=0/Q=i -> TX P=0/Q=j"): every engine
except ``icmpecho`` forwards RX queue i to TX queue i on ``min(R, T)`` streams
(``rss_fwd_config_setup`` when both counts exceed 1, else one stream Q0 -> Q0,
``simple_fwd_config_setup``), so ``macswap`` echoes on queues 0..min(R, T)-1 and
the larger side's extra queues carry nothing: testpmd never polls its extra rx
queues and never transmits on its extra tx queues.  ``icmpecho`` instead opens one
stream per *rx* queue and answers on the tx queue of the same index, which does not
exist when R > T.  So the tests below echo with ``macswap`` on the forwarded queues
and check that the extra queues stay apart: what we send on an extra tx queue is
neither counted by testpmd nor echoed, and nothing arrives on an extra rx queue.
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

from memif_aio import Arguments, Interface, MemoryConfig, Socket
from memif_aio.testing.testpmd import CONNECT_SETTLE, TestPmd, link_up

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

ROLES = pytest.mark.parametrize("role", ["master", "slave"], ids=["py-master", "py-slave"])
#: testpmd's (--rxq, --txq)
SHAPES = pytest.mark.parametrize("rxq,txq", [(1, 2), (2, 1), (2, 3)],
                                 ids=["rxq1-txq2", "rxq2-txq1", "rxq2-txq3"])
T_CONNECT = 15.0


@asynccontextmanager
async def link(role: str, path: str, mc: MemoryConfig, rxq: int, txq: int,
               **args: Any) -> AsyncIterator[tuple[Interface, TestPmd]]:
    """memif_aio as ``role``, testpmd (macswap, --rxq/--txq) in the other role."""
    extra = [f"--rxq={rxq}", f"--txq={txq}"] if (rxq, txq) != (1, 1) else []
    async def setup(stack: AsyncExitStack) -> tuple[Interface, TestPmd]:
        if role == "master":
            sock = await stack.enter_async_context(Socket(path))
            itf = sock.new_interface(Arguments(id=0, is_master=True, name="py-master",
                                               memory_config=mc, **args))
            tp = await stack.enter_async_context(TestPmd("client", path, extra_args=extra))
        else:
            tp = await stack.enter_async_context(TestPmd("server", path, extra_args=extra))
            sock = await stack.enter_async_context(Socket(path))
            itf = sock.new_interface(Arguments(id=0, is_master=False, name="py-slave",
                                               memory_config=mc, reconnect_min_delay=0.05,
                                               reconnect_max_delay=0.5, **args))
        return itf, tp

    # a DPDK server with more than one queue pair may crash as the link comes up (pitfall 39)
    settle = CONNECT_SETTLE if role == "slave" and max(rxq, txq) > 1 else 0.0
    async with link_up(setup, T_CONNECT, settle=settle) as (itf, tp):
        yield itf, tp


async def warm_up(itf: Interface, qid: int, timeout: float = 10.0) -> tuple[int, int]:
    """Probe queue ``qid`` until a probe comes back (testpmd drops its first frames);
    returns (probes sent, probes back)."""
    tx, rx = itf.get_tx_queue(qid), itf.get_rx_queue(qid)
    sent = 0
    deadline = time.monotonic() + timeout
    while True:
        await tx.write_packet(frame(sent, 60, qid, ETH_PROBE))
        sent += 1
        try:
            got = await asyncio.wait_for(rx.read_burst(64), 0.02)
        except TimeoutError:
            got = []
        assert all(p[12:14] == ETH_PROBE and p[14] == qid for p in got), \
            f"unexpected frames during warm-up on queue {qid}: {[describe(p) for p in got]}"
        if got:
            return sent, len(got)
        assert time.monotonic() < deadline, f"no probe came back on queue {qid}"


async def echo(itf: Interface, qid: int, n: int, window: int = 128) -> tuple[int, int]:
    """``n`` frames on queue ``qid``, windowed; each must come back on ``qid``, in order,
    equal but for the swapped MACs.  Returns (frames back, late probes back)."""
    rnd = random.Random(qid)
    frames = [frame(i, rnd.randint(60, 1514), qid) for i in range(n)]
    tx, rx = itf.get_tx_queue(qid), itf.get_rx_queue(qid)
    sent = received = probes = 0
    room = asyncio.Event()

    async def sender() -> None:
        nonlocal sent
        while sent < n:
            k = min(window - (sent - received), 32, n - sent)
            if k <= 0:
                room.clear()
                await room.wait()
                continue
            sent += await tx.write_burst(frames[sent:sent + k])

    async def receiver() -> None:
        nonlocal received, probes
        while received < n:
            for p in await rx.read_burst(256):
                if p[12:14] == ETH_PROBE:
                    probes += 1
                    continue
                assert received < n, f"queue {qid}: extra frame {describe(p)}"
                assert p == swap_macs(frames[received]), \
                    f"queue {qid} #{received}: expected {describe(frames[received])}, " \
                    f"got {describe(p)}"
                received += 1
            room.set()

    await asyncio.wait_for(asyncio.gather(sender(), receiver()), 40)
    return received, probes


@ROLES
@SHAPES
@pytest.mark.both_loops
async def test_unequal_queues_macswap(role: str, rxq: int, txq: int, testpmd: str,
                                      sock_path: str) -> None:
    # our rx queues are testpmd's tx queues, our tx queues its rx queues (both roles)
    mc = MemoryConfig(num_rx_queues=txq, num_tx_queues=rxq)
    # a master follows the client; configured with one pair, it must still get rxq/txq
    async with link(role, sock_path, mc if role == "slave" else MemoryConfig(), rxq, txq) \
            as (itf, tp):
        got = itf.get_memory_config()
        assert (got.num_rx_queues, got.num_tx_queues) == (txq, rxq)
        assert (len(itf.rx_queues), len(itf.tx_queues)) == (txq, rxq)
        forwarded = range(min(rxq, txq))
        probes = [await warm_up(itf, q) for q in forwarded]
        # frames on the extra tx queues: testpmd never polls those rings
        stray = 50
        for q in range(min(rxq, txq), rxq):
            for i in range(stray):
                await itf.get_tx_queue(q).write_packet(frame(i, 100, q))
        n = 2000
        results = await asyncio.gather(*(echo(itf, q, n) for q in forwarded))
        for q, (back, _late) in zip(forwarded, results):
            assert back == n, f"queue {q}"
        sent_probes = sum(s for s, _ in probes)
        st = await tp.stable_stats()
        # testpmd received the forwarded queues' frames and probes, none of the strays
        assert st.rx_packets == len(forwarded) * n + sent_probes, st
        assert st.rx_errors == st.tx_errors == 0, st
        for q in range(min(rxq, txq), txq):  # extra rx queues: testpmd never sends there
            assert itf.get_rx_queue(q).stats().packets == 0
            assert itf.get_rx_queue(q).read_burst_nowait(16) == []
        for q in range(min(rxq, txq), rxq):
            assert itf.get_tx_queue(q).stats().packets == stray
        for queue in itf.rx_queues + itf.tx_queues:
            qs = queue.stats()
            assert qs.drops == 0 and qs.bad_descriptors == 0, qs


@pytest.mark.both_loops
@pytest.mark.parametrize("rsize", [None, 12], ids=["rsize-default", "rsize-12"])
async def test_auto_master_infers_dpdk_layout(rsize: int | None, testpmd: str,
                                              sock_path: str) -> None:
    """A master in auto mode (the default) infers DPDK's RTE_CACHE_LINE_SIZE (64 on
    x86-64, the only build here) from the offsets of its rings, and passes traffic."""
    args = f"rsize={rsize}" if rsize else None
    async with Socket(sock_path) as sock:
        itf = sock.new_interface(Arguments(id=0, is_master=True, name="py-master"))
        assert itf.get_arguments().cache_line_size == "auto"
        async with TestPmd("client", sock_path, rsize=rsize,
                           extra_args=["--rxq=2", "--txq=2"]) as tp:
            await itf.wait_connected(T_CONNECT)
            await tp.wait_connected(T_CONNECT)
            assert args is None or itf.get_memory_config().log2_ring_size == rsize
            assert itf.stats().cache_line_size == 64
            for q in (0, 1):
                await warm_up(itf, q)
            results = await asyncio.gather(echo(itf, 0, 1000), echo(itf, 1, 1000))
            assert [back for back, _ in results] == [1000, 1000]
