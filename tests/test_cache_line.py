"""Cache-line size auto-detection (issue 12 §4).

A master in ``cache_line_size="auto"`` mode (the default for masters) infers the
slave's C from the gap between two ADD_RING offsets of one region, ``2*C + 16*2^log2``
when the rings are back to back (as VPP, libmemif, DPDK, gomemif and memif_aio lay
them), refuses a layout that fits neither 64 nor 128 with a reason naming what it saw,
and falls back to the platform value when no region holds two rings.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from hostile import HostileClient, PeerMemory

from memif_aio import Arguments, MemoryConfig, Socket, config
from memif_aio.errors import ProtocolViolation
from memif_aio.memory import ClientLayout, infer_cache_line
from memif_aio.protocol import (
    Closed,
    Established,
    SendMessage,
    ServerConfig,
    ServerHandshake,
    ServerTarget,
)
from memif_aio.wire import (
    MSG_ADD_RING_FLAG_S2M,
    MsgAddRegion,
    MsgAddRing,
    MsgConnect,
    MsgInit,
    MsgType,
    RingLayout,
    RingType,
)

T = 5.0


def client_rings(ns: int, nm: int, log2: int, cache_line: int,
                 region: int = 0) -> list[tuple[str, int, int, int]]:
    """The rings of memif_aio's client layout (the VPP/DPDK one), as ADD_RING says."""
    lay = ClientLayout(ns, nm, log2, 2048, RingLayout.for_cache_line(cache_line))
    return [(f"{t.name} ring {i}", region, lay.ring_offset(int(t), i), log2)
            for t, n in ((RingType.S2M, ns), (RingType.M2S, nm)) for i in range(n)]


# ----------------------------------------------------------------------------
# The inference itself
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("cache_line", [64, 128])
@pytest.mark.parametrize("ns,nm,log2", [(1, 1, 10), (2, 1, 0), (1, 3, 14), (4, 4, 5)])
def test_back_to_back_layouts(cache_line: int, ns: int, nm: int, log2: int) -> None:
    rings = client_rings(ns, nm, log2, cache_line)
    assert infer_cache_line(rings) == cache_line
    assert infer_cache_line(list(reversed(rings))) == cache_line  # order of announcement


@pytest.mark.parametrize("cache_line", [64, 128])
def test_libmemif_two_regions(cache_line: int) -> None:
    """libmemif: region 0 holds the rings only, region 1 the buffers: rings back to back."""
    assert infer_cache_line(client_rings(2, 2, 10, cache_line)) == cache_line


def test_single_ring_per_region_gives_nothing() -> None:
    assert infer_cache_line([("S2M ring 0", 0, 0, 10), ("M2S ring 0", 1, 0, 10)]) is None
    assert infer_cache_line([]) is None


def test_odd_gap_is_refused_naming_what_was_seen() -> None:
    # 16384 + 2*96: a 96-byte cache line, neither 16512 (64) nor 16640 (128)
    rings = [("S2M ring 0", 0, 0, 10), ("M2S ring 0", 0, 16576, 10)]
    with pytest.raises(ProtocolViolation) as info:
        infer_cache_line(rings)
    assert info.value.reason == (
        "cache line neither 64 nor 128: rings 16576 bytes apart, not 16512 (64) or 16640 (128) "
        "(S2M ring 0 at offset 0, M2S ring 0 at offset 16576 of region 0, 2^10 slots); "
        "set cache_line_size")


def test_padding_between_rings_is_refused() -> None:
    """Rings that are not back to back fit no formula, even with a plausible gap."""
    rings = [("S2M ring 0", 0, 0, 4), ("M2S ring 0", 0, 4096, 4)]
    with pytest.raises(ProtocolViolation, match="4096 bytes apart"):
        infer_cache_line(rings)


def test_inconsistent_layout_is_refused() -> None:
    # gap 0 -> 384 fits 64 (2*64 + 256); gap 384 -> 896 fits 128 (2*128 + 256)
    rings = [("S2M ring 0", 0, 0, 4), ("S2M ring 1", 0, 384, 4), ("M2S ring 0", 0, 896, 4)]
    with pytest.raises(ProtocolViolation,
                       match=r"^cache line inconsistent: rings 384 bytes apart mean 64, "
                             r"512 bytes apart 128 \(S2M ring 0 at offset 0, S2M ring 1 at "
                             r"offset 384 of region 0"):
        infer_cache_line(rings)


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------


def test_defaults_by_role() -> None:
    assert Arguments(id=0, is_master=True).cache_line_size == "auto"
    assert Arguments(id=0, is_master=False).cache_line_size == config.default_cache_line_size()
    assert Arguments(id=0, is_master=True, cache_line_size=128).cache_line_size == 128
    assert Arguments(id=0, is_master=False, cache_line_size=128).cache_line_size == 128


