"""The transmit layout of the client (S2MProducer): what the server sees in the descriptors.

A run of small single-buffer packets is laid out back to back against the end of the run's
last buffer (S2MProducer._put); everything else goes one packet per slot, at the start of the
slot's own buffer; chains are written with scalar stores.  These tests pin the offsets and
lengths the peer reads, and the safety rule behind the packing: every byte of the packet in
slot ``j`` lies in the buffers of slots ``j .. (last slot of its run)``, so a server that
releases part of a burst (DPDK reads 32 at a time) never has a packet in a buffer that the
client may reuse.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import test_ring
from test_ring import Rig, drain, make_rig, pkt

from memif_aio.ring import PACK_MEAN_MAX, S2MConsumer, S2MProducer
from memif_aio.wire import DESC_FLAG_NEXT, RingType

S2M = RingType.S2M
no_leak = test_ring.no_leak  # autouse: no fd or mapping left behind


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def published(rig: Rig, start: int, count: int) -> list[tuple[int, int, int, int, int]]:
    return [rig.desc(S2M, start + j) for j in range(count)]


def check_layout(rig: Rig, start: int, pkts: list[bytes]) -> None:
    """The descriptors of ``pkts`` (single-buffer packets written by one call from counter
    ``start``): region 0, flags 0, their lengths, their bytes at their offsets, and each one
    inside the buffers of its own slot up to the last slot of its run (the run ends at the
    end of the descriptor array)."""
    R = rig.R
    bufs = rig.bufs(S2M)
    slots = [(start + j) & (R - 1) for j in range(len(pkts))]
    for j, p in enumerate(pkts):
        flags, region, length, offset, _meta = rig.desc(S2M, start + j)
        assert (flags, region, length) == (0, 0, len(p))
        assert bytes(rig.mm[offset:offset + length]) == p
        s = slots[j]
        last = s
        while last + 1 < R and j + (last + 1 - s) < len(pkts):
            last += 1
        assert bufs[s] <= offset and offset + length <= bufs[last] + rig.bsize, (j, s, last)


def tiny_pkts(n: int, size: int = 40, seed: int = 0) -> list[bytes]:
    return [pkt(size, seed + i) for i in range(n)]


def test_small_burst_is_back_to_back_at_the_end_of_the_run(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    pkts = tiny_pkts(5)
    assert tx.write_burst(pkts) == 5
    end = rig.bufs(S2M)[4] + rig.bsize
    assert [d[3] for d in published(rig, 0, 5)] == [end - 200 + 40 * j for j in range(5)]
    check_layout(rig, 0, pkts)
    assert drain(rx) == pkts
    assert (tx.stats.packets, tx.stats.bytes) == (5, 200) == (rx.stats.packets, rx.stats.bytes)


def test_mixed_sizes_back_to_back(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    pkts = [pkt(n, n) for n in (1, 2048, 60, 17, 999, 2048, 3)]  # exactly buffer_size too
    assert sum(map(len, pkts)) <= PACK_MEAN_MAX * len(pkts)
    assert tx.write_burst(pkts) == 7
    offs = [d[3] for d in published(rig, 0, 7)]
    assert offs == [offs[0] + sum(map(len, pkts[:j])) for j in range(7)]  # contiguous
    assert offs[-1] + 3 == rig.bufs(S2M)[6] + rig.bsize
    check_layout(rig, 0, pkts)
    assert drain(rx) == pkts


def test_burst_filling_the_ring_exactly(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    pkts = [pkt(2048, i) for i in range(rig.R)]  # every buffer full: one per slot, packed
    assert tx.write_burst(pkts) == rig.R and tx.free_slots() == 0
    assert [d[3] for d in published(rig, 0, rig.R)] == rig.bufs(S2M)
    check_layout(rig, 0, pkts)
    assert tx.write_burst([b"x"]) == 0 and tx.write_one(b"x") is False
    assert drain(rx) == pkts
    small = tiny_pkts(rig.R, 7, 3)
    assert tx.write_burst(small) == rig.R
    check_layout(rig, rig.R, small)
    assert drain(rx) == small


def test_burst_wrapping_the_ring_is_two_runs(rig: Rig) -> None:
    """Never packed across the end of the descriptor array."""
    tx, rx = rig.client_tx(), rig.server_rx()
    assert tx.write_burst(tiny_pkts(5)) == 5
    assert len(drain(rx)) == 5
    pkts = tiny_pkts(7, 30, 9)  # slots 5, 6, 7 | 0, 1, 2, 3
    assert tx.write_burst(pkts) == 7
    check_layout(rig, 5, pkts)
    bufs = rig.bufs(S2M)
    offs = [d[3] for d in published(rig, 5, 7)]
    assert offs[:3] == [bufs[7] + rig.bsize - 90 + 30 * j for j in range(3)]
    assert offs[3:] == [bufs[3] + rig.bsize - 120 + 30 * j for j in range(4)]
    assert drain(rx) == pkts


def test_partial_release_never_exposes_unread_packets(rig: Rig) -> None:
    """The server reads part of a burst and gives those slots back; the client reuses them
    at once (and their buffers); the packets still unread are intact."""
    tx, rx = rig.client_tx(), rig.server_rx()
    first = tiny_pkts(rig.R, 60, 1)
    assert tx.write_burst(first) == rig.R
    out: list[bytes] = []
    assert rx.read_burst(3, out) == 3 and rig.tail(S2M) == 3
    assert tx.free_slots() == 3
    second = [pkt(2048, 50 + i) for i in range(3)]  # slots 0..2: their whole buffers
    assert tx.write_burst(second) == 3
    assert tx.write_burst(tiny_pkts(1)) == 0
    assert [bytes(p) for p in out] + drain(rx) == first + second


@pytest.mark.parametrize("size", [1, 64, 700])
def test_partial_release_cycles(request: pytest.FixtureRequest, size: int) -> None:
    """Many rounds of a consumer that reads an odd number of packets at a time while the
    producer keeps the ring full: every packet arrives intact, in order."""
    rig = make_rig(request, log2=5)
    tx, rx = rig.client_tx(), rig.server_rx()
    sent: list[bytes] = []
    got: list[bytes] = []
    seq = 0
    for rnd in range(200):
        burst = [pkt(size + (seq + k) % 3, seq + k) for k in range(1 + rnd % 40)]
        n = tx.write_burst(burst)
        sent += burst[:n]
        seq += n
        out: list[bytes] = []
        rx.read_burst(1 + rnd % 7, out)
        got += [bytes(p) for p in out]
    got += drain(rx, 256)
    assert len(sent) > 500
    assert got == sent


def test_large_average_keeps_one_packet_per_buffer(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    pkts = [pkt(1500, i) for i in range(4)]
    assert 1500 > PACK_MEAN_MAX
    assert tx.write_burst(pkts) == 4
    assert published(rig, 0, 4) == [(0, 0, 1500, o, 0) for o in rig.bufs(S2M)[:4]]
    assert drain(rx) == pkts


def test_single_packet_at_the_start_of_its_buffer(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    assert tx.write_burst([b"one"]) == 1
    assert tx.write_one(b"two") is True
    assert published(rig, 0, 2) == [(0, 0, 3, rig.bufs(S2M)[0], 0),
                                    (0, 0, 3, rig.bufs(S2M)[1], 0)]
    assert drain(rx) == [b"one", b"two"]


def test_buffers_out_of_order_keep_one_packet_per_buffer(request: pytest.FixtureRequest) -> None:
    """Back to back needs the buffers of a run to follow one another."""
    rig = make_rig(request)
    bufs = rig.bufs(S2M)[::-1]
    tx = S2MProducer(rig.regions, 0, rig.off(S2M), rig.log2, rig.rl, bufs, rig.bsize)
    rig.rings.append(tx)
    rx = rig.server_rx()
    pkts = tiny_pkts(6)
    assert tx.write_burst(pkts) == 6
    assert published(rig, 0, 6) == [(0, 0, 40, o, 0) for o in bufs[:6]]
    assert drain(rx) == pkts


@pytest.mark.parametrize("how", ["one", "burst-1", "packed", "per-slot", "chain"])
def test_stale_descriptor_fields_are_rewritten(rig: Rig, how: str) -> None:
    """We own a free slot: whatever the server scribbled into its descriptor (flags, region,
    length, offset) is overwritten; metadata is left alone, as before."""
    tx, rx = rig.client_tx(), rig.server_rx()
    for j in range(rig.R):
        rig.put_desc(S2M, j, 0xFFFF, 7, 0xFFFFFFFF, 0xFFFFFFF0)
    pkts = {"one": [b"a"], "burst-1": [b"b"], "packed": tiny_pkts(3),
            "per-slot": [pkt(1500, i) for i in range(3)], "chain": [pkt(5000, 1)]}[how]
    if how == "one":
        assert tx.write_one(pkts[0]) is True
    else:
        assert tx.write_burst(pkts) == len(pkts)
    n = rig.head(S2M)
    for flags, region, _length, offset, _meta in published(rig, 0, n):
        assert region == 0 and flags in (0, DESC_FLAG_NEXT)
        assert rig.bufs(S2M)[0] <= offset < rig.bufs(S2M)[-1] + rig.bsize
    assert drain(rx) == pkts


def test_chain_descriptors_exact(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    data = pkt(2 * 2048 + 5, 4)
    assert tx.write_burst([b"x"] * 6) == 6
    assert len(drain(rx)) == 6
    assert tx.write_burst([data, data]) == 2  # slots 6, 7, 0 | 1, 2, 3: chains at the wrap
    bufs = rig.bufs(S2M)
    chain = [(DESC_FLAG_NEXT, 0, 2048), (DESC_FLAG_NEXT, 0, 2048), (0, 0, 5)]
    assert published(rig, 6, 6) == [(*f, bufs[(6 + j) & 7], 0)
                                    for j, f in enumerate(chain + chain)]
    assert drain(rx) == [data, data]
    assert (tx.stats.packets, tx.stats.bytes) == (8, 6 + 2 * len(data))


def test_chain_of_exact_buffer_multiples(rig: Rig) -> None:
    tx, rx = rig.client_tx(), rig.server_rx()
    data = pkt(3 * 2048, 8)
    assert tx.write_burst([data, b"tail"]) == 2
    bufs = rig.bufs(S2M)
    assert published(rig, 0, 4) == [(DESC_FLAG_NEXT, 0, 2048, bufs[0], 0),
                                     (DESC_FLAG_NEXT, 0, 2048, bufs[1], 0),
                                     (0, 0, 2048, bufs[2], 0), (0, 0, 4, bufs[3], 0)]
    assert drain(rx) == [data, b"tail"]


def test_wrong_sized_packet_objects_raise_and_publish_nothing(rig: Rig) -> None:
    """An object whose len() is not its byte size (a memoryview of u32) fails as it did
    (IndexError from the mapping), and nothing is published."""
    tx = rig.client_tx()
    odd = memoryview(bytes(64)).cast("I")
    for burst in ([b"ok", odd], [odd], [odd, odd, b"x"]):
        with pytest.raises(IndexError):
            tx.write_burst(burst)
        assert rig.head(S2M) == 0 and tx.stats.packets == 0
    with pytest.raises(IndexError):
        tx.write_one(odd)
    assert rig.head(S2M) == 0


def test_server_reads_offsets_through_the_descriptors(rig: Rig) -> None:
    """The Python server (S2MConsumer) honours the offsets, zero copy too."""
    tx = rig.client_tx()
    rx: S2MConsumer = rig.server_rx()
    pkts = tiny_pkts(8, 33, 2)
    assert tx.write_burst(pkts) == 8
    out: list[memoryview] = []
    assert rx.read_burst(8, out, zero_copy=True) == 8
    assert [bytes(p) for p in out] == pkts
    for v in out:
        v.release()
    rx.end_lease()
    assert tx.free_slots() == rig.R
