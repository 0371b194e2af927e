"""The cancellation contract (docs/concepts.md), stormed.

Every read and write of the public API runs under a random short
``asyncio.timeout()``, in both directions at once, with chained packets
(bigger than a buffer), on a small ring.  Whatever the timeouts hit, the
receiver must see exactly the sequence of writes that returned: a write that
raised published nothing, a write that returned published exactly what it
reported (``write_burst``'s short count honoured), a read that raised consumed
nothing, a read that returned took exactly what it returned.  Leases and
reservations follow the same rule.

Each task draws from a ``random.Random`` of its own, seeded; how many
timeouts land depends on timing, so nothing here counts them.
"""

from __future__ import annotations

import asyncio
import collections
import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from memif_aio import Arguments, Interface, MemoryConfig, RxMode, RxQueue, Socket, TxQueue
from memif_aio import queue as queue_module

pytestmark = pytest.mark.both_loops

BUF = 256  #: buffer size: anything longer is a chain
MC = MemoryConfig(log2_ring_size=4, packet_buffer_size=BUF)  # 16 slots
PACKETS = 6000  #: per direction and run
#: the timeouts: 0 expires at the first suspension; None never does
TIMEOUTS = (0, 0, 0.00002, 0.0001, 0.0005, 0.002, None)
SEQ = struct.Struct("<I")
T = 60.0


def size_of(seq: int) -> int:
    """Packet sizes from 1 byte to a 6-slot chain, a fixed function of the number."""
    return (1, 8, 60, BUF, BUF + 1, 700, 1500, 5 * BUF + 3)[(seq * 2654435761 >> 7) % 8]


def packet(seq: int) -> bytes:
    size = max(size_of(seq), SEQ.size)
    body = bytes((seq * 31 + k) & 0xFF for k in range(64))
    return (SEQ.pack(seq) + body * (size // 64 + 1))[:size]


def check(pkt: bytes | bytearray | memoryview) -> int:
    raw = bytes(pkt)
    seq = int(SEQ.unpack_from(raw)[0])
    assert raw == packet(seq), f"packet {seq} damaged"
    return seq


@asynccontextmanager
async def pair(path: str, rx_mode: RxMode) -> AsyncIterator[tuple[Interface, Interface]]:
    async with Socket(path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True, name="m", rx_mode=rx_mode))
        s = sock.new_interface(Arguments(id=0, is_master=False, name="s", rx_mode=rx_mode,
                                         memory_config=MC, reconnect_min_delay=0.02))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), 10)
        yield m, s


async def writer(tx: TxQueue, rnd: random.Random, total: int) -> list[int]:
    """Publish 0..total-1 in order through every write call, each under a random
    timeout; what a call did not publish is offered again by the next one."""
    published: list[int] = []
    unsent: collections.deque[int] = collections.deque()
    nxt = 0
    while len(published) < total:
        want = rnd.randint(1, 12)
        while len(unsent) < want and nxt < total:
            unsent.append(nxt)
            nxt += 1
        op = rnd.choice(("packet", "burst", "burst", "reserve"))
        timeout = rnd.choice(TIMEOUTS)
        yield_inside = rnd.random() < 0.5
        try:
            async with asyncio.timeout(timeout):
                if op == "packet":
                    await tx.write_packet(packet(unsent[0]))
                    published.append(unsent.popleft())
                elif op == "burst":
                    batch = [unsent[i] for i in range(min(want, len(unsent)))]
                    n = await tx.write_burst([packet(s) for s in batch])
                    assert 1 <= n <= len(batch)
                    for _ in range(n):
                        published.append(unsent.popleft())
                else:  # reserve: only packets that fit one buffer
                    k = 0
                    while k < min(want, len(unsent)) and size_of(unsent[k]) <= BUF:
                        k += 1
                    if k == 0:
                        await tx.write_packet(packet(unsent[0]))
                        published.append(unsent.popleft())
                        continue
                    async with tx.reserve(k, BUF) as bufs:
                        for i, b in enumerate(bufs):
                            data = packet(unsent[i])
                            b[:len(data)] = data
                            bufs.lengths[i] = len(data)
                        if yield_inside:
                            await asyncio.sleep(0)  # a cancellation inside the block
                    for _ in range(k):
                        published.append(unsent.popleft())
        except TimeoutError:
            pass
    return published


