"""A scriptable misbehaving memif peer, for ``tests/test_hostile.py``.

Everything here is written against our own wire layer (``MsgX.encode()``, the
construct declarations for malformed messages) and raw sockets, so it can say
anything, in any order, with any fds:

* :class:`HostileClient` connects to a memif_aio master, reads HELLO and then
  sends whatever the test scripts.  With a :class:`PeerMemory` (its own memfd
  region, rings and eventfds) it can complete a real handshake and afterwards
  scribble into its own shared memory (head, tail, descriptors) at any time.
* :class:`HostileServer` listens where a memif_aio slave connects, sends a
  scripted HELLO, ACKs (or not), answers CONNECTED, then maps the slave's
  region (:class:`ServerSession`) and scribbles into the rings.
* :class:`RawRing` reads and writes one ring of a mapping field by field.
* :func:`guard_loop` records everything that reaches the loop's exception
  handler (tests assert it stays empty).

The harness is asyncio-friendly (non-blocking sockets woken through
``add_reader``/``add_writer``, so it works on uvloop too) and every wait is
bounded.  Every fd it creates or receives is closed by ``close()`` (the
``no_leaks`` fixture checks the harness as much as the library).

Run as a script it is the peer process of the fault tests
(``python tests/hostile.py serve --role slave --path P --burst``, ...).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import fcntl
import gc
import mmap
import os
import socket
import struct
import sys
import traceback
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

if __name__ == "__main__":  # run as a peer process: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import construct as cs

from memif_aio import wire
from memif_aio.wire import (
    COOKIE,
    DESC_FLAG_NEXT,
    DESC_SIZE,
    DESC_STRUCT,
    MSG_ADD_RING_FLAG_S2M,
    MSG_SIZE,
    RING_FLAG_MASK_INT,
    U16,
    U32,
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
    WireError,
    decode_message,
)

#: default bound for every wait of the harness
T = 3.0
#: room for 64 fds plus SCM_CREDENTIALS: the harness sees everything it is sent
ANCBUF = socket.CMSG_SPACE(64 * 4) + socket.CMSG_SPACE(12)
F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
F_SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 0x0002)
EVENTFD_MAX = 0xFFFFFFFFFFFFFFFE


class HarnessError(AssertionError):
    """The memif_aio side did not do what the script expected."""


# ----------------------------------------------------------------------------
# Raw messages (anything our encoders refuse to produce)
# ----------------------------------------------------------------------------
_CONS = {MsgType.HELLO: wire.HELLO, MsgType.INIT: wire.INIT, MsgType.ADD_REGION: wire.ADD_REGION,
         MsgType.ADD_RING: wire.ADD_RING, MsgType.CONNECT: wire.CONNECT,
         MsgType.CONNECTED: wire.CONNECTED, MsgType.DISCONNECT: wire.DISCONNECT}


def raw(t: MsgType, **fields: Any) -> bytes:
    """A 128-byte message built from the construct declaration, byte fields padded
    with NUL to their full width (so a 32-byte name without NUL is possible)."""
    con = _CONS[t]
    inner = con.subcon
    for sub in inner.subcons:
        if sub.name in fields and isinstance(sub.subcon, cs.Bytes):
            fields[sub.name] = fields[sub.name].ljust(sub.sizeof(), b"\0")
    return bytes(con.build(dict(type=int(t), **fields)))


def raw_type(t: int, payload: bytes = b"") -> bytes:
    """A 128-byte datagram with any type value and payload."""
    return (U16.pack(t) + payload).ljust(MSG_SIZE, b"\0")


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# ----------------------------------------------------------------------------
# Loop guard
# ----------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def guard_loop() -> AsyncIterator[list[dict[str, Any]]]:
    """Record every call of the loop's exception handler during the block
    (callbacks that raised, tasks whose exception was never retrieved, ...)
    and fail if there was any."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        yield errors
        await asyncio.sleep(0.01)
        gc.collect()  # unretrieved task exceptions are reported when the task is collected
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(old)
    assert not errors, f"exceptions reached the event loop: {errors}" + "".join(
        "\n" + "".join(traceback.format_exception(ctx["exception"]))
        for ctx in errors if isinstance(ctx.get("exception"), BaseException))


