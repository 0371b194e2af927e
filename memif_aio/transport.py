"""A SOCK_SEQPACKET transport with fd passing, for an asyncio Protocol.

asyncio's stream transports refuse SOCK_SEQPACKET, so this is a small one of
our own: ``loop.add_reader`` plus non-blocking ``recvmsg``/``sendmsg``.  It
works the same on the default loop and on uvloop.  Each datagram is handed to
``protocol.message_received(data, fds, truncated)``.
"""

from __future__ import annotations

import array
import asyncio
import collections
import errno
import logging
import socket
from typing import Protocol

from .eventfd import close_fds
from .wire import MSG_SIZE

log = logging.getLogger("memif_aio")

#: room for 4 fds (to detect extras) and the SCM_CREDENTIALS a SO_PASSCRED listener adds (§2.6)
ANCBUF = socket.CMSG_SPACE(4 * 4) + socket.CMSG_SPACE(12)
_FDSIZE = array.array("i").itemsize


def _received_fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds of every SCM_RIGHTS item of ``recvmsg``'s ancillary data (whole ints only:
    a truncated item's partial last fd is not one)."""
    fds: list[int] = []
    for level, ctype, cdata in anc:
        if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
            usable = len(cdata) - len(cdata) % _FDSIZE
            fds.extend(array.array("i", cdata[:usable]))
    return fds


class MessageProtocol(Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def message_received(self, data: bytes, fds: list[int], truncated: bool) -> None: ...

    def eof_received(self) -> bool | None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class SeqpacketTransport(asyncio.Transport):
    """Datagram-preserving transport over a connected AF_UNIX SOCK_SEQPACKET socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: MessageProtocol) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fileno = sock.fileno()
        self._protocol = protocol
        self._closing = False
        self._outq: collections.deque[tuple[bytes, int | None]] = collections.deque()
        self._writing = False
        sock.setblocking(False)
        protocol.connection_made(self)
        loop.add_reader(self._fileno, self._read_ready)

    # --- asyncio.Transport API ------------------------------------------------
    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "socket":
            return self._sock
        if name == "peercred":
            try:
                return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            except OSError:
                return default
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Flush what is queued (best effort), close, then ``connection_lost(None)``."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fileno)
        if self._writing:
            self._loop.remove_writer(self._fileno)
            self._writing = False
        self._flush(final=True)
        self._drain()
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def _drain(self) -> None:
        """Discard what the peer sent that we will never read (bounded; fds closed).

        Closing a socket with unread datagrams makes the peer's next ``recv`` fail
        with ECONNRESET before it reaches our last message, so a peer that pipelines
        or floods would lose the DISCONNECT reason we just queued.
        """
        for _ in range(1024):
            try:
                data, anc, _flags, _addr = self._sock.recvmsg(MSG_SIZE, ANCBUF)
            except OSError:
                return
            close_fds(_received_fds(anc))
            if not data and not anc:
                return

    def abort(self) -> None:
        self._outq.clear()
        self.close()

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.send_message(bytes(data))

    # --- messages --------------------------------------------------------------
    def send_message(self, data: bytes, fd: int | None = None) -> None:
        """Queue one datagram (and at most one fd); sent in order."""
        if self._closing:
            return
        self._outq.append((data, fd))
        if not self._writing:
            self._flush()

    def _flush(self, final: bool = False) -> None:
        q = self._outq
        while q:
            data, fd = q[0]
            try:
                if fd is None:
                    self._sock.send(data)
                else:
                    self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                 array.array("i", [fd]))])
            except BlockingIOError:
                if final:
                    q.clear()
                    return
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(self._fileno, self._write_ready)
                return
            except OSError as exc:
                q.clear()
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    log.debug("control channel send failed: %s", exc)
                if not final:
                    self._loop.call_soon(self._eof)
                return
            q.popleft()

    def _write_ready(self) -> None:
        self._loop.remove_writer(self._fileno)
        self._writing = False
        self._flush()

    def _eof(self) -> None:
        if not self._closing:
            self._protocol.eof_received()

    def _read_ready(self) -> None:
        for _ in range(32):  # bounded: a flooding peer cannot starve the loop
            if self._closing:
                return
            try:
                data, anc, flags, _addr = self._sock.recvmsg(MSG_SIZE, ANCBUF)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("control channel receive failed: %s", exc)
                data, anc, flags = b"", [], 0
            fds = _received_fds(anc)
            truncated = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC))
            if not data and not truncated:
                close_fds(fds)
                self._protocol.eof_received()  # EOF (or a zero-length datagram, same thing)
                return
            self._protocol.message_received(data, fds, truncated)
