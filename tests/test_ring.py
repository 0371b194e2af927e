"""Ring logic over real shared memory: both ends of both directions on the same Region objects.

The client-side rings (S2MProducer, M2SConsumer) are built from a ClientLayout
exactly as the client handshake builds them; the server-side rings
(S2MConsumer, M2SProducer) map the same Region.  A hostile peer is imitated
by writing indices and descriptors straight into the shared memory.
"""

from __future__ import annotations

import gc
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from leaks import memfd_mappings

from memif_aio.errors import PacketTooLarge, ProtocolViolation
from memif_aio.memory import ClientLayout, Region
from memif_aio.ring import (
    M2SConsumer,
    M2SProducer,
    S2MConsumer,
    S2MProducer,
    _Ring,
    _window,
    check_ring_geometry,
    validate_initial_indices,
)
from memif_aio.wire import COOKIE, DESC_FLAG_NEXT, RingLayout, RingType

S2M, M2S = RingType.S2M, RingType.M2S
DESC = struct.Struct("<HHIII")  # the reference's format (§6.3), not the derived one


@pytest.fixture(autouse=True)
def no_leak() -> Iterator[None]:
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    maps = memfd_mappings()
    yield
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == fds, "fd leaked"
    assert memfd_mappings() == maps, "mapping leaked"


class Rig:
    """One client region (ns = nm = 1) and the four ring ends over it."""

    def __init__(self, log2: int = 3, bsize: int = 2048, cache_line: int = 64) -> None:
        self.log2 = log2
        self.R = 1 << log2
        self.bsize = bsize
        self.rl = RingLayout.for_cache_line(cache_line)
        self.layout = ClientLayout(1, 1, log2, bsize, self.rl)
        self.region = Region.create(self.layout.region_size)
        self.layout.initialise(self.region)
        self.regions = [self.region]
        self.mm = self.region.mm
        self.rings: list[_Ring] = []

    # --- ring ends -----------------------------------------------------------
    def off(self, t: RingType) -> int:
        return self.layout.ring_offset(t, 0)

    def bufs(self, t: RingType) -> list[int]:
        return [self.layout.buffer_offset(t, 0, j) for j in range(self.R)]

    def _keep(self, ring: _Ring) -> _Ring:
        self.rings.append(ring)
        return ring

    def client_tx(self) -> S2MProducer:
        return self._keep(S2MProducer(self.regions, 0, self.off(S2M), self.log2, self.rl,
                                      self.bufs(S2M), self.bsize))  # type: ignore[return-value]

    def client_rx(self) -> M2SConsumer:
        return self._keep(M2SConsumer(self.regions, 0, self.off(M2S), self.log2, self.rl,
                                      self.bufs(M2S), self.bsize))  # type: ignore[return-value]

    def server_rx(self) -> S2MConsumer:
        return self._keep(S2MConsumer(self.regions, 0, self.off(S2M), self.log2,
                                      self.rl))  # type: ignore[return-value]

    def server_tx(self) -> M2SProducer:
        return self._keep(M2SProducer(self.regions, 0, self.off(M2S), self.log2,
                                      self.rl))  # type: ignore[return-value]

    # --- raw shared-memory access (what a hostile peer does) -----------------------
    def head(self, t: RingType) -> int:
        return int(struct.unpack_from("<H", self.mm, self.off(t) + 6)[0])

    def tail(self, t: RingType) -> int:
        return int(struct.unpack_from("<H", self.mm, self.off(t) + self.rl.cache_line)[0])

    def ring_flags(self, t: RingType) -> int:
        return int(struct.unpack_from("<H", self.mm, self.off(t) + 4)[0])

    def set_head(self, t: RingType, v: int) -> None:
        struct.pack_into("<H", self.mm, self.off(t) + 6, v & 0xFFFF)

    def set_tail(self, t: RingType, v: int) -> None:
        struct.pack_into("<H", self.mm, self.off(t) + self.rl.cache_line, v & 0xFFFF)

    def set_ring_flags(self, t: RingType, v: int) -> None:
        struct.pack_into("<H", self.mm, self.off(t) + 4, v)

    def desc_at(self, t: RingType, slot: int) -> int:
        return self.off(t) + self.rl.desc + 16 * (slot & (self.R - 1))

    def desc(self, t: RingType, slot: int) -> tuple[int, int, int, int, int]:
        return DESC.unpack_from(self.mm, self.desc_at(t, slot))

    def put_desc(self, t: RingType, slot: int, flags: int, region: int, length: int,
                 offset: int) -> None:
        DESC.pack_into(self.mm, self.desc_at(t, slot), flags, region, length, offset, 0)

    def fill(self, offset: int, data: bytes) -> None:
        self.mm[offset:offset + len(data)] = data

    def publish_s2m(self, start: int, packets: list[bytes], *, bad: dict[int, dict[str, int]]
                    | None = None) -> int:
        """Write packets as a client would (one buffer each), from counter ``start``;
        ``bad`` overrides descriptor fields of the given packet numbers.  Returns the new head."""
        h = start
        for i, p in enumerate(packets):
            s = h & (self.R - 1)
            o = self.bufs(S2M)[s]
            self.fill(o, p)
            fields = {"flags": 0, "region": 0, "length": len(p), "offset": o}
            fields.update((bad or {}).get(i, {}))
            self.put_desc(S2M, s, **fields)
            h += 1
        self.set_head(S2M, h)
        return h & 0xFFFF

    def close(self) -> None:
        for r in self.rings:
            r.release()  # drop the views into the region
        self.region.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def make_rig(request: pytest.FixtureRequest, **kw: int) -> Rig:
    r = Rig(**kw)
    request.addfinalizer(r.close)
    return r


def pkt(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7 + (i >> 8)) & 0xFF for i in range(n))


def drain(rx: S2MConsumer | M2SConsumer, max_calls: int = 64) -> list[bytes]:
    """Everything available, over as many read_burst calls as it takes.

    A single call may stop early (at the end of the descriptor array, or at a
    chain that is not complete yet); the queue layer calls again.
    """
    out: list[bytes] = []
    for _ in range(max_calls):
        if not rx.read_burst(64, out):
            return [bytes(p) for p in out]
    raise AssertionError("read_burst kept returning packets")


def write_all(tx: S2MProducer | M2SProducer, pkts: list[bytes]) -> None:
    """Publish every packet (each call must make progress)."""
    done = 0
    while done < len(pkts):
        n = tx.write_burst(pkts, done)
        assert n > 0, f"no progress after {done} of {len(pkts)} packets"
        done += n


# ---------------------------------------------------------------------------
# Single packets
# ---------------------------------------------------------------------------


