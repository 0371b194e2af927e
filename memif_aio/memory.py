"""Shared memory: memfd regions, mmap, seals, and the client's layout math (the only copy:
:meth:`MemoryConfig.region_size <memif_aio.MemoryConfig.region_size>` asks :class:`ClientLayout`).

The client (slave) creates every region and ring (protocol reference §6).  The
server (master) only maps what it is given, after checking the fd (§12.3).
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import stat
import sys
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolViolation
from .wire import COOKIE, DESC_SIZE, DESC_STRUCT, U32, RingLayout

# Linux fcntl numbers, absent from older Python builds' fcntl module.
F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
F_SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 0x0002)

#: Offsets and u32 lengths address at most 4 GiB of a region (§6.1).
MAX_REGION_SIZE = 1 << 32

#: Python 3.13+ can map without keeping a duplicate of the fd inside the mmap object.
_MMAP_KW: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}


def _map(fd: int, size: int) -> mmap.mmap:
    return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, **_MMAP_KW)


class Region:
    """One mapped shared-memory region: its mapping, and its fd while one is needed.

    ``fd`` is -1 once nothing needs it: a peer's region fd is closed as soon as it
    is mapped (the mapping does not need it).  Our own (client) region keeps its fd
    until :meth:`close`, because it is sent to the peer in ADD_REGION.
    """

    __slots__ = ("closed", "fd", "mm", "size", "view")

    def __init__(self, fd: int, size: int, mm: mmap.mmap) -> None:
        self.fd = fd
        self.size = size
        self.mm = mm
        self.view = memoryview(mm)
        self.closed = False

    @classmethod
    def create(cls, size: int, name: str = "memif_region_0") -> Region:
        """Create a sealed memfd region of ``size`` bytes (client side, §6.1)."""
        if not 0 < size <= MAX_REGION_SIZE:
            raise ValueError(f"region size {size} out of range 1..{MAX_REGION_SIZE}")
        fd = os.memfd_create(name, os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        try:
            fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK)
            os.ftruncate(fd, size)
            mm = _map(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, size, mm)

    @classmethod
    def map_peer(cls, fd: int, size: int, *, require_seal: bool = True) -> Region:
        """Map a region fd received from the peer (server side, §12.3).

        Raises :class:`ProtocolViolation` with a reason when the fd is not a
        regular file, is smaller than ``size``, or (``require_seal``) could be
        shrunk under our mapping, which would kill us with SIGBUS.  A memfd the
        peer did not seal but created with ``MFD_ALLOW_SEALING`` is sealed here
        (``F_SEAL_SHRINK``: the peer's ``ftruncate`` then fails), so only fds
        that cannot be sealed (hugetlbfs, plain files, memfds without
        ``MFD_ALLOW_SEALING``) depend on ``require_seal``.  The fd is not closed
        on failure: the caller owns it.  On success it is closed (the mapping keeps
        the memory; the seal lives on the file): the region holds no fd.
        """
        if not 0 < size <= MAX_REGION_SIZE:
            raise ProtocolViolation(f"invalid region size {size}")
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise ProtocolViolation(f"region fd unusable: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ProtocolViolation("region fd is not a shared-memory file")
        if st.st_size < size:
            raise ProtocolViolation(f"region size {size} exceeds its file ({st.st_size} bytes)")
        if not _seal_shrink(fd):
            if require_seal:
                raise ProtocolViolation(
                    "region fd is not sealed against shrinking (F_SEAL_SHRINK)")
        elif os.fstat(fd).st_size < size:  # it may have shrunk before our seal took hold
            raise ProtocolViolation(f"region size {size} exceeds its file")
        try:
            mm = _map(fd, size)
        except (OSError, ValueError) as exc:
            raise ProtocolViolation(f"mmap: {exc}") from None
        os.close(fd)
        return cls(-1, size, mm)

    def close(self) -> None:
        """Unmap and close the fd.  Idempotent, and never fails.

        While views into the mapping are still alive (a zero-copy packet, or a
        slice of one, that someone still references), ``mmap.close()`` refuses.
        The region then drops its own reference to the mmap object: the views
        are its last owners, and the mapping is unmapped the moment the last of
        them is released or collected (deterministically, by reference count;
        the caller has released the region's and the rings' own views first).
        """
        if self.closed:
            return
        self.closed = True
        mm = self.mm
        self.view.release()
        try:
            mm.close()
        except BufferError:  # exported views still alive: they own the mapping now
            pass
        del mm
        self.mm = CLOSED_MAPPING
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


#: What a closed region's ``mm`` is: a closed, empty placeholder (any use raises ValueError).
CLOSED_MAPPING = mmap.mmap(-1, 1)
CLOSED_MAPPING.close()


def _seal_shrink(fd: int) -> bool:
    """True when ``fd`` is (now) sealed against shrinking; we add the seal if we can."""
    try:
        if fcntl.fcntl(fd, F_GET_SEALS) & F_SEAL_SHRINK:
            return True
        fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK)
    except OSError:  # not a memfd, no MFD_ALLOW_SEALING, or F_SEAL_SEAL set
        return False
    return True


@dataclass(frozen=True)
class ClientLayout:
    """The single-region VPP/DPDK layout a client creates (§6.4).

    S2M rings first, then M2S rings, then one buffer per descriptor of every
    ring, in ring order.  All arithmetic is in Python integers (no u16 wrap).
    """

    num_s2m: int
    num_m2s: int
    log2_ring_size: int
    buffer_size: int
    ring: RingLayout

    @property
    def ring_slots(self) -> int:
        return 1 << self.log2_ring_size

    @property
    def ring_stride(self) -> int:
        return self.ring.ring_size(self.log2_ring_size)

    @property
    def rings_size(self) -> int:
        return (self.num_s2m + self.num_m2s) * self.ring_stride

    @property
    def region_size(self) -> int:
        return self.rings_size + (self.num_s2m + self.num_m2s) * self.ring_slots * self.buffer_size

    def ring_offset(self, ring_type: int, index: int) -> int:
        return (index + ring_type * self.num_s2m) * self.ring_stride

    def buffer_offset(self, ring_type: int, index: int, slot: int) -> int:
        ring_no = index + ring_type * self.num_s2m
        return self.rings_size + (ring_no * self.ring_slots + slot) * self.buffer_size

    def initialise(self, region: Region) -> None:
        """Write cookies and descriptors of every ring (§6.5); the memfd starts zeroed."""
        buf = region.view
        R = self.ring_slots
        for ring_type, count in ((0, self.num_s2m), (1, self.num_m2s)):
            for index in range(count):
                base = self.ring_offset(ring_type, index)
                U32.pack_into(buf, base + self.ring.cookie, COOKIE)
                desc0 = base + self.ring.desc
                for slot in range(R):
                    DESC_STRUCT.pack_into(buf, desc0 + DESC_SIZE * slot, 0, 0, self.buffer_size,
                                          self.buffer_offset(ring_type, index, slot), 0)


#: The cache-line sizes a ring layout may use (§6.2).
CACHE_LINE_SIZES = (64, 128)


def infer_cache_line(rings: list[tuple[str, int, int, int]]) -> int | None:
    """The cache-line size C of a client's ring layout, from where its rings are.

    ``rings`` holds ``(name, region, offset, log2_ring_size)`` of every ring the client
    announced (ADD_RING).  VPP, libmemif, DPDK, gomemif and memif_aio put the rings of
    a region back to back, so two neighbours in a region lie ``2*C + 16 * 2**log2``
    bytes apart (§6.4).  Every gap between neighbours must give the same C, 64 or 128.
    Returns None when no region holds two rings (nothing to infer from); raises
    :class:`ProtocolViolation` naming the rings and the gap seen when the layout fits
    neither 64 nor 128 (or fits one here and the other there).
    """
    by_region: dict[int, list[tuple[int, int, str]]] = {}
    for name, region, offset, log2 in rings:
        by_region.setdefault(region, []).append((offset, log2, name))
    # the reason leads with what a peer needs: DISCONNECT carries its first 95 bytes
    found: tuple[int, int, str] | None = None  # (C, gap, where it was seen)
    for region in sorted(by_region):
        placed = sorted(by_region[region])
        for (off_a, log2_a, name_a), (off_b, _log2_b, name_b) in itertools.pairwise(placed):
            gap = off_b - off_a
            descs = DESC_SIZE << log2_a
            seen = (f"{name_a} at offset {off_a}, {name_b} at offset {off_b} of region "
                    f"{region}, 2^{log2_a} slots")
            fits = [c for c in CACHE_LINE_SIZES if gap == 2 * c + descs]
            if not fits:
                expect = " or ".join(f"{2 * c + descs} ({c})" for c in CACHE_LINE_SIZES)
                raise ProtocolViolation(
                    f"cache line neither 64 nor 128: rings {gap} bytes apart, not {expect} "
                    f"({seen}); set cache_line_size")
            if found is not None and found[0] != fits[0]:
                raise ProtocolViolation(
                    f"cache line inconsistent: rings {found[1]} bytes apart mean {found[0]}, "
                    f"{gap} bytes apart {fits[0]} ({found[2]}; {seen})")
            found = (fits[0], gap, seen)
    return found[0] if found is not None else None