# ----------------------------------------------------------------------------
# Control channel
# ----------------------------------------------------------------------------
@dataclass
class Received:
    """One datagram as received (``fds`` belong to the caller)."""

    data: bytes
    fds: list[int]
    flags: int

    @property
    def eof(self) -> bool:
        return not self.data and not self.flags & socket.MSG_TRUNC

    @property
    def type(self) -> int | None:
        return U16.unpack_from(self.data)[0] if len(self.data) >= 2 else None

    def msg(self) -> Message:
        return decode_message(self.data)

    def describe(self) -> str:
        if self.eof:
            return "EOF"
        try:
            m = self.msg()
        except WireError as exc:
            return f"undecodable datagram ({exc})"
        if isinstance(m, MsgDisconnect):
            return f"DISCONNECT {m.string.decode('utf-8', 'replace')!r}"
        return type(m).__name__


async def _ready(fd: int, write: bool, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await asyncio.wait_for(fut, timeout)
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


class Channel:
    """A raw SOCK_SEQPACKET control channel with fd passing."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    async def send(self, msg: Message | bytes, fds: Sequence[int] = ()) -> None:
        """Send one datagram (a message object or raw bytes of any length) with ``fds``."""
        data = msg if isinstance(msg, (bytes, bytearray)) else msg.encode()
        while True:
            try:
                if fds:
                    self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                array.array("i", fds))])
                else:
                    self.sock.send(data)
                return
            except BlockingIOError:
                await _ready(self.sock.fileno(), True, T)

    def try_send(self, msg: Message | bytes) -> bool:
        """Send without waiting: False if the socket buffer is full (flooding)."""
        data = msg if isinstance(msg, (bytes, bytearray)) else msg.encode()
        try:
            self.sock.send(data)
            return True
        except BlockingIOError:
            return False

    async def recv(self, timeout: float = T) -> Received:
        """The next datagram (a 0-byte one, ECONNRESET and EOF all read as EOF)."""
        while True:
            try:
                data, anc, flags, _ = self.sock.recvmsg(4096, ANCBUF)
            except BlockingIOError:
                await _ready(self.sock.fileno(), False, timeout)
                continue
            except (ConnectionResetError, BrokenPipeError):
                return Received(b"", [], 0)
            fds: list[int] = []
            for level, ctype, cdata in anc:
                if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                    usable = len(cdata) - len(cdata) % 4
                    fds.extend(array.array("i", cdata[:usable]))
            return Received(data, fds, flags)

    async def expect(self, t: MsgType, timeout: float = T) -> Message:
        """The next message must be of type ``t`` (fds it carries are closed)."""
        r = await self.recv(timeout)
        close_fds(r.fds)
        if r.type != t or r.eof:
            raise HarnessError(f"expected {t.name}, got {r.describe()}")
        if len(r.data) != MSG_SIZE:
            raise HarnessError(f"memif_aio sent a {len(r.data)}-byte message")
        return r.msg()

    async def expect_disconnect(self, timeout: float = T, eof: bool = True) -> str:
        """Skip ACKs until a DISCONNECT; return its reason (and, with ``eof``,
        check that the socket is closed right after it)."""
        while True:
            r = await self.recv(timeout)
            close_fds(r.fds)
            if r.eof:
                raise HarnessError("EOF without a DISCONNECT")
            if r.type == MsgType.ACK:
                continue
            if r.type != MsgType.DISCONNECT:
                raise HarnessError(f"expected DISCONNECT, got {r.describe()}")
            msg = r.msg()
            assert isinstance(msg, MsgDisconnect) and len(r.data) == MSG_SIZE
            if eof:
                await self.expect_eof(timeout)
            return msg.string.decode("utf-8", "replace")

    async def expect_eof(self, timeout: float = T) -> None:
        r = await self.recv(timeout)
        close_fds(r.fds)
        if not r.eof:
            raise HarnessError(f"expected EOF, got {r.describe()}")

    async def expect_silence(self, duration: float) -> None:
        """Nothing at all may arrive for ``duration`` seconds."""
        try:
            r = await self.recv(duration)
        except TimeoutError:
            return
        close_fds(r.fds)
        raise HarnessError(f"expected silence, got {r.describe()}")

    def close(self) -> None:
        self.sock.close()


class HostileClient(Channel):
    """A client (slave) that says whatever it is told to a memif_aio master."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.hello: MsgHello | None = None
        self.memory: PeerMemory | None = None

    @classmethod
    async def connect(cls, path: str, hello: bool = True, timeout: float = T) -> HostileClient:
        addr = "\0" + path[1:] if path.startswith("@") else path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)  # a UNIX connect completes at once or fails
        try:
            sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        self = cls(sock)
        if hello:
            try:
                msg = await self.expect(MsgType.HELLO, timeout)
            except BaseException:
                self.close()
                raise
            assert isinstance(msg, MsgHello)
            self.hello = msg
        return self

    async def __aenter__(self) -> HostileClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        super().close()
        if self.memory is not None:
            self.memory.close()

    async def request(self, msg: Message | bytes, fds: Sequence[int] = (),
                      timeout: float = T) -> Received:
        await self.send(msg, fds)
        return await self.recv(timeout)

    async def ok(self, msg: Message | bytes, fds: Sequence[int] = (),
                 reply: MsgType = MsgType.ACK) -> Message:
        """Send ``msg``; the answer must be ``reply`` (ACK by default)."""
        await self.send(msg, fds)
        return await self.expect(reply)

    async def init(self, id: int = 0, secret: bytes = b"", mode: int = 0,
                   name: bytes = b"hostile") -> None:
        await self.ok(MsgInit(id, mode, secret, name))

    async def handshake(self, memory: PeerMemory, id: int = 0, secret: bytes = b"",
                        mode: int = 0, if_name: bytes = b"hostile0",
                        connect: bool = True, name: bytes = b"hostile") -> None:
        """A correct client handshake with ``memory`` (which this client then owns)."""
        self.memory = memory
        await self.init(id, secret, mode, name)
        for msg, fd in memory.setup_messages():
            await self.ok(msg, [fd])
        if connect:
            await self.ok(MsgConnect(if_name), reply=MsgType.CONNECTED)