@pytest.mark.parametrize("value", ["auto", "AUTO", 32, 256, True, 64.0, "64"])
def test_slave_needs_a_concrete_value(value: Any) -> None:
    with pytest.raises(ValueError, match="cache_line_size"):
        Arguments(id=0, is_master=False, cache_line_size=value)


@pytest.mark.parametrize("value", ["AUTO", 32, 256, True, "64"])
def test_master_values(value: Any) -> None:
    with pytest.raises(ValueError, match="cache_line_size"):
        Arguments(id=0, is_master=True, cache_line_size=value)


# ----------------------------------------------------------------------------
# The server machine in auto mode
# ----------------------------------------------------------------------------


def feed(srv: ServerHandshake, msg: Any, fd: int | None = None) -> list[Any]:
    return srv.receive(msg.encode(), [] if fd is None else [os.dup(fd)])


def test_machine_refuses_at_connect_and_releases_everything() -> None:
    srv = ServerHandshake(ServerConfig(lookup=lambda _id: ServerTarget(infer_cache_line=True)))
    mem = PeerMemory(log2_ring_size=4)  # stride 384 with C = 64
    try:
        srv.start()
        feed(srv, MsgInit(0, 0, b"", b"c"))
        feed(srv, MsgAddRegion(0, mem.size), mem.fd)
        feed(srv, MsgAddRing(MSG_ADD_RING_FLAG_S2M, 0, 0, 0, 4), mem.s2m_efd[0])
        feed(srv, MsgAddRing(0, 0, 0, 448, 4), mem.m2s_efd[0])  # 448 = 2*96 + 256
        out = feed(srv, MsgConnect(b"x"))
        closed = [o for o in out if isinstance(o, Closed)]
        assert len(closed) == 1, out
        assert closed[0].reason.startswith("cache line neither 64 nor 128: rings 448 bytes "
                                           "apart, not 384 (64) or 512 (128)"), closed[0].reason
        assert isinstance(out[0], SendMessage)  # the DISCONNECT with that reason
        assert srv.config.budget.fds == 0 and srv.config.budget.bytes == 0
    finally:
        mem.close()


@pytest.mark.parametrize("fallback", [64, 128])
def test_machine_falls_back_with_one_ring_per_region(fallback: int) -> None:
    srv = ServerHandshake(ServerConfig(lookup=lambda _id: ServerTarget(
        infer_cache_line=True, cache_line_size=fallback)))
    a, b = PeerMemory(log2_ring_size=4, cache_line=fallback), \
        PeerMemory(log2_ring_size=4, cache_line=fallback)
    try:
        srv.start()
        feed(srv, MsgInit(0, 0, b"", b"c"))
        feed(srv, MsgAddRegion(0, a.size), a.fd)
        feed(srv, MsgAddRegion(1, b.size), b.fd)
        feed(srv, MsgAddRing(MSG_ADD_RING_FLAG_S2M, 0, 0, 0, 4), a.s2m_efd[0])
        feed(srv, MsgAddRing(0, 0, 1, b.stride, 4), b.m2s_efd[0])
        out = feed(srv, MsgConnect(b"x"))
        est = [o for o in out if isinstance(o, Established)]
        assert len(est) == 1, out
        session = est[0].session
        try:
            assert session.cache_line_size == fallback
            assert all(r.layout.cache_line == fallback for r in (*session.rx, *session.tx))
        finally:
            session.close()
    finally:
        a.close()
        b.close()


def test_machine_checks_bounds_again_with_the_inferred_layout() -> None:
    """ADD_RING is checked with the smaller layout; once CONNECT shows 128, a ring that
    only fits with 64 (the last one ending at the region's end) is refused."""
    srv = ServerHandshake(ServerConfig(lookup=lambda _id: ServerTarget(infer_cache_line=True)))
    mem = PeerMemory(log2_ring_size=4, cache_line=128)  # stride 512
    try:
        srv.start()
        feed(srv, MsgInit(0, 0, b"", b"c"))
        # region: exactly two 128-layout rings minus 128 bytes (the second fits only as 64)
        feed(srv, MsgAddRegion(0, 2 * 512 - 128), mem.fd)
        feed(srv, MsgAddRing(MSG_ADD_RING_FLAG_S2M, 0, 0, 0, 4), mem.s2m_efd[0])
        feed(srv, MsgAddRing(0, 0, 0, 512, 4), mem.m2s_efd[0])
        out = feed(srv, MsgConnect(b"x"))
        closed = [o for o in out if isinstance(o, Closed)]
        assert len(closed) == 1 and "exceeds region 0" in closed[0].reason, out
    finally:
        mem.close()


# ----------------------------------------------------------------------------
# A memif_aio master in auto mode over a real socket, both loops
# ----------------------------------------------------------------------------


