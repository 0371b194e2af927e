"""Two interfaces in one process over a real socket, on both event loops.

Master and slave with the same id share one socket path (as libmemif, gomemif
and DPDK allow), so everything below crosses a real SOCK_SEQPACKET control
channel, real memfds and eventfds.
"""

from __future__ import annotations

import array
import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from memif_aio import (
    Arguments,
    Disconnected,
    Interface,
    InterfaceMode,
    MemoryConfig,
    NotConnected,
    PacketTooLarge,
    Queue,
    RxMode,
    RxQueue,
    Socket,
    TxQueue,
    WouldBlock,
)

pytestmark = pytest.mark.both_loops
T = 5.0  # generous bound for anything that should take milliseconds


@asynccontextmanager
async def pair(path: str, master: dict[str, Any] | None = None,
               slave: dict[str, Any] | None = None,
               id: int = 0, connect: bool = True) -> AsyncIterator[tuple[Socket, Interface,
                                                                          Interface]]:
    async with Socket(path) as sock:
        m = sock.new_interface(Arguments(id=id, is_master=True, name="m", **(master or {})))
        s = sock.new_interface(Arguments(id=id, is_master=False, name="s",
                                         reconnect_min_delay=0.02, reconnect_max_delay=0.1,
                                         **(slave or {})))
        if connect:
            await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        yield sock, m, s


async def write_all(tx: TxQueue, packets: list[bytes]) -> int:
    """``write_burst`` publishes what fits (like ``socket.send``): send everything."""
    done = 0
    while done < len(packets):
        done += await tx.write_burst(packets[done:])
    return done


def payload(i: int, size: int) -> bytes:
    return (i.to_bytes(4, "little") + bytes((i + k) & 0xFF for k in range(256))) \
        .ljust(size, b"\xa5")[:size]


async def exchange(tx: Interface, rx: Interface, qid: int, packets: list[bytes]) -> None:
    """Send ``packets`` on tx queue ``qid`` and check rx receives them in order, intact."""
    async def send() -> None:
        q = tx.get_tx_queue(qid)
        for p in packets:
            await q.write_packet(p)

    async def recv() -> list[bytes]:
        q = rx.get_rx_queue(qid)
        got: list[bytes] = []
        while len(got) < len(packets):
            got.extend(await q.read_burst(len(packets) - len(got)))
        return got

    _, got = await asyncio.wait_for(asyncio.gather(send(), recv()), T * 4)
    assert len(got) == len(packets)
    for a, b in zip(got, packets):
        assert a == b


async def test_both_directions_and_names(sock_path: str, no_leaks: None) -> None:
    async with pair(sock_path) as (_sock, m, s):
        assert m.is_connected() and s.is_connected()
        assert m.get_peer_name() == "s" and s.get_peer_name() == "m"
        assert s.get_remote_name() == "memif_aio" and m.get_remote_name() == "memif_aio"
        await exchange(s, m, 0, [payload(i, 60 + i) for i in range(100)])
        await exchange(m, s, 0, [payload(i, 60 + i) for i in range(100)])
        rx = m.get_rx_queue(0).stats()
        assert rx.packets == 100 and rx.bytes == sum(60 + i for i in range(100))
        assert rx.drops == 0 and rx.bad_descriptors == 0


async def test_negotiated_memory_config(sock_path: str, no_leaks: None) -> None:
    mc = MemoryConfig(num_queue_pairs=3, log2_ring_size=6, packet_buffer_size=1024)
    async with pair(sock_path, slave={"memory_config": mc}) as (_sock, m, s):
        assert s.get_memory_config() == mc
        assert m.get_memory_config() == mc  # the master learns it from the slave
        assert len(m.rx_queues) == len(m.tx_queues) == 3
    assert m.get_memory_config() == MemoryConfig()  # back to the configured one


async def test_four_queue_pairs(sock_path: str, no_leaks: None) -> None:
    mc = MemoryConfig(num_queue_pairs=4)
    async with pair(sock_path, master={"memory_config": mc},
                    slave={"memory_config": mc}) as (_sock, m, s):
        jobs = []
        for q in range(4):
            jobs.append(exchange(s, m, q, [bytes([q]) * (64 + i) for i in range(300)]))
            jobs.append(exchange(m, s, q, [bytes([q + 8]) * (64 + i) for i in range(300)]))
        await asyncio.gather(*jobs)
        for q in range(4):
            assert m.get_rx_queue(q).stats().packets == 300
            assert s.get_rx_queue(q).stats().packets == 300
        with pytest.raises(IndexError):
            m.get_rx_queue(4)