@contextlib.asynccontextmanager
async def handshaken_client(path: str, *, name: bytes = b"hostile",
                            if_name: bytes = b"hostile0",
                            **memory_kw: Any) -> AsyncIterator[tuple[HostileClient, PeerMemory]]:
    """A :class:`HostileClient` at ``path`` that completed a correct handshake (INIT as
    ``name``, CONNECT as ``if_name``) with memory of its own (``PeerMemory(**memory_kw)``,
    which it owns); closed at the end."""
    memory = PeerMemory(**memory_kw)
    try:
        hc = await HostileClient.connect(path)
    except BaseException:
        memory.close()
        raise
    async with hc:
        await hc.handshake(memory, name=name, if_name=if_name)
        yield hc, memory


class HostileServer:
    """A listener at ``path`` that plays a scripted master to a memif_aio slave."""

    def __init__(self, path: str) -> None:
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.bind(path)
            sock.listen(16)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.listener = sock
        self.conns: list[ServerConn] = []

    async def accept(self, timeout: float = T) -> ServerConn:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                await _ready(self.listener.fileno(), False, timeout)
                continue
            conn = ServerConn(sock)
            self.conns.append(conn)
            return conn

    async def __aenter__(self) -> HostileServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()
        if self.listener.fileno() >= 0:
            self.listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class ServerConn(Channel):
    """One accepted connection of a :class:`HostileServer`."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.session: ServerSession | None = None
        self.init: MsgInit | None = None

    async def serve(self, hello: Message | bytes | None = None,
                    if_name: bytes = b"hostile-master") -> ServerSession:
        """Play a correct master: HELLO, ACK every INIT/ADD_*, CONNECTED; map the region."""
        await self.send(hello if hello is not None else MsgHello(b"hostile"))
        s = self.session = ServerSession()
        while True:
            r = await self.recv()
            if r.eof:
                raise HarnessError("the slave closed the connection during the handshake")
            msg = r.msg()
            if isinstance(msg, MsgInit):
                close_fds(r.fds)
                self.init = msg
            elif isinstance(msg, MsgAddRegion):
                (fd,) = r.fds
                s.add_region(fd, msg.size)
            elif isinstance(msg, MsgAddRing):
                (fd,) = r.fds
                s.add_ring(msg, fd)
            elif isinstance(msg, MsgConnect):
                await self.send(MsgConnected(if_name))
                return s
            else:
                close_fds(r.fds)
                raise HarnessError(f"unexpected {r.describe()} from the slave")
            await self.send(MsgAck())

    def close(self) -> None:
        super().close()
        if self.session is not None:
            self.session.close()


# ----------------------------------------------------------------------------
# Shared memory
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Desc:
    flags: int
    region: int
    length: int
    offset: int
    metadata: int = 0


class RawRing:
    """One ring inside a mapping: every field readable and writable, nothing checked.

    Only ``struct`` calls on the ``mmap`` (no exported views), so the mapping
    can always be closed.
    """

    def __init__(self, mm: mmap.mmap, offset: int, log2_ring_size: int,
                 layout: RingLayout) -> None:
        self.mm = mm
        self.offset = offset
        self.size = 1 << log2_ring_size
        self.mask = self.size - 1
        self.layout = layout

    def _get16(self, off: int) -> int:
        return int(U16.unpack_from(self.mm, self.offset + off)[0])

    def _set16(self, off: int, v: int) -> None:
        U16.pack_into(self.mm, self.offset + off, v & 0xFFFF)

    @property
    def head(self) -> int:
        return self._get16(self.layout.head)

    @head.setter
    def head(self, v: int) -> None:
        self._set16(self.layout.head, v)

    @property
    def tail(self) -> int:
        return self._get16(self.layout.tail)

    @tail.setter
    def tail(self, v: int) -> None:
        self._set16(self.layout.tail, v)

    @property
    def flags(self) -> int:
        return self._get16(self.layout.flags)

    @flags.setter
    def flags(self, v: int) -> None:
        self._set16(self.layout.flags, v)

    @property
    def cookie(self) -> int:
        return int(U32.unpack_from(self.mm, self.offset + self.layout.cookie)[0])

    @cookie.setter
    def cookie(self, v: int) -> None:
        U32.pack_into(self.mm, self.offset + self.layout.cookie, v)

    def _desc_off(self, slot: int) -> int:
        return self.offset + self.layout.desc + DESC_SIZE * (slot & self.mask)

    def desc(self, slot: int) -> Desc:
        return Desc(*DESC_STRUCT.unpack_from(self.mm, self._desc_off(slot)))

    def set_desc(self, slot: int, flags: int | None = None, region: int | None = None,
                 length: int | None = None, offset: int | None = None) -> None:
        """Overwrite some fields of descriptor ``slot`` (counter value; masked)."""
        d = self.desc(slot)
        DESC_STRUCT.pack_into(self.mm, self._desc_off(slot),
                              d.flags if flags is None else flags,
                              d.region if region is None else region,
                              d.length if length is None else length,
                              d.offset if offset is None else offset, d.metadata)


def _memfd(size: int, seal: bool) -> tuple[int, mmap.mmap]:
    """A region memfd; unsealed ones are created without MFD_ALLOW_SEALING, so that
    nobody (the master included, which seals a sealable one itself) can seal it."""
    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if seal else 0)
    fd = os.memfd_create("hostile region", flags)
    try:
        if seal:
            fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK)
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd, mm


def _signal(efd: int, ring: RawRing) -> None:
    if not ring.flags & RING_FLAG_MASK_INT:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_write(efd, 1)


def _gather(ring: RawRing, start: int, end: int, read: Any) -> tuple[list[bytes], int]:
    """Packets in slots ``[start, end)`` (chains joined); returns them and the new cursor."""
    out: list[bytes] = []
    parts: list[bytes] = []
    c = start
    while c != end:
        d = ring.desc(c)
        parts.append(read(d))
        c = (c + 1) & 0xFFFF
        if not d.flags & DESC_FLAG_NEXT:
            out.append(b"".join(parts))
            parts = []
            start = c
    return out, start


class PeerMemory:
    """The region, rings and eventfds a (hostile) client creates: the VPP/DPDK
    single-region layout of protocol reference §6.4, built independently of
    memif_aio's client code.

    Rings are initialised correctly; tests then break whatever they like.
    """

    def __init__(self, num_s2m: int = 1, num_m2s: int = 1, log2_ring_size: int = 4,
                 buffer_size: int = 2048, cache_line: int = 64, seal: bool = True,
                 blocking_eventfds: bool = False) -> None:
        self.layout = layout = RingLayout.for_cache_line(cache_line)
        self.log2 = log2_ring_size
        self.R = R = 1 << log2_ring_size
        self.bsize = buffer_size
        self.num_s2m, self.num_m2s = num_s2m, num_m2s
        self.stride = layout.ring_size(log2_ring_size)
        nrings = num_s2m + num_m2s
        self.buffers_at = nrings * self.stride
        self.size = self.buffers_at + nrings * R * buffer_size
        self.fd, self.mm = _memfd(self.size, seal)
        flags = os.EFD_CLOEXEC | (0 if blocking_eventfds else os.EFD_NONBLOCK)
        self.s2m: list[RawRing] = []
        self.m2s: list[RawRing] = []
        self.s2m_efd: list[int] = []
        self.m2s_efd: list[int] = []
        self.m2s_cons: list[int] = []
        for k in range(nrings):
            ring = RawRing(self.mm, k * self.stride, log2_ring_size, layout)
            ring.cookie = COOKIE
            for j in range(R):
                ring.set_desc(j, 0, 0, buffer_size, self.buffer(k, j))
            if k < num_s2m:
                self.s2m.append(ring)
                self.s2m_efd.append(os.eventfd(0, flags))
            else:
                self.m2s.append(ring)
                self.m2s_efd.append(os.eventfd(0, flags))
                self.m2s_cons.append(0)

    def buffer(self, ring_no: int, slot: int) -> int:
        """Region offset of the buffer of ``slot`` in ring number ``ring_no`` (S2M first)."""
        return self.buffers_at + (ring_no * self.R + (slot & (self.R - 1))) * self.bsize

    def setup_messages(self) -> list[tuple[Message, int]]:
        """ADD_REGION and ADD_RING messages with their fds, in the reference order."""
        msgs: list[tuple[Message, int]] = [(MsgAddRegion(0, self.size), self.fd)]
        for i, efd in enumerate(self.s2m_efd):
            msgs.append((MsgAddRing(MSG_ADD_RING_FLAG_S2M, i, 0, i * self.stride, self.log2), efd))
        for i, efd in enumerate(self.m2s_efd):
            msgs.append((MsgAddRing(0, i, 0, (self.num_s2m + i) * self.stride, self.log2), efd))
        return msgs

    # --- data path, done right (tests break it on purpose elsewhere) -----------------
    def send(self, q: int, packets: Sequence[bytes], signal: bool = True) -> None:
        """Produce on S2M ring ``q`` (chained by buffer size), publish, signal."""
        ring = self.s2m[q]
        head = ring.head
        for pkt in packets:
            segs = [pkt[i:i + self.bsize] for i in range(0, len(pkt), self.bsize)] or [b""]
            for k, seg in enumerate(segs):
                off = self.buffer(q, head)
                self.mm[off:off + len(seg)] = seg
                ring.set_desc(head, DESC_FLAG_NEXT if k < len(segs) - 1 else 0, 0, len(seg), off)
                head = (head + 1) & 0xFFFF
        ring.head = head
        if signal:
            self.signal_s2m(q)

    def signal_s2m(self, q: int = 0) -> None:
        _signal(self.s2m_efd[q], self.s2m[q])

    def post(self, q: int = 0, n: int | None = None) -> int:
        """Post up to ``n`` empty buffers on M2S ring ``q`` (all free ones by default)."""
        ring = self.m2s[q]
        head = ring.head
        free = self.R - ((head - self.m2s_cons[q]) & 0xFFFF)
        k = free if n is None else min(n, free)
        ring_no = self.num_s2m + q
        for _ in range(k):
            ring.set_desc(head, 0, 0, self.bsize, self.buffer(ring_no, head))
            head = (head + 1) & 0xFFFF
        ring.head = head
        return k

    def receive(self, q: int = 0, repost: bool = True) -> list[bytes]:
        """Consume what the master filled on M2S ring ``q`` (reading the descriptors
        as written), then post the buffers again."""
        ring = self.m2s[q]
        out, self.m2s_cons[q] = _gather(
            ring, self.m2s_cons[q], ring.tail,
            lambda d: self.mm[d.offset:d.offset + d.length] if d.region == 0 else b"?")
        if repost:
            self.post(q)
        return out

    def close(self) -> None:
        if self.fd >= 0:
            self.mm.close()
            close_fds([self.fd, *self.s2m_efd, *self.m2s_efd])
            self.fd = -1


class ServerSession:
    """What a hostile master maps of a slave's memory."""

    def __init__(self) -> None:
        self.region_fds: list[int] = []
        self.maps: list[mmap.mmap] = []
        self.s2m: list[RawRing] = []
        self.m2s: list[RawRing] = []
        self.s2m_efd: list[int] = []
        self.m2s_efd: list[int] = []
        self.layout = RingLayout.for_cache_line(64)

    def add_region(self, fd: int, size: int) -> None:
        self.region_fds.append(fd)
        self.maps.append(mmap.mmap(fd, size, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE))

    def add_ring(self, msg: MsgAddRing, fd: int) -> None:
        ring = RawRing(self.maps[msg.region], msg.offset, msg.log2_ring_size, self.layout)
        if msg.flags & MSG_ADD_RING_FLAG_S2M:
            self.s2m.append(ring)
            self.s2m_efd.append(fd)
        else:
            self.m2s.append(ring)
            self.m2s_efd.append(fd)

    def receive(self, q: int = 0) -> list[bytes]:
        """Consume S2M ring ``q`` and move its tail."""
        ring = self.s2m[q]
        out, cur = _gather(ring, ring.tail, ring.head,
                           lambda d: self.maps[d.region][d.offset:d.offset + d.length])
        ring.tail = cur
        return out

    def posted(self, q: int = 0) -> int:
        ring = self.m2s[q]
        return (ring.head - ring.tail) & 0xFFFF

    def send(self, q: int, packets: Sequence[bytes], signal: bool = True) -> int:
        """Fill posted M2S buffers (one per packet), move tail, signal; returns how many."""
        ring = self.m2s[q]
        tail = ring.tail
        n = 0
        for pkt in packets[:self.posted(q)]:
            d = ring.desc(tail)
            self.maps[d.region][d.offset:d.offset + len(pkt)] = pkt
            ring.set_desc(tail, flags=0, length=len(pkt))
            tail = (tail + 1) & 0xFFFF
            n += 1
        ring.tail = tail
        if signal:
            self.signal_m2s(q)
        return n

    def signal_m2s(self, q: int = 0) -> None:
        _signal(self.m2s_efd[q], self.m2s[q])

    def close(self) -> None:
        for mm in self.maps:
            mm.close()
        self.maps.clear()
        close_fds([*self.region_fds, *self.s2m_efd, *self.m2s_efd])
        self.region_fds.clear()
        self.s2m_efd.clear()
        self.m2s_efd.clear()