@pytest.mark.both_loops
@pytest.mark.parametrize("cache_line", [64, 128])
@pytest.mark.parametrize("mc", [MemoryConfig(), MemoryConfig(log2_ring_size=6, num_rx_queues=2,
                                                             num_tx_queues=3)],
                         ids=["1-pair", "rx2-tx3"])
async def test_auto_master_against_slave(cache_line: int, mc: MemoryConfig, sock_path: str,
                                         no_leaks: None) -> None:
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True, name="m"))
        s = sock.new_interface(Arguments(id=0, is_master=False, name="s", memory_config=mc,
                                         cache_line_size=cache_line))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        assert m.stats().cache_line_size == s.stats().cache_line_size == cache_line
        n = 300

        async def one_way(tx_itf: Any, rx_itf: Any, q: int) -> None:
            packets = [bytes([q, i & 0xFF]) * (30 + i) for i in range(n)]

            async def send() -> None:
                for p in packets:
                    await tx_itf.get_tx_queue(q).write_packet(p)

            async def recv() -> list[bytes]:
                got: list[bytes] = []
                while len(got) < n:
                    got.extend(await rx_itf.get_rx_queue(q).read_burst(n - len(got)))
                return got

            _, got = await asyncio.wait_for(asyncio.gather(send(), recv()), T * 4)
            assert got == packets

        await asyncio.gather(*(one_way(s, m, q) for q in range(mc.num_tx_queues)),
                             *(one_way(m, s, q) for q in range(mc.num_rx_queues)))
        for itf in (m, s):
            for st in (*itf.stats().rx, *itf.stats().tx):
                assert st.drops == 0 and st.bad_descriptors == 0
    assert m.stats().cache_line_size == 0  # down


@pytest.mark.both_loops
async def test_auto_master_refuses_an_odd_layout(sock_path: str, no_leaks: None) -> None:
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        events = m.events()
        async with await HostileClient.connect(sock_path) as cli:
            mem = cli.memory = PeerMemory(log2_ring_size=4)  # stride 384
            await cli.init()
            await cli.ok(MsgAddRegion(0, mem.size), [mem.fd])
            await cli.ok(MsgAddRing(MSG_ADD_RING_FLAG_S2M, 0, 0, 0, 4), [mem.s2m_efd[0]])
            await cli.ok(MsgAddRing(0, 0, 0, 384 + 64, 4), [mem.m2s_efd[0]])
            await cli.send(MsgConnect(b"odd"))
            reason = await cli.expect_disconnect()
        # the peer gets the first 95 bytes of the reason: what it needs to know
        assert reason == "cache line neither 64 nor 128: rings 448 bytes apart, not 384 (64) " \
                         "or 512 (128) (S2M ring 0 at ", reason
        ev = await asyncio.wait_for(events.__anext__(), T)
        assert ev.kind == "refused", ev
        assert ev.reason == m.get_connect_error() == (
            "cache line neither 64 nor 128: rings 448 bytes apart, not 384 (64) or 512 (128) "
            "(S2M ring 0 at offset 0, M2S ring 0 at offset 448 of region 0, 2^4 slots); "
            "set cache_line_size")
        assert not m.is_connected()
        events.close()


@pytest.mark.both_loops
async def test_auto_master_falls_back_to_the_platform_value(
        sock_path: str, no_leaks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ring in its own region: nothing to infer from, so the platform value (made 128
    here, as on aarch64) applies, and packets written with that layout arrive intact."""
    monkeypatch.setattr(config, "default_cache_line_size", lambda: 128)
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        a = PeerMemory(log2_ring_size=4, cache_line=128)
        b = PeerMemory(log2_ring_size=4, cache_line=128)
        try:
            async with await HostileClient.connect(sock_path) as cli:
                await cli.init()
                await cli.ok(MsgAddRegion(0, a.size), [a.fd])
                await cli.ok(MsgAddRegion(1, b.size), [b.fd])
                await cli.ok(MsgAddRing(MSG_ADD_RING_FLAG_S2M, 0, 0, 0, 4), [a.s2m_efd[0]])
                await cli.ok(MsgAddRing(0, 0, 1, b.stride, 4), [b.m2s_efd[0]])
                await cli.ok(MsgConnect(b"split"), reply=MsgType.CONNECTED)
                await asyncio.wait_for(m.wait_connected(), T)
                assert m.stats().cache_line_size == 128
                packets = [bytes([i]) * (60 + i) for i in range(10)]
                a.send(0, packets)
                got: list[bytes] = []
                while len(got) < len(packets):
                    got.extend(await asyncio.wait_for(m.get_rx_queue(0).read_burst(16), T))
                assert got == packets
                assert m.get_rx_queue(0).stats().bad_descriptors == 0
        finally:
            a.close()
            b.close()