async def test_four_interfaces_on_one_socket(sock_path: str, no_leaks: None) -> None:
    async with Socket(sock_path) as sock:
        pairs = []
        for i in range(4):
            m = sock.new_interface(Arguments(id=i, is_master=True, name=f"m{i}"))
            s = sock.new_interface(Arguments(id=i, is_master=False, name=f"s{i}"))
            pairs.append((m, s))
        await asyncio.wait_for(asyncio.gather(
            *(x.wait_connected() for p in pairs for x in p)), T)
        for i, (m, _s) in enumerate(pairs):
            assert m.get_peer_name() == f"s{i}"
        await asyncio.gather(*(exchange(s, m, 0, [bytes([i]) * 100] * 200)
                               for i, (m, s) in enumerate(pairs)),
                             *(exchange(m, s, 0, [bytes([i + 4]) * 100] * 200)
                               for i, (m, s) in enumerate(pairs)))
        with pytest.raises(ValueError, match="already exists"):
            sock.new_interface(Arguments(id=2, is_master=True))


async def test_chained_9000_byte_packets(sock_path: str, no_leaks: None) -> None:
    async with pair(sock_path) as (_sock, m, s):
        big = [os.urandom(9000) for _ in range(50)]
        await exchange(s, m, 0, big)
        await exchange(m, s, 0, big)
        mixed = [os.urandom(n) for n in (1, 2047, 2048, 2049, 4096, 4097, 9000, 64, 6143)]
        await exchange(s, m, 0, mixed)
        await exchange(m, s, 0, mixed)


async def test_chain_exactly_filling_the_ring(sock_path: str, no_leaks: None) -> None:
    mc = MemoryConfig(log2_ring_size=3, packet_buffer_size=2048)  # 8 slots
    async with pair(sock_path, slave={"memory_config": mc}) as (_sock, m, s):
        whole = os.urandom(8 * 2048)
        await exchange(s, m, 0, [whole, whole[:100], whole])
        await exchange(m, s, 0, [whole, whole[:100], whole])
        with pytest.raises(PacketTooLarge):
            await s.get_tx_queue(0).write_packet(whole + b"x")
        with pytest.raises(PacketTooLarge):
            await m.get_tx_queue(0).write_packet(whole + b"x")
        with pytest.raises(ValueError):
            await s.get_tx_queue(0).write_packet(b"")


async def test_bursts_keep_order_and_lose_nothing(sock_path: str, no_leaks: None) -> None:
    mc = MemoryConfig(log2_ring_size=5)
    async with pair(sock_path, slave={"memory_config": mc}) as (_sock, m, s):
        pkts = [i.to_bytes(4, "little") * 16 for i in range(5000)]

        async def recv() -> list[bytes]:
            got: list[bytes] = []
            q = m.get_rx_queue(0)
            while len(got) < len(pkts):
                got.extend(await q.read_burst(64))
            return got

        sent, got = await asyncio.wait_for(
            asyncio.gather(write_all(s.get_tx_queue(0), pkts), recv()), T * 4)
        assert sent == len(pkts) and got == pkts


@pytest.mark.parametrize("sizes", [(60,), (1, 2048, 60, 700, 33, 1500, 64, 3)])
async def test_back_to_back_bursts_under_partial_reads(sock_path: str, no_leaks: None,
                                                      sizes: tuple[int, ...]) -> None:
    """The slave lays small bursts out back to back (S2MProducer._put); the master reads
    a few at a time (its queue takes at most 64 from the ring per refill, of bursts of up to
    256), so the slave keeps reusing slots of a burst still partly unread."""
    mc = MemoryConfig(log2_ring_size=8)
    async with pair(sock_path, slave={"memory_config": mc}) as (_sock, m, s):
        pkts = [payload(i, sizes[i % len(sizes)]) for i in range(3000)]

        async def recv() -> list[bytes]:
            got: list[bytes] = []
            q = m.get_rx_queue(0)
            while len(got) < len(pkts):
                got.extend(await q.read_burst(1 + len(got) % 5))
                await asyncio.sleep(0)  # let the slave refill the slots just given back
            return got

        sent, got = await asyncio.wait_for(
            asyncio.gather(write_all(s.get_tx_queue(0), pkts), recv()), T * 4)
        assert sent == len(pkts) and got == pkts
        assert m.get_rx_queue(0).stats().bad_descriptors == 0


@pytest.mark.parametrize("secret,expected", [(b"", "secret required"),
                                             (b"wrong", "incorrect secret")])
async def test_secret_refused(sock_path: str, no_leaks: None, secret: bytes,
                              expected: str) -> None:
    async with pair(sock_path, master={"secret": b"s3cret"}, slave={"secret": secret},
                    connect=False) as (_sock, m, s):
        for _ in range(200):
            if s.get_disconnect_reason():
                break
            await asyncio.sleep(0.01)
        assert s.get_disconnect_reason() == expected
        assert not m.is_connected() and not s.is_connected()
        with pytest.raises(NotConnected):
            s.get_tx_queue(0)


