"""What a peer can make us hold in memory and fds, and packets that can never fit (issue 9).

* item 6: a protocol violation while ``lease()`` views are live must not leave the peer's
  mapping (and its fd) behind: it goes the moment the last view into it does;
* item 4 (in part): a peer's region costs no fd of ours once mapped (before Python 3.13
  the mmap object keeps one private duplicate, which goes with the mapping);
* item 9: a master's negotiated MemoryConfig passes MemoryConfig's own checks, or the peer
  is refused with a reason;
* item 10: a packet that needs more buffers than the ring has raises PacketTooLarge at
  once, full ring or not, from every write path of the Queue API, in both roles.

Every test runs on both loops and checks that nothing is left behind.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hostile import HostileClient, PeerMemory, handshaken_client, seq_packet

from memif_aio import (
    Arguments,
    Disconnected,
    Interface,
    MemoryConfig,
    PacketTooLarge,
    Socket,
    WouldBlock,
)
from memif_aio.wire import MsgConnect, MsgInit, MsgType

pytestmark = pytest.mark.both_loops

T = 5.0
FAST: dict[str, Any] = {"reconnect_min_delay": 0.02, "reconnect_max_delay": 0.1}
#: fds the mmap object of a mapped region keeps for itself (none from Python 3.13 on)
MMAP_FDS = 0 if sys.version_info >= (3, 13) else 1


async def until(cond: Callable[[], bool], what: str, timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def held(ino: int) -> tuple[int, int]:
    """(mappings, fds) of this process on the file with inode ``ino``."""
    with open("/proc/self/maps") as f:
        maps = sum(1 for line in f if "memfd:" in line and int(line.split()[4]) == ino)
    fds = 0
    for n in os.listdir("/proc/self/fd"):
        try:
            if os.fstat(int(n)).st_ino == ino and os.readlink(f"/proc/self/fd/{n}").startswith(
                    "/memfd:"):
                fds += 1
        except OSError:
            continue
    return maps, fds


@asynccontextmanager
async def master(path: str) -> AsyncIterator[tuple[Socket, Interface]]:
    async with Socket(path) as sock:
        yield sock, sock.new_interface(Arguments(id=0, is_master=True, name="target"))


@asynccontextmanager
async def hostile_slave(path: str, itf: Interface,
                        **mem_kw: Any) -> AsyncIterator[tuple[HostileClient, PeerMemory]]:
    """A hostile client with its own memory that completed a correct handshake."""
    async with handshaken_client(path, **mem_kw) as (hc, mem):
        await asyncio.wait_for(itf.wait_connected(), T)
        yield hc, mem


# ---------------------------------------------------------------------------
# Region fds and mappings (items 4 and 6)
# ---------------------------------------------------------------------------


def ours(mem: PeerMemory) -> tuple[int, int]:
    """(mappings, fds) we hold on the hostile peer's region, not counting the peer's own
    (it lives in this process): one mapping, its fd and the fd its mmap object keeps."""
    maps, fds = held(os.fstat(mem.fd).st_ino)
    return maps - 1, fds - 2


async def test_peer_region_costs_no_fd_once_mapped(sock_path: str, no_leaks: None) -> None:
    """Before: two fds per peer region (the received one and the mmap's duplicate)."""
    async with master(sock_path) as (_sock, itf), \
            hostile_slave(sock_path, itf) as (_hc, mem):
        assert ours(mem) == (1, MMAP_FDS)


async def _violate(hc: HostileClient, itf: Interface) -> None:
    """A protocol violation on the control channel: a second INIT once connected."""
    await hc.send(MsgInit(0, 0, b"", b"again"))
    assert "unexpected message INIT" in await hc.expect_disconnect()
    await until(lambda: not itf.is_connected(), "the master to drop the link")


@pytest.mark.parametrize("kept", ["nothing", "slice", "export"])
async def test_violation_during_lease_releases_the_mapping(sock_path: str, no_leaks: None,
                                                           kept: str) -> None:
    """The peer violates the protocol while our zero-copy views of its memory are live.

    The mapping (up to 16 GiB per interface) goes as soon as nothing points into it any
    more: at once if the application kept only the lease's own views; when it lets go of
    a slice it took of one, or of a buffer it exported from one, otherwise.  Before, it
    stayed until the interface connected again."""
    async with master(sock_path) as (_sock, itf), \
            hostile_slave(sock_path, itf) as (hc, mem):
        mapped = (1, MMAP_FDS)  # the master's mapping and fds of the peer's region

        def mine() -> tuple[int, int]:
            return ours(mem)

        assert mine() == mapped
        mem.send(0, [seq_packet(1, 100), seq_packet(2, 200)])
        rx = itf.get_rx_queue(0)
        extra: list[Any] = []
        async with rx.lease(8) as views:
            assert [bytes(v) for v in views] == [seq_packet(1, 100), seq_packet(2, 200)]
            if kept == "slice":
                extra.append(views[0][10:20])
            elif kept == "export":
                extra.append(pickle.PickleBuffer(views[1]))
            await _violate(hc, itf)
            if kept == "nothing":
                assert mine() == (0, 0), "released with the link"
                with pytest.raises(ValueError):
                    views[0][0]
            else:
                assert mine() == mapped, "still in use by the application"
        if kept == "slice":
            assert bytes(extra[0]) == seq_packet(1, 100)[10:20]  # still valid memory
            assert mine() == mapped
            extra.clear()
        elif kept == "export":
            assert bytes(extra[0].raw()) == seq_packet(2, 200)
            assert mine() == mapped
            extra[0].release()
            extra.clear()
            assert mine() == mapped  # the view it was exported from is still alive
            del views
        assert mine() == (0, 0), "the last view is gone: so is the mapping, and its fd"
        with pytest.raises(Disconnected):
            rx.read_packet_nowait()


async def test_slave_region_mapping_goes_with_its_last_view(sock_path: str,
                                                            no_leaks: None) -> None:
    """The same on the slave side: its own region, leased by its receive queue."""
    async with master(sock_path) as (sock, m):
        s = sock.new_interface(Arguments(id=0, is_master=False, name="s", **FAST))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        maps0 = held_memfd_mappings()
        await m.get_tx_queue(0).write_packet(b"to the slave")
        keep: list[memoryview] = []
        async with s.get_rx_queue(0).lease() as views:
            assert bytes(views[0]) == b"to the slave"
            keep.append(views[0][3:])
            await s.disconnect()
            await until(lambda: not m.is_connected(), "the link to go down")
        assert held_memfd_mappings() == maps0 - 1  # the master's is gone; ours is kept
        assert bytes(keep[0]) == b"the slave"
        keep.clear()
        assert held_memfd_mappings() == maps0 - 2


def held_memfd_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:" in line)


# ---------------------------------------------------------------------------
# The negotiated MemoryConfig (item 9)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("announced,expect", [
    (0xFFFFFFFF, None), (65536, None),  # refused: not a buffer size a MemoryConfig allows
    (0, 2048),  # uninitialised descriptors (VPP's zero-copy client): the default
    (9216, 9216), (1, 1), (65535, 65535),
])
async def test_negotiated_buffer_size_is_validated(sock_path: str, no_leaks: None,
                                                   announced: int, expect: int | None) -> None:
    """A hostile slave announces ``announced``-byte buffers in descriptor 0 of its first
    S2M ring (§6.5), where a master learns the buffer size.  Before, the master reported
    ``packet_buffer_size == 4294967295`` through a MemoryConfig built without checks."""
    async with master(sock_path) as (_sock, itf):
        mem = PeerMemory(log2_ring_size=3)
        async with await HostileClient.connect(sock_path) as hc:
            hc.memory = mem
            mem.s2m[0].set_desc(0, length=announced)
            await hc.init()
            for msg, fd in mem.setup_messages():
                await hc.ok(msg, [fd])
            await hc.send(MsgConnect(b"hostile0"))
            if expect is None:
                reason = await hc.expect_disconnect()
                assert f"{announced}-byte buffers" in reason and "packet_buffer_size" in reason
                assert not itf.is_connected()
                assert itf.get_memory_config() == MemoryConfig()  # the configured one
            else:
                await hc.expect(MsgType.CONNECTED)
                await asyncio.wait_for(itf.wait_connected(), T)
                assert itf.get_memory_config() == MemoryConfig(1, 3, expect)
                mem.send(0, [b"still works"])
                assert await asyncio.wait_for(itf.get_rx_queue(0).read_packet(), T) == \
                    b"still works"


