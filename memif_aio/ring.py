"""Ring logic over shared memory (sans-I/O): the memif data path.

Four roles exist (protocol reference §7.3):

* :class:`S2MProducer` - client transmit: writes packets into its own buffers.
* :class:`S2MConsumer` - server receive: reads descriptors the client wrote.
* :class:`M2SProducer` - server transmit: fills buffers the client posted.
* :class:`M2SConsumer` - client receive: reads what the server filled, reposts.

Every peer-written value (head/tail, descriptor fields) is loaded once into a
local, validated, and only the local is used (§12.7).  Index errors that mean
the ring is corrupt raise :class:`~memif_aio.errors.ProtocolViolation` (the
caller disconnects); a bad descriptor drops its packet and is counted.

Speed: there is no construct call here.  Descriptor fields are read and
written a whole burst at a time through strided ``memoryview`` casts of the
descriptor array (``d16[8*s::8]`` are the ``flags`` of slots ``s…``), whose
element indices are derived from :mod:`memif_aio.wire`; validation of a burst
is a handful of C-level ``min``/``max``/``count`` calls.  A window whose
descriptors span regions (server side: a VPP zero-copy client has one region per
buffer pool) stays on the fast path, each descriptor checked against its own
region.  A chain or an invalid descriptor costs the per-descriptor slow path only
from where it sits: the valid prefix before it is taken by the fast path, the
slow path takes that one packet, and the fast path resumes after it.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass
from itertools import accumulate
from operator import add, gt, truth
from typing import Any, MutableSequence, Sequence

from .errors import PacketTooLarge, ProtocolViolation
from .memory import CLOSED_MAPPING, Region
from .wire import (
    COOKIE,
    DESC_FLAG_NEXT,
    DESC_FLAGS_OFF,
    DESC_LENGTH_OFF,
    DESC_OFFSET_OFF,
    DESC_REGION_OFF,
    DESC_SIZE,
    MAX_LOG2_RING_SIZE,
    RING_FLAG_MASK_INT,
    U32,
    RingLayout,
)

# Element positions inside one descriptor, in u16 and u32 units (derived, not hand-written).
_W16 = DESC_SIZE // 2
_W32 = DESC_SIZE // 4
_F16 = DESC_FLAGS_OFF // 2
_R16 = DESC_REGION_OFF // 2
_L32 = DESC_LENGTH_OFF // 4
_O32 = DESC_OFFSET_OFF // 4
assert DESC_FLAGS_OFF % 2 == 0 and DESC_REGION_OFF % 2 == 0
assert DESC_LENGTH_OFF % 4 == 0 and DESC_OFFSET_OFF % 4 == 0
# ``flags`` and ``region`` share the first u32 of a descriptor and ``length`` is the second, so a
# producer that owns a slot writes all three with one u64 store (``d64``) and the
# ``flags``/``region`` pair of a run with one strided u32 store (``_FR32``).
assert (DESC_FLAGS_OFF, DESC_REGION_OFF, DESC_LENGTH_OFF) == (0, 2, 4) and DESC_SIZE % 8 == 0
_FR32 = DESC_FLAGS_OFF // 4
_W64 = DESC_SIZE // 8
_BIG = sys.byteorder == "big"
#: shifts of ``flags`` and ``length`` inside the u64 at a descriptor's start (native order)
_FLAGS_SHIFT, _LEN_SHIFT = (48, 0) if _BIG else (0, 32)
#: ``region`` and ``flags`` inside the u32 at a descriptor's start (native order)
_REGION_SHIFT, _FLAGS_MASK32 = (0, 0xFFFF0000) if _BIG else (16, 0xFFFF)
#: ``flags`` and ``region`` inside the u64 at a descriptor's start (native order)
_FR_MASK64 = 0xFFFFFFFF << (32 - _LEN_SHIFT)
#: a run of single-buffer packets is laid out back to back (S2MProducer._put) while its
#: packets average at most this many bytes: beyond it, copying them twice (join, then
#: the slice) costs more than one slice assignment per packet saves
PACK_MEAN_MAX = 1024

Packets = Sequence[Any]  # bytes-like objects

#: Largest descriptor length accepted from a peer (§10.2, §12.7): buffer sizes are u16 in the C
#: peers and VPP reads lengths through a u16.
MAX_DESC_LENGTH = 65535
#: Largest packet memif_aio writes or reassembles from a chain.  Bounds what a peer can make us
#: allocate (a chain may name the same large region in every slot); 64 KiB IP packets and
#: 9216-byte jumbo frames fit with room to spare.
MAX_PACKET_SIZE = 1 << 20


def _clean_prefix(flags: list[int], lens: list[int], limit: int) -> int:
    """How many descriptors, from the first, the burst fast path may take: flags 0 (no
    chain) and ``0 < length <= limit``.  Called only when a window fails the C-level
    whole-window checks, so a chain or a bad descriptor costs the slow path only from
    where it sits, not for the whole window."""
    k = len(flags)
    if flags.count(0) != k:
        k = list(map(truth, flags)).index(True)
    if k:
        lk = lens[:k] if k < len(lens) else lens
        if not _window(lk, limit):
            k = [not 0 < m <= limit for m in lk].index(True)
    return k


def _window(lens: list[int], limit: int) -> tuple[int, int] | None:
    """``(longest, total)`` of a (non-empty) window of lengths if every one is within
    ``1..limit``, else None: the burst fast paths' check.  ``list.count`` compares by identity
    first and ``sorted`` of a run of equal or rising ints is one pass of its int fast compare,
    so a window of equal lengths (the common case) costs about 1 ns per packet and a mixed one
    no more than ``0 in lens`` plus ``max(lens)``, which cost about 25 ns per packet together.
    The lengths are all equal exactly when ``longest * len(lens) == total``."""
    first = lens[0]
    n = len(lens)
    if lens.count(first) == n:
        return (first, first * n) if 0 < first <= limit else None
    ordered = sorted(lens)
    last = ordered[-1]
    return (last, sum(lens)) if ordered[0] > 0 and last <= limit else None


@dataclass
class RingStats:
    """Counters of one ring endpoint."""

    packets: int = 0
    bytes: int = 0
    drops: int = 0
    bad_descriptors: int = 0
    interrupts: int = 0


def check_ring_geometry(regions: list[Region], region: int, offset: int, log2_ring_size: int,
                        layout: RingLayout) -> tuple[int, int]:
    """Validate a ring announced by ADD_RING against the mapped regions (§12.4).

    Returns the ring's ``(start, end)`` byte range in its region.
    """
    if region >= len(regions):
        raise ProtocolViolation(f"ring references unknown region {region}")
    if log2_ring_size > MAX_LOG2_RING_SIZE:
        raise ProtocolViolation(
            f"log2 ring size {log2_ring_size} above the advertised {MAX_LOG2_RING_SIZE}")
    if offset % 8:
        raise ProtocolViolation(f"misaligned ring offset {offset}")
    end = offset + layout.ring_size(log2_ring_size)
    if end > regions[region].size:
        raise ProtocolViolation(
            f"ring at offset {offset} ({end - offset} bytes) exceeds region {region} "
            f"of {regions[region].size} bytes")
    return offset, end


class _Ring:
    """Common state: index and descriptor views, the ring geometry, and ``_pos``,
    the index this endpoint moves (a producer's published index, a consumer's read
    cursor)."""

    __slots__ = (
        "_flags_i",
        "_head_i",
        "_pos",
        "_pub_i",
        "_tail_i",
        "_zeros16",
        "buf",
        "d16",
        "d32",
        "d64",
        "desc0",
        "idx",
        "layout",
        "mask",
        "region_index",
        "regions",
        "ring_offset",
        "size",
        "stats",
    )
    _pos: int  #: set by each subclass
    _pub_i: int  #: producers: where ``_pos`` is published (``head`` or ``tail``)

    def __init__(self, regions: list[Region], region: int, offset: int, log2_ring_size: int,
                 layout: RingLayout) -> None:
        self.regions = regions
        self.region_index = region
        self.ring_offset = offset
        buf = regions[region].view
        self.buf = buf
        self.size = 1 << log2_ring_size
        self.mask = self.size - 1
        self.layout = layout
        nbytes = layout.ring_size(log2_ring_size)
        # u16 view of the ring (offset is 8-aligned, size even): one 2-byte load/store per index.
        self.idx = buf[offset:offset + nbytes].cast("H")
        self._head_i = layout.head // 2
        self._tail_i = layout.tail // 2
        self._flags_i = layout.flags // 2
        self.desc0 = offset + layout.desc
        descs = buf[self.desc0:offset + nbytes]
        self.d16 = descs.cast("H")
        self.d32 = descs.cast("I")
        self.d64 = descs.cast("Q")  # [s * _W64]: flags, region and length of slot s, at once
        self._zeros16 = memoryview(array.array("H", bytes(2 * self.size)))
        self.stats = RingStats()

    # --- header access -----------------------------------------------------
    def cookie_ok(self) -> bool:
        return int(U32.unpack_from(self.buf, self.ring_offset + self.layout.cookie)[0]) == COOKIE

    @property
    def head(self) -> int:
        return int(self.idx[self._head_i])

    @property
    def tail(self) -> int:
        return int(self.idx[self._tail_i])

    @property
    def flags(self) -> int:
        return int(self.idx[self._flags_i])

    def peer_wants_interrupt(self) -> bool:
        """True when the consumer has not set ``MASK_INT`` (producers check every time)."""
        return not self.idx[self._flags_i] & RING_FLAG_MASK_INT

    def set_interrupt_mask(self, masked: bool) -> None:
        """Write bit 0 of ``flags`` on a ring we consume, preserving other bits."""
        f = self.idx[self._flags_i]
        self.idx[self._flags_i] = (f | RING_FLAG_MASK_INT) if masked else (f & ~RING_FLAG_MASK_INT)

    def release(self) -> None:
        """Drop the views into shared memory (before the region is unmapped)."""
        for view in (self.idx, self.d16, self.d32, self.d64):
            view.release()

    # --- descriptor access (one slot; the slow paths) -------------------------
    def _desc(self, s: int) -> tuple[int, int, int, int]:
        """``(flags, region, length, offset)`` of slot ``s``, each loaded once."""
        b16 = s * _W16
        b32 = s * _W32
        d16 = self.d16
        d32 = self.d32
        return d16[b16 + _F16], d16[b16 + _R16], d32[b32 + _L32], d32[b32 + _O32]


class _Producer(_Ring):
    """What both transmitters share: publishing ``_pos`` (S2M ``head``, M2S ``tail``)."""

    __slots__ = ()

    def _publish(self, pos: int, n: int, nbytes: int) -> None:
        """Move our index to ``pos`` (one aligned 16-bit store) and count ``n`` packets."""
        self._pos = pos = pos & 0xFFFF
        self.idx[self._pub_i] = pos
        st = self.stats
        st.packets += n
        st.bytes += nbytes


class _Consumer(_Ring):
    """What both receivers share: the chain reassembler and the accounting of a read.

    A subclass gives :meth:`_segment` (one descriptor, validated) and :meth:`_consumed`
    (what happens to the slots read: given back, or held by a zero-copy lease)."""

    __slots__ = ()
    #: the ring's direction, for error messages
    _dir = ""

    def _segment(self, s: int, zero_copy: bool) -> tuple[int, Any]:
        """Read descriptor ``s`` once; return ``(flags, data or None if invalid)``."""
        raise NotImplementedError

    def _consumed(self, start: int, zero_copy: bool) -> None:
        raise NotImplementedError

    def _took(self, cur: int, got: int, nbytes: int, bad: int, zero_copy: bool) -> None:
        """The read cursor moves to ``cur``: ``got`` packets, ``bad`` dropped."""
        start = self._pos
        self._pos = cur & 0xFFFF
        st = self.stats
        st.packets += got
        st.bytes += nbytes
        if bad:
            st.bad_descriptors += bad
            st.drops += bad
        self._consumed(start, zero_copy)

    def _read_fast(self, n: int, max_packets: int, out: MutableSequence[Any],
                   zero_copy: bool) -> int:
        raise NotImplementedError

    def _read_rest(self, n: int, max_packets: int, out: MutableSequence[Any],
                   zero_copy: bool) -> int:
        """The fast path stopped at a chain or an invalid descriptor: take that packet the
        slow way, then go back to the fast path as soon as the next slot is not chained.
        The fast path's window starts small and doubles while it takes all of it, so a
        window of many chains costs little more than the slow path alone."""
        done = 0
        cap = 16
        d16 = self.d16
        mask = self.mask
        while True:
            start = self._pos
            done += self._read_slow(n, 1, out, zero_copy)
            used = (self._pos - start) & 0xFFFF
            n -= used
            if not used or not n or done >= max_packets:  # not used: an incomplete chain
                return done
            while not d16[(self._pos & mask) * _W16 + _F16]:
                k = self._read_fast(n, min(cap, max_packets - done), out, zero_copy)
                done += k
                n -= k
                if not n or done >= max_packets:
                    return done
                if k < cap:  # stopped at a bad descriptor
                    break
                cap *= 2

    def _read_slow(self, n: int, max_packets: int, out: MutableSequence[Any],
                   zero_copy: bool = False) -> int:
        """Per descriptor: reassemble chains, drop (and count) invalid packets."""
        cur = start = self._pos
        end = cur + n
        mask = self.mask
        segment = self._segment
        got = nbytes = bad = 0
        while got < max_packets and cur < end:
            parts: list[Any] = []
            ok = True
            c = cur
            flags = total = 0
            while c < end:
                flags, data = segment(c & mask, zero_copy)
                c += 1
                if data is None:
                    ok = False
                    parts = []
                elif ok:
                    total += len(data)
                    if total > MAX_PACKET_SIZE:  # drop it, and stop buffering it
                        ok = False
                        parts = []
                    else:
                        parts.append(data)
                if not flags & DESC_FLAG_NEXT:
                    break
            if flags & DESC_FLAG_NEXT:
                # incomplete chain: wait for the rest, unless it can never end
                if n >= self.size:
                    raise ProtocolViolation(f"{self._dir} chain longer than the ring")
                break
            cur = c
            if ok:
                pkt = parts[0] if len(parts) == 1 else b"".join(parts)
                out.append(pkt)
                nbytes += len(pkt)
                got += 1
            else:
                bad += 1
        if cur != start:
            # Clear the flags of what we consumed before giving the slots back.  Not asked by
            # the protocol, but DPDK's transmitter (22.11 and later) never clears the NEXT bit
            # of a packet's first descriptor, so a slot that once held a chain segment would
            # glue a later single-slot packet to the next one.  The slots are still ours (the
            # index that gives them back has not moved) and every producer rewrites the other
            # fields, so this is safe.
            d16 = self.d16
            for c in range(start, start + ((cur - start) & 0xFFFF)):
                d16[(c & mask) * _W16 + _F16] = 0
            self._took(cur, got, nbytes, bad, zero_copy)
        return got


class _ClientRing(_Ring):
    """A ring the client created: it knows each slot's own buffer (its private shadow).

    The client's rings and buffers all live in its one region, region 0 (§6.4)."""

    __slots__ = ("_bsize_arr", "_offs_arr", "_zeros32", "bsize", "mm", "slot_offsets")

    def __init__(self, regions: list[Region], region: int, offset: int, log2_ring_size: int,
                 layout: RingLayout, buffer_offsets: Sequence[int], buffer_size: int) -> None:
        if region != 0:
            raise ValueError("a client's rings live in its region 0")
        super().__init__(regions, region, offset, log2_ring_size, layout)
        if len(buffer_offsets) != self.size:
            raise ValueError("one buffer offset per slot is required")
        self.bsize = buffer_size
        self.slot_offsets = list(buffer_offsets)
        self.mm = regions[region].mm
        self._offs_arr = memoryview(array.array("I", self.slot_offsets))
        self._bsize_arr = memoryview(array.array("I", [buffer_size] * self.size))
        self._zeros32 = memoryview(array.array("I", bytes(4 * self.size)))

    def release(self) -> None:
        super().release()
        self.mm = CLOSED_MAPPING  # no reference of ours keeps a closed region's mapping alive

    def _post_run(self, s: int, n: int, lengths: Any) -> None:
        """Write descriptors of slots ``s..s+n`` (no wrap): region 0, our buffer,
        ``lengths``, flags 0.  We own these slots, so every field is rewritten."""
        d32 = self.d32
        e32 = (s + n) * _W32
        d32[s * _W32 + _FR32:e32:_W32] = self._zeros32[:n]  # flags and region: 0
        d32[s * _W32 + _O32:e32:_W32] = self._offs_arr[s:s + n]
        d32[s * _W32 + _L32:e32:_W32] = lengths