async def test_secret_accepted(sock_path: str, no_leaks: None) -> None:
    async with pair(sock_path, master={"secret": b"s3cret"},
                    slave={"secret": b"s3cret"}) as (_sock, m, s):
        await exchange(s, m, 0, [b"secret ok"])


@pytest.mark.parametrize("master,slave,expected", [
    ({"mode": InterfaceMode.IP}, {}, "mode mismatch"),
    ({}, {"id": 9}, "unmatched interface id"),
])
async def test_refusals(sock_path: str, no_leaks: None, master: dict[str, Any],
                        slave: dict[str, Any],
                        expected: str) -> None:
    async with Socket(sock_path) as sock:
        sock.new_interface(Arguments(id=0, is_master=True, **master))
        s = sock.new_interface(Arguments(**{"id": 0, "is_master": False,
                                            "reconnect_min_delay": 0.05, **slave}))
        with pytest.raises(TimeoutError, match=expected):
            await s.wait_connected(timeout=0.5)
        assert s.get_disconnect_reason() == expected


async def test_disconnect_reaches_pending_reads_and_callbacks(sock_path: str,
                                                              no_leaks: None) -> None:
    events: list[tuple[str, str, str]] = []

    async def on_down(itf: Interface) -> None:  # coroutine callbacks are awaited
        events.append(("down", itf.get_name(), itf.get_disconnect_reason()))

    def on_up(itf: Interface) -> None:
        events.append(("up", itf.get_name(), itf.get_private_data()))

    async with pair(sock_path,
                    master={"connected_func": on_up, "disconnected_func": on_down,
                            "private_data": "pm"},
                    slave={"connected_func": on_up, "disconnected_func": on_down,
                           "private_data": "ps"}) as (_sock, m, s):
        rx = s.get_rx_queue(0)
        reader = asyncio.ensure_future(rx.read_packet())
        await asyncio.sleep(0.01)
        assert not reader.done()
        await m.disconnect()
        with pytest.raises(Disconnected) as info:
            await asyncio.wait_for(reader, T)
        assert info.value.reason == "interface disconnected" and info.value.by_peer
        with pytest.raises(Disconnected):
            rx.read_packet_nowait()
        # the slave reconnects by itself
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        await exchange(s, m, 0, [b"again"])
    await asyncio.sleep(0.05)
    assert ("up", "m", "pm") in events and ("up", "s", "ps") in events
    assert ("down", "s", "interface disconnected") in events
    assert ("down", "m", "interface disconnected") in events


async def test_async_for_ends_when_link_goes_down(sock_path: str, no_leaks: None) -> None:
    async with pair(sock_path) as (_sock, m, s):
        await s.get_tx_queue(0).write_burst([b"a", b"b", b"c"])
        got = []

        async def consume() -> None:
            async for pkt in m.get_rx_queue(0):
                got.append(pkt)
                if len(got) == 3:
                    await s.disconnect()

        await asyncio.wait_for(consume(), T)
        assert got == [b"a", b"b", b"c"]
        assert not s.is_connected()
        await asyncio.sleep(0.2)
        assert not s.is_connected(), "a slave disconnected locally stays down"
        await s.request_connection()
        await asyncio.wait_for(s.wait_connected(), T)


async def test_slave_reconnects_after_master_restarts(sock_path: str, no_leaks: None) -> None:
    async with Socket(sock_path) as slave_sock:
        s = slave_sock.new_interface(Arguments(id=5, is_master=False, reconnect_min_delay=0.02,
                                               reconnect_max_delay=0.1))
        for round_ in range(3):
            async with Socket(sock_path) as master_sock:
                m = master_sock.new_interface(Arguments(id=5, is_master=True))
                await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
                await exchange(s, m, 0, [bytes([round_]) * 1000] * 10)
                await exchange(m, s, 0, [bytes([round_]) * 1000] * 10)
            # master socket deleted: the slave sees the reason and retries
            for _ in range(100):
                if not s.is_connected():
                    break
                await asyncio.sleep(0.01)
            assert not s.is_connected()
            assert s.get_disconnect_reason() == "interface deleted"


