"""Byte layouts of memif v2.0: the single source of truth.

Every control message, the ring header and the descriptor are declared once
with :mod:`construct`.  The control path (a handful of messages per
connection) encodes and decodes through those declarations.  The data path
never calls construct: it uses offsets and precompiled :class:`struct.Struct`
objects *derived* from the same declarations by :func:`struct_format` and
:func:`field_offsets`, so nothing else in the package hard-codes an offset.

All values are little-endian (protocol reference §0.2).
"""

from __future__ import annotations

import enum
import struct
import sys
from dataclasses import dataclass
from typing import ClassVar, Union

import construct as cs

from .errors import MemifError

if sys.byteorder != "little":  # pragma: no cover - no big-endian CI machine
    raise ImportError("memif_aio supports little-endian hosts only (protocol reference §0.2)")

# --------------------------------------------------------------------------
# Constants (protocol reference §3)
# --------------------------------------------------------------------------
VERSION_MAJOR = 2
VERSION_MINOR = 0
VERSION = (VERSION_MAJOR << 8) | VERSION_MINOR
COOKIE = 0x03E31F20
MSG_SIZE = 128
NAME_SIZE = 32
SECRET_SIZE = 24
REASON_SIZE = 96
DESC_SIZE = 16
#: the largest log2 ring size we advertise in HELLO and accept in ADD_RING (every
#: implementation advertises 14, §5.2, §6.6)
MAX_LOG2_RING_SIZE = 14
#: the largest log2 ring size the u16 head/tail counters can tell apart from an empty ring
#: (§6.6): a client clamps what it negotiates to it, whatever a server advertises
MAX_USABLE_LOG2_RING_SIZE = 15
MAX_REGION_INDEX = 255
MAX_RING_INDEX = 255

RING_FLAG_MASK_INT = 0x0001
DESC_FLAG_NEXT = 0x0001
MSG_ADD_RING_FLAG_S2M = 0x0001


class MsgType(enum.IntEnum):
    """Control message types (``MEMIF_MSG_TYPE_*``)."""

    NONE = 0
    ACK = 1
    HELLO = 2
    INIT = 3
    ADD_REGION = 4
    ADD_RING = 5
    CONNECT = 6
    CONNECTED = 7
    DISCONNECT = 8


class RingType(enum.IntEnum):
    """Ring direction: S2M (client to server, DPDK C2S) or M2S (DPDK S2C)."""

    S2M = 0
    M2S = 1


class InterfaceMode(enum.IntEnum):
    """Interface mode sent in INIT (protocol reference §9)."""

    ETHERNET = 0
    IP = 1
    PUNT_INJECT = 2


# --------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------
def _msg(*fields: cs.Construct) -> cs.Construct:
    return cs.Padded(MSG_SIZE, cs.Struct("type" / cs.Int16ul, *fields))


MSG_HEADER = cs.Struct("type" / cs.Int16ul)
HELLO = _msg(
    "name" / cs.Bytes(NAME_SIZE),
    "min_version" / cs.Int16ul,
    "max_version" / cs.Int16ul,
    "max_region" / cs.Int16ul,
    "max_m2s_ring" / cs.Int16ul,
    "max_s2m_ring" / cs.Int16ul,
    "max_log2_ring_size" / cs.Int8ul,
)
INIT = _msg(
    "version" / cs.Int16ul,
    "id" / cs.Int32ul,
    "mode" / cs.Int8ul,
    "secret" / cs.Bytes(SECRET_SIZE),
    "name" / cs.Bytes(NAME_SIZE),
)
ADD_REGION = _msg("index" / cs.Int16ul, "size" / cs.Int64ul)
ADD_RING = _msg(
    "flags" / cs.Int16ul,
    "index" / cs.Int16ul,
    "region" / cs.Int16ul,
    "offset" / cs.Int32ul,
    "log2_ring_size" / cs.Int8ul,
    "private_hdr_size" / cs.Int16ul,
)
CONNECT = _msg("if_name" / cs.Bytes(NAME_SIZE))
CONNECTED = CONNECT
DISCONNECT = _msg("code" / cs.Int32ul, "string" / cs.Bytes(REASON_SIZE))
ACK = _msg()