def test_s2m_single_packet(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    assert tx.free_slots() == 8 and rx.available() == 0
    assert tx.write_burst([b"hello"]) == 1
    assert rig.head(S2M) == 1 and rig.tail(S2M) == 0
    assert rig.desc(S2M, 0) == (0, 0, 5, rig.bufs(S2M)[0], 0)
    assert rig.mm[rig.bufs(S2M)[0]:rig.bufs(S2M)[0] + 5] == b"hello"
    assert tx.free_slots() == 7 and rx.available() == 1
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 1
    assert [bytes(p) for p in out] == [b"hello"]
    assert rig.tail(S2M) == 1 and rx.available() == 0 and tx.free_slots() == 8
    assert (tx.stats.packets, tx.stats.bytes) == (1, 5)
    assert (rx.stats.packets, rx.stats.bytes, rx.stats.drops) == (1, 5, 0)
    assert rx.read_burst(64, out) == 0 and len(out) == 1


def test_s2m_write_one(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    for i in range(8):
        assert tx.write_one(pkt(100 + i, i)) is True
    assert tx.write_one(b"x") is False  # full
    assert rig.head(S2M) == 8
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 8
    assert [bytes(p) for p in out] == [pkt(100 + i, i) for i in range(8)]
    # write_one of a chain goes through the burst path
    assert tx.write_one(pkt(5000)) is True
    out = []
    assert rx.read_burst(64, out) == 1 and bytes(out[0]) == pkt(5000)


def test_s2m_burst_keeps_order_and_contents(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    pkts = [pkt(n, n) for n in (1, 60, 1500, 2048, 17, 999)]
    assert tx.write_burst(pkts) == 6
    # small on average (4625 bytes in 6 slots): back to back, against the end of slot 5's
    # buffer (see tests/test_tx_layout.py)
    base = rig.bufs(S2M)[5] + rig.bsize - sum(map(len, pkts))
    for j, p in enumerate(pkts):
        assert rig.desc(S2M, j) == (0, 0, len(p), base + sum(map(len, pkts[:j])), 0)
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 6
    assert [bytes(p) for p in out] == pkts
    assert rx.stats.bytes == sum(map(len, pkts)) == tx.stats.bytes


def test_s2m_write_burst_start_argument(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    pkts = [b"a", b"b", b"c", b"d"]
    assert tx.write_burst(pkts, 2) == 2
    out: list[bytes] = []
    rx.read_burst(8, out)
    assert [bytes(p) for p in out] == [b"c", b"d"]
    assert tx.write_burst(pkts, 4) == 0


def test_read_burst_respects_max_packets(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    assert tx.write_burst([bytes([i]) * 3 for i in range(5)]) == 5
    out: list[bytes] = []
    assert rx.read_burst(2, out) == 2
    assert rig.tail(S2M) == 2 and rx.available() == 3
    assert rx.read_burst(2, out) == 2
    assert rx.read_burst(2, out) == 1
    assert [bytes(p) for p in out] == [bytes([i]) * 3 for i in range(5)]


def test_s2m_read_burst_zero_max_packets(rig: Rig) -> None:
    """max_packets = 0 reads nothing (and must not fail)."""
    tx, rx = rig.client_tx(), rig.server_rx()
    tx.write_burst([b"abc"])
    out: list[bytes] = []
    assert rx.read_burst(0, out) == 0
    assert out == [] and rig.tail(S2M) == 0 and rx.available() == 1


def test_m2s_read_burst_zero_max_packets(rig: Rig) -> None:
    rx, tx = rig.client_rx(), rig.server_tx()
    rx.refill()
    tx.write_burst([b"abc"])
    out: list[bytes] = []
    assert rx.read_burst(0, out) == 0
    assert out == [] and rx.available() == 1


def test_empty_packet_is_rejected(rig: Rig) -> None:
    tx, crx, stx = rig.client_tx(), rig.client_rx(), rig.server_tx()
    with pytest.raises(ValueError):
        tx.write_burst([b""])
    crx.refill()
    with pytest.raises(ValueError):
        stx.write_burst([b""])
    assert rig.head(S2M) == 0 and rig.tail(M2S) == 0


def test_m2s_single_packet(rig: Rig) -> None:
    crx, stx = rig.client_rx(), rig.server_tx()
    assert stx.free_slots() == 0
    assert stx.write_burst([b"nothing posted"]) == 0
    assert crx.refill() == 8
    assert rig.head(M2S) == 8 and crx.refill() == 0
    for j in range(8):
        assert rig.desc(M2S, j) == (0, 0, 2048, rig.bufs(M2S)[j], 0)
    assert stx.free_slots() == 8
    assert stx.write_burst([b"world"]) == 1
    assert rig.tail(M2S) == 1
    # the server wrote flags and length only; region and offset are the client's
    assert rig.desc(M2S, 0) == (0, 0, 5, rig.bufs(M2S)[0], 0)
    assert crx.available() == 1
    out: list[bytes] = []
    assert crx.read_burst(64, out) == 1 and [bytes(p) for p in out] == [b"world"]
    # the consumed slot is reposted at once
    assert rig.head(M2S) == 9 and stx.free_slots() == 8
    assert rig.desc(M2S, 0) == (0, 0, 2048, rig.bufs(M2S)[0], 0)
    assert (stx.stats.packets, stx.stats.bytes) == (1, 5) == (crx.stats.packets, crx.stats.bytes)


def test_m2s_write_one(rig: Rig) -> None:
    crx, stx = rig.client_rx(), rig.server_tx()
    assert stx.write_one(b"x") is False
    crx.refill()
    for i in range(8):
        assert stx.write_one(pkt(10 + i, i)) is True
    assert stx.write_one(b"x") is False
    out: list[bytes] = []
    assert crx.read_burst(64, out) == 8
    assert [bytes(p) for p in out] == [pkt(10 + i, i) for i in range(8)]


def test_m2s_burst_and_refill_cycle(rig: Rig) -> None:
    crx, stx = rig.client_rx(), rig.server_tx()
    crx.refill()
    sent: list[bytes] = []
    got: list[bytes] = []
    for round_ in range(40):
        burst = [pkt(1 + (round_ * 13 + k * 101) % 2048, round_ + k) for k in range(1 + round_ % 5)]
        write_all(stx, burst)
        sent += burst
        got += drain(crx)
    assert got == sent


# ---------------------------------------------------------------------------
# Chains
# ---------------------------------------------------------------------------


def test_s2m_chain_9000(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    data = pkt(9000, 3)
    assert tx.slots_for(9000) == 5
    assert tx.write_burst([data]) == 1
    assert rig.head(S2M) == 5
    offs = rig.bufs(S2M)
    assert [rig.desc(S2M, j) for j in range(5)] == [
        (DESC_FLAG_NEXT, 0, 2048, offs[0], 0), (DESC_FLAG_NEXT, 0, 2048, offs[1], 0),
        (DESC_FLAG_NEXT, 0, 2048, offs[2], 0), (DESC_FLAG_NEXT, 0, 2048, offs[3], 0),
        (0, 0, 9000 - 4 * 2048, offs[4], 0)]
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 1
    assert bytes(out[0]) == data
    assert rig.tail(S2M) == 5
    assert rx.stats.packets == 1 and rx.stats.bytes == 9000


def test_m2s_chain_9000(rig: Rig) -> None:
    crx, stx = rig.client_rx(), rig.server_tx()
    crx.refill()
    data = pkt(9000, 5)
    assert stx.write_burst([data]) == 1
    assert rig.tail(M2S) == 5
    offs = rig.bufs(M2S)
    assert [rig.desc(M2S, j)[:2] for j in range(5)] == [(1, 0)] * 4 + [(0, 0)]
    assert [rig.desc(M2S, j)[2] for j in range(5)] == [2048] * 4 + [808]
    assert [rig.desc(M2S, j)[3] for j in range(5)] == offs[:5]
    out: list[bytes] = []
    assert crx.read_burst(64, out) == 1 and bytes(out[0]) == data


def test_chains_mixed_with_single_buffers(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    pkts = [b"a" * 10, pkt(4097, 1), b"b" * 2048, pkt(2049, 2)]  # 1 + 3 + 1 + 2 = 7 slots
    assert tx.write_burst(pkts) == 4
    assert rig.head(S2M) == 7
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 4
    assert [bytes(p) for p in out] == pkts


@pytest.mark.parametrize("length", [8 * 2048, 8 * 2048 - 1, 7 * 2048 + 1])
def test_s2m_chain_exactly_fills_ring(rig: Rig, length: int) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    data = pkt(length, 9)
    assert tx.write_burst([data]) == 1
    assert tx.free_slots() == 0 and rig.head(S2M) == 8
    assert tx.write_burst([b"x"]) == 0
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 1 and bytes(out[0]) == data
    assert tx.free_slots() == 8


def test_m2s_chain_exactly_fills_ring(rig: Rig) -> None:
    crx, stx = rig.client_rx(), rig.server_tx()
    crx.refill()
    data = pkt(8 * 2048, 4)
    assert stx.write_burst([data]) == 1
    assert stx.free_slots() == 0
    out: list[bytes] = []
    assert crx.read_burst(64, out) == 1 and bytes(out[0]) == data


def test_s2m_chain_larger_than_ring(rig: Rig) -> None:
    tx = rig.client_tx()
    with pytest.raises(PacketTooLarge):
        tx.write_burst([pkt(8 * 2048 + 1)])
    assert rig.head(S2M) == 0 and tx.free_slots() == 8
    assert issubclass(PacketTooLarge, ValueError)


def test_m2s_chain_larger_than_ring(rig: Rig) -> None:
    crx, stx = rig.client_rx(), rig.server_tx()
    crx.refill()
    with pytest.raises(PacketTooLarge):
        stx.write_burst([pkt(8 * 2048 + 1)])
    assert rig.tail(M2S) == 0 and stx.free_slots() == 8


def test_m2s_chain_over_small_posted_capacities(rig: Rig) -> None:
    """The server takes each posted length as that buffer's capacity (§7.3)."""
    crx, stx = rig.client_rx(), rig.server_tx()
    crx.refill()
    offs = rig.bufs(M2S)
    # the client (by hand) posts 100-byte capacities in slots 0..2
    for j in range(3):
        rig.put_desc(M2S, j, 0, 0, 100, offs[j])
    data = pkt(250, 1)
    assert stx.write_burst([data]) == 1
    assert [rig.desc(M2S, j)[:3] for j in range(3)] == [(1, 0, 100), (1, 0, 100), (0, 0, 50)]
    assert rig.mm[offs[0]:offs[0] + 100] == data[:100]
    assert rig.mm[offs[2]:offs[2] + 50] == data[200:]
    # nothing was written beyond a posted capacity
    assert rig.mm[offs[0] + 100:offs[0] + 2048] == bytes(1948)


# ---------------------------------------------------------------------------
# Full ring: nothing is published partly
# ---------------------------------------------------------------------------


def test_s2m_full_ring(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    assert tx.write_burst([bytes([i]) for i in range(10)]) == 8
    assert tx.free_slots() == 0
    assert tx.write_burst([b"more"]) == 0
    assert rig.head(S2M) == 8
    out: list[bytes] = []
    assert rx.read_burst(3, out) == 3
    assert tx.free_slots() == 3
    # a chain of 4 slots does not fit 3 free slots: nothing moves
    before = [rig.desc(S2M, j) for j in range(8)]
    assert tx.write_burst([pkt(4 * 2048)]) == 0
    assert rig.head(S2M) == 8
    assert tx.write_burst([b"z", pkt(3 * 2048)]) == 1  # the small one fits, the chain does not
    assert rig.head(S2M) == 9
    assert [rig.desc(S2M, j) for j in range(1, 8)] == before[1:]
    assert tx.stats.packets == 9


def test_s2m_full_ring_consumer_side(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    tx.write_burst([pkt(3000)] * 4)  # 4 chains of 2 slots: a full ring
    assert rx.available() == 8
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 4 and all(bytes(p) == pkt(3000) for p in out)


def test_m2s_full_ring(rig: Rig) -> None:
    crx, stx = rig.client_rx(), rig.server_tx()
    crx.refill()
    assert stx.write_burst([bytes([i]) for i in range(12)]) == 8
    assert stx.write_burst([b"x"]) == 0 and rig.tail(M2S) == 8
    out: list[bytes] = []
    assert crx.read_burst(2, out) == 2  # two slots reposted
    assert stx.free_slots() == 2
    # a 3-slot chain does not fit the 2 posted buffers: tail does not move
    assert stx.write_burst([pkt(3 * 2048)]) == 0
    assert rig.tail(M2S) == 8
    assert stx.write_burst([pkt(2 * 2048)]) == 1
    assert rig.tail(M2S) == 10


# ---------------------------------------------------------------------------
# A packet that can never fit: PacketTooLarge at once, full ring or not (issue 9, item 10)
# ---------------------------------------------------------------------------

HUGE = 8 * 2048 + 1  # one byte more than the 8-slot ring of 2048-byte buffers holds


def _fill_s2m(tx: S2MProducer) -> None:
    assert tx.write_burst([b"f"] * 8) == 8 and tx.free_slots() == 0


def _fill_m2s(stx: M2SProducer) -> None:
    assert stx.write_burst([b"f"] * 8) == 8 and stx.free_slots() == 0


@pytest.mark.parametrize("full", [False, True], ids=["empty", "full"])
def test_s2m_impossible_packet_raises_at_once(rig: Rig, full: bool) -> None:
    tx = rig.client_tx()
    if full:
        _fill_s2m(tx)
    head, desc = rig.head(S2M), [rig.desc(S2M, j) for j in range(8)]
    writes: tuple[Callable[[], object], ...] = (
        lambda: tx.write_burst([pkt(HUGE)]), lambda: tx.write_one(pkt(HUGE)),
        lambda: tx.write_burst([b"x", pkt(HUGE)]),
        lambda: tx.write_burst([b"a", b"b", pkt(HUGE), b"c"], 1),
        lambda: tx.write_burst([pkt(3000), pkt(HUGE)]))
    for write in writes:
        with pytest.raises(PacketTooLarge, match="needs 9 buffers"):
            write()
    with pytest.raises(ValueError, match="empty"):  # an empty one never fits either
        tx.write_burst([b"x", b""])
    # nothing was published, no descriptor changed
    assert rig.head(S2M) == head and [rig.desc(S2M, j) for j in range(8)] == desc
    assert tx.stats.packets == (8 if full else 0)
    assert tx.write_burst([pkt(8 * 2048)]) == (0 if full else 1)  # the largest possible fits


def test_s2m_impossible_packet_behind_what_fits_publishes_nothing(rig: Rig) -> None:
    """The burst is longer than the free room and its tail can never fit: refused before
    the packets that would fit are published (a write that raises published nothing)."""
    tx = rig.client_tx()
    with pytest.raises(PacketTooLarge):
        tx.write_burst([b"s"] * 9 + [pkt(HUGE)])  # 8 fit now, the 10th never
    assert rig.head(S2M) == 0 and tx.free_slots() == 8 and tx.stats.packets == 0


def test_s2m_packet_above_max_packet_size(request: pytest.FixtureRequest) -> None:
    r = make_rig(request, log2=10)  # 1024 x 2048 bytes: the ring could hold it
    tx = r.client_tx()
    with pytest.raises(PacketTooLarge, match="MAX_PACKET_SIZE"):
        tx.write_burst([bytes((1 << 20) + 1)])
    assert r.head(S2M) == 0


@pytest.mark.parametrize("full", [False, True], ids=["empty", "full"])
def test_m2s_impossible_packet_raises_at_once(rig: Rig, full: bool) -> None:
    crx, stx = rig.client_rx(), rig.server_tx()
    crx.refill()
    if full:
        _fill_m2s(stx)
    tail = rig.tail(M2S)
    swrites: tuple[Callable[[], object], ...] = (
        lambda: stx.write_burst([pkt(HUGE)]), lambda: stx.write_one(pkt(HUGE)),
        lambda: stx.write_burst([b"x", pkt(HUGE)]),
        lambda: stx.write_burst([pkt(3000), b"y", pkt(HUGE)]))
    for write in swrites:
        with pytest.raises(PacketTooLarge):
            write()
    assert rig.tail(M2S) == tail and stx.stats.packets == (8 if full else 0)


def test_m2s_impossible_packet_before_any_buffer_is_posted(rig: Rig) -> None:
    """A master knows the client's buffer size from the descriptors it initialised
    (§6.5) before the client posts anything."""
    stx = rig.server_tx()
    assert stx.free_slots() == 0
    with pytest.raises(PacketTooLarge, match="needs 9 buffers of 2048"):
        stx.write_burst([pkt(HUGE)])
    assert stx.write_burst([pkt(8 * 2048)]) == 0  # possible: it waits for buffers


def test_m2s_posted_buffers_smaller_than_announced_short_count(rig: Rig) -> None:
    """The client posts 100-byte buffers although it announced 2048: a chain that cannot
    fit the whole ring is found only while writing.  What was published before it is
    reported (a short count); a call starting at that packet raises once the whole ring
    is posted (before, the buffers still to come might be larger)."""
    crx, stx = rig.client_rx(), rig.server_tx()
    crx.refill()
    offs = rig.bufs(M2S)
    for j in range(8):
        rig.put_desc(M2S, j, 0, 0, 100, offs[j])
    burst = [b"a", b"b", pkt(900)]  # 900 bytes need 9 buffers of 100: never
    assert stx.write_burst(burst) == 2
    assert rig.tail(M2S) == 2
    assert stx.write_burst(burst, 2) == 0  # 6 posted: wait for the rest
    out: list[bytes] = []
    assert crx.read_burst(8, out) == 2 and [bytes(p) for p in out] == [b"a", b"b"]
    for j in range(8):  # the client reposted 2048-byte buffers; make them small again
        rig.put_desc(M2S, j, 0, 0, 100, offs[j])
    with pytest.raises(PacketTooLarge, match="whole ring"):
        stx.write_burst(burst, 2)
    assert rig.tail(M2S) == 2


# ---------------------------------------------------------------------------
# u16 index wrap-around
# ---------------------------------------------------------------------------


def test_s2m_cycles_across_u16_wrap(request: pytest.FixtureRequest) -> None:
    """Client and server rings cycle through more than 65536 slots, chains straddling the wrap."""
    r = make_rig(request, log2=4, bsize=64)
    tx, rx = r.client_tx(), r.server_rx()
    sizes = [1, 64, 65, 200, 1024, 130, 7]
    sent = got_n = 0
    i = 0
    crossed = False
    last_head = 0
    while sent < 70000:
        burst = [pkt(sizes[(i + k) % len(sizes)], i + k) for k in range(3)]
        i += 3
        n = tx.write_burst(burst)
        assert n >= 1
        assert drain(rx) == burst[:n]
        got_n += n
        sent += sum(tx.slots_for(len(b)) for b in burst[:n])
        h = r.head(S2M)
        crossed |= h < last_head
        last_head = h
        assert r.tail(S2M) == h
    assert crossed
    assert tx.stats.packets == rx.stats.packets == got_n


def test_m2s_cycles_across_u16_wrap(request: pytest.FixtureRequest) -> None:
    r = make_rig(request, log2=4, bsize=64)
    crx, stx = r.client_rx(), r.server_tx()
    crx.refill()
    crossed = False
    last_tail = 0
    i = 0
    slots = 0
    while slots < 70000:
        burst = [pkt((i * 37) % 300 + 1, i), pkt(64, i + 1)]
        i += 1
        write_all(stx, burst)
        slots += -(-len(burst[0]) // 64) + 1
        assert drain(crx) == burst
        t = r.tail(M2S)
        crossed |= t < last_tail
        last_tail = t
        assert (r.head(M2S) - t) & 0xFFFF == 16
    assert crossed


@pytest.mark.parametrize("start", [0xFFFF, 0xFFFE, 0xFFFB, 0xFFF8])
def test_s2m_consumer_starting_near_wrap(rig: Rig, start: int) -> None:
    rig.set_head(S2M, start)
    rig.set_tail(S2M, start)
    rx = rig.server_rx()
    assert rx.available() == 0
    pkts = [pkt(10 + k, k) for k in range(6)]
    h = rig.publish_s2m(start, pkts)
    assert h == (start + 6) & 0xFFFF
    assert rx.available() == 6
    assert drain(rx) == pkts
    assert rig.tail(S2M) == h
    assert rx.stats.packets == 6


def test_s2m_consumer_chain_across_wrap(rig: Rig) -> None:
    start = 0xFFFE
    rig.set_head(S2M, start)
    rig.set_tail(S2M, start)
    rx = rig.server_rx()
    offs = rig.bufs(S2M)
    data = pkt(300, 1)
    for k, (a, b) in enumerate([(0, 100), (100, 200), (200, 300)]):
        c = start + k
        s = c & 7
        rig.fill(offs[s], data[a:b])
        rig.put_desc(S2M, s, DESC_FLAG_NEXT if k < 2 else 0, 0, b - a, offs[s])
    rig.set_head(S2M, start + 3)
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 1 and bytes(out[0]) == data
    assert rig.tail(S2M) == 1


@pytest.mark.parametrize("start", [0xFFFF, 0xFFFC])
def test_m2s_producer_starting_near_wrap(rig: Rig, start: int) -> None:
    # the client posted all 8 slots from counter `start`
    rig.set_tail(M2S, start)
    rig.set_head(M2S, start + 8)
    tx = rig.server_tx()
    assert tx.free_slots() == 8
    write_all(tx, [b"p%d" % k for k in range(5)])
    assert rig.tail(M2S) == (start + 5) & 0xFFFF
    for k in range(5):
        s = (start + k) & 7
        assert rig.desc(M2S, s)[:3] == (0, 0, 2)
        o = rig.bufs(M2S)[s]
        assert rig.mm[o:o + 2] == b"p%d" % k
    # a chain straddling the wrap
    assert tx.write_burst([pkt(3 * 2048)]) == 1
    assert rig.tail(M2S) == (start + 8) & 0xFFFF


def test_s2m_producer_burst_across_slot_wrap_in_one_call(rig: Rig) -> None:
    """write_burst publishes as many packets as fit, even across the end of the array."""
    tx, rx = rig.client_tx(), rig.server_rx()
    write_all(tx, [b"x"] * 6)
    assert len(drain(rx)) == 6
    assert tx.write_burst([b"p%d" % k for k in range(8)]) == 8  # slots 6, 7, 0, ..., 5
    assert drain(rx) == [b"p%d" % k for k in range(8)]


def test_m2s_producer_burst_across_slot_wrap_in_one_call(rig: Rig) -> None:
    """Same contract on the server side: all 5 posted buffers are filled by one call."""
    crx, stx = rig.client_rx(), rig.server_tx()
    crx.refill()
    write_all(stx, [b"x"] * 6)
    assert len(drain(crx)) == 6
    assert stx.free_slots() == 8
    assert stx.write_burst([b"p%d" % k for k in range(5)]) == 5  # slots 6, 7, 0, 1, 2
    assert drain(crx) == [b"p%d" % k for k in range(5)]


# ---------------------------------------------------------------------------
# Interrupt mask helpers (§7.8)
# ---------------------------------------------------------------------------


def test_interrupt_mask(rig: Rig) -> None:
    rx, tx = rig.server_rx(), rig.client_tx()
    assert rx.flags == 0 and tx.peer_wants_interrupt()
    rx.set_interrupt_mask(True)
    assert rig.ring_flags(S2M) == 1 and rx.flags == 1 and not tx.peer_wants_interrupt()
    rx.set_interrupt_mask(True)
    assert rig.ring_flags(S2M) == 1
    rx.set_interrupt_mask(False)
    assert rig.ring_flags(S2M) == 0 and tx.peer_wants_interrupt()
    # other bits are preserved, and only bit 0 counts
    rig.set_ring_flags(S2M, 0x8002)
    assert tx.peer_wants_interrupt()
    rx.set_interrupt_mask(True)
    assert rig.ring_flags(S2M) == 0x8003
    rx.set_interrupt_mask(False)
    assert rig.ring_flags(S2M) == 0x8002
    # M2S: the client is the consumer
    crx, stx = rig.client_rx(), rig.server_tx()
    crx.set_interrupt_mask(True)
    assert rig.ring_flags(M2S) == 1 and not stx.peer_wants_interrupt()
    crx.set_interrupt_mask(False)
    assert stx.peer_wants_interrupt()
    # the mask does not touch the indices
    assert rig.head(S2M) == rig.tail(S2M) == 0


def test_header_accessors_and_cookie(rig: Rig) -> None:
    rx = rig.server_rx()
    assert rx.cookie_ok()
    rig.set_head(S2M, 3)
    rig.set_tail(S2M, 2)
    assert (rx.head, rx.tail) == (3, 2)
    struct.pack_into("<I", rig.mm, rig.off(S2M), COOKIE ^ 1)
    assert not rx.cookie_ok()


def test_cache_line_128_layout(request: pytest.FixtureRequest) -> None:
    r = make_rig(request, log2=3, bsize=512, cache_line=128)
    tx, rx = r.client_tx(), r.server_rx()
    assert tx.write_burst([b"abc", pkt(1000)]) == 2
    assert r.head(S2M) == 3
    assert struct.unpack_from("<H", r.mm, r.off(S2M) + 128)[0] == 0  # tail at C = 128
    assert DESC.unpack_from(r.mm, r.off(S2M) + 256)[2] == 3  # descriptors at 2C
    out: list[bytes] = []
    assert rx.read_burst(8, out) == 2
    assert struct.unpack_from("<H", r.mm, r.off(S2M) + 128)[0] == 3
    assert struct.unpack_from("<H", r.mm, r.off(S2M) + 64)[0] == 0  # not at 64


# ---------------------------------------------------------------------------
# Bad descriptors from a hostile peer: the packet is dropped and counted
# ---------------------------------------------------------------------------


def test_s2m_bad_descriptors_dropped_rest_delivered(rig: Rig) -> None:
    rx = rig.server_rx()
    size = rig.region.size
    pkts = [b"good0", b"badregion", b"pastend", b"zero", b"overflow", b"good5", b"exactend",
            b"good7"]
    bad = {
        1: {"region": 1},
        2: {"offset": size - 3},  # 7 bytes starting 3 bytes before the end
        3: {"length": 0},
        4: {"offset": 0xFFFFFFF0, "length": 0x20},  # wraps to 0x10 in u32 arithmetic
        6: {"offset": size - 8, "length": 8},  # ends exactly at the region end: valid
    }
    rig.fill(size - 8, b"exactend")
    rig.publish_s2m(0, pkts, bad=bad)
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 4
    assert [bytes(p) for p in out] == [b"good0", b"good5", b"exactend", b"good7"]
    assert rx.stats.bad_descriptors == 4 and rx.stats.drops == 4
    assert rx.stats.packets == 4
    assert rig.tail(S2M) == 8  # the slots of dropped packets are consumed too


@pytest.mark.parametrize("field, value", [("region", 0xFFFF), ("length", 0), ("offset", 0xFFFFFFFF),
                                          ("length", 0xFFFFFFFF)])
def test_s2m_bad_segment_drops_whole_chain(rig: Rig, field: str, value: int) -> None:
    rx = rig.server_rx()
    offs = rig.bufs(S2M)
    data = pkt(3000)
    rig.fill(offs[0], data[:2048])
    rig.fill(offs[1], data[2048:])
    rig.put_desc(S2M, 0, DESC_FLAG_NEXT, 0, 2048, offs[0])
    seg = {"flags": 0, "region": 0, "length": 952, "offset": offs[1]}
    seg[field] = value
    rig.put_desc(S2M, 1, **seg)
    rig.fill(offs[2], b"after")
    rig.put_desc(S2M, 2, 0, 0, 5, offs[2])
    rig.set_head(S2M, 3)
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 1
    assert [bytes(p) for p in out] == [b"after"]
    assert rx.stats.bad_descriptors == 1 and rx.stats.drops == 1
    assert rig.tail(S2M) == 3


def test_s2m_unknown_flag_bits_ignored(rig: Rig) -> None:
    rx = rig.server_rx()
    rig.publish_s2m(0, [b"one", b"two"], bad={0: {"flags": 0xFFFE}, 1: {"flags": 0x8000}})
    out: list[bytes] = []
    assert rx.read_burst(8, out) == 2
    assert [bytes(p) for p in out] == [b"one", b"two"]


def test_s2m_buffers_in_another_region(request: pytest.FixtureRequest) -> None:
    """Descriptors may point into any mapped region (zero-copy clients, §8)."""
    r = make_rig(request, log2=3, bsize=256)
    extra = Region.create(4096)
    request.addfinalizer(extra.close)
    regions = [r.region, extra]
    rx = S2MConsumer(regions, 0, r.off(S2M), 3, r.rl)
    r.rings.append(rx)
    extra.mm[100:105] = b"extra"
    r.fill(r.bufs(S2M)[1], b"local")
    r.put_desc(S2M, 0, 0, 1, 5, 100)
    r.put_desc(S2M, 1, 0, 0, 5, r.bufs(S2M)[1])
    r.put_desc(S2M, 2, 0, 1, 10, 4090)  # past the end of region 1
    r.put_desc(S2M, 3, 0, 2, 5, 0)  # no region 2
    r.set_head(S2M, 4)
    out: list[bytes] = []
    assert rx.read_burst(8, out) == 2
    assert [bytes(p) for p in out] == [b"extra", b"local"]
    assert rx.stats.bad_descriptors == 2


def _server_fill(rig: Rig, slot_values: list[tuple[int, int]], tail: int) -> None:
    """A hostile server writes (flags, length) into posted M2S slots and moves tail."""
    for j, (flags, length) in enumerate(slot_values):
        off = rig.desc_at(M2S, j)
        struct.pack_into("<H", rig.mm, off, flags)
        struct.pack_into("<I", rig.mm, off + 4, length)
    rig.set_tail(M2S, tail)


def test_m2s_length_above_posted_capacity_dropped(rig: Rig) -> None:
    crx = rig.client_rx()
    crx.refill()
    offs = rig.bufs(M2S)
    for j, d in enumerate([b"ok0", b"", b"", b"ok3"]):
        rig.fill(offs[j], d)
    _server_fill(rig, [(0, 3), (0, 2049), (0, 0), (0, 3)], 4)
    out: list[bytes] = []
    assert crx.read_burst(64, out) == 2
    assert [bytes(p) for p in out] == [b"ok0", b"ok3"]
    assert crx.stats.bad_descriptors == 2 and crx.stats.drops == 2
    assert crx.available() == 0
    assert rig.head(M2S) == 12  # all four slots reposted


def test_m2s_length_above_capacity_inside_chain(rig: Rig) -> None:
    crx = rig.client_rx()
    crx.refill()
    offs = rig.bufs(M2S)
    rig.fill(offs[2], b"next")
    _server_fill(rig, [(1, 2048), (0, 0xFFFFFFFF), (0, 4)], 3)
    out: list[bytes] = []
    assert crx.read_burst(64, out) == 1 and [bytes(p) for p in out] == [b"next"]
    assert crx.stats.bad_descriptors == 1


def test_m2s_client_ignores_region_and_offset_written_by_server(rig: Rig) -> None:
    """§12.7: the client reads its own shadow, never the peer's region/offset."""
    crx = rig.client_rx()
    crx.refill()
    offs = rig.bufs(M2S)
    rig.fill(offs[0], b"mine")
    rig.fill(0, b"EVIL")  # what the hostile offset would point to (the ring header)
    rig.put_desc(M2S, 0, 0, 9, 4, 0)
    rig.set_tail(M2S, 1)
    out: list[bytes] = []
    assert crx.read_burst(8, out) == 1 and bytes(out[0]) == b"mine"
    assert crx.stats.bad_descriptors == 0
    # and the repost restores the slot's own buffer
    assert rig.desc(M2S, 0) == (0, 0, 2048, offs[0], 0)


def test_window_check_agrees_with_the_plain_one() -> None:
    """The fast paths' length check (count, then sorted) says exactly what ``all(0 < m <=
    limit)`` says, and gives the longest length and the total, for equal, rising, mixed and
    invalid windows, small ints (cached) and large ones alike."""
    import random
    rnd = random.Random(14)
    windows = [[64] * 256, [1500] * 256, [0] * 3, [2048] * 5, [2049] * 5, [1],
               list(range(1, 257)), list(range(256, 0, -1)), [64] * 255 + [0],
               [0] + [64] * 255, [64] * 128 + [2049] + [64] * 127]
    windows += [[rnd.choice((0, 1, 60, 64, 1500, 2048, 2049, 65535, 70000))
                 for _ in range(rnd.randint(1, 300))] for _ in range(300)]
    for lens in windows:
        for limit in (2048, 65535):
            plain = all(0 < m <= limit for m in lens)
            assert _window(lens, limit) == ((max(lens), sum(lens)) if plain else None), lens


def test_m2s_repost_of_a_run_restores_what_the_server_changed(rig: Rig) -> None:
    """A repost of many slots at once (after a burst) rewrites every capacity and puts back
    flags, region and offset wherever the server left them changed: a chain's NEXT, and
    region and offset a server broke §7.3 with.  The data is read from the shadow."""
    crx = rig.client_rx()
    crx.refill()
    offs = rig.bufs(M2S)
    n = 8
    for i in range(n):
        rig.fill(offs[i], b"p%d" % i)
        rig.put_desc(M2S, i, 0, 0, 2, offs[i])
    rig.put_desc(M2S, 2, 0, 7, 2, offs[2])  # another region
    rig.put_desc(M2S, 5, 0, 0, 2, 0)  # another offset (the ring header)
    rig.put_desc(M2S, 6, DESC_FLAG_NEXT, 0, 2, offs[6])  # a chain of slots 6 and 7
    rig.set_tail(M2S, n)
    out: list[bytes] = []
    assert crx.read_burst(64, out) == n - 1
    assert [bytes(p) for p in out] == [b"p0", b"p1", b"p2", b"p3", b"p4", b"p5", b"p6p7"]
    assert crx.stats.bad_descriptors == 0
    assert rig.head(M2S) == rig.R + n  # all of them posted again, at once
    assert [rig.desc(M2S, i)[:4] for i in range(n)] == \
        [(0, 0, rig.bsize, offs[i]) for i in range(n)]


@pytest.mark.parametrize("region, offset, cap", [(3, 0, 2048), (0, 0xFFFFFFFF, 2048),
                                                 (0, 0, 0)])
def test_m2s_bad_posted_buffer_is_a_violation(rig: Rig, region: int, offset: int,
                                              cap: int) -> None:
    stx = rig.server_tx()
    rig.put_desc(M2S, 0, 0, region, cap, offset)
    rig.set_head(M2S, 1)
    with pytest.raises(ProtocolViolation):
        stx.write_burst([b"data"])
    assert rig.tail(M2S) == 0
    assert stx.stats.bad_descriptors == 1


def test_m2s_posted_buffer_clamped_to_region_end(rig: Rig) -> None:
    """A posted capacity that runs past the region is cut at the region's end."""
    stx = rig.server_tx()
    size = rig.region.size
    rig.put_desc(M2S, 0, 0, 0, 2048, size - 10)
    rig.put_desc(M2S, 1, 0, 0, 2048, rig.bufs(M2S)[1])
    rig.set_head(M2S, 2)
    data = pkt(30)
    assert stx.write_burst([data]) == 1
    assert rig.mm[size - 10:size] == data[:10]
    assert rig.desc(M2S, 0)[:3] == (1, 0, 10)
    assert rig.desc(M2S, 1)[:3] == (0, 0, 20)


# ---------------------------------------------------------------------------
# Corrupt indices: ProtocolViolation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("head", [9, 100, 0x8000, 0xFFFF])
def test_s2m_head_more_than_ring_ahead(rig: Rig, head: int) -> None:
    rx = rig.server_rx()
    rig.set_head(S2M, head)
    with pytest.raises(ProtocolViolation):
        rx.available()
    with pytest.raises(ProtocolViolation):
        rx.read_burst(8, [])
    assert rig.tail(S2M) == 0


@pytest.mark.parametrize("head", [9, 0x8000, 0xFFFF])
def test_m2s_head_more_than_ring_ahead(rig: Rig, head: int) -> None:
    stx = rig.server_tx()
    rig.set_head(M2S, head)
    with pytest.raises(ProtocolViolation):
        stx.free_slots()
    with pytest.raises(ProtocolViolation):
        stx.write_burst([b"x"])


@pytest.mark.parametrize("tail", [1, 5, 0x8000, 0xFFF0])
def test_s2m_tail_moving_outside_window(rig: Rig, tail: int) -> None:
    """The client published 3 packets (head 3): a tail outside [head-R, head] is corrupt."""
    tx = rig.client_tx()
    tx.write_burst([b"a", b"b", b"c"])
    rig.set_tail(S2M, 3 + tail if tail < 8 else tail)  # ahead of head, or far behind
    with pytest.raises(ProtocolViolation):
        tx.free_slots()
    with pytest.raises(ProtocolViolation):
        tx.write_burst([b"d"])
    assert rig.head(S2M) == 3


def test_s2m_tail_moving_backwards_within_window_is_tolerated(rig: Rig) -> None:
    """Within [head - R, head] a smaller tail just means fewer free slots."""
    tx = rig.client_tx()
    tx.write_burst([b"a"] * 5)
    rig.set_tail(S2M, 5)
    assert tx.free_slots() == 8
    rig.set_tail(S2M, 0xFFFF)  # head 5, tail -1: 6 in flight
    assert tx.free_slots() == 2


@pytest.mark.parametrize("tail", [3, 13, 0xFFFF, 0x8000])
def test_m2s_tail_past_posted_buffers(rig: Rig, tail: int) -> None:
    crx = rig.client_rx()
    assert crx.refill() == 8
    rig.set_tail(M2S, 4)
    assert len(drain(crx)) == 4
    # cons = 4, head = 12: valid tails are 4..12 (3 and 0xFFFF move backwards)
    assert rig.head(M2S) == 12
    rig.set_tail(M2S, tail)
    with pytest.raises(ProtocolViolation):
        crx.available()
    with pytest.raises(ProtocolViolation):
        crx.read_burst(8, [])


def test_m2s_tail_moving_backwards(rig: Rig) -> None:
    crx = rig.client_rx()
    crx.refill()
    rig.set_tail(M2S, 3)
    out: list[bytes] = []
    crx.read_burst(8, out)
    rig.set_tail(M2S, 2)
    with pytest.raises(ProtocolViolation):
        crx.read_burst(8, out)


def test_m2s_tail_moving_without_posted_buffers(rig: Rig) -> None:
    crx = rig.client_rx()  # nothing posted
    rig.set_tail(M2S, 1)
    with pytest.raises(ProtocolViolation):
        crx.available()


# ---------------------------------------------------------------------------
# Chains that do not end
# ---------------------------------------------------------------------------


def test_s2m_chain_never_ending_in_full_ring(rig: Rig) -> None:
    rx = rig.server_rx()
    offs = rig.bufs(S2M)
    for j in range(8):
        rig.put_desc(S2M, j, DESC_FLAG_NEXT, 0, 10, offs[j])
    rig.set_head(S2M, 8)
    with pytest.raises(ProtocolViolation):
        rx.read_burst(64, [])


def test_m2s_chain_never_ending_in_full_ring(rig: Rig) -> None:
    crx = rig.client_rx()
    crx.refill()
    _server_fill(rig, [(1, 10)] * 8, 8)
    with pytest.raises(ProtocolViolation):
        crx.read_burst(64, [])


def test_s2m_incomplete_chain_left_for_later(rig: Rig) -> None:
    rx = rig.server_rx()
    offs = rig.bufs(S2M)
    rig.fill(offs[0], b"first")
    rig.put_desc(S2M, 0, 0, 0, 5, offs[0])
    rig.fill(offs[1], b"AB")
    rig.put_desc(S2M, 1, DESC_FLAG_NEXT, 0, 2, offs[1])
    rig.set_head(S2M, 2)  # the chain's end is not published yet (n = 2 < R)
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 1 and [bytes(p) for p in out] == [b"first"]
    assert rig.tail(S2M) == 1  # stops before the chain
    assert rx.read_burst(64, out) == 0 and rig.tail(S2M) == 1
    rig.fill(offs[2], b"CD")
    rig.put_desc(S2M, 2, 0, 0, 2, offs[2])
    rig.set_head(S2M, 3)
    assert rx.read_burst(64, out) == 1 and bytes(out[1]) == b"ABCD"
    assert rig.tail(S2M) == 3
    assert rx.stats.drops == 0


def test_m2s_incomplete_chain_left_for_later(rig: Rig) -> None:
    crx = rig.client_rx()
    crx.refill()
    offs = rig.bufs(M2S)
    rig.fill(offs[0], b"AB")
    rig.fill(offs[1], b"CD")
    _server_fill(rig, [(1, 2)], 1)
    out: list[bytes] = []
    assert crx.read_burst(64, out) == 0 and crx.available() == 1
    assert rig.head(M2S) == 8  # nothing reposted
    _server_fill(rig, [(1, 2), (0, 2)], 2)
    assert crx.read_burst(64, out) == 1 and bytes(out[0]) == b"ABCD"


# ---------------------------------------------------------------------------
# Geometry checks used by the server at ADD_RING, initial index check at CONNECT
# ---------------------------------------------------------------------------


def test_check_ring_geometry(rig: Rig) -> None:
    size = rig.region.size
    lay = rig.rl
    assert check_ring_geometry(rig.regions, 0, 0, 3, lay) == (0, lay.ring_size(3))
    end = size - lay.ring_size(3)
    end -= end % 8
    assert check_ring_geometry(rig.regions, 0, end, 3, lay) == (end, end + lay.ring_size(3))
    for region, offset, log2, what in [(1, 0, 3, "unknown region"), (0, 4, 3, "misaligned"),
                                       (0, 0, 15, "above"), (0, end + 8, 3, "exceeds"),
                                       (0, 0xFFFFFFF8, 3, "exceeds")]:
        with pytest.raises(ProtocolViolation, match=what):
            check_ring_geometry(rig.regions, region, offset, log2, lay)


@pytest.mark.parametrize("head, tail, ok", [(0, 0, True), (8, 0, True), (9, 0, False),
                                            (3, 0xFFFC, True), (0, 1, False), (5, 5, True)])
def test_validate_initial_indices(rig: Rig, head: int, tail: int, ok: bool) -> None:
    rig.set_head(S2M, head)
    rig.set_tail(S2M, tail)
    rx = rig.server_rx()
    if ok:
        validate_initial_indices(rx)
    else:
        with pytest.raises(ProtocolViolation):
            validate_initial_indices(rx)


# ---------------------------------------------------------------------------
# Fast-path edges: the valid prefix of a window, multi-region windows (issue 14)
#
# The burst fast path takes the valid, unchained prefix of a window and leaves only what
# follows a chain or a bad descriptor to the per-descriptor path (then comes back).  Every
# case below must give exactly what the per-descriptor path gives: same packets in the same
# order, same drops and counters, same tail/head.
# ---------------------------------------------------------------------------

BAD_S2M = {
    "length0": {"length": 0},
    "region": {"region": 9},
    "past_end": {"offset": 0xFFFFFF00},
    "too_long": {"length": 65536},
}


@pytest.mark.parametrize("kind", sorted(BAD_S2M))
@pytest.mark.parametrize("at", [0, 1, 7, 15])
def test_s2m_valid_prefix_then_bad_descriptor(request: pytest.FixtureRequest, kind: str,
                                              at: int) -> None:
    r = make_rig(request, log2=4)
    rx = r.server_rx()
    pkts = [pkt(60 + i, i) for i in range(16)]
    r.publish_s2m(0, pkts, bad={at: BAD_S2M[kind]})
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 15
    assert [bytes(p) for p in out] == pkts[:at] + pkts[at + 1:]
    assert (rx.stats.packets, rx.stats.drops, rx.stats.bad_descriptors) == (15, 1, 1)
    assert rx.stats.bytes == sum(map(len, pkts)) - len(pkts[at])
    assert r.tail(S2M) == 16 and rx.available() == 0


@pytest.mark.parametrize("at", [0, 3, 13])
def test_s2m_valid_prefix_then_chain(request: pytest.FixtureRequest, at: int) -> None:
    r = make_rig(request, log2=4, bsize=256)
    tx, rx = r.client_tx(), r.server_rx()
    pkts = [pkt(50 + i, i) for i in range(14)]
    pkts[at] = pkt(600, 99)  # a 3-slot chain in the middle of single-slot packets
    write_all(tx, pkts)
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 14
    assert [bytes(p) for p in out] == pkts
    assert (rx.stats.packets, rx.stats.bytes, rx.stats.drops) == (14, sum(map(len, pkts)), 0)
    assert r.tail(S2M) == 16


def test_s2m_read_burst_max_packets_counts_across_the_slow_path(
        request: pytest.FixtureRequest) -> None:
    r = make_rig(request, log2=4, bsize=256)
    tx, rx = r.client_tx(), r.server_rx()
    pkts = [pkt(40, 0), pkt(41, 1), pkt(600, 2), pkt(42, 3), pkt(700, 4), pkt(43, 5),
            pkt(44, 6)]
    write_all(tx, pkts)
    got: list[bytes] = []
    for want in (3, 1, 2, 64):  # a prefix, a chain, a single, a chain, ... cut anywhere
        out: list[bytes] = []
        n = rx.read_burst(want, out)
        assert n == len(out) == min(want, len(pkts) - len(got))
        got += [bytes(p) for p in out]
    assert got == pkts and rx.available() == 0


def test_s2m_prefix_then_incomplete_chain_in_a_full_ring(request: pytest.FixtureRequest) -> None:
    """A full ring: 5 packets, then the first 3 slots of a chain.  The prefix is taken and
    the chain waits for the rest (it is shorter than the ring, so it may still end)."""
    r = make_rig(request, log2=3, bsize=256)
    rx = r.server_rx()
    offs = r.bufs(S2M)
    pkts = [pkt(30 + i, i) for i in range(5)]
    r.publish_s2m(0, pkts)
    chain = pkt(256 * 3 + 10, 7)
    for j in range(3):
        r.fill(offs[5 + j], chain[256 * j:256 * (j + 1)])
        r.put_desc(S2M, 5 + j, DESC_FLAG_NEXT, 0, 256, offs[5 + j])
    r.set_head(S2M, 8)
    out: list[bytes] = []
    assert rx.read_burst(64, out) == 5 and [bytes(p) for p in out] == pkts
    assert r.tail(S2M) == 5 and rx.available() == 3
    assert rx.read_burst(64, out) == 0  # the rest of the chain is not published yet
    r.fill(offs[0], chain[768:])
    r.put_desc(S2M, 0, 0, 0, 10, offs[0])  # slot 8 & 7: the last segment
    r.set_head(S2M, 9)
    out = []
    assert rx.read_burst(64, out) == 1 and bytes(out[0]) == chain
    assert r.tail(S2M) == 9


def test_s2m_chain_filling_the_whole_ring_is_still_a_violation(rig: Rig) -> None:
    rx = rig.server_rx()
    offs = rig.bufs(S2M)
    for j in range(8):
        rig.put_desc(S2M, j, DESC_FLAG_NEXT, 0, 64, offs[j])
    rig.set_head(S2M, 8)
    with pytest.raises(ProtocolViolation, match="chain longer than the ring"):
        rx.read_burst(64, [])
    assert rig.tail(S2M) == 0


def _multi_region_rig(request: pytest.FixtureRequest) -> tuple[Rig, list[Region], S2MConsumer]:
    r = make_rig(request, log2=4, bsize=256)
    extra = [Region.create(4096), Region.create(8192)]
    for e in extra:
        request.addfinalizer(e.close)
    regions = [r.region, *extra]
    rx = S2MConsumer(regions, 0, r.off(S2M), 4, r.rl)
    r.rings.append(rx)
    return r, regions, rx


def _spread(r: Rig, regions: list[Region], n: int) -> list[bytes]:
    """Slot j's packet lives in region j % 3 (a VPP zero-copy client: one region per pool)."""
    pkts = []
    for j in range(n):
        g = j % 3
        data = pkt(20 + j, j)
        off = r.bufs(S2M)[j] if g == 0 else 200 * j
        regions[g].mm[off:off + len(data)] = data
        r.put_desc(S2M, j, 0, g, len(data), off)
        pkts.append(data)
    r.set_head(S2M, n)
    return pkts


@pytest.mark.parametrize("zero_copy", [False, True])
def test_s2m_window_across_regions(request: pytest.FixtureRequest, zero_copy: bool) -> None:
    r, regions, rx = _multi_region_rig(request)
    pkts = _spread(r, regions, 16)
    out: list[Any] = []
    assert rx.read_burst(64, out, zero_copy=zero_copy) == 16
    assert [bytes(p) for p in out] == pkts
    assert all(isinstance(p, memoryview) for p in out) is zero_copy
    assert (rx.stats.packets, rx.stats.bytes, rx.stats.drops) == (16, sum(map(len, pkts)), 0)
    assert r.tail(S2M) == (0 if zero_copy else 16)
    for p in out:
        if isinstance(p, memoryview):
            p.release()
    rx.end_lease()
    assert r.tail(S2M) == 16


@pytest.mark.parametrize("bad", [{"region": 3}, {"region": 0xFFFF},
                                 {"region": 1, "offset": 4090},  # fits region 2, not 1
                                 {"region": 2, "offset": 8192 - 5, "length": 6},
                                 {"region": 1, "length": 0}])
@pytest.mark.parametrize("at", [0, 7, 15])
def test_s2m_window_across_regions_with_a_bad_descriptor(request: pytest.FixtureRequest,
                                                         bad: dict[str, int], at: int) -> None:
    r, regions, rx = _multi_region_rig(request)
    pkts = _spread(r, regions, 16)
    f, g, length, off, _m = r.desc(S2M, at)
    fields = {"flags": f, "region": g, "length": length, "offset": off, **bad}
    r.put_desc(S2M, at, **fields)
    out: list[Any] = []
    assert rx.read_burst(64, out) == 15
    assert [bytes(p) for p in out] == pkts[:at] + pkts[at + 1:]
    assert (rx.stats.bad_descriptors, rx.stats.drops, rx.stats.packets) == (1, 1, 15)
    assert r.tail(S2M) == 16


def test_s2m_window_across_regions_with_a_chain(request: pytest.FixtureRequest) -> None:
    """Segments of a chain may lie in different regions (§7.4)."""
    r, regions, rx = _multi_region_rig(request)
    pkts = _spread(r, regions, 16)
    r.put_desc(S2M, 4, DESC_FLAG_NEXT, *r.desc(S2M, 4)[1:4])  # slots 4 and 5: one packet
    out: list[Any] = []
    assert rx.read_burst(64, out) == 15
    want = [*pkts[:4], pkts[4] + pkts[5], *pkts[6:]]
    assert [bytes(p) for p in out] == want


@pytest.mark.parametrize("at", [0, 5, 15])
def test_m2s_valid_prefix_then_bad_and_chain(request: pytest.FixtureRequest, at: int) -> None:
    r = make_rig(request, log2=4, bsize=256)
    crx = r.client_rx()
    crx.refill()
    offs = r.bufs(M2S)
    vals = []
    for j in range(16):
        r.fill(offs[j], pkt(30 + j, j))
        vals.append((0, 30 + j))
    vals[at] = (0, 257)  # above the posted capacity: dropped
    _server_fill(r, vals, 16)
    out: list[bytes] = []
    assert crx.read_burst(64, out) == 15
    assert [bytes(p) for p in out] == [pkt(30 + j, j) for j in range(16) if j != at]
    assert (crx.stats.packets, crx.stats.drops, crx.stats.bad_descriptors) == (15, 1, 1)
    assert r.head(M2S) == 32  # drained: everything reposted
    # now a chain after a prefix
    stx = r.server_tx()
    pkts = [pkt(40 + i, i) for i in range(12)]
    pkts[at % 12] = pkt(700, 5)  # 3 slots
    write_all(stx, pkts)
    out = []
    assert crx.read_burst(64, out) == 12 and [bytes(p) for p in out] == pkts


@pytest.mark.parametrize("pattern", ["alternating", "mostly-chains", "one-chain"])
@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_mixed_windows_against_chunked_reads(request: pytest.FixtureRequest, pattern: str,
                                             direction: str) -> None:
    """Long windows of chains and single-slot packets, read with many ``max_packets``:
    everything arrives, in order, whatever mix of fast and slow paths reads it."""
    r = make_rig(request, log2=7, bsize=128)
    if direction == "s2m":
        tx: S2MProducer | M2SProducer = r.client_tx()
        rx: S2MConsumer | M2SConsumer = r.server_rx()
    else:
        crx = r.client_rx()
        crx.refill()
        tx, rx = r.server_tx(), crx

    def size(i: int) -> int:
        if pattern == "alternating":
            return 300 if i % 2 else 60
        if pattern == "mostly-chains":
            return 60 if i % 7 == 3 else 129 + (i * 31) % 400
        return 500 if i == 40 else 64

    sent: list[bytes] = []
    got: list[bytes] = []
    i = 0
    for rnd in range(12):
        burst = [pkt(size(i + k), i + k) for k in range(20 + rnd * 3)]
        i += len(burst)
        done = 0
        while done < len(burst):  # as much as fits, then reads of several sizes
            done += tx.write_burst(burst, done)
            for want in (1, 7, 256):
                out: list[bytes] = []
                rx.read_burst(want, out)
                got += [bytes(p) for p in out]
        sent += burst
        got += drain(rx)
    assert got == sent
    assert rx.stats.packets == len(sent) and rx.stats.drops == 0
    assert rx.stats.bytes == sum(map(len, sent))


@pytest.mark.parametrize("direction", ["s2m", "m2s"])
def test_read_into_takes_one_valid_packet_or_nothing(request: pytest.FixtureRequest,
                                                     direction: str) -> None:
    """``read_into`` copies the one packet ready into the buffer, or returns 0 (empty) or -1
    (chained, invalid, longer than the buffer, or more than one slot ready) having taken
    nothing at all."""
    r = make_rig(request, log2=3, bsize=256)
    if direction == "s2m":
        tx: S2MProducer | M2SProducer = r.client_tx()
        rx: S2MConsumer | M2SConsumer = r.server_rx()
    else:
        crx = r.client_rx()
        crx.refill()
        tx, rx = r.server_tx(), crx
    buf = memoryview(bytearray(300))
    assert rx.read_into(buf) == 0
    write_all(tx, [b"hello"])
    assert rx.read_into(buf[:4]) == -1  # longer than the buffer
    assert rx.stats.packets == 0 and rx.available() == 1
    assert rx.read_into(buf) == 5 and bytes(buf[:5]) == b"hello"
    write_all(tx, [pkt(200)])
    assert rx.read_into(buf) == 200 and bytes(buf[:200]) == pkt(200)
    assert (rx.stats.packets, rx.stats.bytes) == (2, 205)
    write_all(tx, [pkt(600, 1)])
    assert rx.read_into(buf) == -1  # a chain: read_burst reassembles it
    assert rx.available() == 3 and rx.stats.packets == 2
    out: list[Any] = []
    assert rx.read_burst(1, out) == 1 and bytes(out[0]) == pkt(600, 1)
    write_all(tx, [b"one", b"two"])
    assert rx.read_into(buf) == -1  # two ready: a burst read is cheaper
    assert rx.available() == 2 and rx.stats.packets == 3
    assert rx.read_burst(1, out) == 1 and bytes(out[1]) == b"one"
    assert rx.read_into(buf) == 3 and bytes(buf[:3]) == b"two"
    assert rx.available() == 0 and rx.stats.packets == 5 and rx.stats.drops == 0
    if direction == "s2m":
        assert r.tail(S2M) == 7
        r.publish_s2m(7, [b"bad"], bad={0: {"length": 0}})
        assert rx.read_into(buf) == -1 and rx.stats.drops == 0 and r.tail(S2M) == 7
        r.set_head(S2M, 7 + 9)
        with pytest.raises(ProtocolViolation):
            rx.read_into(buf)
    else:
        assert r.head(M2S) == 8 + 7  # drained: every consumed slot is posted again
        r.set_tail(M2S, 7 + 9)
        with pytest.raises(ProtocolViolation):
            rx.read_into(buf)


def test_m2s_one_packet_read_reposts_its_slot_and_falls_back_when_it_must(
        request: pytest.FixtureRequest) -> None:
    """``read_burst`` with exactly one slot ready (the ping-pong case) takes it on a path of
    its own: the packet, the counters and the repost must be what the burst path gives.  A
    chained, zero-length or too-long descriptor, a zero-copy read and a lease in progress go
    the general way; a tail past the posted buffers is still a violation."""
    r = make_rig(request, log2=3, bsize=256)
    crx, stx = r.client_rx(), r.server_tx()
    crx.refill()
    offs = r.bufs(M2S)
    out: list[Any] = []
    for i in range(20):  # round and round the 8-slot ring, one packet at a time
        p = pkt(1 + i * 13 % 256, i)
        assert stx.write_burst([p]) == 1
        assert crx.read_burst(256, out) == 1 and bytes(out[-1]) == p
        # drained: the slot just read is posted again, whole, and head runs a ring ahead
        assert r.head(M2S) == (8 + i + 1) & 0xFFFF
        s = i & 7
        assert r.desc(M2S, s)[:4] == (0, 0, 256, offs[s])
    assert crx.stats.packets == 20 and crx.stats.bad_descriptors == 0
    assert crx.stats.bytes == sum(1 + i * 13 % 256 for i in range(20))
    # the server left flags, region and offset changed on the slot it filled: put back
    s = 20 & 7
    r.fill(offs[s], b"abc")
    r.put_desc(M2S, s, 0, 5, 3, 0)
    r.set_tail(M2S, 21)
    buf = memoryview(bytearray(16))
    assert crx.read_into(buf) == -1 and crx.available() == 1  # read_burst puts it back
    assert crx.read_burst(1, out) == 1 and bytes(out[-1]) == b"abc"  # read from the shadow
    assert r.desc(M2S, s)[:4] == (0, 0, 256, offs[s])
    # region 0 but another offset (the ring header): the one-packet path reads the shadow and
    # its repost puts the offset back, for read_burst and read_into alike
    for k, read in enumerate(("burst", "into")):
        s = (21 + k) & 7
        r.fill(offs[s], b"xyz")
        r.put_desc(M2S, s, 0, 0, 3, 0)
        r.set_tail(M2S, 22 + k)
        if read == "burst":
            assert crx.read_burst(1, out) == 1 and bytes(out[-1]) == b"xyz"
        else:
            assert crx.read_into(buf) == 3 and bytes(buf[:3]) == b"xyz"
        assert r.desc(M2S, s)[:4] == (0, 0, 256, offs[s])
    # a zero-length descriptor alone: dropped and counted by the general path, slot reposted
    _bad_one(r, 23, 0, 0)
    assert crx.read_burst(8, out) == 0
    assert crx.stats.bad_descriptors == 1 and crx.stats.drops == 1 and r.head(M2S) == 8 + 24
    # longer than the posted capacity: the same
    _bad_one(r, 24, 0, 257)
    assert crx.read_burst(8, out) == 0 and crx.stats.bad_descriptors == 2
    # one slot with NEXT and nothing after it: an incomplete chain waits, nothing taken
    _bad_one(r, 25, DESC_FLAG_NEXT, 10)
    assert crx.read_burst(8, out) == 0 and crx.available() == 1
    assert crx.stats.packets == 23
    r.put_desc(M2S, 26, 0, 0, 4, offs[26 & 7])
    r.fill(offs[25 & 7], b"0123456789")
    r.fill(offs[26 & 7], b"abcd")
    r.set_tail(M2S, 27)
    assert crx.read_burst(8, out) == 1 and bytes(out[-1]) == b"0123456789abcd"
    stx = r.server_tx()  # a server that starts from the tail the raw writes above left
    # zero copy: a view, and the slot stays ours until the lease ends
    assert stx.write_burst([b"lease"]) == 1
    views: list[Any] = []
    assert crx.read_burst(8, views, zero_copy=True) == 1 and bytes(views[0]) == b"lease"
    head = r.head(M2S)
    assert stx.write_burst([b"after"]) == 1
    assert crx.read_burst(8, out) == 1 and bytes(out[-1]) == b"after"
    assert r.head(M2S) == head  # the lease holds both slots back
    views.clear()
    crx.end_lease()
    assert r.head(M2S) == (head + 2) & 0xFFFF
    # the server moves tail past what we posted: a violation, on this path too
    r.set_tail(M2S, r.tail(M2S) + 9)
    with pytest.raises(ProtocolViolation):
        crx.read_burst(1, out)


def _bad_one(r: Rig, slot: int, flags: int, length: int) -> None:
    """The server fills slot ``slot`` (a counter) with these flags and length, moves tail."""
    off = r.desc_at(M2S, slot)
    struct.pack_into("<H", r.mm, off, flags)
    struct.pack_into("<I", r.mm, off + 4, length)
    r.set_tail(M2S, slot + 1)