async def test_nowait_variants_and_read_into(sock_path: str, no_leaks: None) -> None:
    async with pair(sock_path) as (_sock, m, s):
        rx, tx = m.get_rx_queue(0), s.get_tx_queue(0)
        with pytest.raises(WouldBlock):
            rx.read_packet_nowait()
        assert rx.read_burst_nowait(8) == []
        assert tx.write_packet_nowait(b"12345") == 5
        assert tx.write_burst_nowait([b"abc", b"defg"]) == 2
        buf = bytearray(4)
        with pytest.raises(ValueError):
            await rx.read_packet_into(buf)  # 5 bytes do not fit; the packet stays queued
        buf = bytearray(16)
        assert await rx.read_packet_into(buf) == 5 and bytes(buf[:5]) == b"12345"
        assert rx.read_burst_nowait(8) == [b"abc", b"defg"]
        # a wrong-direction call does not exist (mypy rejects it: tests/test_lint.py)
        assert isinstance(rx, RxQueue) and isinstance(tx, TxQueue)
        assert isinstance(rx, Queue) and isinstance(tx, Queue)  # the gomemif name
        assert not hasattr(rx, "write_packet_nowait") and not hasattr(tx, "read_packet")


@pytest.mark.parametrize("sender", ["slave", "master"])
async def test_read_packet_into_edges(sock_path: str, no_leaks: None, sender: str) -> None:
    """read_packet_into copies straight from the slot; every edge keeps the contract: a
    packet longer than the buffer raises ValueError and stays queued, chains are
    reassembled, a cancelled call takes nothing, both directions (rings) alike."""
    async with pair(sock_path) as (_sock, m, s):
        tx_itf, rx_itf = (s, m) if sender == "slave" else (m, s)
        tx, rx = tx_itf.get_tx_queue(0), rx_itf.get_rx_queue(0)
        buf = bytearray(10000)
        # cancelled while waiting: nothing taken, buf untouched
        waiter = asyncio.ensure_future(rx.read_packet_into(buf))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert bytes(buf) == bytes(10000)
        chain = payload(7, 5000)  # 3 buffers of 2048
        sent = [b"12345", chain, b"y" * 100, b"abc", b"z" * 2048]
        await write_all(tx, sent)
        for _ in range(2):  # too small, twice: the packet stays where it is
            with pytest.raises(ValueError, match="does not fit"):
                await asyncio.wait_for(rx.read_packet_into(bytearray(4)), T)
        assert await asyncio.wait_for(rx.read_packet_into(buf), T) == 5
        assert bytes(buf[:5]) == b"12345"
        assert await asyncio.wait_for(rx.read_packet_into(buf), T) == 5000
        assert bytes(buf[:5000]) == chain
        exact = memoryview(bytearray(100))
        assert await asyncio.wait_for(rx.read_packet_into(exact), T) == 100
        assert bytes(exact) == b"y" * 100
        # unusable buffers are refused before anything is taken
        with pytest.raises(TypeError, match="writable"):
            await asyncio.wait_for(rx.read_packet_into(b"x" * 100), T)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="contiguous"):
            await asyncio.wait_for(rx.read_packet_into(memoryview(buf)[::2]), T)
        # any writable buffer, its size in bytes: 3 bytes into an array of 4-byte items
        words = array.array("I", [0xFFFFFFFF])
        assert await asyncio.wait_for(rx.read_packet_into(words), T) == 3  # type: ignore[arg-type]
        assert words.tobytes() == b"abc\xff"
        # straight from the ring this time (nothing queued before it): too small, then fits
        with pytest.raises(ValueError, match="does not fit"):
            await asyncio.wait_for(rx.read_packet_into(bytearray(2047)), T)
        assert await asyncio.wait_for(rx.read_packet_into(buf), T) == 2048
        assert bytes(buf[:2048]) == b"z" * 2048
        for k in range(3):  # the direct path on an empty queue: wait, then copy
            reader = asyncio.ensure_future(rx.read_packet_into(buf))
            await asyncio.sleep(0)
            await write_all(tx, [payload(k, 60 + k)])
            assert await asyncio.wait_for(reader, T) == 60 + k
            assert bytes(buf[:60 + k]) == payload(k, 60 + k)
        st = rx.stats()
        assert (st.packets, st.drops) == (len(sent) + 3, 0)
        assert st.bytes == sum(map(len, sent)) + 60 + 61 + 62
        assert rx.read_burst_nowait(8) == []


async def test_backpressure_and_tx_timeout(sock_path: str, no_leaks: None) -> None:
    mc = MemoryConfig(log2_ring_size=2)  # 4 slots
    async with pair(sock_path, slave={"memory_config": mc, "tx_timeout": 0.2}) as (_s, m, s):
        tx = s.get_tx_queue(0)
        assert tx.write_burst_nowait([b"x"] * 10) == 4  # ring full, nothing partial
        with pytest.raises(WouldBlock):
            tx.write_packet_nowait(b"y")
        with pytest.raises(TimeoutError):
            await tx.write_packet(b"y")  # nobody consumes
        # a consumer frees the ring: a waiting writer goes through
        writer = asyncio.ensure_future(tx.write_packet(b"z"))
        await asyncio.sleep(0.01)
        assert m.get_rx_queue(0).read_burst_nowait(10) == [b"x"] * 4
        await asyncio.wait_for(writer, T)
        assert await m.get_rx_queue(0).read_packet() == b"z"


