"""Byte layouts: golden vectors of the protocol reference (§4, §6, §14), string rules (§4.10).

Everything here is pure: no sockets, no event loop.  The expected bytes are
written out by hand from the reference text, never computed with the code
under test.
"""

from __future__ import annotations

import os
import struct

import pytest

from memif_aio import wire
from memif_aio.memory import ClientLayout, Region
from memif_aio.wire import (
    ACK,
    ADD_REGION,
    ADD_RING,
    CONNECT,
    CONNECTED,
    DESCRIPTOR,
    DISCONNECT,
    HELLO,
    INIT,
    MSG_SIZE,
    Message,
    MsgAck,
    MsgAddRegion,
    MsgAddRing,
    MsgConnect,
    MsgConnected,
    MsgDisconnect,
    MsgHello,
    MsgInit,
    MsgType,
    RingLayout,
    RingType,
    WireError,
    cstr,
    decode_message,
    field_offsets,
    message_type,
    ring_header,
    struct_format,
)


def hx(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def padded(prefix: bytes) -> bytes:
    assert len(prefix) <= MSG_SIZE
    return prefix + bytes(MSG_SIZE - len(prefix))


# ---------------------------------------------------------------------------
# §3 constants
# ---------------------------------------------------------------------------


def test_constants() -> None:
    assert wire.COOKIE == 0x03E31F20
    assert wire.COOKIE.to_bytes(4, "little") == hx("20 1f e3 03")
    assert wire.VERSION == 0x0200
    assert wire.VERSION.to_bytes(2, "little") == hx("00 02")
    assert MSG_SIZE == 128
    assert (wire.NAME_SIZE, wire.SECRET_SIZE, wire.REASON_SIZE, wire.DESC_SIZE) == (32, 24, 96, 16)
    assert [int(t) for t in MsgType] == list(range(9))
    assert [t.name for t in MsgType] == ["NONE", "ACK", "HELLO", "INIT", "ADD_REGION", "ADD_RING",
                                         "CONNECT", "CONNECTED", "DISCONNECT"]
    assert (RingType.S2M, RingType.M2S) == (0, 1)
    assert wire.MSG_ADD_RING_FLAG_S2M == wire.DESC_FLAG_NEXT == wire.RING_FLAG_MASK_INT == 1
    assert (wire.InterfaceMode.ETHERNET, wire.InterfaceMode.IP, wire.InterfaceMode.PUNT_INJECT) == (
        0, 1, 2)


# ---------------------------------------------------------------------------
# §14.1 control-message test vectors, byte for byte
# ---------------------------------------------------------------------------

VECTORS: dict[str, tuple[Message, bytes]] = {
    "ACK": (MsgAck(), hx("01")),
    "HELLO": (
        MsgHello(b"memif_aio", 0x0200, 0x0200, 255, 255, 255, 14),
        hx("02 00 6d 65 6d 69 66 5f 61 69 6f") + bytes(23) + hx("00 02 00 02 ff 00 ff 00 ff 00 0e"),
    ),
    "INIT": (
        MsgInit(id=7, mode=0, secret=b"s3cret", name=b"memif_aio", version=0x0200),
        hx("03 00 00 02 07 00 00 00 00 73 33 63 72 65 74") + bytes(18)
        + hx("6d 65 6d 69 66 5f 61 69 6f"),
    ),
    "ADD_REGION": (MsgAddRegion(0, 4227328), hx("04 00 00 00 00 81 40 00 00 00 00 00")),
    "ADD_RING_S2M": (MsgAddRing(1, 0, 0, 0, 10, 0),
                     hx("05 00 01 00 00 00 00 00 00 00 00 00 0a 00 00")),
    "ADD_RING_M2S": (MsgAddRing(0, 0, 0, 16512, 10, 0),
                     hx("05 00 00 00 00 00 00 00 80 40 00 00 0a 00 00")),
    "CONNECT": (MsgConnect(b"memif0"), hx("06 00 6d 65 6d 69 66 30")),
    "DISCONNECT": (MsgDisconnect(0, b"bye"), hx("08 00 00 00 00 00 62 79 65")),
}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_encode(name: str) -> None:
    msg, prefix = VECTORS[name]
    data = msg.encode()
    assert isinstance(data, bytes)
    assert len(data) == MSG_SIZE
    assert data == padded(prefix)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_decode(name: str) -> None:
    msg, prefix = VECTORS[name]
    assert decode_message(padded(prefix)) == msg
    assert type(msg).decode(padded(prefix)) == msg


def test_vector_offsets_match_spec_text() -> None:
    # §14.1: INIT's name starts at offset 33, secret occupies 9..32
    data = VECTORS["INIT"][0].encode()
    assert data[33:42] == b"memif_aio"
    assert data[9:15] == b"s3cret" and data[15:33] == bytes(18)
    # HELLO: the version pair is at 34..37
    assert VECTORS["HELLO"][0].encode()[34:45] == hx("00 02 00 02 ff 00 ff 00 ff 00 0e")


def test_connected_is_type_7_same_layout_as_connect() -> None:
    data = MsgConnected(b"memif0").encode()
    assert data == padded(hx("07 00 6d 65 6d 69 66 30"))
    assert decode_message(data) == MsgConnected(b"memif0")
    assert MsgConnect(b"memif0").encode()[2:] == data[2:]


def test_ring_flag_property() -> None:
    assert MsgAddRing(1, 0, 0, 0, 10).ring_type is RingType.S2M
    assert MsgAddRing(0, 0, 0, 0, 10).ring_type is RingType.M2S
    # only bit 0 selects the direction
    assert MsgAddRing(0xFFFE, 0, 0, 0, 10).ring_type is RingType.M2S
    assert MsgAddRing(0x8001, 0, 0, 0, 10).ring_type is RingType.S2M


# ---------------------------------------------------------------------------
# §4: every offset, via field_offsets and via encoding distinct values
# ---------------------------------------------------------------------------

SPEC_OFFSETS = {
    "HELLO": (HELLO, {"type": 0, "name": 2, "min_version": 34, "max_version": 36, "max_region": 38,
                      "max_m2s_ring": 40, "max_s2m_ring": 42, "max_log2_ring_size": 44}),
    "INIT": (INIT, {"type": 0, "version": 2, "id": 4, "mode": 8, "secret": 9, "name": 33}),
    "ADD_REGION": (ADD_REGION, {"type": 0, "index": 2, "size": 4}),
    "ADD_RING": (ADD_RING, {"type": 0, "flags": 2, "index": 4, "region": 6, "offset": 8,
                            "log2_ring_size": 12, "private_hdr_size": 13}),
    "CONNECT": (CONNECT, {"type": 0, "if_name": 2}),
    "CONNECTED": (CONNECTED, {"type": 0, "if_name": 2}),
    "DISCONNECT": (DISCONNECT, {"type": 0, "code": 2, "string": 6}),
    "ACK": (ACK, {"type": 0}),
    "DESCRIPTOR": (DESCRIPTOR, {"flags": 0, "region": 2, "length": 4, "offset": 8, "metadata": 12}),
}


@pytest.mark.parametrize("name", sorted(SPEC_OFFSETS))
def test_field_offsets(name: str) -> None:
    con, expected = SPEC_OFFSETS[name]
    assert field_offsets(con) == expected


@pytest.mark.parametrize("con", [HELLO, INIT, ADD_REGION, ADD_RING, CONNECT, CONNECTED, DISCONNECT,
                                 ACK])
def test_every_message_is_128_bytes(con: object) -> None:
    assert con.sizeof() == MSG_SIZE  # type: ignore[attr-defined]


def test_hello_offsets_by_encoding() -> None:
    data = MsgHello(b"N" * 31, 0x1122, 0x3344, 0x5566, 0x7788, 0x99AA, 0xBB).encode()
    assert struct.unpack_from("<H", data, 0) == (2,)
    assert data[2:33] == b"N" * 31 and data[33] == 0
    assert struct.unpack_from("<H", data, 34) == (0x1122,)
    assert struct.unpack_from("<H", data, 36) == (0x3344,)
    assert struct.unpack_from("<H", data, 38) == (0x5566,)
    assert struct.unpack_from("<H", data, 40) == (0x7788,)  # max_m2s_ring (DPDK max_s2c_ring)
    assert struct.unpack_from("<H", data, 42) == (0x99AA,)  # max_s2m_ring (DPDK max_c2s_ring)
    assert data[44] == 0xBB
    assert data[45:] == bytes(128 - 45)


def test_init_offsets_by_encoding() -> None:
    data = MsgInit(id=0xDEADBEEF, mode=0x5A, secret=b"S" * 23, name=b"M" * 31,
                   version=0x1234).encode()
    assert struct.unpack_from("<HHIB", data, 0) == (3, 0x1234, 0xDEADBEEF, 0x5A)
    assert data[9:32] == b"S" * 23 and data[32] == 0
    assert data[33:64] == b"M" * 31 and data[64] == 0
    assert data[65:] == bytes(128 - 65)


def test_add_region_offsets_by_encoding() -> None:
    data = MsgAddRegion(0xABCD, 0x0102030405060708).encode()
    assert data[:12] == hx("04 00 cd ab 08 07 06 05 04 03 02 01")
    assert data[12:] == bytes(116)


def test_add_ring_offsets_by_encoding() -> None:
    data = MsgAddRing(0x1101, 0x2202, 0x3303, 0x44554455, 0x66, 0x7788).encode()
    assert data[:15] == hx("05 00 01 11 02 22 03 33 55 44 55 44 66 88 77")
    assert data[15:] == bytes(113)


def test_disconnect_offsets_by_encoding() -> None:
    data = MsgDisconnect(0x01020304, b"R" * 95).encode()
    assert data[:6] == hx("08 00 04 03 02 01")
    assert data[6:101] == b"R" * 95 and data[101] == 0
    assert data[102:] == bytes(26)


def test_connect_offsets_by_encoding() -> None:
    data = MsgConnect(b"I" * 31).encode()
    assert data[:2] == hx("06 00") and data[2:33] == b"I" * 31 and data[33:] == bytes(95)


@pytest.mark.parametrize("msg", [v[0] for v in VECTORS.values()] + [
    MsgHello(b"x", 1, 0xFFFF, 0, 0, 0, 0), MsgInit(0xFFFFFFFF, 2, b"", b""),
    MsgAddRegion(255, (1 << 64) - 1), MsgAddRing(0xFFFF, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 255, 0xFFFF),
    MsgConnected(b""), MsgDisconnect(0xFFFFFFFF, b""),
])
def test_round_trip(msg: object) -> None:
    data = msg.encode()  # type: ignore[attr-defined]
    assert len(data) == MSG_SIZE
    assert decode_message(data) == msg
    assert message_type(data) == msg.TYPE


@pytest.mark.parametrize("msg", [
    MsgAddRegion(-1, 0), MsgAddRing(0, 0, 0, -5, 10), MsgInit(id=1 << 32),
    MsgAddRing(0, 0x10000, 0, 0, 10), MsgHello(max_log2_ring_size=256), MsgInit(id=0, mode=256),
    MsgAddRegion(0, 1 << 64), MsgDisconnect(code=-1),
])
def test_encode_rejects_out_of_range(msg: object) -> None:
    with pytest.raises(ValueError):
        msg.encode()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Derived struct formats equal the reference's Python formats (§13)
# ---------------------------------------------------------------------------

SPEC_FORMATS = {
    "HELLO": (HELLO, "<H32sHHHHHB", 45,
              (2, b"n" * 32, 0x0102, 0x0304, 0x0506, 0x0708, 0x090A, 0x0B)),
    "INIT": (INIT, "<HHIB24s32s", 65, (3, 0x0200, 0xA1B2C3D4, 2, b"s" * 24, b"m" * 32)),
    "ADD_REGION": (ADD_REGION, "<HHQ", 12, (4, 9, 0x1122334455667788)),
    "ADD_RING": (ADD_RING, "<HHHHIBH", 15, (5, 1, 2, 3, 0x10203040, 14, 0xBEEF)),
    "CONNECT": (CONNECT, "<H32s", 34, (6, b"c" * 32)),
    "CONNECTED": (CONNECTED, "<H32s", 34, (7, b"d" * 32)),
    "DISCONNECT": (DISCONNECT, "<HI96s", 102, (8, 0xCAFEBABE, b"r" * 96)),
    "HDR": (ACK, "<H", 2, (1,)),
    "DESC": (DESCRIPTOR, "<HHIII", 16, (1, 2, 3, 4, 5)),
}


@pytest.mark.parametrize("name", sorted(SPEC_FORMATS))
def test_struct_format_matches_spec(name: str) -> None:
    con, spec_fmt, size, values = SPEC_FORMATS[name]
    derived = struct_format(con)
    assert derived.startswith("<")
    assert struct.calcsize(derived) == struct.calcsize(spec_fmt) == size
    assert struct.pack(derived, *values) == struct.pack(spec_fmt, *values)
    # and the derived format agrees with what construct builds
    if con is not DESCRIPTOR:
        built = con.build(dict(zip(field_offsets(con), values)))
        assert built == struct.pack(spec_fmt, *values).ljust(MSG_SIZE, b"\0")


def test_hot_path_structs() -> None:
    assert wire.DESC_STRUCT.size == 16
    assert struct.calcsize(wire.DESC_STRUCT.format) == struct.calcsize("<HHIII")
    assert wire.DESC_STRUCT.pack(1, 2, 3, 4, 5) == struct.pack("<HHIII", 1, 2, 3, 4, 5)
    assert wire.DESC_HEAD_STRUCT.pack(1, 2, 3, 4) == struct.pack("<HHII", 1, 2, 3, 4)
    assert (wire.DESC_FLAGS_OFF, wire.DESC_REGION_OFF, wire.DESC_LENGTH_OFF, wire.DESC_OFFSET_OFF,
            wire.DESC_METADATA_OFF) == (0, 2, 4, 8, 12)
    assert wire.U16.pack(0xBEEF) == hx("ef be") and wire.U32.pack(0x03E31F20) == hx("20 1f e3 03")


def test_struct_format_rejects_non_struct() -> None:
    import construct as cs

    with pytest.raises(TypeError):
        struct_format(cs.Int16ul)
    with pytest.raises(TypeError):
        struct_format(cs.Struct("x" / cs.Int16ub))  # big-endian field
    with pytest.raises(TypeError):
        struct_format(cs.Struct("s" / cs.CString("ascii")))


# ---------------------------------------------------------------------------
# §6.2 ring header and RingLayout for C = 64 and C = 128
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("c, tail, desc", [(64, 64, 128), (128, 128, 256)])
def test_ring_layout(c: int, tail: int, desc: int) -> None:
    lay = RingLayout.for_cache_line(c)
    assert (lay.cache_line, lay.cookie, lay.flags, lay.head, lay.tail, lay.desc) == (
        c, 0, 4, 6, tail, desc)
    assert ring_header(c).sizeof() == 2 * c
    assert field_offsets(ring_header(c)) == {"cookie": 0, "flags": 4, "head": 6, "tail": tail}
    for log2 in (0, 1, 10, 14):
        assert lay.ring_size(log2) == 2 * c + 16 * (1 << log2)
    assert struct.calcsize(struct_format(ring_header(c))) == 2 * c


def test_ring_layout_known_sizes() -> None:
    assert RingLayout.for_cache_line(64).ring_size(10) == 16512
    assert RingLayout.for_cache_line(128).ring_size(10) == 16640


@pytest.mark.parametrize("c", [0, 32, 65, 256])
def test_ring_header_rejects_other_cache_lines(c: int) -> None:
    with pytest.raises(ValueError):
        ring_header(c)
    with pytest.raises(ValueError):
        RingLayout.for_cache_line(c)


def test_ring_header_build_bytes() -> None:
    data = ring_header(64).build({"cookie": 0x03E31F20, "flags": 0x0102, "head": 0x0304,
                                  "tail": 0x0506})
    assert len(data) == 128
    assert data[:8] == hx("20 1f e3 03 02 01 04 03") and data[64:66] == hx("06 05")
    assert data[8:64] == bytes(56) and data[66:] == bytes(62)


# ---------------------------------------------------------------------------
# §6.4 ClientLayout worked example, §14.2 shared-memory vector
# ---------------------------------------------------------------------------


def test_client_layout_worked_example_c64() -> None:
    lay = ClientLayout(1, 1, 10, 2048, RingLayout.for_cache_line(64))
    assert lay.ring_slots == 1024
    assert lay.ring_stride == 16512
    assert lay.rings_size == 33024
    assert lay.region_size == 4227328
    assert lay.ring_offset(RingType.S2M, 0) == 0
    assert lay.ring_offset(RingType.M2S, 0) == 16512
    for j in (0, 1, 2, 511, 1023):
        assert lay.buffer_offset(RingType.S2M, 0, j) == 33024 + 2048 * j
        assert lay.buffer_offset(RingType.M2S, 0, j) == 2130176 + 2048 * j
    # the last buffer ends exactly at the end of the region
    assert lay.buffer_offset(RingType.M2S, 0, 1023) + 2048 == lay.region_size


def test_client_layout_worked_example_c128() -> None:
    lay = ClientLayout(1, 1, 10, 2048, RingLayout.for_cache_line(128))
    assert lay.ring_stride == 16640
    assert lay.rings_size == 33280
    assert lay.region_size == 4227584
    assert lay.ring_offset(RingType.M2S, 0) == 16640
    assert lay.buffer_offset(RingType.S2M, 0, 0) == 33280
    assert lay.buffer_offset(RingType.M2S, 0, 0) == 33280 + 2048 * 1024


def test_client_layout_several_rings() -> None:
    # ns = 3, nm = 2: S2M rings first, then M2S; ring_offset(type, i) = (i + type*ns) * S
    lay = ClientLayout(3, 2, 4, 1024, RingLayout.for_cache_line(64))
    s = 128 + 16 * 16
    assert [lay.ring_offset(0, i) for i in range(3)] == [0, s, 2 * s]
    assert [lay.ring_offset(1, i) for i in range(2)] == [3 * s, 4 * s]
    p = 5 * s
    assert lay.rings_size == p
    assert lay.buffer_offset(0, 2, 5) == p + (2 * 16 + 5) * 1024
    assert lay.buffer_offset(1, 1, 15) == p + ((3 + 1) * 16 + 15) * 1024
    assert lay.region_size == p + 5 * 16 * 1024


def test_shared_memory_vector() -> None:
    """§14.2, checked on a real initialised memfd region."""
    lay = ClientLayout(1, 1, 10, 2048, RingLayout.for_cache_line(64))
    region = Region.create(lay.region_size)
    try:
        lay.initialise(region)
        mm = region.mm
        assert mm[0:4] == hx("20 1f e3 03")
        assert mm[4:8] == bytes(4)  # flags = head = 0
        assert mm[64:66] == bytes(2)  # tail
        assert mm[128:144] == hx("00 00 00 00 00 08 00 00 00 81 00 00 00 00 00 00")
        # S2M descriptor 1
        assert mm[144:160] == struct.pack("<HHIII", 0, 0, 2048, 33024 + 2048, 0)
        # M2S ring 0 at 16512, descriptor 0 at 16640, offset 2130176
        assert mm[16512:16516] == hx("20 1f e3 03")
        assert mm[16640 + 8:16640 + 12] == hx("00 81 20 00")
        assert mm[16640:16656] == struct.pack("<HHIII", 0, 0, 2048, 2130176, 0)
        # last M2S descriptor
        last = 16640 + 16 * 1023
        assert mm[last:last + 16] == struct.pack("<HHIII", 0, 0, 2048, 2130176 + 2048 * 1023, 0)
        # the buffers themselves stay zero
        assert mm[33024:33024 + 64] == bytes(64)
    finally:
        region.close()


def test_shared_memory_vector_c128() -> None:
    lay = ClientLayout(1, 1, 4, 2048, RingLayout.for_cache_line(128))
    region = Region.create(lay.region_size)
    try:
        lay.initialise(region)
        mm = region.mm
        s = 256 + 16 * 16
        assert mm[0:4] == mm[s:s + 4] == hx("20 1f e3 03")
        assert mm[128:130] == bytes(2)
        assert mm[256:272] == struct.pack("<HHIII", 0, 0, 2048, 2 * s, 0)
        assert mm[s + 256:s + 272] == struct.pack("<HHIII", 0, 0, 2048, 2 * s + 16 * 2048, 0)
        # nothing is written between the header fields and the descriptors
        assert mm[8:256] == bytes(248)
    finally:
        region.close()


def test_region_create_is_sealed_memfd() -> None:
    import fcntl

    from memif_aio.memory import F_GET_SEALS, F_SEAL_SHRINK

    region = Region.create(8192, "memif_test")
    fd = region.fd
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:memif_test")
        assert fcntl.fcntl(fd, F_GET_SEALS) & F_SEAL_SHRINK
        assert os.fstat(fd).st_size == 8192
        assert not os.get_inheritable(fd)  # MFD_CLOEXEC
        with pytest.raises(OSError):
            os.ftruncate(fd, 4096)
    finally:
        region.close()
    assert region.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    region.close()  # idempotent


@pytest.mark.parametrize("size", [0, -1, (1 << 32) + 1])
def test_region_create_rejects_sizes(size: int) -> None:
    with pytest.raises(ValueError):
        Region.create(size)


# ---------------------------------------------------------------------------
# §4.10 string rules
# ---------------------------------------------------------------------------


def test_cstr() -> None:
    assert cstr(b"abc\0def") == b"abc"
    assert cstr(b"abc") == b"abc"
    assert cstr(b"\0abc") == b""
    assert cstr(b"") == b""


def _with_field(prefix_type: int, offset: int, raw: bytes) -> bytes:
    data = bytearray(MSG_SIZE)
    struct.pack_into("<H", data, 0, prefix_type)
    data[offset:offset + len(raw)] = raw
    return bytes(data)


STRING_FIELDS = [
    # (message class, type, attribute, offset, size)
    (MsgHello, 2, "name", 2, 32),
    (MsgInit, 3, "secret", 9, 24),
    (MsgInit, 3, "name", 33, 32),
    (MsgConnect, 6, "if_name", 2, 32),
    (MsgConnected, 7, "if_name", 2, 32),
    (MsgDisconnect, 8, "string", 6, 96),
]


@pytest.mark.parametrize("cls, t, attr, off, size", STRING_FIELDS)
def test_decode_string_up_to_first_nul(cls: type, t: int, attr: str, off: int, size: int) -> None:
    raw = b"abc\0" + b"\xff" * (size - 4)  # garbage after the NUL is ignored (§4.11)
    msg = decode_message(_with_field(t, off, raw))
    assert isinstance(msg, cls)
    assert getattr(msg, attr) == b"abc"


@pytest.mark.parametrize("cls, t, attr, off, size", STRING_FIELDS)
def test_decode_string_whole_field_without_nul(cls: type, t: int, attr: str, off: int,
                                               size: int) -> None:
    raw = bytes((0x41 + i % 26) for i in range(size))  # a full gomemif-style field, no NUL
    msg = decode_message(_with_field(t, off, raw))
    assert getattr(msg, attr) == raw
    # ... and nothing of the neighbouring field leaks in
    assert len(getattr(msg, attr)) == size


@pytest.mark.parametrize("cls, t, attr, off, size", STRING_FIELDS)
def test_decode_empty_string(cls: type, t: int, attr: str, off: int, size: int) -> None:
    raw = b"\0" + b"junk" * 5
    msg = decode_message(_with_field(t, off, raw))
    assert getattr(msg, attr) == b""


def test_init_secret_does_not_spill_into_name() -> None:
    data = bytearray(MSG_SIZE)
    struct.pack_into("<HHIB", data, 0, 3, 0x0200, 1, 0)
    data[9:33] = b"X" * 24  # no NUL in the secret
    data[33:38] = b"name\0"
    msg = decode_message(bytes(data))
    assert isinstance(msg, MsgInit)
    assert msg.secret == b"X" * 24
    assert msg.name == b"name"


@pytest.mark.parametrize("make, limit", [
    (lambda v: MsgHello(name=v), 31),
    (lambda v: MsgInit(id=0, secret=v), 23),
    (lambda v: MsgInit(id=0, name=v), 31),
    (lambda v: MsgConnect(v), 31),
    (lambda v: MsgConnected(v), 31),
    (lambda v: MsgDisconnect(0, v), 95),
])
def test_encode_string_limits(make: object, limit: int) -> None:
    ok = make(b"z" * limit).encode()  # type: ignore[operator]
    assert ok.count(b"z") == limit
    for n in (limit + 1, limit + 2, 200):
        with pytest.raises(ValueError):
            make(b"z" * n).encode()  # type: ignore[operator]
    with pytest.raises(ValueError):
        make(b"a\0b").encode()  # type: ignore[operator]


def test_encode_pads_with_nul() -> None:
    data = MsgInit(id=1, secret=b"ab", name=b"cd").encode()
    assert data[9:33] == b"ab" + bytes(22)
    assert data[33:65] == b"cd" + bytes(30)


def test_disconnect_reason_helper() -> None:
    assert MsgDisconnect.reason("bye") == MsgDisconnect(0, b"bye")
    long = MsgDisconnect.reason("x" * 500)
    assert long.string == b"x" * 95
    assert len(long.encode()) == MSG_SIZE
    assert MsgDisconnect.reason("a\0b").string == b"a?b"
    assert MsgDisconnect.reason("é" * 60).encode()  # multi-byte text is cut to 95 bytes
    assert MsgDisconnect.reason("bye", code=5).code == 5


def test_to_text_replaces_invalid_utf8() -> None:
    assert wire.to_text(b"ok\xff") == "ok\ufffd"


# ---------------------------------------------------------------------------
# Decoding errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 64, 127, 129, 256])
def test_decode_wrong_size(size: int) -> None:
    data = bytes([1]) + bytes(max(0, size - 1)) if size else b""
    with pytest.raises(WireError, match="size"):
        decode_message(data)
    with pytest.raises(WireError):
        message_type(data)
    with pytest.raises(WireError):
        MsgAck.decode(data)


@pytest.mark.parametrize("t", [0, 9, 10, 0x100, 0x0801, 0xFFFF])
def test_decode_unknown_type(t: int) -> None:
    data = struct.pack("<H", t) + bytes(126)
    with pytest.raises(WireError, match="unknown message type"):
        decode_message(data)
    assert message_type(data) == t


def test_decode_wrong_class() -> None:
    with pytest.raises(WireError):
        MsgHello.decode(MsgAck().encode())
    with pytest.raises(WireError):
        MsgConnect.decode(MsgConnected(b"x").encode())


def test_wire_error_is_value_error() -> None:
    assert issubclass(WireError, ValueError)


def test_wire_error_is_a_memif_error_exported_from_the_package() -> None:
    import memif_aio

    assert memif_aio.WireError is WireError and "WireError" in memif_aio.__all__
    with pytest.raises(memif_aio.MemifError, match="unknown message type"):
        decode_message(bytes([0x09]).ljust(MSG_SIZE, b"\0"))


def test_named_ring_size_limits() -> None:
    """The advertised limit (every implementation's 14) and the u16 counters' own (15, §6.6)."""
    assert wire.MAX_LOG2_RING_SIZE == 14 and MsgHello().max_log2_ring_size == 14
    assert wire.MAX_USABLE_LOG2_RING_SIZE == 15
    assert 1 << wire.MAX_USABLE_LOG2_RING_SIZE < 1 << 16  # a full ring differs from an empty one


def test_unused_bytes_ignored_on_decode() -> None:
    """§4.11: garbage in the unused tail of a message is ignored."""
    for msg, _ in VECTORS.values():
        data = bytearray(msg.encode())
        used = {MsgAck: 2, MsgHello: 45, MsgInit: 65, MsgAddRegion: 12, MsgAddRing: 15,
                MsgConnect: 34, MsgDisconnect: 102}[type(msg)]
        data[used:] = b"\xa5" * (MSG_SIZE - used)
        assert decode_message(bytes(data)) == msg
