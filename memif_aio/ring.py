"""Ring logic over shared memory (sans-I/O): the memif data path.

Four roles exist (protocol reference §7.3):

* :class:`S2MProducer` - client transmit: writes packets into its own buffers.
* :class:`S2MConsumer` - server receive: reads descriptors the client wrote.
* :class:`M2SProducer` - server transmit: fills buffers the client posted.
* :class:`M2SConsumer` - client receive: reads what the server filled, reposts.

Every peer-written value (head/tail, descriptor fields) is loaded once into a
local, validated, and only the local is used (§12.7).  Index errors that
mean the ring is corrupt raise :class:`~memif_aio.errors.ProtocolViolation`
(the caller disconnects); a bad descriptor drops its packet and is counted.

The hot path uses offsets and ``struct.Struct`` objects derived in
:mod:`memif_aio.wire`; there is no construct call here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PacketTooLarge, ProtocolViolation
from .memory import Region
from .wire import (
    COOKIE,
    DESC_FLAG_NEXT,
    DESC_FLAGS_OFF,
    DESC_HEAD_STRUCT,
    DESC_LENGTH_OFF,
    DESC_SIZE,
    RING_FLAG_MASK_INT,
    U16,
    U32,
    RingLayout,
)

_pack_desc = DESC_HEAD_STRUCT.pack_into
_unpack_desc = DESC_HEAD_STRUCT.unpack_from
_pack_u16 = U16.pack_into
_pack_u32 = U32.pack_into


@dataclass
class RingStats:
    """Counters of one ring endpoint."""

    packets: int = 0
    bytes: int = 0
    drops: int = 0
    bad_descriptors: int = 0
    interrupts: int = field(default=0)


def check_ring_geometry(regions: list[Region], region: int, offset: int, log2_ring_size: int,
                        layout: RingLayout) -> tuple[int, int]:
    """Validate a ring announced by ADD_RING against the mapped regions (§12.4).

    Returns the ring's ``(start, end)`` byte range in its region.
    """
    if region >= len(regions):
        raise ProtocolViolation(f"ring references unknown region {region}")
    if log2_ring_size > 14:
        raise ProtocolViolation(f"log2 ring size {log2_ring_size} above the advertised 14")
    if offset % 8:
        raise ProtocolViolation(f"misaligned ring offset {offset}")
    end = offset + layout.ring_size(log2_ring_size)
    if end > regions[region].size:
        raise ProtocolViolation(
            f"ring at offset {offset} ({end - offset} bytes) exceeds region {region} "
            f"of {regions[region].size} bytes")
    return offset, end


class _Ring:
    """Common state: the index view, the descriptor base and the ring geometry."""

    __slots__ = ("regions", "buf", "idx", "desc0", "size", "mask", "layout", "_head_i",
                 "_tail_i", "_flags_i", "stats", "ring_offset", "region_index")

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
        self.idx.release()


class _ClientRing(_Ring):
    """A ring the client created: it knows each slot's own buffer (its shadow)."""

    __slots__ = ("bsize", "slot_offsets", "mm")

    def __init__(self, regions: list[Region], region: int, offset: int, log2_ring_size: int,
                 layout: RingLayout, buffer_offsets: list[int], buffer_size: int) -> None:
        super().__init__(regions, region, offset, log2_ring_size, layout)
        self.bsize = buffer_size
        self.slot_offsets = buffer_offsets
        self.mm = regions[0].mm