@pytest.mark.parametrize("mode", [RxMode.POLLING, RxMode.ADAPTIVE, RxMode.INTERRUPT])
async def test_rx_modes(sock_path: str, no_leaks: None, mode: RxMode) -> None:
    async with pair(sock_path, master={"rx_mode": mode}, slave={"rx_mode": mode}) as (_s, m, s):
        # the consumer's choice is visible to the producer through the ring flags
        tx_ring = s.get_tx_queue(0)._ring
        assert tx_ring.peer_wants_interrupt() == (mode is RxMode.INTERRUPT)
        # an idle reader: adaptive falls back to interrupts, polling never asks for them
        reader = asyncio.ensure_future(m.get_rx_queue(0).read_packet())
        await asyncio.sleep(0.05)
        assert tx_ring.peer_wants_interrupt() == (mode is not RxMode.POLLING)
        await s.get_tx_queue(0).write_packet(b"wake")
        assert await asyncio.wait_for(reader, T) == b"wake"
        for _ in range(3):
            await exchange(s, m, 0, [b"p" * 100] * 50)
            await exchange(m, s, 0, [b"q" * 100] * 50)
            await asyncio.sleep(0.01)  # let adaptive queues fall back to interrupts


async def test_socket_file_lifecycle(sock_dir: str, no_leaks: None) -> None:
    path = os.path.join(sock_dir, "x.sock")
    async with Socket(path) as sock:
        sock.new_interface(Arguments(id=0, is_master=True))
        assert os.path.exists(path)
        other = Socket(path)
        other.new_interface(Arguments(id=1, is_master=True))
        with pytest.raises(Exception, match="live listener"):
            await other.start_polling()
        await other.delete()
        assert os.path.exists(path), "a refused second listener must not remove the file"
    assert not os.path.exists(path)


async def test_abstract_socket(no_leaks: None) -> None:
    name = f"@memif-aio-test-{os.getpid()}"
    async with pair(name) as (_sock, m, s):
        await exchange(s, m, 0, [b"abstract"])


@pytest.mark.parametrize("sender", ["slave", "master"])
async def test_zero_copy_lease_and_reserve(sock_path: str, no_leaks: None, sender: str) -> None:
    mc = MemoryConfig(log2_ring_size=4)  # 16 slots: leases must give slots back
    async with pair(sock_path, slave={"memory_config": mc}) as (_sock, m, s):
        tx_itf, rx_itf = (s, m) if sender == "slave" else (m, s)
        tx, rx = tx_itf.get_tx_queue(0), rx_itf.get_rx_queue(0)
        kept = []
        for round_ in range(5):  # 5 x 12 packets through 16 slots
            async with tx.reserve(12, 100) as bufs:
                assert len(bufs) == 12 and all(len(b) == 100 for b in bufs)
                for i, b in enumerate(bufs):
                    b[:] = bytes([round_, i]) * 50
                bufs.lengths[11] = 7  # publish a shorter last packet
            got: list[bytes] = []
            while len(got) < 12:
                async with rx.lease(64) as views:
                    assert all(isinstance(v, memoryview) for v in views)
                    got.extend(bytes(v) for v in views)
                    kept.append(views[0])
            assert got[:11] == [bytes([round_, i]) * 50 for i in range(11)]
            assert got[11] == bytes([round_, 11]) * 3 + bytes([round_])
        with pytest.raises(ValueError):
            kept[0][0]  # a view used after its lease fails cleanly
        # an exception inside reserve publishes nothing and loses no slot
        with pytest.raises(RuntimeError, match="abort"):
            async with tx.reserve(16, 64) as bufs:
                bufs[0][:3] = b"bad"
                raise RuntimeError("abort")
        assert rx.read_burst_nowait(64) == []
        await tx.write_burst([b"after"] * 16)
        assert await rx.read_burst(64) == [b"after"] * 16
        # a chained packet inside a lease arrives as bytes
        await tx.write_packet(b"c" * 5000)
        async with rx.lease() as views:
            assert views == [b"c" * 5000] and isinstance(views[0], bytes)


async def test_lease_released_on_disconnect(sock_path: str, no_leaks: None) -> None:
    async with pair(sock_path) as (_sock, m, s):
        await s.get_tx_queue(0).write_packet(b"held")
        rx = m.get_rx_queue(0)
        with pytest.raises(ValueError):
            async with rx.lease() as views:
                assert bytes(views[0]) == b"held"
                await s.disconnect()
                await asyncio.sleep(0.05)
                views[0][0]  # the mapping is going away: the view refuses access
        with pytest.raises(Disconnected):
            rx.read_packet_nowait()


