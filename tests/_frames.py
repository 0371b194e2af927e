"""The Ethernet frames the interop tests send to a real peer and check on return.

Every byte of a frame follows from (seq, size, qid), so a frame that comes back
(MACs swapped by testpmd's ``macswap``) can be checked without keeping a copy.
A top-level module, like ``leaks`` and ``_harness``: the interop tests import it
as ``_frames``.
"""

from __future__ import annotations

import random
import struct

DST = bytes.fromhex("020000000002")
SRC = bytes.fromhex("020000000001")
ETH_DATA = b"\x88\xb5"  # IEEE local experimental EtherTypes
ETH_PROBE = b"\x88\xb6"
HDR = struct.Struct(">BI")  # queue id, sequence number (after the Ethernet header)
PATTERN = random.Random(20240611).randbytes(1 << 17)
#: the largest frame ``frame`` makes
MAX_FRAME = 10000


def frame(seq: int, size: int, qid: int = 0, ethertype: bytes = ETH_DATA) -> bytes:
    """A frame whose every byte follows from (seq, size, qid)."""
    if not len(DST + SRC + ethertype) + HDR.size <= size <= MAX_FRAME:
        raise ValueError(f"frame size {size} out of range")
    head = DST + SRC + ethertype + HDR.pack(qid, seq)
    off = (seq * 7919 + qid * 104729) % (len(PATTERN) - MAX_FRAME)
    return head + PATTERN[off:off + size - len(head)]


def swap_macs(f: bytes) -> bytes:
    """What testpmd's ``macswap`` does to a frame."""
    return f[6:12] + f[0:6] + f[12:]


def describe(p: bytes) -> str:
    """A frame in a few words, for assertion messages."""
    if len(p) >= 19 and p[12:14] in (ETH_DATA, ETH_PROBE):
        qid, seq = HDR.unpack_from(p, 14)
        return f"{len(p)} bytes, {p[12:14].hex()}, queue {qid}, seq {seq}"
    return f"{len(p)} bytes: {p[:20].hex()}"