class S2MProducer(_ClientRing):
    """Client transmit (S2M).  Only we write ``head``; the server writes ``tail``."""

    __slots__ = ("_head",)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._head = 0
        self.idx[self._head_i] = 0

    def free_slots(self) -> int:
        used = (self._head - self.idx[self._tail_i]) & 0xFFFF
        if used > self.size:
            raise ProtocolViolation("S2M tail moved outside [head - ring size, head]")
        return self.size - used

    def slots_for(self, length: int) -> int:
        return max(1, -(-length // self.bsize))

    def write_burst(self, packets: list[bytes] | tuple[bytes, ...], start: int = 0) -> int:
        """Publish as many packets from ``packets[start:]`` as fit; return how many.

        A packet is published whole or not at all (chains move ``head`` once).
        """
        free = self.free_slots()
        head = self._head
        mask = self.mask
        bsize = self.bsize
        mm = self.mm
        buf = self.buf
        desc0 = self.desc0
        offs = self.slot_offsets
        region = self.region_index
        n = 0
        nbytes = 0
        total = len(packets)
        i = start
        while i < total:
            pkt = packets[i]
            length = len(pkt)
            if length <= bsize:
                if not free:
                    break
                if not length:
                    raise ValueError("cannot send an empty packet")
                s = head & mask
                off = offs[s]
                mm[off:off + length] = pkt
                _pack_desc(buf, desc0 + (s << 4), 0, region, length, off)
                head += 1
                free -= 1
            else:
                need = -(-length // bsize)
                if need > self.size:
                    raise PacketTooLarge(
                        f"packet of {length} bytes needs {need} buffers of {bsize}; "
                        f"the ring has {self.size}")
                if need > free:
                    break
                mv = memoryview(pkt)
                pos = 0
                for _ in range(need):
                    s = head & mask
                    off = offs[s]
                    seg = min(bsize, length - pos)
                    mm[off:off + seg] = mv[pos:pos + seg]
                    pos += seg
                    _pack_desc(buf, desc0 + (s << 4), DESC_FLAG_NEXT if pos < length else 0,
                               region, seg, off)
                    head += 1
                free -= need
            nbytes += length
            n += 1
            i += 1
        if n:
            self._head = head & 0xFFFF
            self.idx[self._head_i] = self._head  # publish (single aligned 16-bit store)
            st = self.stats
            st.packets += n
            st.bytes += nbytes
        return n


class M2SConsumer(_ClientRing):
    """Client receive (M2S).  We post our buffers (``head``); the server fills (``tail``).

    ``region``/``offset`` of a filled slot are never read back from shared
    memory: the private shadow says where our buffer is (§12.7).
    """

    __slots__ = ("_head", "_cons")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._head = 0
        self._cons = 0
        self.idx[self._head_i] = 0

    def refill(self) -> int:
        """Post every free slot back to the server; returns the number posted."""
        head = self._head
        k = self.size - ((head - self._cons) & 0xFFFF)
        if k <= 0:
            return 0
        buf = self.buf
        desc0 = self.desc0
        offs = self.slot_offsets
        mask = self.mask
        bsize = self.bsize
        region = self.region_index
        for _ in range(k):
            s = head & mask
            _pack_desc(buf, desc0 + (s << 4), 0, region, bsize, offs[s])
            head += 1
        self._head = head & 0xFFFF
        self.idx[self._head_i] = self._head
        return k

    def available(self) -> int:
        tail = self.idx[self._tail_i]
        n = (tail - self._cons) & 0xFFFF
        if n > ((self._head - self._cons) & 0xFFFF):
            raise ProtocolViolation("M2S tail moved past the buffers we posted")
        return n

    def read_burst(self, max_packets: int, out: list[bytes]) -> int:
        """Append up to ``max_packets`` packets to ``out``; return how many.

        Consumed slots are reposted at once.
        """
        n = self.available()
        if not n:
            return 0
        cons = self._cons
        mask = self.mask
        buf = self.buf
        desc0 = self.desc0
        mm = self.mm
        offs = self.slot_offsets
        bsize = self.bsize
        got = 0
        nbytes = 0
        bad = 0
        end = cons + n
        while got < max_packets and cons < end:
            s = cons & mask
            flags, _r, length, _o = _unpack_desc(buf, desc0 + (s << 4))
            if not flags & DESC_FLAG_NEXT:
                cons += 1
                if 0 < length <= bsize:
                    off = offs[s]
                    out.append(mm[off:off + length])
                    nbytes += length
                    got += 1
                else:
                    bad += 1
                continue
            # chained packet: its end must lie within the available slots
            parts = []
            ok = True
            c = cons
            while c < end:
                s = c & mask
                flags, _r, length, _o = _unpack_desc(buf, desc0 + (s << 4))
                c += 1
                if ok and 0 < length <= bsize:
                    off = offs[s]
                    parts.append(mm[off:off + length])
                else:
                    ok = False
                if not flags & DESC_FLAG_NEXT:
                    break
            if flags & DESC_FLAG_NEXT:
                # incomplete chain: wait for the rest, unless it can never end
                if n >= self.size:
                    raise ProtocolViolation("M2S chain longer than the ring")
                break
            cons = c
            if ok:
                pkt = b"".join(parts)
                out.append(pkt)
                nbytes += len(pkt)
                got += 1
            else:
                bad += 1
        consumed = (cons - self._cons) & 0xFFFF
        if consumed:
            self._cons = cons & 0xFFFF
            st = self.stats
            st.packets += got
            st.bytes += nbytes
            if bad:
                st.bad_descriptors += bad
                st.drops += bad
            self.refill()
        return got


class S2MConsumer(_Ring):
    """Server receive (S2M).  The client writes ``head`` and descriptors; we write ``tail``."""

    __slots__ = ("_cur",)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._cur = self.tail

    def available(self) -> int:
        n = (self.idx[self._head_i] - self._cur) & 0xFFFF
        if n > self.size:
            raise ProtocolViolation("S2M head ran more than a ring ahead of tail")
        return n

    def _segment(self, s: int) -> tuple[int, bytes | None]:
        """Read descriptor ``s`` once; return ``(flags, data or None if invalid)``."""
        flags, region, length, offset = _unpack_desc(self.buf, self.desc0 + (s << 4))
        regions = self.regions
        if region < len(regions) and 0 < length:
            r = regions[region]
            if offset + length <= r.size:
                return flags, r.mm[offset:offset + length]
        return flags, None

    def read_burst(self, max_packets: int, out: list[bytes]) -> int:
        n = self.available()
        if not n:
            return 0
        cur = self._cur
        end = cur + n
        mask = self.mask
        buf = self.buf
        desc0 = self.desc0
        regions = self.regions
        nregions = len(regions)
        got = 0
        nbytes = 0
        bad = 0
        while got < max_packets and cur < end:
            s = cur & mask
            flags, region, length, offset = _unpack_desc(buf, desc0 + (s << 4))
            if not flags & DESC_FLAG_NEXT:
                cur += 1
                if region < nregions and 0 < length:
                    r = regions[region]
                    if offset + length <= r.size:
                        out.append(r.mm[offset:offset + length])
                        nbytes += length
                        got += 1
                        continue
                bad += 1
                continue
            parts: list[bytes] = []
            ok = True
            c = cur
            while c < end:
                flags, data = self._segment(c & mask)
                c += 1
                if data is None:
                    ok = False
                elif ok:
                    parts.append(data)
                if not flags & DESC_FLAG_NEXT:
                    break
            if flags & DESC_FLAG_NEXT:
                if n >= self.size:
                    raise ProtocolViolation("S2M chain longer than the ring")
                break  # incomplete chain: the rest has not been published yet
            cur = c
            if ok:
                pkt = b"".join(parts)
                out.append(pkt)
                nbytes += len(pkt)
                got += 1
            else:
                bad += 1
        if cur != self._cur:
            self._cur = cur & 0xFFFF
            self.idx[self._tail_i] = self._cur  # release the slots
            st = self.stats
            st.packets += got
            st.bytes += nbytes
            if bad:
                st.bad_descriptors += bad
                st.drops += bad
        return got


class M2SProducer(_Ring):
    """Server transmit (M2S).  The client posts buffers (``head``); we fill and move ``tail``.

    The capacity of each buffer is the ``length`` the client posted; we never
    change ``region`` or ``offset`` (§7.3).
    """

    __slots__ = ("_tail",)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._tail = self.tail

    def free_slots(self) -> int:
        n = (self.idx[self._head_i] - self._tail) & 0xFFFF
        if n > self.size:
            raise ProtocolViolation("M2S head ran more than a ring ahead of tail")
        return n

    def _target(self, s: int) -> tuple[int, int, int]:
        """Validated (region, offset, capacity) of posted slot ``s``."""
        _f, region, cap, offset = _unpack_desc(self.buf, self.desc0 + (s << 4))
        if region >= len(self.regions):
            self.stats.bad_descriptors += 1
            raise ProtocolViolation(f"posted M2S buffer in unknown region {region}")
        size = self.regions[region].size
        if offset >= size or cap == 0:
            self.stats.bad_descriptors += 1
            raise ProtocolViolation("posted M2S buffer outside its region or empty")
        return region, offset, min(cap, size - offset)

    def write_burst(self, packets: list[bytes] | tuple[bytes, ...], start: int = 0) -> int:
        free = self.free_slots()
        tail = self._tail
        mask = self.mask
        buf = self.buf
        desc0 = self.desc0
        regions = self.regions
        nregions = len(regions)
        n = 0
        nbytes = 0
        total = len(packets)
        i = start
        while i < total and free:
            pkt = packets[i]
            length = len(pkt)
            if not length:
                raise ValueError("cannot send an empty packet")
            s = tail & mask
            d = desc0 + (s << 4)
            _f, region, cap, offset = _unpack_desc(buf, d)
            if region < nregions:
                r = regions[region]
                if length <= cap and offset + length <= r.size:  # fast path: fits one buffer
                    r.mm[offset:offset + length] = pkt
                    _pack_u16(buf, d + DESC_FLAGS_OFF, 0)
                    _pack_u32(buf, d + DESC_LENGTH_OFF, length)
                    tail += 1
                    free -= 1
                    nbytes += length
                    n += 1
                    i += 1
                    continue
            used = self._write_chain(pkt, tail, free)
            if not used:
                break
            tail += used
            free -= used
            nbytes += length
            n += 1
            i += 1
        if n:
            self._tail = tail & 0xFFFF
            self.idx[self._tail_i] = self._tail
            st = self.stats
            st.packets += n
            st.bytes += nbytes
        return n

    def _write_chain(self, pkt: bytes, tail: int, free: int) -> int:
        """Spread ``pkt`` over posted buffers from ``tail``; 0 if not enough are posted."""
        mv = memoryview(pkt)
        length = len(pkt)
        pos = 0
        slots: list[tuple[int, int]] = []
        t = tail
        while pos < length:
            if len(slots) >= free:
                if free >= self.size:
                    raise PacketTooLarge(f"packet of {length} bytes does not fit the whole ring")
                return 0  # roll back: nothing was published
            s = t & self.mask
            region, offset, cap = self._target(s)
            seg = min(cap, length - pos)
            self.regions[region].mm[offset:offset + seg] = mv[pos:pos + seg]
            slots.append((s, seg))
            pos += seg
            t += 1
        last = len(slots) - 1
        for k, (s, seg) in enumerate(slots):
            d = self.desc0 + (s << 4)
            _pack_u16(self.buf, d + DESC_FLAGS_OFF, DESC_FLAG_NEXT if k < last else 0)
            _pack_u32(self.buf, d + DESC_LENGTH_OFF, seg)
        return len(slots)


def validate_initial_indices(ring: _Ring) -> None:
    """At CONNECT/CONNECTED: ``(head - tail) mod 2^16 <= R`` (§12.5)."""
    if ((ring.head - ring.tail) & 0xFFFF) > ring.size:
        raise ProtocolViolation("ring indices inconsistent at connect")


__all__ = [
    "DESC_SIZE",
    "M2SConsumer",
    "M2SProducer",
    "RingStats",
    "S2MConsumer",
    "S2MProducer",
    "check_ring_geometry",
    "validate_initial_indices",
]