async def test_stats_and_events(sock_path: str, no_leaks: None) -> None:
    async with pair(sock_path, connect=False) as (_sock, m, s):
        seen: list[tuple[str, str]] = []

        async def watch() -> None:
            async for ev in m.events():
                seen.append((ev.kind, ev.reason))

        watcher = asyncio.ensure_future(watch())
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        await s.get_tx_queue(0).write_burst([b"x" * 100] * 3)
        await m.get_rx_queue(0).read_burst(3)
        st = m.stats()
        assert (st.role, st.state, st.peer_name, st.connections) == ("master", "connected", "s", 1)
        assert st.regions == ((0, MemoryConfig().region_size()),)
        assert st.rx[0].packets == 3 and st.rx[0].bytes == 300 and st.rx[0].ring_size == 1024
        assert s.stats().tx[0].head == 3
        await s.disconnect()
        await asyncio.sleep(0.05)
        assert m.stats().state == "down" and m.stats().last_reason == "interface disconnected"
        await m.delete()
        await asyncio.wait_for(watcher, T)  # ends when the interface is deleted
        assert seen == [("up", ""), ("down", "interface disconnected")]


async def test_taps_see_every_packet_both_ways(sock_path: str, no_leaks: None) -> None:
    async with pair(sock_path) as (_sock, m, s):
        seen: list[tuple[int, bool, bytes]] = []
        m.add_tap(lambda qid, is_rx, pkts: seen.extend((qid, is_rx, p) for p in pkts))
        broken_calls = []

        def broken(qid: int, is_rx: bool, pkts: object) -> None:
            broken_calls.append(1)
            raise RuntimeError("tap bug")

        m.add_tap(broken)  # a failing tap is removed; traffic is unaffected
        await exchange(s, m, 0, [b"a", b"bb"])
        await exchange(m, s, 0, [b"ccc", b"d" * 5000])
        async with m.get_tx_queue(0).reserve(1, 10) as bufs:
            bufs[0][:] = b"0123456789"
        await s.get_rx_queue(0).read_packet()
        await s.get_tx_queue(0).write_packet(b"leased")
        async with m.get_rx_queue(0).lease() as views:
            assert bytes(views[0]) == b"leased"
        assert seen == [(0, True, b"a"), (0, True, b"bb"), (0, False, b"ccc"),
                        (0, False, b"d" * 5000), (0, False, b"0123456789"),
                        (0, True, b"leased")]
        assert broken_calls == [1]


async def test_connect_error_does_not_hide_the_peer_reason(sock_dir: str,
                                                           no_leaks: None) -> None:
    path = os.path.join(sock_dir, "gone.sock")
    async with Socket(path) as slave_sock:
        s = slave_sock.new_interface(Arguments(id=1, is_master=False, reconnect_min_delay=0.02,
                                               reconnect_max_delay=0.05))
        with pytest.raises(TimeoutError, match="No such file"):
            await s.wait_connected(0.2)
        assert "No such file" in s.get_connect_error() and s.get_disconnect_reason() == ""
        async with Socket(path) as master_sock:
            master_sock.new_interface(Arguments(id=1, is_master=True, secret=b"k"))
            for _ in range(100):
                if s.get_disconnect_reason():
                    break
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # more failed connects: the peer's reason stays
        assert s.get_disconnect_reason() == "secret required"
        assert "No such file" in s.get_connect_error()


async def test_add_listener_serves_masters_on_a_given_socket(sock_dir: str,
                                                            no_leaks: None) -> None:
    import socket as pysocket

    path = os.path.join(sock_dir, "activated.sock")
    listener = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(8)
    master_sock = Socket(path)
    m = master_sock.new_interface(Arguments(id=3, is_master=True))
    master_sock.add_listener(listener.detach())  # as a service manager would pass it
    with pytest.raises(Exception, match="already has a listener"):
        master_sock.add_listener(0)
    await master_sock.start_polling()
    try:
        async with Socket(path) as slave_sock:
            s = slave_sock.new_interface(Arguments(id=3, is_master=False))
            await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
            assert m.get_socket() is master_sock and master_sock.get_filename() == path
            await exchange(s, m, 0, [b"activated"])
    finally:
        await master_sock.delete()
    assert os.path.exists(path), "a listener we did not create is not ours to remove"
    os.unlink(path)
    not_a_socket = os.open(sock_dir, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="not a socket"):
            Socket(path).add_listener(not_a_socket)
    finally:
        os.close(not_a_socket)  # refused fds stay the caller's