class S2MProducer(_ClientRing, _Producer):
    """Client transmit (S2M).  Only we write ``head`` (``_pos``); the server writes ``tail``.

    Back-to-back layout (:meth:`_put`): a run of small single-buffer packets is copied with
    one join and one slice assignment, packed against the *end* of the run's last buffer, and
    each descriptor carries its packet's offset (docs/performance.md, "Where the time goes").
    Packet ``i`` of a run of slots ``s..s+n-1`` then lies within the buffers of slots
    ``s+i..s+n-1``: never in a buffer of a slot the server may still own, and once the
    server's ``tail`` has passed a slot, it has passed every packet stored in that slot's
    buffer (the server may release part of a run: DPDK reads 32 at a time)."""

    __slots__ = ("_packable",)

    def __init__(self, regions: list[Region], region: int, offset: int, log2_ring_size: int,
                 layout: RingLayout, buffer_offsets: Sequence[int], buffer_size: int) -> None:
        super().__init__(regions, region, offset, log2_ring_size, layout, buffer_offsets,
                         buffer_size)
        self._pub_i = self._head_i
        self._pos = 0
        self.idx[self._head_i] = 0
        # back to back needs the slots' buffers laid out in order, one after the other
        offs = self.slot_offsets
        self._packable = all(o == offs[0] + i * buffer_size for i, o in enumerate(offs))

    def free_slots(self) -> int:
        used = (self._pos - self.idx[self._tail_i]) & 0xFFFF
        if used > self.size:
            raise ProtocolViolation("S2M tail moved outside [head - ring size, head]")
        return self.size - used

    def slots_for(self, length: int) -> int:
        return max(1, -(-length // self.bsize))

    def write_burst(self, packets: Packets, start: int = 0) -> int:
        """Publish as many packets from ``packets[start:]`` as fit; return how many.

        A packet is published whole or not at all (a chain moves ``head`` once).  If one of
        them can never fit (more buffers than the ring has), :class:`PacketTooLarge` is
        raised and nothing is published, full ring or not.
        """
        free = self.free_slots()
        total = len(packets) - start
        if total <= 0:
            return 0
        if not free:
            _check_fits(packets, start, self.size * self.bsize, self.bsize)
            return 0
        head = self._pos
        k = min(free, total)
        batch = packets[start:start + k] if (start or k < len(packets)) else packets
        lens = list(map(len, batch))
        window = _window(lens, self.bsize)
        if window:
            # fast path: one buffer per packet
            if k < total:  # the rest waits for room: refuse now if one of them never fits
                _check_fits(packets, start + k, self.size * self.bsize, self.bsize)
            s = head & self.mask
            run = self.size - s
            longest, nbytes = window
            equal = longest * k == nbytes
            if run >= k:
                self._put(s, batch, lens, nbytes, equal)
            else:  # two runs: before and after the ring wraps (never packed across it)
                first = sum(lens[:run])
                self._put(s, batch[:run], lens[:run], first, equal)
                self._put(0, batch[run:], lens[run:], nbytes - first, equal)
            self._publish(head + k, k, nbytes)
            return k
        return self._write_slow(packets, start, free)

    def _put(self, s: int, pkts: Packets, lens: list[int], nbytes: int, equal: bool) -> None:
        """Copy single-buffer packets into slots ``s..s+n-1`` (no wrap) and write their
        descriptors; nothing is published.  ``equal``: all of ``lens`` are the same.

        Small packets go back to back, against the end of slot ``s+n-1``'s buffer (see the
        class docstring): one join, one slice assignment, offsets from a running sum.  The
        others go one per slot, at the start of the slot's own buffer."""
        n = len(lens)
        d32 = self.d32
        b32 = s * _W32
        e32 = b32 + n * _W32
        if n > 1 and self._packable and nbytes <= PACK_MEAN_MAX * n:
            end = self.slot_offsets[s] + n * self.bsize
            base = end - nbytes
            self.mm[base:end] = b"".join(pkts)
            offsets = array.array("I", range(base, end, lens[0]) if equal else
                                  accumulate(lens[:-1], initial=base))
            d32[b32 + _FR32:e32:_W32] = self._zeros32[:n]
            d32[b32 + _O32:e32:_W32] = offsets
        else:
            mm = self.mm
            for p, o, m in zip(pkts, self.slot_offsets[s:s + n], lens):
                mm[o:o + m] = p
            d32[b32 + _FR32:e32:_W32] = self._zeros32[:n]
            d32[b32 + _O32:e32:_W32] = self._offs_arr[s:s + n]
        d32[b32 + _L32:e32:_W32] = array.array("I", lens)

    def write_one(self, pkt: Any) -> bool:
        """Publish one packet if there is room: the per-packet fast path of ``write_burst``."""
        head = self._pos
        used = (head - self.idx[self._tail_i]) & 0xFFFF
        length = len(pkt)
        if used >= self.size or not 0 < length <= self.bsize:
            if used == self.size and 0 < length <= self.bsize:
                return False  # full, and it fits one buffer: it fits once there is room
            return self.write_burst((pkt,)) == 1
        s = head & self.mask
        o = self.slot_offsets[s]
        self.mm[o:o + length] = pkt
        self.d64[s * _W64] = length << _LEN_SHIFT  # flags 0, region 0, length
        self.d32[s * _W32 + _O32] = o
        # publish (as _publish, inlined: this is the per-packet path)
        self._pos = head = (head + 1) & 0xFFFF
        self.idx[self._head_i] = head
        st = self.stats
        st.packets += 1
        st.bytes += length
        return True

    def reserve(self, count: int, size: int) -> list[memoryview] | None:
        """Writable views of ``count`` free buffers of ``size`` bytes (zero-copy
        transmit), or None while the ring has fewer free slots.  Nothing is
        published until :meth:`commit`."""
        if not 0 < size <= self.bsize:
            raise PacketTooLarge(f"reserve size {size} must be within 1..{self.bsize}")
        if not 0 < count <= self.size:
            raise ValueError(f"count must be within 1..{self.size}")
        if self.free_slots() < count:
            return None
        head = self._pos
        mask = self.mask
        offs = self.slot_offsets
        buf = self.buf
        return [buf[offs[(head + i) & mask]:offs[(head + i) & mask] + size]
                for i in range(count)]

    def commit(self, lengths: Sequence[int]) -> None:
        """Publish the first ``len(lengths)`` reserved buffers with these lengths."""
        k = len(lengths)
        if k == 0:
            return
        if min(lengths) <= 0 or max(lengths) > self.bsize:
            raise ValueError("each length must be within 1..buffer size")
        head = self._pos
        s = head & self.mask
        run = min(k, self.size - s)
        self._post_run(s, run, array.array("I", lengths[:run]))
        if run < k:
            self._post_run(0, k - run, array.array("I", lengths[run:]))
        self._publish(head + k, k, sum(lengths))

    def _write_slow(self, packets: Packets, start: int, free: int) -> int:
        """Per packet, chaining packets longer than one buffer."""
        _check_fits(packets, start, self.size * self.bsize, self.bsize)
        head = self._pos
        mask = self.mask
        bsize = self.bsize
        mm = self.mm
        offs = self.slot_offsets
        d64 = self.d64
        d32 = self.d32
        n = nbytes = 0
        for i in range(start, len(packets)):
            pkt = packets[i]
            length = len(pkt)
            if not length:
                raise ValueError("cannot send an empty packet")
            if length > MAX_PACKET_SIZE:
                raise PacketTooLarge(f"packet of {length} bytes exceeds MAX_PACKET_SIZE "
                                     f"({MAX_PACKET_SIZE})")
            need = -(-length // bsize)
            if need > self.size:
                raise PacketTooLarge(f"packet of {length} bytes needs {need} buffers of {bsize}; "
                                     f"the ring has {self.size}")
            if need > free:
                break
            mv = memoryview(pkt)
            pos = 0
            for _ in range(need):  # one segment per slot: scalar stores
                s = head & mask
                o = offs[s]
                seg = min(bsize, length - pos)
                mm[o:o + seg] = mv[pos:pos + seg]
                pos += seg
                # flags (NEXT but on the last segment), region 0, length; then the offset
                d64[s * _W64] = (seg << _LEN_SHIFT) | \
                    ((DESC_FLAG_NEXT << _FLAGS_SHIFT) if pos < length else 0)
                d32[s * _W32 + _O32] = o
                head += 1
            free -= need
            nbytes += length
            n += 1
        if n:
            self._publish(head, n, nbytes)
        return n


class M2SConsumer(_ClientRing, _Consumer):
    """Client receive (M2S).  We post our buffers (``head``); the server fills (``tail``).

    ``region``/``offset`` of a filled slot are never read back from shared
    memory: the private shadow says where our buffer is (§12.7).
    """

    __slots__ = ("_head", "_held", "_refill_batch")
    _dir = "M2S"

    def __init__(self, regions: list[Region], region: int, offset: int, log2_ring_size: int,
                 layout: RingLayout, buffer_offsets: Sequence[int], buffer_size: int) -> None:
        super().__init__(regions, region, offset, log2_ring_size, layout, buffer_offsets,
                         buffer_size)
        self._head = 0
        self._pos = 0
        self._refill_batch = max(1, min(32, self.size // 4))
        self._held: int | None = None  # first slot of a zero-copy lease
        self.idx[self._head_i] = 0

    def refill(self, minimum: int = 1) -> int:
        """Post every free slot back to the server, if at least ``minimum`` are free;
        returns the number posted.

        Slots handed out by a zero-copy read stay ours until :meth:`end_lease`.
        """
        head = self._head
        done = self._pos if self._held is None else self._held
        k = self.size - ((head - done) & 0xFFFF)
        if k < minimum or k <= 0:
            return 0
        s = head & self.mask
        if k == 1:  # the ping-pong case: scalar stores
            b32 = s * _W32
            d32 = self.d32
            d32[b32 + _FR32] = 0  # flags and region
            d32[b32 + _O32] = self.slot_offsets[s]
            d32[b32 + _L32] = self.bsize
            self._head = head = (head + 1) & 0xFFFF
            self.idx[self._head_i] = head
            return 1
        run = min(k, self.size - s)
        self._repost_run(s, run)
        if run < k:
            self._repost_run(0, k - run)
        self._head = (head + k) & 0xFFFF
        self.idx[self._head_i] = self._head
        return k

    def _repost_run(self, s: int, n: int) -> None:
        """Post slots ``s..s+n`` (no wrap): each descriptor says region 0, flags 0, the slot's
        own buffer and its whole capacity, as :meth:`_post_run` writes them.  ``length`` is
        always rewritten (the server set it to what it filled); ``flags``/``region`` and
        ``offset`` are stored only if they differ (a chain left NEXT set, a server broke
        §7.3, or this is the first post), found with one C-level compare of each run:
        two strided compares cost about a third of two strided stores."""
        d32 = self.d32
        b32 = s * _W32
        e32 = (s + n) * _W32
        # (no view into shared memory is kept in a local: a traceback would pin the mapping)
        zeros = self._zeros32[:n]
        if d32[b32 + _FR32:e32:_W32] != zeros:
            d32[b32 + _FR32:e32:_W32] = zeros
        mine = self._offs_arr[s:s + n]
        if d32[b32 + _O32:e32:_W32] != mine:
            d32[b32 + _O32:e32:_W32] = mine
        d32[b32 + _L32:e32:_W32] = self._bsize_arr[:n]

    def ready(self) -> bool:
        """Cheap check (no validation): has the server filled anything we have not read?"""
        return self.idx[self._tail_i] != self._pos

    def available(self) -> int:
        tail = self.idx[self._tail_i]
        n = (tail - self._pos) & 0xFFFF
        if n > ((self._head - self._pos) & 0xFFFF):
            raise ProtocolViolation("M2S tail moved past the buffers we posted")
        return n

    def end_lease(self) -> None:
        """End a zero-copy lease: the leased buffers go back to the server."""
        if self._held is not None:
            self._held = None
            self.refill()

    def _consumed(self, start: int, zero_copy: bool) -> None:
        if zero_copy:
            if self._held is None:
                self._held = start
        elif self.idx[self._tail_i] == self._pos:
            # drained: post everything.  Not deferred: the server may need the whole ring
            # for its next packet while our application waits for that write to finish
            # before it reads again (tests/test_memory_attacks.py, impossible packet).
            self.refill()
        else:
            # more to read: post in batches (as DPDK does), not one slot per read; the
            # next read, at the latest the one that drains the ring, posts the rest
            self.refill(self._refill_batch)

    def read_into(self, buf: memoryview) -> int:
        """Copy the one packet ready straight from its slot into ``buf`` (a writable byte
        view) and consume it; return its length.  0: nothing to read.  -1: nothing taken,
        because the packet is chained, invalid or longer than ``buf``, because the server
        wrote a region into the slot (the shadow is read regardless; ``read_burst`` puts the
        descriptor back), or because more than one slot is ready (``read_burst`` handles
        those: a burst read costs less per packet than this one-packet path, which is for
        the ping-pong case)."""
        pos = self._pos
        n = (self.idx[self._tail_i] - pos) & 0xFFFF
        if n != 1:
            if n > ((self._head - pos) & 0xFFFF):
                raise ProtocolViolation("M2S tail moved past the buffers we posted")
            return -1 if n else 0
        s = pos & self.mask
        v = self.d64[s * _W64]  # flags, region and length in one load
        length = (v >> _LEN_SHIFT) & 0xFFFFFFFF
        if v & _FR_MASK64 or not 0 < length <= len(buf) or length > self.bsize:
            return -1
        o = self.slot_offsets[s]
        buf[:length] = self.buf[o:o + length]
        self._took_one(pos, length)
        return length

    def _took_one(self, pos: int, length: int) -> None:
        """One packet taken at ``pos``: what ``_took``, ``_consumed`` and ``refill`` do, in
        one call (the per-packet path).  In a ping-pong the ring is drained and the slot
        just read is the only free one: it is reposted with two scalar stores, offset and
        capacity.  The callers take a slot only when its flags and region read 0, so those
        need no store."""
        self._pos = pos = (pos + 1) & 0xFFFF
        st = self.stats
        st.packets += 1
        st.bytes += length
        if self.idx[self._tail_i] == pos:  # drained: post everything (see _consumed)
            head = self._head
            # one free slot, the one just read (a lease in progress would hold more)
            if (head - pos) & 0xFFFF == self.size - 1:
                s = head & self.mask
                b32 = s * _W32
                d32 = self.d32
                d32[b32 + _O32] = self.slot_offsets[s]
                d32[b32 + _L32] = self.bsize
                self._head = head = (head + 1) & 0xFFFF
                self.idx[self._head_i] = head
            else:
                self.refill()
        elif self._held is not None or \
                self.size - ((self._head - pos) & 0xFFFF) >= self._refill_batch:
            self.refill(self._refill_batch)

    def _segment(self, s: int, zero_copy: bool) -> tuple[int, Any]:
        flags = self.d16[s * _W16 + _F16]
        length = self.d32[s * _W32 + _L32]
        if 0 < length <= self.bsize:
            o = self.slot_offsets[s]
            return flags, (self.buf if zero_copy else self.mm)[o:o + length]
        return flags, None

    def read_burst(self, max_packets: int, out: MutableSequence[Any],
                   zero_copy: bool = False) -> int:
        """Append up to ``max_packets`` packets to ``out``; return how many.

        Chains are reassembled (joined into bytes); invalid packets are dropped and
        counted.  Without ``zero_copy`` the slots go back to the peer at once (M2S:
        reposted in batches, and all of them once the ring is drained).  With
        ``zero_copy`` the packets are memoryviews into shared memory and the slots stay
        ours until :meth:`end_lease`.
        """
        pos = self._pos
        n = (self.idx[self._tail_i] - pos) & 0xFFFF
        if not n:
            return 0
        if n > ((self._head - pos) & 0xFFFF):
            raise ProtocolViolation("M2S tail moved past the buffers we posted")
        if n == 1 and not zero_copy and max_packets > 0:
            # the ping-pong case, one packet: flags, region and length in one load (a region
            # other than 0 goes the general way, which ignores it), one call for the rest
            s = pos & self.mask
            v = self.d64[s * _W64]
            length = (v >> _LEN_SHIFT) & 0xFFFFFFFF
            if not v & _FR_MASK64 and 0 < length <= self.bsize:
                o = self.slot_offsets[s]
                out.append(self.mm[o:o + length])
                self._took_one(pos, length)
                return 1
        got = self._read_fast(n, max_packets, out, zero_copy)
        if got >= max_packets or got == n:
            return got
        return got + self._read_rest(n - got, max_packets - got, out, zero_copy)

    def _read_fast(self, n: int, max_packets: int, out: MutableSequence[Any],
                   zero_copy: bool) -> int:
        """The burst fast path over ``n`` available slots: takes the valid, unchained prefix
        (at most ``max_packets``); returns how many packets it took."""
        cons = self._pos
        src = self.buf if zero_copy else self.mm
        want = min(n, max_packets)
        got = nbytes = 0
        while got < want:  # at most two runs: before and after the ring wraps
            s = cons & self.mask
            run = min(want - got, self.size - s)
            if run == 1:  # one packet: scalar loads are cheaper than strided ones
                length = self.d32[s * _W32 + _L32]
                if self.d16[s * _W16 + _F16] or not 0 < length <= self.bsize:
                    break
                o = self.slot_offsets[s]
                out.append(src[o:o + length])
                lens_sum = length
            else:
                lens = self.d32[s * _W32 + _L32:(s + run) * _W32:_W32].tolist()
                window = _window(lens, self.bsize)
                # flags: one C-level compare against zeros, no list unless it fails (no view
                # into shared memory is kept in a local: a traceback would pin the mapping)
                if self.d16[s * _W16 + _F16:(s + run) * _W16:_W16] != self._zeros16[:run] \
                        or not window:
                    # a chain or a bad descriptor: take the clean prefix, the slow path the rest
                    flags = self.d16[s * _W16 + _F16:(s + run) * _W16:_W16].tolist()
                    k = _clean_prefix(flags, lens, self.bsize)
                    if k:
                        out.extend([src[o:o + m]
                                    for o, m in zip(self.slot_offsets[s:s + k], lens)])
                        cons += k
                        got += k
                        nbytes += sum(lens[:k])
                    break
                out.extend([src[o:o + m] for o, m in zip(self.slot_offsets[s:s + run], lens)])
                lens_sum = window[1]
            cons += run
            got += run
            nbytes += lens_sum
        if got:
            self._took(cons, got, nbytes, 0, zero_copy)
        return got


class S2MConsumer(_Consumer):
    """Server receive (S2M).  The client writes ``head`` and descriptors; we write ``tail``."""

    __slots__ = ("_held",)
    _dir = "S2M"

    def __init__(self, regions: list[Region], region: int, offset: int, log2_ring_size: int,
                 layout: RingLayout) -> None:
        super().__init__(regions, region, offset, log2_ring_size, layout)
        self._pos = self.tail
        self._held: int | None = None  # first slot of a zero-copy lease: tail stays there

    def end_lease(self) -> None:
        """End a zero-copy lease: give the leased slots back to the client."""
        if self._held is not None:
            self._held = None
            self.idx[self._tail_i] = self._pos

    def _consumed(self, start: int, zero_copy: bool) -> None:
        if zero_copy:
            if self._held is None:
                self._held = start
        elif self._held is None:
            self.idx[self._tail_i] = self._pos  # release the slots

    def ready(self) -> bool:
        """Cheap check (no validation): has the client published anything we have not read?"""
        return self.idx[self._head_i] != self._pos

    def available(self) -> int:
        n = (self.idx[self._head_i] - self._pos) & 0xFFFF
        if n > self.size:
            raise ProtocolViolation("S2M head ran more than a ring ahead of tail")
        return n

    def read_burst(self, max_packets: int, out: MutableSequence[Any],
                   zero_copy: bool = False) -> int:
        """Append up to ``max_packets`` packets to ``out``; return how many.

        Chains are reassembled (joined into bytes); invalid packets are dropped and
        counted.  Without ``zero_copy`` the slots go back to the peer at once (M2S:
        reposted in batches, and all of them once the ring is drained).  With
        ``zero_copy`` the packets are memoryviews into shared memory and the slots stay
        ours until :meth:`end_lease`.
        """
        pos = self._pos
        n = (self.idx[self._head_i] - pos) & 0xFFFF
        if not n:
            return 0
        if n > self.size:
            raise ProtocolViolation("S2M head ran more than a ring ahead of tail")
        got = self._read_fast(n, max_packets, out, zero_copy)
        if got >= max_packets or got == n:
            return got
        return got + self._read_rest(n - got, max_packets - got, out, zero_copy)

    def _read_fast(self, n: int, max_packets: int, out: MutableSequence[Any],
                   zero_copy: bool) -> int:
        """The burst fast path over ``n`` available slots: takes the valid, unchained prefix
        (at most ``max_packets``), in any regions; returns how many packets it took."""
        cur = self._pos
        regions = self.regions
        nregions = len(regions)
        want = min(n, max_packets)
        got = nbytes = 0
        while got < want:  # at most two runs: before and after the ring wraps
            s = cur & self.mask
            run = min(want - got, self.size - s)
            if run == 1:  # one packet: scalar loads are cheaper than strided ones
                flags, g, length, offset = self._desc(s)
                if flags or g >= nregions or not 0 < length <= MAX_DESC_LENGTH:
                    break
                r = regions[g]
                if offset + length > r.size:
                    break
                out.append((r.view if zero_copy else r.mm)[offset:offset + length])
                lens_sum = length
            else:
                e16 = (s + run) * _W16
                e32 = (s + run) * _W32
                d16 = self.d16
                d32 = self.d32
                # flags and region of a slot are one u32: one list, one count for both
                fr = d32[s * _W32 + _FR32:e32:_W32].tolist()
                lens = d32[s * _W32 + _L32:e32:_W32].tolist()
                offs = d32[s * _W32 + _O32:e32:_W32].tolist()
                w = fr[0]
                g = w >> _REGION_SHIFT & 0xFFFF
                if fr.count(w) == run and not w & _FLAGS_MASK32 and g < nregions and \
                        (window := _window(lens, MAX_DESC_LENGTH)) and \
                        sorted(offs)[-1] + window[0] <= regions[g].size:
                    # the common case: one region, nothing chained, everything valid (the
                    # largest offset plus the longest length bounds every packet's end)
                    src = regions[g].view if zero_copy else regions[g].mm
                    out.extend([src[o:o + m] for o, m in zip(offs, lens)])
                    lens_sum = window[1]
                else:
                    flags_l = d16[s * _W16 + _F16:e16:_W16].tolist()
                    regs = d16[s * _W16 + _R16:e16:_W16].tolist()
                    k = self._take_mixed(flags_l, regs, lens, offs, out, zero_copy)
                    if k:
                        cur += k
                        got += k
                        nbytes += sum(lens[:k])
                    if k < run:  # a chain or a bad descriptor: the slow path from there
                        break
                    continue
            cur += run
            got += run
            nbytes += lens_sum
        if got:
            self._took(cur, got, nbytes, 0, zero_copy)
        return got

    def _take_mixed(self, flags: list[int], regs: list[int], lens: list[int], offs: list[int],
                    out: MutableSequence[Any], zero_copy: bool) -> int:
        """The fast path of a window the one-region check refused: descriptors in several
        regions (a VPP zero-copy client has one region per buffer pool), or a chained or
        invalid one.  Appends the longest valid, unchained prefix; returns its length.

        Every descriptor taken is checked as the slow path checks it: a mapped region,
        ``0 < length <= MAX_DESC_LENGTH``, ``offset + length`` inside its own region."""
        regions = self.regions
        nregions = len(regions)
        k = _clean_prefix(flags, lens, MAX_DESC_LENGTH)
        if not k:
            return 0
        rk = regs[:k] if k < len(regs) else regs
        if max(rk) >= nregions:
            k = list(map(nregions.__le__, rk)).index(True)
            if not k:
                return 0
            rk = rk[:k]
        sizes = [r.size for r in regions]
        ends = list(map(add, offs[:k], lens[:k]))
        over = list(map(gt, ends, map(sizes.__getitem__, rk)))
        if True in over:
            k = over.index(True)
            if not k:
                return 0
        srcs = [r.view if zero_copy else r.mm for r in regions]
        out.extend([srcs[g][o:o + m] for g, o, m in zip(rk[:k], offs, lens)])
        return k

    def read_into(self, buf: memoryview) -> int:
        """Copy the one packet ready straight from its slot into ``buf`` (a writable byte
        view) and consume it; return its length.  0: nothing to read.  -1: nothing taken,
        because the packet is chained, invalid or longer than ``buf``, or because more than
        one slot is ready (``read_burst`` handles those: a burst read costs less per packet
        than this one-packet path, which is for the ping-pong case)."""
        pos = self._pos
        n = (self.idx[self._head_i] - pos) & 0xFFFF
        if n != 1:
            if n > self.size:
                raise ProtocolViolation("S2M head ran more than a ring ahead of tail")
            return -1 if n else 0
        flags, g, length, offset = self._desc(pos & self.mask)
        regions = self.regions
        if flags or g >= len(regions) or not 0 < length <= len(buf) or length > MAX_DESC_LENGTH:
            return -1
        r = regions[g]
        if offset + length > r.size:
            return -1
        buf[:length] = r.view[offset:offset + length]
        # what _took and _consumed do, inline (this is the per-packet path)
        self._pos = pos = (pos + 1) & 0xFFFF
        st = self.stats
        st.packets += 1
        st.bytes += length
        if self._held is None:
            self.idx[self._tail_i] = pos  # release the slot
        return length

    def _segment(self, s: int, zero_copy: bool) -> tuple[int, Any]:
        flags, region, length, offset = self._desc(s)
        regions = self.regions
        if region < len(regions) and 0 < length <= MAX_DESC_LENGTH:
            r = regions[region]
            if offset + length <= r.size:
                return flags, (r.view if zero_copy else r.mm)[offset:offset + length]
        return flags, None


class M2SProducer(_Producer):
    """Server transmit (M2S).  The client posts buffers (``head``); we fill and move ``tail``
    (``_pos``).

    The capacity of each buffer is the ``length`` the client posted; we never
    change ``region`` or ``offset`` (§7.3), and write ``flags`` and ``length``
    as separate fields.
    """

    __slots__ = ("_bsize",)

    def __init__(self, regions: list[Region], region: int, offset: int, log2_ring_size: int,
                 layout: RingLayout) -> None:
        super().__init__(regions, region, offset, log2_ring_size, layout)
        self._pub_i = self._tail_i
        self._pos = self.tail
        # The buffer size the client announced: it initialises every descriptor's length
        # with it (§6.5).  Used to refuse at once a packet (or a reservation) that could
        # never fit, even while no buffer is posted; anything out of range means "unknown".
        cap = int(self.d32[_L32])
        self._bsize = cap if 0 < cap <= MAX_DESC_LENGTH else MAX_DESC_LENGTH

    def free_slots(self) -> int:
        n = (self.idx[self._head_i] - self._pos) & 0xFFFF
        if n > self.size:
            raise ProtocolViolation("M2S head ran more than a ring ahead of tail")
        return n

    def _target(self, s: int) -> tuple[Region, int, int]:
        """Validated (region, offset, capacity) of posted slot ``s``."""
        _f, region, cap, offset = self._desc(s)
        if region >= len(self.regions):
            self.stats.bad_descriptors += 1
            raise ProtocolViolation(f"posted M2S buffer in unknown region {region}")
        r = self.regions[region]
        if offset >= r.size or cap == 0:
            self.stats.bad_descriptors += 1
            raise ProtocolViolation("posted M2S buffer outside its region or empty")
        return r, offset, min(cap, r.size - offset)

    def write_burst(self, packets: Packets, start: int = 0) -> int:
        """Fill posted buffers with packets from ``packets[start:]``; return how many.

        Raises :class:`PacketTooLarge` (publishing nothing) when one of them could never
        fit: more than ring size x the announced buffer size, or more than the whole
        ring's posted buffers hold.
        """
        free = self.free_slots()
        total = len(packets) - start
        if total <= 0:
            return 0
        if not free:
            _check_fits(packets, start, self.size * self._bsize, self._bsize)
            return 0
        tail = self._pos
        d16 = self.d16
        d32 = self.d32
        done = nbytes = 0
        while done < total and free:  # at most two runs: before and after the ring wraps
            s = tail & self.mask
            k = min(free, total - done, self.size - s)
            first = start + done
            batch = packets[first:first + k] if (first or k < len(packets)) else packets
            lens = list(map(len, batch))
            e16 = (s + k) * _W16
            e32 = (s + k) * _W32
            regs = d16[s * _W16 + _R16:e16:_W16].tolist()
            g = regs[0]
            if regs.count(g) != k or g >= len(self.regions):
                break
            caps = d32[s * _W32 + _L32:e32:_W32].tolist()
            offs = d32[s * _W32 + _O32:e32:_W32].tolist()
            r = self.regions[g]
            # every packet fits the smallest posted buffer and the largest offset plus the
            # longest packet stays inside the region (sufficient, not necessary: what these
            # refuse, the slow path checks one by one)
            cap = caps[0] if caps.count(caps[0]) == k else sorted(caps)[0]
            window = _window(lens, cap)
            if not window or sorted(offs)[-1] + window[0] > r.size:
                break
            mm = r.mm
            for p, o, m in zip(batch, offs, lens):
                mm[o:o + m] = p
            d16[s * _W16 + _F16:e16:_W16] = self._zeros16[:k]
            d32[s * _W32 + _L32:e32:_W32] = memoryview(array.array("I", lens))
            tail += k
            free -= k
            done += k
            nbytes += window[1]
        if done < total:  # before publishing: refuse now if one of the rest never fits
            _check_fits(packets, start + done, self.size * self._bsize, self._bsize)
        if done:
            self._publish(tail, done, nbytes)
        if done < total and free:  # chains, or descriptors the fast path would not trust
            try:
                done += self._write_slow(packets, start + done, free)
            except PacketTooLarge:  # posted buffers smaller than announced (see _write_chain)
                if done:
                    return done  # published exactly that many; the next call raises
                raise
        return done

    def write_one(self, pkt: Any) -> bool:
        """Fill one posted buffer if there is one: the per-packet fast path of ``write_burst``."""
        tail = self._pos
        n = (self.idx[self._head_i] - tail) & 0xFFFF
        if n and n <= self.size:
            s = tail & self.mask
            b16 = s * _W16
            b32 = s * _W32
            d16 = self.d16
            d32 = self.d32
            g = d16[b16 + _R16]
            cap = d32[b32 + _L32]
            o = d32[b32 + _O32]
            length = len(pkt)
            if g < len(self.regions) and 0 < length <= cap:
                r = self.regions[g]
                if o + length <= r.size:
                    r.mm[o:o + length] = pkt
                    d16[b16 + _F16] = 0
                    d32[b32 + _L32] = length
                    self._publish(tail + 1, 1, length)
                    return True
        elif not n and 0 < len(pkt) <= self._bsize:
            return False  # nothing posted, and it fits one announced buffer: wait for room
        return self.write_burst((pkt,)) == 1

    def reserve(self, count: int, size: int) -> list[memoryview] | None:
        """Writable views of ``count`` posted buffers, ``size`` bytes each (zero-copy
        transmit), or None while fewer are posted.  Nothing is published until
        :meth:`commit`.

        Raises :class:`PacketTooLarge` at once, posted buffers or not, when ``size`` is
        above the buffer size the client announced, or when a buffer it posted (among the
        first ``count``) is smaller than ``size``: waiting would never end."""
        if size <= 0:
            raise ValueError("size must be positive")
        if size > self._bsize:
            raise PacketTooLarge(f"reserve size {size} above the peer's {self._bsize}-byte "
                                 "buffers")
        if not 0 < count <= self.size:
            raise ValueError(f"count must be within 1..{self.size}")
        tail = self._pos
        targets = [self._target((tail + i) & self.mask)
                   for i in range(min(count, self.free_slots()))]
        for _r, _offset, cap in targets:
            if cap < size:
                raise PacketTooLarge(f"the peer posted a {cap}-byte buffer; {size} requested")
        if len(targets) < count:
            return None
        return [r.view[offset:offset + size] for r, offset, _cap in targets]

    def commit(self, lengths: Sequence[int]) -> None:
        """Publish the first ``len(lengths)`` reserved buffers with these lengths
        (each at most the size reserved; the caller checks it)."""
        if not lengths:
            return
        if min(lengths) <= 0:
            raise ValueError("each length must be positive")
        tail = self._pos
        d16 = self.d16
        d32 = self.d32
        for i, length in enumerate(lengths):
            s = (tail + i) & self.mask
            d16[s * _W16 + _F16] = 0
            d32[s * _W32 + _L32] = length
        self._publish(tail + len(lengths), len(lengths), sum(lengths))

    def _write_slow(self, packets: Packets, start: int, free: int) -> int:
        tail = self._pos
        n = nbytes = 0
        for i in range(start, len(packets)):
            pkt = packets[i]
            if not len(pkt):
                raise ValueError("cannot send an empty packet")
            if len(pkt) > MAX_PACKET_SIZE:
                raise PacketTooLarge(f"packet of {len(pkt)} bytes exceeds MAX_PACKET_SIZE "
                                     f"({MAX_PACKET_SIZE})")
            used = self._write_chain(pkt, tail, free)
            if not used:
                break
            tail += used
            free -= used
            nbytes += len(pkt)
            n += 1
        if n:
            self._publish(tail, n, nbytes)
        return n

    def _write_chain(self, pkt: Any, tail: int, free: int) -> int:
        """Spread ``pkt`` over posted buffers from ``tail``; 0 if not enough are posted."""
        mv = memoryview(pkt)
        length = len(mv)
        pos = 0
        slots: list[tuple[int, int]] = []
        t = tail
        while pos < length:
            if len(slots) >= free:
                if free >= self.size:
                    raise PacketTooLarge(f"packet of {length} bytes does not fit the whole ring")
                return 0  # roll back: nothing was published
            s = t & self.mask
            r, offset, cap = self._target(s)
            seg = min(cap, length - pos)
            r.mm[offset:offset + seg] = mv[pos:pos + seg]
            slots.append((s, seg))
            pos += seg
            t += 1
        last = len(slots) - 1
        d16 = self.d16
        d32 = self.d32
        for k, (s, seg) in enumerate(slots):
            d16[s * _W16 + _F16] = DESC_FLAG_NEXT if k < last else 0
            d32[s * _W32 + _L32] = seg
        return len(slots)


def _check_fits(packets: Packets, start: int, capacity: int, bsize: int) -> None:
    """Raise if a packet of ``packets[start:]`` can never be written to a ring that holds
    at most ``capacity`` bytes in buffers of ``bsize``: :class:`PacketTooLarge` when it is
    longer, ``ValueError`` when it is empty.  Waiting for room would never end."""
    rest = packets[start:] if start else packets
    if not rest:
        return
    lens = list(map(len, rest))
    longest = max(lens)
    if longest > capacity or longest > MAX_PACKET_SIZE:
        i = lens.index(longest)
        if longest > MAX_PACKET_SIZE:
            raise PacketTooLarge(f"packet {start + i} of {longest} bytes exceeds MAX_PACKET_SIZE "
                                 f"({MAX_PACKET_SIZE})")
        need = -(-longest // bsize)
        raise PacketTooLarge(f"packet {start + i} of {longest} bytes needs {need} buffers of "
                             f"{bsize} bytes; the ring has {capacity // bsize}")
    if not min(lens):
        raise ValueError(f"cannot send an empty packet (packet {start + lens.index(0)})")


def validate_initial_indices(ring: _Ring) -> None:
    """At CONNECT/CONNECTED: ``(head - tail) mod 2^16 <= R`` (§12.5)."""
    if ((ring.head - ring.tail) & 0xFFFF) > ring.size:
        raise ProtocolViolation("ring indices inconsistent at connect")


__all__ = [
    "MAX_DESC_LENGTH",
    "MAX_PACKET_SIZE",
    "M2SConsumer",
    "M2SProducer",
    "RingStats",
    "S2MConsumer",
    "S2MProducer",
    "check_ring_geometry",
    "validate_initial_indices",
]