# ----------------------------------------------------------------------------
# Peer processes (run as a script)
# ----------------------------------------------------------------------------
SEQ = struct.Struct("<Q")


def seq_packet(seq: int, size: int = 0) -> bytes:
    """A packet carrying ``seq`` and a payload derived from it (checkable byte for byte)."""
    size = size or 64 + seq % 200
    body = bytes((seq * 31 + k) & 0xFF for k in range(min(size - 8, 256)))
    return (SEQ.pack(seq) + body * (1 + (size - 8) // max(len(body), 1)))[:size]


def check_seq_packet(pkt: bytes) -> int:
    """The sequence number of an intact :func:`seq_packet`; AssertionError if corrupted."""
    seq = SEQ.unpack_from(pkt)[0]
    assert pkt == seq_packet(seq, len(pkt)), f"packet {seq} corrupted"
    return int(seq)


def _say(*words: object) -> None:
    print(*words, flush=True)


async def _serve(args: argparse.Namespace) -> None:
    """One memif_aio interface (id 0): report when it is up, print every packet's
    sequence number it receives, and with --burst send numbered packets forever."""
    from memif_aio import Arguments, Disconnected, MemoryConfig, Socket

    async with Socket(args.path) as sock:
        itf = sock.new_interface(Arguments(
            id=0, is_master=args.role == "master", name=f"peer-{args.role}",
            require_seal=not args.no_seal, reconnect_min_delay=0.02, reconnect_max_delay=0.1,
            memory_config=MemoryConfig(log2_ring_size=6)))
        while True:
            await itf.wait_connected()
            _say("up")

            async def rx() -> None:
                q = itf.get_rx_queue(0)
                while True:
                    for pkt in await q.read_burst(64):
                        _say("rx", SEQ.unpack_from(pkt)[0])

            async def tx() -> None:
                q = itf.get_tx_queue(0)
                seq = 0
                while args.burst:
                    # write_burst publishes what fits (like socket.send): count that
                    seq += await q.write_burst([seq_packet(s) for s in range(seq, seq + 32)])
                await asyncio.Event().wait()

            try:
                await asyncio.gather(rx(), tx())
            except Disconnected as exc:
                _say("down", exc.reason)


async def _eventfd_attack(args: argparse.Namespace) -> None:
    """A master with a hostile client whose M2S interrupt eventfd is blocking
    (from the start, or made blocking after CONNECT) and saturated, so that an
    eventfd write would block.  Prints 'survived' if the master's write returns."""
    from memif_aio import Arguments, Socket

    async with Socket(args.path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        mem = PeerMemory(log2_ring_size=2, blocking_eventfds=not args.late)
        async with await HostileClient.connect(args.path) as hc:
            await hc.handshake(mem)
            await m.wait_connected(T)
            efd = mem.m2s_efd[0]
            if args.late:  # O_NONBLOCK lives in the shared open file description
                fl = fcntl.fcntl(efd, fcntl.F_GETFL)
                fcntl.fcntl(efd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
            os.write(efd, EVENTFD_MAX.to_bytes(8, "little"))  # saturated: the next write blocks
            mem.m2s[0].flags = 0  # "please interrupt me"
            mem.post()
            _say("armed")
            await m.get_tx_queue(0).write_packet(b"x" * 60)
            await asyncio.sleep(0.05)  # the signal is deferred to the next loop iteration
            _say("survived", mem.receive(repost=False) == [b"x" * 60])


async def _bind(args: argparse.Namespace) -> None:
    """Start a master Socket at args.path and report the error, if any."""
    from memif_aio import Arguments, MemifError, Socket

    sock = Socket(args.path)
    sock.new_interface(Arguments(id=0, is_master=True))
    try:
        await sock.start_polling()
        _say("listening")
    except MemifError as exc:
        _say("MemifError", exc)
    finally:
        await sock.delete()


def _listen(args: argparse.Namespace) -> None:
    """A bare listener at args.path (a 'live' or, once killed, a 'stale' socket file)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(args.path)
    sock.listen(1)
    _say("ready")
    sys.stdin.read()  # until the test closes stdin or kills us


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--role", choices=("master", "slave"), required=True)
    s.add_argument("--path", required=True)
    s.add_argument("--burst", action="store_true")
    s.add_argument("--no-seal", action="store_true")
    e = sub.add_parser("eventfd-attack")
    e.add_argument("--path", required=True)
    e.add_argument("--late", action="store_true")
    b = sub.add_parser("bind")
    b.add_argument("--path", required=True)
    b.add_argument("--uid", type=int)
    lp = sub.add_parser("listen")
    lp.add_argument("--path", required=True)
    args = p.parse_args()
    if args.cmd == "serve":
        asyncio.run(_serve(args))
    elif args.cmd == "eventfd-attack":
        asyncio.run(_eventfd_attack(args))
    elif args.cmd == "bind":
        if args.uid is not None:
            os.setgid(args.uid)
            os.setuid(args.uid)
        asyncio.run(_bind(args))
    else:
        _listen(args)


if __name__ == "__main__":
    main()

__all__ = [
    "EVENTFD_MAX",
    "Channel",
    "Desc",
    "HarnessError",
    "HostileClient",
    "HostileServer",
    "PeerMemory",
    "RawRing",
    "Received",
    "ServerConn",
    "ServerSession",
    "T",
    "check_seq_packet",
    "close_fds",
    "guard_loop",
    "raw",
    "raw_type",
    "seq_packet",
]