DESCRIPTOR = cs.Struct(
    "flags" / cs.Int16ul,
    "region" / cs.Int16ul,
    "length" / cs.Int32ul,
    "offset" / cs.Int32ul,
    "metadata" / cs.Int32ul,
)


def ring_header(cache_line: int = 64) -> cs.Construct:
    """The ring header for cache-line layout ``C`` (§6.2): ``2*C`` bytes.

    ``cookie``, ``flags`` and ``head`` live in cache line 0, ``tail`` alone in
    cache line 1; the descriptor array follows at ``2*C``.
    """
    if cache_line not in (64, 128):
        raise ValueError(f"cache_line must be 64 or 128, not {cache_line!r}")
    return cs.Struct(
        "cookie" / cs.Int32ul,
        "flags" / cs.Int16ul,
        "head" / cs.Int16ul,
        cs.Padding(cache_line - 8),
        "tail" / cs.Int16ul,
        cs.Padding(cache_line - 2),
    )


# --------------------------------------------------------------------------
# Derivation of hot-path formats and offsets from the declarations
# --------------------------------------------------------------------------
def _inner(con: cs.Construct) -> cs.Construct:
    while isinstance(con, (cs.Padded,)) and isinstance(getattr(con, "subcon", None), cs.Struct):
        con = con.subcon
    return con


def struct_format(con: cs.Construct) -> str:
    """The :mod:`struct` format equivalent to a flat construct ``Struct``."""
    con = _inner(con)
    if not isinstance(con, cs.Struct):
        raise TypeError("struct_format needs a construct Struct")
    parts = ["<"]
    for sub in con.subcons:
        inner = sub.subcon if isinstance(sub, cs.Renamed) else sub
        if isinstance(inner, cs.FormatField):
            if inner.fmtstr[0] != "<":
                raise TypeError(f"field {sub.name!r} is not little-endian")
            parts.append(inner.fmtstr[1:])
        elif isinstance(inner, cs.Bytes):
            parts.append(f"{inner.sizeof()}s")
        elif isinstance(inner, cs.Padded):  # cs.Padding(n)
            parts.append(f"{inner.sizeof()}x")
        else:
            raise TypeError(f"field {sub.name!r} has no struct equivalent")
    fmt = "".join(parts)
    if struct.calcsize(fmt) != con.sizeof():
        raise AssertionError("derived format disagrees with the declaration")
    return fmt


def field_offsets(con: cs.Construct) -> dict[str, int]:
    """Absolute byte offset of every named field of a flat ``Struct``."""
    con = _inner(con)
    offsets: dict[str, int] = {}
    pos = 0
    for sub in con.subcons:
        if sub.name:
            offsets[sub.name] = pos
        pos += sub.sizeof()
    return offsets


# Hot-path objects (derived, never written by hand).
DESC_STRUCT = struct.Struct(struct_format(DESCRIPTOR))
_DESC_OFF = field_offsets(DESCRIPTOR)
DESC_FLAGS_OFF = _DESC_OFF["flags"]
DESC_REGION_OFF = _DESC_OFF["region"]
DESC_LENGTH_OFF = _DESC_OFF["length"]
DESC_OFFSET_OFF = _DESC_OFF["offset"]
DESC_METADATA_OFF = _DESC_OFF["metadata"]
#: (flags, region, length, offset) in one call.
DESC_HEAD_STRUCT = struct.Struct(struct_format(DESCRIPTOR)[:-1])
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
assert DESC_STRUCT.size == DESC_SIZE


@dataclass(frozen=True)
class RingLayout:
    """Offsets inside one ring for cache-line layout ``C``, derived from :func:`ring_header`."""

    cache_line: int
    cookie: int
    flags: int
    head: int
    tail: int
    desc: int  # start of the descriptor array == header size

    @classmethod
    def for_cache_line(cls, cache_line: int = 64) -> RingLayout:
        hdr = ring_header(cache_line)
        off = field_offsets(hdr)
        return cls(cache_line, off["cookie"], off["flags"], off["head"], off["tail"], hdr.sizeof())

    def ring_size(self, log2_ring_size: int) -> int:
        """Bytes occupied by a ring of ``1 << log2_ring_size`` descriptors."""
        return self.desc + DESC_SIZE * (1 << log2_ring_size)