async def reader(rx: RxQueue, rnd: random.Random, total: int) -> list[int]:
    """Read until ``total`` packets arrived, through every read call, each under a
    random timeout."""
    got: list[int] = []
    buf = bytearray(8 * BUF)

    def took(pkts: list[int]) -> None:  # the writer publishes 0, 1, 2, ... in order
        for seq in pkts:
            assert seq == len(got), f"expected packet {len(got)}, received {seq}"
            got.append(seq)

    while len(got) < total:
        op = rnd.choice(("packet", "burst", "burst", "lease", "into"))
        timeout = rnd.choice(TIMEOUTS)
        n = rnd.randint(1, 20)
        yield_inside = rnd.random() < 0.5
        try:
            async with asyncio.timeout(timeout):
                if op == "packet":
                    took([check(await rx.read_packet())])
                elif op == "burst":
                    pkts = await rx.read_burst(n)
                    assert 1 <= len(pkts) <= n
                    took([check(p) for p in pkts])
                elif op == "into":
                    k = await rx.read_packet_into(buf)
                    took([check(buf[:k])])
                else:
                    async with rx.lease(n) as views:
                        assert 1 <= len(views) <= n
                        seqs = [check(v) for v in views]
                        if yield_inside:
                            await asyncio.sleep(0)  # a cancellation inside the block
                    took(seqs)
        except TimeoutError:
            pass
    return got


@pytest.mark.parametrize("rx_mode", [RxMode.INTERRUPT, RxMode.ADAPTIVE])
async def test_storm_of_timeouts_loses_and_repeats_nothing(sock_path: str, no_leaks: None,
                                                           rx_mode: RxMode,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # queues give the loop a turn every few packets instead of every 4096, so that
    # the timeouts also land on that suspension point (it must come before taking)
    monkeypatch.setattr(queue_module, "_FAIR_PACKETS", 7)
    seed = 1000 + (rx_mode is RxMode.ADAPTIVE)
    async with pair(sock_path, rx_mode) as (m, s):
        directions = ((s.get_tx_queue(0), m.get_rx_queue(0)),
                      (m.get_tx_queue(0), s.get_rx_queue(0)))
        async with asyncio.timeout(T), asyncio.TaskGroup() as tg:
            tasks = []
            for k, (tx, rx) in enumerate(directions):
                tasks.append(tg.create_task(writer(tx, random.Random(seed * 10 + 2 * k),
                                                   PACKETS)))
                tasks.append(tg.create_task(reader(rx, random.Random(seed * 10 + 2 * k + 1),
                                                   PACKETS)))
        sent_sm, got_m, sent_ms, got_s = (t.result() for t in tasks)
        for (tx, rx), sent, got in zip(directions, (sent_sm, sent_ms), (got_m, got_s)):
            assert sent == list(range(PACKETS))  # every write that returned, in order
            assert got == sent, "the receiver saw something other than what was published"
            assert rx.read_burst_nowait(8) == []  # and nothing more
            st = rx.stats()
            assert st.bad_descriptors == 0 and st.waiters == 0
            assert tx.write_burst_nowait([b"after"]) == 1  # no slot was lost either way
            assert await asyncio.wait_for(rx.read_packet(), 5) == b"after"


async def test_timed_out_reads_leave_no_waiter(sock_path: str, no_leaks: None) -> None:
    """100,000 reads that time out on an empty ring leave no waiter behind (memory
    stays flat) and consume nothing: what is sent afterwards arrives whole."""
    async with pair(sock_path, RxMode.INTERRUPT) as (m, s):
        rx, tx = m.get_rx_queue(0), s.get_tx_queue(0)
        most = 0
        for i in range(100_000):
            try:
                async with asyncio.timeout(0):
                    if i % 3 == 0:
                        await rx.read_packet()
                    elif i % 3 == 1:
                        await rx.read_burst(4)
                    else:
                        async with rx.lease(4):
                            pass
            except TimeoutError:
                pass
            else:
                raise AssertionError("a read returned from an empty ring")
            if i % 1000 == 0:
                most = max(most, rx.stats().waiters)
        assert rx.stats().waiters == 0 and most == 0
        assert tx.write_burst_nowait([packet(1), packet(2), packet(3)]) == 3
        got: list[int] = []
        while len(got) < 3:
            got += map(check, await asyncio.wait_for(rx.read_burst(8), 5))
        assert got == [1, 2, 3]


async def test_write_burst_returns_what_it_published(sock_path: str, no_leaks: None) -> None:
    """A burst bigger than the free space publishes what fits and says so (like
    ``socket.send``); it waits only while nothing fits, and a cancelled wait
    published nothing."""
    async with pair(sock_path, RxMode.INTERRUPT) as (m, s):
        tx, rx = s.get_tx_queue(0), m.get_rx_queue(0)
        n = await tx.write_burst([packet(i) for i in range(40)])  # 16 slots, some chains
        assert 1 <= n < 40
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await tx.write_burst([packet(i) for i in range(n, 40)])  # the ring is full
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await tx.write_packet(packet(n))
        got: list[int] = []
        while len(got) < n:
            got += map(check, await asyncio.wait_for(rx.read_burst(64), 5))
        assert got == list(range(n))
        assert rx.read_burst_nowait(64) == []
        assert await tx.write_burst([]) == 0