# ---------------------------------------------------------------------------
# A packet that can never fit (item 10)
# ---------------------------------------------------------------------------

RING = MemoryConfig(log2_ring_size=3, packet_buffer_size=2048)  # 8 x 2048 bytes
HUGE = b"h" * (8 * 2048 + 1)


@pytest.mark.parametrize("sender", ["slave", "master"])
@pytest.mark.parametrize("full", [False, True], ids=["empty", "full"])
async def test_impossible_packet_raises_at_once(sock_path: str, no_leaks: None, sender: str,
                                                full: bool) -> None:
    """Before: on a full ring write_packet_nowait said WouldBlock and write_packet waited
    forever.  Now every write path raises PacketTooLarge at once and publishes nothing;
    a burst that holds such a packet is refused whole."""
    async with master(sock_path) as (sock, m):
        s = sock.new_interface(Arguments(id=0, is_master=False, name="s", memory_config=RING,
                                         **FAST))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        tx_itf, rx_itf = (s, m) if sender == "slave" else (m, s)
        tx, rx = tx_itf.get_tx_queue(0), rx_itf.get_rx_queue(0)
        sent = [b"f%d" % i for i in range(8)] if full else [b"first"]
        assert tx.write_burst_nowait(sent) == len(sent)
        if full:
            with pytest.raises(WouldBlock):
                tx.write_packet_nowait(b"a possible packet waits")
        with pytest.raises(PacketTooLarge):
            tx.write_packet_nowait(HUGE)
        with pytest.raises(PacketTooLarge):
            await asyncio.wait_for(tx.write_packet(HUGE), T)
        with pytest.raises(PacketTooLarge):
            tx.write_burst_nowait([b"before", HUGE, b"after"])
        with pytest.raises(PacketTooLarge):
            await asyncio.wait_for(tx.write_burst([b"before", HUGE]), T)
        # nothing but what was sent first was published
        got: list[bytes] = []
        while len(got) < len(sent):
            got.extend(await asyncio.wait_for(rx.read_burst(64), T))
        assert got == sent
        assert tx.stats().packets == len(sent)
        # the largest possible packet still goes through
        largest = b"L" * (8 * 2048)
        assert await asyncio.wait_for(tx.write_packet(largest), T) == len(largest)
        assert await asyncio.wait_for(rx.read_packet(), T) == largest
        assert rx.read_burst_nowait(64) == []