# --------------------------------------------------------------------------
# String fields (§4.10)
# --------------------------------------------------------------------------
def cstr(raw: bytes) -> bytes:
    """Bytes up to the first NUL, or the whole field when there is none."""
    nul = raw.find(b"\0")
    return raw if nul < 0 else raw[:nul]


def _field(value: bytes, size: int, what: str) -> bytes:
    if len(value) > size - 1:
        raise ValueError(f"{what} is {len(value)} bytes; at most {size - 1} fit the wire field")
    if b"\0" in value:
        raise ValueError(f"{what} must not contain NUL bytes")
    return value.ljust(size, b"\0")


def to_text(raw: bytes) -> str:
    """Decode an untrusted wire string for display."""
    return raw.decode("utf-8", "replace")


# --------------------------------------------------------------------------
# Message classes
# --------------------------------------------------------------------------
class WireError(MemifError, ValueError):
    """A control message could not be decoded (a :class:`ValueError` too, as it always was)."""


@dataclass(frozen=True)
class MsgAck:
    TYPE: ClassVar[MsgType] = MsgType.ACK

    def encode(self) -> bytes:
        return bytes(ACK.build({"type": self.TYPE}))

    @classmethod
    def decode(cls, data: bytes) -> MsgAck:
        _check(data, cls.TYPE)
        return cls()


@dataclass(frozen=True)
class MsgHello:
    name: bytes = b""
    min_version: int = VERSION
    max_version: int = VERSION
    max_region: int = MAX_REGION_INDEX
    max_m2s_ring: int = MAX_RING_INDEX
    max_s2m_ring: int = MAX_RING_INDEX
    max_log2_ring_size: int = MAX_LOG2_RING_SIZE
    TYPE: ClassVar[MsgType] = MsgType.HELLO

    def encode(self) -> bytes:
        return _build(HELLO, self.TYPE, name=_field(self.name, NAME_SIZE, "name"),
                      min_version=self.min_version, max_version=self.max_version,
                      max_region=self.max_region, max_m2s_ring=self.max_m2s_ring,
                      max_s2m_ring=self.max_s2m_ring, max_log2_ring_size=self.max_log2_ring_size)

    @classmethod
    def decode(cls, data: bytes) -> MsgHello:
        c = _parse(HELLO, data, cls.TYPE)
        return cls(cstr(c.name), c.min_version, c.max_version, c.max_region,
                   c.max_m2s_ring, c.max_s2m_ring, c.max_log2_ring_size)


@dataclass(frozen=True)
class MsgInit:
    id: int
    mode: int = InterfaceMode.ETHERNET
    secret: bytes = b""
    name: bytes = b""
    version: int = VERSION
    TYPE: ClassVar[MsgType] = MsgType.INIT

    def encode(self) -> bytes:
        return _build(INIT, self.TYPE, version=self.version, id=self.id, mode=int(self.mode),
                      secret=_field(self.secret, SECRET_SIZE, "secret"),
                      name=_field(self.name, NAME_SIZE, "name"))

    @classmethod
    def decode(cls, data: bytes) -> MsgInit:
        c = _parse(INIT, data, cls.TYPE)
        return cls(c.id, c.mode, cstr(c.secret), cstr(c.name), c.version)


@dataclass(frozen=True)
class MsgAddRegion:
    index: int
    size: int
    TYPE: ClassVar[MsgType] = MsgType.ADD_REGION

    def encode(self) -> bytes:
        return _build(ADD_REGION, self.TYPE, index=self.index, size=self.size)

    @classmethod
    def decode(cls, data: bytes) -> MsgAddRegion:
        c = _parse(ADD_REGION, data, cls.TYPE)
        return cls(c.index, c.size)