async def test_stop_and_restart_polling(sock_path: str, no_leaks: None) -> None:
    async with pair(sock_path) as (sock, m, s):
        await sock.stop_polling()
        assert not m.is_connected() and not s.is_connected()
        assert not os.path.exists(sock_path)
        await sock.start_polling()
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        await exchange(s, m, 0, [b"resumed"])


async def test_a_flood_does_not_starve_the_event_loop(sock_path: str, no_leaks: None) -> None:
    """Reads and writes that find the ring ready complete without suspending; every
    4096 packets a queue still gives the loop a turn (timers, signals, control channel)."""
    mc = MemoryConfig(log2_ring_size=14)  # room for the whole flood without waiting
    async with pair(sock_path, slave={"memory_config": mc}) as (_sock, m, s):
        tx, rx = s.get_tx_queue(0), m.get_rx_queue(0)
        loop = asyncio.get_running_loop()

        async def count_until_callback(step: object, total: int) -> int:
            ran: list[bool] = []
            loop.call_soon(ran.append, True)  # runs at the first turn the loop gets
            done = 0
            while done < total and not ran:
                done += await step()  # type: ignore[operator]
            return done

        async def write_one() -> int:
            await tx.write_packet(b"w" * 60)
            return 1

        async def write_64() -> int:
            return await tx.write_burst([b"b" * 60] * 64)

        async def read_one() -> int:
            await rx.read_packet()
            return 1

        async def read_64() -> int:
            return len(await rx.read_burst(64))

        for step in (write_one, write_64):
            assert await count_until_callback(step, 8000) <= 4096 + 64
        assert tx.write_burst_nowait([b"x" * 60] * 6000) == 6000  # enough for both reads
        rx.read_burst_nowait(64)  # start the reads mid-ring
        for step in (read_one, read_64):
            assert await count_until_callback(step, 6000) <= 4096 + 64


async def test_memory_stays_flat_over_a_long_run(sock_path: str, no_leaks: None) -> None:
    """Python objects are made per packet (bytes or views), but nothing accumulates:
    traced memory after ~400k more packets is where it was (zero copy and copy paths)."""
    import tracemalloc

    async with pair(sock_path) as (_sock, m, s):
        tx, rx = s.get_tx_queue(0), m.get_rx_queue(0)
        burst = [b"z" * 64] * 64

        async def run(n: int) -> None:
            for i in range(n):
                if i % 2:
                    async with tx.reserve(64, 64) as bufs:
                        for b in bufs:
                            b[:2] = b"zz"
                else:
                    await tx.write_burst(burst)
                got = 0
                while got < 64:
                    if i % 2:
                        async with rx.lease(64) as views:
                            got += len(views)
                    else:
                        got += len(await rx.read_burst(64))

        await run(500)  # warm up caches and free lists
        tracemalloc.start()
        try:
            await run(200)
            before = tracemalloc.get_traced_memory()[0]
            await run(6000)
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert after - before < 16 * 1024, (before, after)


async def test_peer_credentials_and_accept_filter(sock_path: str, no_leaks: None) -> None:
    from memif_aio import PeerCredentials

    seen: list[PeerCredentials] = []

    def only_root_group_zero(creds: PeerCredentials) -> bool:
        seen.append(creds)
        return creds.uid == os.getuid() and creds.gid == 12345  # refuses us

    async with Socket(sock_path, accept_filter=only_root_group_zero) as sock:
        sock.new_interface(Arguments(id=0, is_master=True))
        s = sock.new_interface(Arguments(id=0, is_master=False, reconnect_min_delay=0.02,
                                         reconnect_max_delay=0.05))
        with pytest.raises(TimeoutError):
            await s.wait_connected(0.3)
        assert seen and seen[0] == PeerCredentials(os.getpid(), os.getuid(), os.getgid())
    async with Socket(sock_path, accept_filter=lambda c: c.pid == os.getpid()) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        s = sock.new_interface(Arguments(id=0, is_master=False))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        assert m.get_peer_credentials() == PeerCredentials(os.getpid(), os.getuid(),
                                                           os.getgid())
        assert s.get_peer_credentials() is None  # a slave's peer is the listener