async def test_slave_posting_buffers_below_its_size_gets_a_short_count(sock_path: str,
                                                                       no_leaks: None) -> None:
    """A hostile slave announces 2048-byte buffers and posts 100-byte ones: a master finds
    only while writing that a 900-byte packet cannot fit them.  write_burst returns the
    count it published (the packets before it, like socket.send); once the whole ring is
    posted and still too small, the next write of that packet raises."""
    async with master(sock_path) as (_sock, itf), \
            hostile_slave(sock_path, itf, log2_ring_size=3) as (_hc, mem):

        def post_small() -> None:
            mem.post(0)
            for j in range(8):
                mem.m2s[0].set_desc(j, length=100)

        post_small()
        tx = itf.get_tx_queue(0)
        burst = [b"a", b"b", b"x" * 900]
        assert await asyncio.wait_for(tx.write_burst(burst), T) == 2
        assert mem.receive(0, repost=False) == [b"a", b"b"]
        post_small()  # the whole ring is posted now, and still too small
        with pytest.raises(PacketTooLarge):
            await asyncio.wait_for(tx.write_burst(burst[2:]), T)
        assert mem.receive(0, repost=False) == []


@pytest.mark.parametrize("sender", ["slave", "master"])
@pytest.mark.parametrize("full", [False, True], ids=["empty", "full"])
async def test_reserve_above_the_buffer_size_raises_at_once(sock_path: str, no_leaks: None,
                                                            sender: str, full: bool) -> None:
    """``reserve(n, size)`` with ``size`` above the buffer size can never be served (a
    reservation is never chained).  Before, a master waited (until ``tx_timeout``) while
    no posted buffer was free, and raised only when one was."""
    async with master(sock_path) as (sock, m):
        s = sock.new_interface(Arguments(id=0, is_master=False, name="s", memory_config=RING,
                                         **FAST))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        tx_itf, rx_itf = (s, m) if sender == "slave" else (m, s)
        tx, rx = tx_itf.get_tx_queue(0), rx_itf.get_rx_queue(0)
        sent = [b"f%d" % i for i in range(8)] if full else []
        if sent:
            assert tx.write_burst_nowait(sent) == len(sent)
        with pytest.raises(PacketTooLarge):
            async with asyncio.timeout(T):
                async with tx.reserve(1, 2049):
                    raise AssertionError("reserved a buffer larger than any")
        got: list[bytes] = []
        while len(got) < len(sent):
            got.extend(await asyncio.wait_for(rx.read_burst(64), T))
        assert got == sent
        async with asyncio.timeout(T):  # the largest reservation still goes through
            async with tx.reserve(1, 2048) as bufs:
                bufs[0][:] = b"R" * 2048
        assert await asyncio.wait_for(rx.read_packet(), T) == b"R" * 2048
        assert tx.stats().packets == len(sent) + 1