@dataclass(frozen=True)
class MsgAddRing:
    flags: int
    index: int
    region: int
    offset: int
    log2_ring_size: int
    private_hdr_size: int = 0
    TYPE: ClassVar[MsgType] = MsgType.ADD_RING

    @property
    def ring_type(self) -> RingType:
        return RingType.S2M if self.flags & MSG_ADD_RING_FLAG_S2M else RingType.M2S

    def encode(self) -> bytes:
        return _build(ADD_RING, self.TYPE, flags=self.flags, index=self.index, region=self.region,
                      offset=self.offset, log2_ring_size=self.log2_ring_size,
                      private_hdr_size=self.private_hdr_size)

    @classmethod
    def decode(cls, data: bytes) -> MsgAddRing:
        c = _parse(ADD_RING, data, cls.TYPE)
        return cls(c.flags, c.index, c.region, c.offset, c.log2_ring_size, c.private_hdr_size)


@dataclass(frozen=True)
class MsgConnect:
    if_name: bytes = b""
    TYPE: ClassVar[MsgType] = MsgType.CONNECT

    def encode(self) -> bytes:
        return _build(CONNECT, self.TYPE, if_name=_field(self.if_name, NAME_SIZE, "if_name"))

    @classmethod
    def decode(cls, data: bytes) -> MsgConnect:
        return cls(cstr(_parse(CONNECT, data, cls.TYPE).if_name))


@dataclass(frozen=True)
class MsgConnected:
    if_name: bytes = b""
    TYPE: ClassVar[MsgType] = MsgType.CONNECTED

    def encode(self) -> bytes:
        return _build(CONNECTED, self.TYPE, if_name=_field(self.if_name, NAME_SIZE, "if_name"))

    @classmethod
    def decode(cls, data: bytes) -> MsgConnected:
        return cls(cstr(_parse(CONNECTED, data, cls.TYPE).if_name))


@dataclass(frozen=True)
class MsgDisconnect:
    code: int = 0
    string: bytes = b""
    TYPE: ClassVar[MsgType] = MsgType.DISCONNECT

    @classmethod
    def reason(cls, text: str, code: int = 0) -> MsgDisconnect:
        """A DISCONNECT whose reason is ``text``, truncated to fit the field."""
        raw = text.encode("utf-8", "replace").replace(b"\0", b"?")[: REASON_SIZE - 1]
        return cls(code, raw)

    def encode(self) -> bytes:
        return _build(DISCONNECT, self.TYPE, code=self.code,
                      string=_field(self.string, REASON_SIZE, "string"))

    @classmethod
    def decode(cls, data: bytes) -> MsgDisconnect:
        c = _parse(DISCONNECT, data, cls.TYPE)
        return cls(c.code, cstr(c.string))


Message = Union[MsgAck, MsgHello, MsgInit, MsgAddRegion, MsgAddRing, MsgConnect, MsgConnected,
                MsgDisconnect]

_BY_TYPE: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (MsgAck, MsgHello, MsgInit, MsgAddRegion, MsgAddRing, MsgConnect, MsgConnected,
                MsgDisconnect)
}


def message_type(data: bytes) -> int:
    """The raw ``type`` field of a message (any value, known or not)."""
    if len(data) != MSG_SIZE:
        raise WireError(f"invalid message size {len(data)} (a control message is {MSG_SIZE} bytes)")
    return int(MSG_HEADER.parse(data).type)


def decode_message(data: bytes) -> Message:
    """Decode one 128-byte control message; :class:`WireError` if it is not one."""
    t = message_type(data)
    cls = _BY_TYPE.get(t)
    if cls is None:
        raise WireError(f"unknown message type (0x{t:x})")
    return cls.decode(data)


def _check(data: bytes, t: MsgType) -> None:
    if message_type(data) != t:
        raise WireError(f"expected a {t.name} message")


def _parse(con: cs.Construct, data: bytes, t: MsgType) -> cs.Container:
    _check(data, t)
    return con.parse(data)


def _build(con: cs.Construct, t: MsgType, **fields: object) -> bytes:
    for name, value in fields.items():
        if isinstance(value, int) and value < 0:
            raise ValueError(f"{name} must not be negative")
    try:
        return bytes(con.build(dict(type=int(t), **fields)))
    except cs.ConstructError as exc:
        raise ValueError(f"cannot encode {t.name}: {exc}") from None
