"""The memif socket: one UNIX SOCK_SEQPACKET path serving any number of interfaces."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket as _socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ._text import printable
from .config import DEFAULT_SOCKET_FILENAME, Arguments
from .errors import MemifError
from .interface import ControlChannel, Interface
from .protocol import ServerConfig, ServerHandshake

log = logging.getLogger("memif_aio")


@dataclass(frozen=True)
class PeerCredentials:
    """The peer process of a control connection, from ``SO_PEERCRED``."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: _socket.socket) -> PeerCredentials | None:
    """``SO_PEERCRED`` of a connected AF_UNIX socket (None if the kernel will not tell)."""
    try:
        raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return PeerCredentials(*struct.unpack("3i", raw))


def socket_address(filename: str) -> str:
    """The ``sockaddr_un`` path for a memif socket name.

    ``@name`` and ``abstract:name`` name the abstract namespace (``"\\0name"``,
    compact, like libmemif ``@``, VPP ``abstract:`` and DPDK's default); anything
    else is a filesystem path.
    """
    if filename.startswith("@"):
        addr = "\0" + filename[1:]
    elif filename.startswith("abstract:"):
        addr = "\0" + filename[len("abstract:"):]
    else:
        addr = filename
    if not addr or addr == "\0":
        raise ValueError("empty socket name")
    if len(addr.encode()) > 107 or "\0" in addr[1:]:
        raise ValueError(f"socket name {filename!r} too long (at most 107 bytes) or contains NUL")
    return addr