async def test_reserve_above_what_the_slave_posted_raises_at_once(sock_path: str,
                                                                  no_leaks: None) -> None:
    """A hostile slave announces 2048-byte buffers and posts two 100-byte ones.  A master
    asked for four 900-byte buffers raises at once: waiting for the other two would not
    make the first two larger.  Before, it waited while fewer than four were posted."""
    async with master(sock_path) as (_sock, itf), \
            hostile_slave(sock_path, itf, log2_ring_size=3) as (_hc, mem):
        assert mem.post(0, 2) == 2
        for j in range(2):
            mem.m2s[0].set_desc(j, length=100)
        tx = itf.get_tx_queue(0)
        with pytest.raises(PacketTooLarge):
            async with asyncio.timeout(T):
                async with tx.reserve(4, 900):
                    raise AssertionError("reserved buffers larger than those posted")
        async with asyncio.timeout(T):  # what does fit them is served
            async with tx.reserve(2, 100) as bufs:
                bufs[0][:] = b"a" * 100
                bufs[1][:] = b"b" * 100
        assert mem.receive(0, repost=False) == [b"a" * 100, b"b" * 100]
        assert tx.stats().packets == 2


@pytest.mark.parametrize("sender", ["slave", "master"])
async def test_link_down_during_reservation_with_an_exported_view(sock_path: str,
                                                                   no_leaks: None,
                                                                   sender: str) -> None:
    """The link goes down while the application holds a buffer it exported from a
    reserved view (a ``PickleBuffer``, a NumPy array).  Before, the queue's teardown
    raised ``BufferError`` releasing that view, and stopped there: the transmit
    interrupt and its fd were left behind.  Now the exported view stays valid (it keeps
    the mapping) until the application lets go of it; the block raises Disconnected."""
    async with master(sock_path) as (sock, m):
        s = sock.new_interface(Arguments(id=0, is_master=False, name="s", memory_config=RING,
                                         **FAST))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        tx_itf, rx_itf = (s, m) if sender == "slave" else (m, s)
        tx, rx = tx_itf.get_tx_queue(0), rx_itf.get_rx_queue(0)
        await asyncio.wait_for(tx.write_packet(b"first"), T)  # the interrupt now exists
        assert await asyncio.wait_for(rx.read_packet(), T) == b"first"
        assert tx.stats().interrupts >= 1
        maps0 = held_memfd_mappings()
        exported: list[Any] = []
        with pytest.raises(Disconnected):
            async with asyncio.timeout(T):
                async with tx.reserve(2, 64) as bufs:
                    exported.append(pickle.PickleBuffer(bufs[0]))
                    await tx_itf.disconnect()
                    await until(lambda: not m.is_connected() and not s.is_connected(),
                                "the link to go down")
                    assert not tx.is_connected()
        # the region the reservation was in stays mapped while the export lives
        memoryview(exported[0])[:5] = b"still"
        assert bytes(exported[0].raw()[:5]) == b"still"
        assert held_memfd_mappings() == maps0 - 1
        exported[0].release()
        exported.clear()
        del bufs
        assert held_memfd_mappings() == maps0 - 2
        with pytest.raises(Disconnected):
            tx.write_packet_nowait(b"after")