async def test_cancelled_inside_lease_and_reserve_loses_no_slot(sock_path: str,
                                                                 no_leaks: None) -> None:
    mc = MemoryConfig(log2_ring_size=3)  # 8 slots: a lost slot would show at once
    async with pair(sock_path, slave={"memory_config": mc}) as (_sock, m, s):
        for tx, rx in ((s.get_tx_queue(0), m.get_rx_queue(0)),
                       (m.get_tx_queue(0), s.get_rx_queue(0))):
            entered = asyncio.Event()

            async def hold_lease(rx: RxQueue, entered: asyncio.Event) -> None:
                async with rx.lease(8) as views:
                    assert len(views) == 8
                    entered.set()
                    await asyncio.sleep(10)  # cancelled here, views in hand

            await tx.write_burst([bytes([i]) * 100 for i in range(8)])
            task = asyncio.ensure_future(hold_lease(rx, entered))
            await asyncio.wait_for(entered.wait(), T)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the cancelled lease consumed nothing: the next read returns the same
            # packets, in order, and the 8 slots are free: 8 more fit and arrive intact
            assert await rx.read_burst(8) == [bytes([i]) * 100 for i in range(8)]
            await exchange_ring_full(tx, rx)

            entered.clear()

            async def hold_reservation(tx: TxQueue, entered: asyncio.Event) -> None:
                async with tx.reserve(8, 64) as bufs:
                    bufs[0][:4] = b"half"
                    entered.set()
                    await asyncio.sleep(10)  # cancelled mid-fill: nothing may be published

            task = asyncio.ensure_future(hold_reservation(tx, entered))
            await asyncio.wait_for(entered.wait(), T)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert rx.read_burst_nowait(8) == []
            await exchange_ring_full(tx, rx)

            # cancelled while waiting: for a packet inside lease(), for room inside reserve()
            waiting = asyncio.ensure_future(rx.lease(4).__aenter__())
            await asyncio.sleep(0.01)
            waiting.cancel()
            await tx.write_burst([b"x" * 10] * 8)  # ring full now
            blocked = asyncio.ensure_future(tx.reserve(1, 10).__aenter__())
            await asyncio.sleep(0.01)
            blocked.cancel()
            with pytest.raises(asyncio.CancelledError):
                await blocked
            assert await rx.read_burst(8) == [b"x" * 10] * 8
            await exchange_ring_full(tx, rx)


async def exchange_ring_full(tx: object, rx: object) -> None:
    pkts = [bytes([0xA0 + i]) * 200 for i in range(8)]
    assert tx.write_burst_nowait(pkts) == 8  # type: ignore[attr-defined]
    got: list[bytes] = []
    while len(got) < 8:
        got += await asyncio.wait_for(rx.read_burst(8), T)  # type: ignore[attr-defined]
    assert got == pkts


@pytest.mark.parametrize("mode", [RxMode.INTERRUPT, RxMode.ADAPTIVE])
async def test_a_peer_that_stops_producing_costs_no_cpu(sock_path: str, no_leaks: None,
                                                        mode: RxMode) -> None:
    import time

    async with pair(sock_path, master={"rx_mode": mode}) as (_sock, m, s):
        rx = m.get_rx_queue(0)
        await s.get_tx_queue(0).write_packet(b"first")
        assert await rx.read_packet() == b"first"
        reader = asyncio.ensure_future(rx.read_packet())  # the peer goes quiet
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(0.5)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        assert not reader.done()
        assert cpu < 0.2 * wall, f"an idle reader burned {cpu:.3f} s of CPU in {wall:.3f} s"
        await s.get_tx_queue(0).write_packet(b"again")  # and comes back
        assert await asyncio.wait_for(reader, T) == b"again"


@pytest.mark.parametrize("mode", [RxMode.INTERRUPT, RxMode.ADAPTIVE])
async def test_signals_nobody_waits_for_do_not_wake_the_loop(sock_path: str, no_leaks: None,
                                                              mode: RxMode) -> None:
    """A peer that keeps signalling while nobody waits on the queue (DPDK's net_memif writes
    the eventfd on every transmit call, even one that found the ring full) wakes the loop
    once, not once per signal: the queue stops listening until a reader waits again, and
    that reader still gets what was sent meanwhile (no lost wake-up)."""
    async with pair(sock_path, master={"rx_mode": mode}) as (_sock, m, s):
        rx = m.get_rx_queue(0)
        efd = rx.get_event_fd()
        await s.get_tx_queue(0).write_packet(b"first")
        assert await asyncio.wait_for(rx.read_packet(), T) == b"first"
        before = rx.stats().interrupts
        for _ in range(50):  # the peer's signals, with loop turns between them
            os.eventfd_write(efd, 1)
            await asyncio.sleep(0)
        assert rx.stats().interrupts - before <= 1
        # the eventfd still holds signals: a reader that waits now is woken by them and
        # by what the peer sends next, on both paths (a wait that finds the ring empty)
        reader = asyncio.ensure_future(rx.read_packet())
        await asyncio.sleep(0.01)
        await s.get_tx_queue(0).write_packet(b"again")
        assert await asyncio.wait_for(reader, T) == b"again"
        for k in range(3):  # and it keeps working in the usual wait-wake rhythm
            reader = asyncio.ensure_future(rx.read_packet())
            await asyncio.sleep(0.01)
            await s.get_tx_queue(0).write_packet(b"n%d" % k)
            assert await asyncio.wait_for(reader, T) == b"n%d" % k