class Socket:
    """A memif socket (gomemif ``Socket``).

    ``async with Socket(path) as sock`` starts polling on entry and deletes the
    socket (and every interface on it) on exit.  Master interfaces on the
    socket share one listener; each slave interface has its own connection.

    ``socket_mode`` / ``socket_owner`` (uid, gid) set the permissions of a
    listener file we create; ``handshake_timeout`` bounds unauthenticated
    connections and ``max_pending`` how many may wait at once.

    ``accept_filter(creds)`` sees the :class:`PeerCredentials` (pid, uid, gid, from
    ``SO_PEERCRED``) of every process that connects to a listener and may refuse it
    (return False: the connection is closed before HELLO).  Credentials are logged at
    DEBUG either way, and a connected master reports them with
    :meth:`Interface.get_peer_credentials`.
    """

    def __init__(self, filename: str = DEFAULT_SOCKET_FILENAME, *, app_name: str = "memif_aio",
                 socket_mode: int | None = None,
                 socket_owner: tuple[int, int] | None = None,
                 handshake_timeout: float = 10.0, max_pending: int = 64,
                 max_total_region_size: int = 1 << 34,
                 accept_filter: Callable[[PeerCredentials], bool] | None = None) -> None:
        self._filename = filename
        self._address = socket_address(filename)
        raw = app_name.encode("utf-8")
        if len(raw) > 31 or b"\0" in raw:
            raise ValueError("app_name must be at most 31 UTF-8 bytes without NUL")
        self._app_name = raw
        self._socket_mode = socket_mode
        self._socket_owner = socket_owner
        self._handshake_timeout = handshake_timeout
        self._max_pending = max_pending
        self._accept_filter = accept_filter
        self._server_config = ServerConfig(app_name=raw, lookup=self._lookup,
                                           max_total_region_size=max_total_region_size)
        self._interfaces: dict[tuple[bool, int], Interface] = {}
        self._listener: _socket.socket | None = None
        self._listener_inode: tuple[int, int] | None = None
        self._pending: set[ControlChannel] = set()
        self._server_channels: set[ControlChannel] = set()
        self._polling = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- gomemif surface ---------------------------------------------------------------
    def get_filename(self) -> str:
        return self._filename

    def new_interface(self, args: Arguments) -> Interface:
        """Add an interface; ids are unique per role on a socket."""
        if not isinstance(args, Arguments):
            raise TypeError("new_interface takes an Arguments")
        key = (args.is_master, args.id)
        if key in self._interfaces:
            role = "master" if args.is_master else "slave"
            raise ValueError(f"a {role} interface with id {args.id} already exists on this socket")
        itf = Interface(self, args)
        self._interfaces[key] = itf
        if self._polling:
            if args.is_master:
                self._ensure_listener()
            else:
                itf._start()
        return itf

    @property
    def interfaces(self) -> list[Interface]:
        return list(self._interfaces.values())

    def add_listener(self, fd: int) -> None:
        """Serve master interfaces on an already listening AF_UNIX SOCK_SEQPACKET socket
        (for example one passed by a service manager).  The socket takes the fd."""
        if self._listener is not None:
            raise MemifError("this socket already has a listener")
        try:
            sock = _socket.socket(fileno=fd)
        except OSError:
            raise ValueError(f"add_listener: fd {fd} is not a socket") from None
        if sock.family != _socket.AF_UNIX or sock.type != _socket.SOCK_SEQPACKET or \
                not sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN):
            sock.detach()
            raise ValueError("add_listener needs a listening AF_UNIX SOCK_SEQPACKET socket")
        sock.setblocking(False)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
        self._listener = sock
        if self._polling:
            self._watch_listener()

    async def start_polling(self) -> None:
        """Start serving: listen for master interfaces, connect slave interfaces."""
        self._loop = asyncio.get_running_loop()
        self._polling = True
        if any(itf.is_master() for itf in self._interfaces.values()) or self._listener:
            self._ensure_listener()
        for itf in list(self._interfaces.values()):
            itf._start()

    async def stop_polling(self) -> None:
        """Stop serving: disconnect every interface, stop reconnecting, close the listener."""
        self._polling = False
        self._close_listener()
        for ch in list(self._pending):
            ch.close("socket stopped polling")
        for itf in list(self._interfaces.values()):
            await itf._shutdown("socket stopped polling")
            itf._paused = False  # start_polling() brings slaves back

    async def delete(self) -> None:
        """Delete every interface (DISCONNECT "interface deleted"), close and remove the socket."""
        self._polling = False
        for itf in list(self._interfaces.values()):
            await itf.delete()
        for ch in list(self._pending):
            ch.close("socket deleted")
        self._close_listener()
        await asyncio.sleep(0)  # let transports deliver connection_lost

    async def __aenter__(self) -> Socket:
        await self.start_polling()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.delete()

    # --- listener -----------------------------------------------------------------------
    def _ensure_listener(self) -> None:
        if self._listener is None:
            self._listener = self._bind()
        self._watch_listener()

    def _watch_listener(self) -> None:
        assert self._listener is not None
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        loop.add_reader(self._listener.fileno(), self._accept_ready)

    def _bind(self) -> _socket.socket:
        addr = self._address
        if not addr.startswith("\0"):
            self._remove_stale(addr)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                raise MemifError(self._bind_error(exc)) from None
            if not addr.startswith("\0"):
                st = os.stat(addr)
                self._listener_inode = (st.st_dev, st.st_ino)
                if self._socket_mode is not None:
                    os.chmod(addr, self._socket_mode)
                if self._socket_owner is not None:
                    os.chown(addr, *self._socket_owner)
            sock.listen(_socket.SOMAXCONN)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        log.debug("listening on %s", self._filename)
        return sock

    def _bind_error(self, exc: OSError) -> str:
        addr = self._address
        if exc.errno == errno.ENOENT:
            return f"cannot listen on {addr}: directory {os.path.dirname(addr)!r} does not exist"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"cannot listen on {addr}: permission denied ({exc.strerror})"
        if exc.errno == errno.EADDRINUSE:
            return f"cannot listen on {self._filename}: address in use by a live listener"
        return f"cannot listen on {self._filename}: {exc.strerror or exc}"

    def _remove_stale(self, path: str) -> None:
        """Unlink a socket file left by a dead process; refuse a live one (as VPP does)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise MemifError(f"{path} exists and is not a socket")
        probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        probe.setblocking(False)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            log.info("removing stale socket file %s", path)
            os.unlink(path)
            return
        except BlockingIOError:
            pass  # backlog full: someone is listening
        except OSError as exc:
            raise MemifError(f"cannot probe existing socket {path}: {exc.strerror}") from None
        finally:
            probe.close()
        raise MemifError(f"{path} is in use by a live listener (another process serves it)")

    def _close_listener(self) -> None:
        sock = self._listener
        if sock is None:
            return
        self._listener = None
        if self._loop is not None:
            try:
                self._loop.remove_reader(sock.fileno())
            except (ValueError, OSError):
                pass
        sock.close()
        inode = self._listener_inode
        self._listener_inode = None
        if inode is not None:
            try:
                st = os.lstat(self._address)
                if (st.st_dev, st.st_ino) == inode:  # never remove someone else's replacement
                    os.unlink(self._address)
            except OSError:
                pass

    def _accept_ready(self) -> None:
        listener = self._listener
        if listener is None:
            return
        loop = self._loop
        assert loop is not None
        for _ in range(16):
            try:
                conn, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept on %s failed: %s", self._filename, exc)
                return
            if len(self._pending) >= self._max_pending:
                log.warning("%s: too many pending handshakes, dropping a connection",
                            self._filename)
                conn.close()
                continue
            creds = peer_credentials(conn)
            log.debug("%s: connection from %s", self._filename, creds)
            if self._accept_filter is not None:
                try:  # no credentials, nothing to vouch for the peer: refuse
                    allowed = creds is not None and bool(self._accept_filter(creds))
                except Exception:
                    log.exception("%s: accept_filter failed; refusing the connection",
                                  self._filename)
                    allowed = False
                if not allowed:
                    log.warning("%s: accept_filter refused a connection from %s",
                                self._filename, creds)
                    conn.close()
                    continue
            from .transport import SeqpacketTransport

            channel = ControlChannel(ServerHandshake(self._server_config), self,
                                     self._handshake_timeout)
            channel.peer_credentials = creds
            self._pending.add(channel)
            SeqpacketTransport(loop, conn, channel)

    # --- called by server channels -----------------------------------------------------------
    def _lookup(self, interface_id: int) -> Interface | None:
        return self._interfaces.get((True, interface_id))

    def _claim(self, interface_id: int, channel: ControlChannel) -> Interface | None:
        itf = self._interfaces.get((True, interface_id))
        self._pending.discard(channel)
        self._server_channels.add(channel)
        if itf is not None:
            itf._channel = channel
        return itf

    def _channel_closed(self, channel: ControlChannel, reason: str, by_peer: bool) -> None:
        self._pending.discard(channel)
        self._server_channels.discard(channel)
        if channel.interface is not None:
            channel.interface._channel_closed(channel, reason, by_peer)
        else:
            log.info("%s: connection closed before INIT was accepted (%s)", self._filename,
                     printable(reason))

    def _forget(self, itf: Interface) -> None:
        key = (itf.is_master(), itf.get_id())
        if self._interfaces.get(key) is itf:
            del self._interfaces[key]
        if not any(i.is_master() for i in self._interfaces.values()) and \
                self._listener is not None and self._listener_inode is not None:
            self._close_listener()
