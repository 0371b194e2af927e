"""The memif socket: one UNIX SOCK_SEQPACKET path serving any number of interfaces."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import resource
import socket as _socket
import stat
import struct
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from . import address as _addr
from ._text import printable
from .address import NetnsSpec, SocketAddress, peer_credentials
from .address import PeerCredentials as PeerCredentials  # public here and in memif_aio
from .address import socket_address as socket_address  # the old home of the helper
from .channel import ControlChannel
from .config import DEFAULT_SOCKET_FILENAME, Arguments
from .errors import AcceptFailed, ConnectionEvicted, ListenerLost, MemifError
from .events import DEFAULT_MAXSIZE, Subscription, end_all, publish
from .interface import Interface
from .protocol import (
    DEFAULT_MAX_REGIONS,
    HandshakeBudget,
    ServerConfig,
    ServerHandshake,
    ServerTarget,
    Session,
)
from .transport import SeqpacketTransport

log = logging.getLogger("memif_aio")

# --- listener policy (docs/security.md, "Bounds and policies") --------------------------------
#: accept() errnos that concern one connection only (it died in the backlog): skip it
_SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
#: after a failed accept() (EMFILE, ENFILE, ENOBUFS, ENOMEM, ...) the listener is not read for
#: this long, doubling on every failure up to ACCEPT_RETRY_MAX, back to the minimum on success
ACCEPT_RETRY_MIN = 0.01
ACCEPT_RETRY_MAX = 1.0
#: how often a listening socket checks that its file is still its own (st_dev, st_ino) when
#: it cannot watch the path with inotify, or while something is wrong there (see _PathWatch)
LISTENER_CHECK_INTERVAL = 1.0
#: a connection waiting for INIT is never evicted before it is this old (at most half the
#: pre-INIT timeout): a new connection waits in the kernel's backlog instead
EVICTION_GRACE = 0.25
#: at most one log line per kind of background error in this many seconds
BACKGROUND_LOG_INTERVAL = 10.0
#: default of Socket(init_timeout=...): seconds a connection may take to send INIT
DEFAULT_INIT_TIMEOUT = 2.0


def default_handshake_fds() -> int:
    """A quarter of the soft ``RLIMIT_NOFILE`` (256 with the usual 1024), at least 64."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return 1 << 20
    return max(64, soft // 4)


# --- watching the socket file (inotify, through ctypes: the standard library has no binding) ---
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_UNMOUNT, _IN_Q_OVERFLOW, _IN_IGNORED = (
    0x400, 0x800, 0x2000, 0x4000, 0x8000)
_IN_ONLYDIR = 0x01000000
_NAME_EVENTS = _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
_SELF_EVENTS = _IN_DELETE_SELF | _IN_MOVE_SELF
_EVENT = struct.Struct("=iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_libc: ctypes.CDLL | None = None


def _inotify() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


class _PathWatch:
    """inotify watches that tell when the file at ``path`` may have changed, so that an idle
    listener makes no wake-ups (issue 14): the directory's entries (created, deleted,
    renamed from or to), and the directory and each of its ancestors as named (deleted,
    renamed).  Any event that may concern the path means "lstat it now"; an event that
    invalidates the watches (an ancestor moved or deleted, an unmount, an overflow) also
    sets :attr:`broken`: the caller drops this watch and builds a new one.  What no watch
    sees is a mount over the directory or an ancestor.  OSError if inotify is not
    available (or out of instances or watches): the caller polls instead."""

    def __init__(self, path: str) -> None:
        libc = _inotify()
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd: int = fd
        self.broken = False
        try:
            d = os.path.dirname(os.path.abspath(path))
            self._name = os.fsencode(os.path.basename(path))
            self._dir_wd = self._add(d, _NAME_EVENTS | _SELF_EVENTS)
            while d != os.path.dirname(d):
                d = os.path.dirname(d)
                self._add(d, _SELF_EVENTS)
        except BaseException:
            os.close(fd)
            raise

    def _add(self, directory: str, mask: int) -> int:
        wd: int = _inotify().inotify_add_watch(self.fd, os.fsencode(directory),
                                               mask | _IN_ONLYDIR)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), directory)
        return wd

    def read(self) -> bool:
        """Drain the pending events: True if one may concern the path (or :attr:`broken`)."""
        relevant = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return relevant or self.broken
            except OSError:
                self.broken = True
                return True
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, n = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size:pos + _EVENT.size + n].rstrip(b"\0")
                pos += _EVENT.size + n
                if mask & (_SELF_EVENTS | _IN_UNMOUNT | _IN_Q_OVERFLOW | _IN_IGNORED):
                    self.broken = True
                elif wd == self._dir_wd and mask & _NAME_EVENTS and name == self._name:
                    relevant = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(eq=False)
class _Pending:
    """A connection waiting for INIT (the listener's bookkeeping)."""

    channel: ControlChannel
    uid: int | None
    creds: PeerCredentials | None
    since: float  #: loop.time() of accept
    timer: asyncio.TimerHandle | None = field(default=None)


class Socket:
    """A memif socket (gomemif ``Socket``).

    ``async with Socket(path) as sock`` starts polling on entry and deletes the
    socket (and every interface on it) on exit.  Master interfaces on the
    socket share one listener; each slave interface has its own connection.

    ``socket_mode`` / ``socket_owner`` (uid, gid) set the permissions of a
    listener file we create; ``handshake_timeout`` bounds unauthenticated
    connections and ``init_timeout`` the time they may take to send INIT.
    ``max_pending`` connections may wait for INIT at once, ``max_pending_per_uid``
    of them from one uid (half of ``max_pending`` by default); past that the oldest
    one (of that uid, or of all) is evicted.  ``max_regions`` and
    ``max_total_region_size`` bound what one connection may map;
    ``max_handshake_fds`` and ``max_handshake_memory`` what all connections that
    have not reached CONNECT may hold together (a quarter of the soft
    RLIMIT_NOFILE, and ``max_total_region_size``, by default).  docs/security.md
    lists every bound.  A listener whose socket file is deleted binds a new one
    at the same path (noticed through an inotify watch, one fd; checked every second
    where inotify cannot be used); background errors are typed
    (:class:`~memif_aio.errors.ListenerError`) and logged, rate-limited.

    ``accept_filter(creds)`` sees the :class:`PeerCredentials` (pid, uid, gid, from
    ``SO_PEERCRED``) of every process that connects to a listener and may refuse it
    (return False: the connection is closed before HELLO).  Credentials are logged at
    DEBUG either way, and a connected master reports them with
    :meth:`Interface.get_peer_credentials`.

    Background errors (what happens away from any call of yours: a failed
    ``accept``, the listener lost, a peer breaking the protocol on the data
    path) are logged and delivered as :class:`~memif_aio.MemifError` s to
    ``error_func(exc)`` (a plain function, called on the loop; it must not
    block) and to every :meth:`errors` subscription: the analogue of gomemif's
    ``StartPolling(errChan)``.

    Names (``filename``): ``@NAME`` / ``abstract:NAME`` (abstract socket), VPP's
    ``abstract:NAME,netns_name=NS`` and ``abstract:NAME,netns_pid=PID`` (in another network
    namespace), a ``,padded`` suffix (the abstract name padded with NULs to 108 bytes, for
    DPDK 20.11-21.05 and CNDP), or a filesystem path of any length (longer than the 108
    bytes of ``sun_path`` through ``/proc/self/fd/N/NAME``; a socket in another container
    as ``/proc/PID/root/PATH``).  ``netns=`` gives the namespace for the other forms: a
    name (``/var/run/netns/NAME``), a path such as ``/proc/PID/ns/net``, an fd or an open
    file.  The namespace is opened here (``FileNotFoundError`` naming a missing one,
    ``PermissionError`` without CAP_SYS_ADMIN) and held open until :meth:`delete`; every
    socket (listener, each slave connection, each reconnect) is created in it by a
    short-lived thread of its own, then bound or connected on the loop.
    ``padded=True`` is the ``,padded`` suffix.  :attr:`netns` shows the namespace.
    """

    def __init__(self, filename: str = DEFAULT_SOCKET_FILENAME, *, app_name: str = "memif_aio",
                 socket_mode: int | None = None,
                 socket_owner: tuple[int, int] | None = None,
                 handshake_timeout: float = 10.0, max_pending: int = 64,
                 max_total_region_size: int = 1 << 34,
                 accept_filter: Callable[[PeerCredentials], bool] | None = None,
                 init_timeout: float = DEFAULT_INIT_TIMEOUT,
                 max_pending_per_uid: int | None = None,
                 max_regions: int = DEFAULT_MAX_REGIONS,
                 max_handshake_fds: int | None = None,
                 max_handshake_memory: int | None = None,
                 error_func: Callable[[MemifError], None] | None = None,
                 netns: NetnsSpec | None = None, padded: bool = False) -> None:
        self._filename = filename
        self._addr: SocketAddress = _addr.parse_address(filename, netns=netns, padded=padded)
        #: the socket file's path (filesystem names; any length) or "\0name" (abstract)
        self._address = self._addr.name if not self._addr.abstract else \
            "\0" + self._addr.name
        raw = app_name.encode("utf-8")
        if len(raw) > 31 or b"\0" in raw:
            raise ValueError("app_name must be at most 31 UTF-8 bytes without NUL")
        for name, value in (("handshake_timeout", handshake_timeout),
                            ("init_timeout", init_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        per_uid = max(1, max_pending // 2) if max_pending_per_uid is None else max_pending_per_uid
        for name, n in (("max_pending", max_pending), ("max_pending_per_uid", per_uid)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive integer")
        self._app_name = raw
        self._socket_mode = socket_mode
        self._socket_owner = socket_owner
        self._handshake_timeout = handshake_timeout
        self._init_timeout = min(init_timeout, handshake_timeout)
        self._eviction_grace = min(EVICTION_GRACE, self._init_timeout / 2)
        self._max_pending = max_pending
        self._max_pending_per_uid = min(per_uid, max_pending)
        self._accept_filter = accept_filter
        budget = HandshakeBudget(
            default_handshake_fds() if max_handshake_fds is None else max_handshake_fds,
            max_total_region_size if max_handshake_memory is None else max_handshake_memory)
        self._server_config = ServerConfig(app_name=raw, lookup=self._lookup,
                                           max_total_region_size=max_total_region_size,
                                           max_regions=max_regions, budget=budget)
        self._error_func = error_func
        self._error_subscribers: list[Subscription[MemifError]] = []
        self._interfaces: dict[tuple[bool, int], Interface] = {}
        self._listener: _socket.socket | None = None
        self._listener_inode: tuple[int, int] | None = None
        # connections waiting for INIT, oldest first (dicts keep insertion order)
        self._pending: dict[ControlChannel, _Pending] = {}
        self._parked: tuple[_socket.socket, PeerCredentials | None] | None = None
        self._listener_timer: asyncio.Handle | None = None  # listener paused until it fires
        self._accept_failures = 0
        self._check_timer: asyncio.TimerHandle | None = None
        self._path_watch: _PathWatch | None = None  # inotify on the socket file's path
        self._foreign_inode: tuple[int, int] | None = None  # what we last reported at our path
        self._error_log: dict[str, list[float]] = {}  # kind -> [last logged, not logged since]
        #: accepted channels whose INIT named an interface, and which one
        self._server_channels: dict[ControlChannel, Interface] = {}
        self._polling = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._netns_fd: int | None = None
        self._netns_closer: weakref.finalize[[int], Socket] | None = None
        if self._addr.netns is not None:
            self._open_netns()

    # --- gomemif surface ---------------------------------------------------------------
    def get_filename(self) -> str:
        return self._filename

    @property
    def netns(self) -> str | None:
        """The network namespace of this socket as the user named it (``"blue"``,
        ``"/proc/42/ns/net"``, ``"pid 42"``, ``"fd 7"``), None for our own."""
        ns = self._addr.netns
        return ns.label if ns is not None else None

    @property
    def address(self) -> SocketAddress:
        """The parsed name: ``name``, ``abstract``, ``padded``, ``netns``."""
        return self._addr

    def __repr__(self) -> str:
        ns = f" netns={self.netns!r}" if self._addr.netns is not None else ""
        padded = " padded" if self._addr.padded else ""
        return f"<Socket {self._filename!r}{ns}{padded}>"

    # --- network namespace ------------------------------------------------------------------
    def _open_netns(self) -> int:
        """The held fd of our namespace (opened now if it is not open)."""
        ns = self._addr.netns
        assert ns is not None
        if self._netns_fd is None:
            fd = _addr.open_netns(ns)
            self._netns_fd = fd
            self._netns_closer = weakref.finalize(self, os.close, fd)
        return self._netns_fd

    def _close_netns(self) -> None:
        closer, self._netns_closer = self._netns_closer, None
        self._netns_fd = None
        if closer is not None:
            closer()

    def _new_socket(self) -> _socket.socket:
        """A new unbound non-blocking SOCK_SEQPACKET socket in our namespace."""
        ns = self._addr.netns
        fd = self._open_netns() if ns is not None else None
        return _addr.socket_in_netns(fd, _socket.SOCK_SEQPACKET,
                                     ns.label if ns is not None else "")

    def _connect(self, sock: _socket.socket) -> None:
        """connect() ``sock`` (from :meth:`_new_socket`) to our address; OSError as usual."""
        _addr.connect_unix(sock, self._addr)

    def _connect_error(self, exc: OSError) -> str:
        """Why a slave's connect() failed, with what to try next."""
        reason = f"connect to {self._filename}: {exc.strerror or exc}"
        if exc.errno == errno.ECONNREFUSED and self._addr.abstract:
            where = (f"network namespace {self.netns!r}" if self._addr.netns is not None
                     else "this network namespace")
            if self._addr.padded:
                reason += (f" (nothing listens on the padded abstract name @{self._addr.name} "
                           f"in {where}; a listener that does not pad needs the name without "
                           "',padded')")
            else:
                reason += (f" (nothing listens on the abstract name @{self._addr.name} in "
                           f"{where}; a DPDK 20.11-21.05 or CNDP listener pads the name with "
                           "NULs: try ',padded' / padded=True; another namespace: netns=)")
        return reason

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

    def errors(self, maxsize: int = DEFAULT_MAXSIZE) -> Subscription[MemifError]:
        """``async for exc in sock.errors()``: background errors from the moment of
        this call (see the class docstring).  At most ``maxsize`` are buffered; when
        full the oldest is dropped and counted in ``.dropped``.  Ends when the
        socket is deleted or after ``.close()``."""
        return Subscription(self._error_subscribers, maxsize)

    def _deliver_error(self, exc: MemifError) -> None:
        publish(self._error_subscribers, exc)
        func = self._error_func
        if func is not None:
            try:
                func(exc)
            except Exception:
                log.exception("%s: error_func %r failed", self._filename, func)

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
            await itf._shutdown("socket stopped polling", resume=True)
        self._flush_error_log()

    async def delete(self) -> None:
        """Delete every interface (DISCONNECT "interface deleted"), close and remove the socket."""
        self._polling = False
        for itf in list(self._interfaces.values()):
            await itf.delete()
        for ch in list(self._pending):
            ch.close("socket deleted")
        self._close_listener()
        self._close_netns()
        self._flush_error_log()
        end_all(self._error_subscribers)
        await asyncio.sleep(0)  # let transports deliver connection_lost

    async def __aenter__(self) -> Socket:
        await self.start_polling()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.delete()

    # --- listener -----------------------------------------------------------------------
    # The listener is read (add_reader) except while paused: after accept() failed (backoff,
    # item 3 of issue 9) or while a new connection is parked because every connection it
    # could evict is still in its grace period.  An inotify watch (a slow timer where there is
    # none, or while something else holds the path) tells when to check that the socket file
    # is still ours; the listener is re-created when it is gone.
    def _ensure_listener(self) -> None:
        if self._listener is None:
            self._listener, self._listener_inode = self._bind()
            log.debug("listening on %s", self._filename)
        self._watch_listener()

    def _watch_listener(self) -> None:
        assert self._listener is not None
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        if self._listener_timer is None:  # paused: the timer resumes reading
            loop.add_reader(self._listener.fileno(), self._accept_ready)
        if self._listener_inode is not None:
            self._arm_check()

    def _arm_check(self, poll: bool = False) -> None:
        """Make sure the socket file gets checked: when the inotify watch reports a change,
        and also every LISTENER_CHECK_INTERVAL without a watch or with ``poll``."""
        loop = self._loop
        assert loop is not None
        if self._path_watch is None:
            try:
                watch = _PathWatch(self._address)
            except (OSError, AttributeError, ValueError) as exc:
                log.debug("%s: cannot watch the socket file (%s); checking it every %g s",
                          self._filename, exc, LISTENER_CHECK_INTERVAL)
                poll = True
            else:
                self._path_watch = watch
                loop.add_reader(watch.fd, self._path_changed)
        if poll and self._check_timer is None:
            self._check_timer = loop.call_later(LISTENER_CHECK_INTERVAL, self._check_listener)

    def _drop_watch(self) -> None:
        watch, self._path_watch = self._path_watch, None
        if watch is not None:
            if self._loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(watch.fd)
            watch.close()

    def _path_changed(self) -> None:
        """The inotify watch is readable: check the file if an event may concern it."""
        watch = self._path_watch
        if watch is None:
            return
        if not watch.read():
            return
        if watch.broken:  # an ancestor moved or went away: watch what the path is now
            self._drop_watch()
        self._check_listener()

    def _bind(self, remove_stale: bool = True) -> tuple[_socket.socket, tuple[int, int] | None]:
        """A new listening socket at our address, and the inode of its file (None: abstract)."""
        addr = self._address
        if remove_stale and not self._addr.abstract:
            self._remove_stale(addr)
        sock = self._new_socket()
        inode: tuple[int, int] | None = None
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
            try:
                _addr.bind_unix(sock, self._addr)
            except OSError as exc:
                raise MemifError(self._bind_error(exc)) from None
            if not self._addr.abstract:
                st = os.stat(addr)
                inode = (st.st_dev, st.st_ino)
                if self._socket_mode is not None:
                    os.chmod(addr, self._socket_mode)
                if self._socket_owner is not None:
                    os.chown(addr, *self._socket_owner)
            sock.listen(_socket.SOMAXCONN)
        except BaseException:
            sock.close()
            if inode is not None:
                self._unlink_if_ours(inode)
            raise
        return sock, inode

    def _bind_error(self, exc: OSError) -> str:
        addr = self._addr.display
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
            if _addr.remove_stale_socket(path):
                log.info("removing stale socket file %s", path)
        except OSError as exc:
            raise MemifError(exc.strerror or str(exc)) from None

    def _unlink_if_ours(self, inode: tuple[int, int]) -> None:
        """Remove our socket file, never someone else's replacement (same st_dev/st_ino)."""
        try:
            st = os.lstat(self._address)
            if (st.st_dev, st.st_ino) == inode:
                os.unlink(self._address)
        except OSError:
            pass

    def _stop_reading(self, sock: _socket.socket) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(sock.fileno())
            except (ValueError, OSError):
                pass

    def _close_listener(self) -> None:
        for timer in (self._listener_timer, self._check_timer):
            if timer is not None:
                timer.cancel()
        self._listener_timer = self._check_timer = None
        self._drop_watch()
        self._accept_failures = 0
        self._foreign_inode = None
        if self._parked is not None:
            self._parked[0].close()
            self._parked = None
        sock = self._listener
        if sock is None:
            return
        self._listener = None
        self._stop_reading(sock)
        sock.close()
        inode = self._listener_inode
        self._listener_inode = None
        if inode is not None:
            self._unlink_if_ours(inode)

    # --- listener: pausing (accept backoff, eviction grace) ------------------------------
    def _pause_listener(self, delay: float) -> None:
        loop = self._loop
        assert loop is not None and self._listener is not None
        if self._listener_timer is not None:
            self._listener_timer.cancel()
        else:
            self._stop_reading(self._listener)
        self._listener_timer = loop.call_later(delay, self._resume_listener)

    def _resume_listener(self) -> None:
        self._listener_timer = None
        if self._listener is None:
            return
        parked, self._parked = self._parked, None
        if parked is not None and not self._admit(*parked):
            return  # still no room: parked and paused again
        self._watch_listener()

    # --- listener: accepting ----------------------------------------------------------------
    def _accept_ready(self) -> None:
        listener = self._listener
        if listener is None or self._listener_timer is not None:
            return
        for _ in range(16):
            try:
                conn, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _SKIP_ERRNOS:
                    continue
                self._accept_failed(exc)
                return
            self._accept_failures = 0
            creds = peer_credentials(conn)
            log.debug("%s: connection from %s", self._filename, creds)
            if not self._allowed(creds):
                conn.close()
                continue
            if not self._admit(conn, creds):
                return  # parked: the listener is paused

    def _accept_failed(self, exc: OSError) -> None:
        """accept() failed (out of fds or memory, most likely): stop reading the listener,
        which stays readable and would make the loop spin, and retry with backoff."""
        delay = min(ACCEPT_RETRY_MAX, ACCEPT_RETRY_MIN * 2 ** self._accept_failures)
        self._accept_failures += 1
        self._pause_listener(delay)
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self._background_error(AcceptFailed(
            f"accept on {self._filename} failed: {exc.strerror or exc} ({name}); not accepting "
            f"for {delay:.2g} s (retrying with backoff up to {ACCEPT_RETRY_MAX:g} s)",
            exc.errno, delay))

    def _allowed(self, creds: PeerCredentials | None) -> bool:
        if self._accept_filter is None:
            return True
        try:  # no credentials, nothing to vouch for the peer: refuse
            allowed = creds is not None and bool(self._accept_filter(creds))
        except Exception:
            log.exception("%s: accept_filter failed; refusing the connection", self._filename)
            allowed = False
        if not allowed:
            log.warning("%s: accept_filter refused a connection from %s", self._filename, creds)
        return allowed

    def _admit(self, conn: _socket.socket, creds: PeerCredentials | None) -> bool:
        """Give ``conn`` a pending slot, evicting the oldest connection still waiting for INIT
        (of the same uid when that uid is at ``max_pending_per_uid``, else of all when
        ``max_pending`` are waiting).  A connection is never evicted in its grace period:
        then ``conn`` is parked, the listener paused until the grace period ends, and False
        returned (later connections queue in the kernel's backlog, in order)."""
        loop = self._loop
        assert loop is not None
        uid = creds.uid if creds is not None else None
        victim: _Pending | None = None
        same = [p for p in self._pending.values() if p.uid == uid]
        if len(same) >= self._max_pending_per_uid:
            victim, limit = same[0], f"{self._max_pending_per_uid} per uid"
        elif len(self._pending) >= self._max_pending:
            victim, limit = next(iter(self._pending.values())), f"{self._max_pending} in all"
        now = loop.time()
        if victim is not None:
            wait = self._eviction_grace - (now - victim.since)
            if wait > 0:
                self._parked = (conn, creds)
                self._pause_listener(wait)
                return False
            self._evict(victim, now, limit)
        channel = ControlChannel(ServerHandshake(self._server_config),
                                 self._handshake_timeout, on_init=self._claim,
                                 on_established=self._channel_established,
                                 on_closed=self._channel_closed, peer_credentials=creds)
        pending = _Pending(channel, uid, creds, now)
        self._pending[channel] = pending
        if self._init_timeout < self._handshake_timeout:
            pending.timer = loop.call_later(self._init_timeout, self._init_timed_out, channel)
        SeqpacketTransport(loop, conn, channel)
        return True

    def _evict(self, victim: _Pending, now: float, limit: str) -> None:
        victim.channel.close("evicted: too many connections waiting for INIT")
        self._background_error(ConnectionEvicted(
            f"{self._filename}: closed a connection from {victim.creds} that sent no INIT in "
            f"{now - victim.since:.2f} s, to admit a new one (at most {limit} may wait for "
            "INIT)", victim.creds))

    def _init_timed_out(self, channel: ControlChannel) -> None:
        pending = self._pending.get(channel)
        if pending is not None:
            pending.timer = None
            channel.close("handshake timeout (no INIT)")

    def _unpend(self, channel: ControlChannel) -> None:
        """``channel`` no longer waits for INIT (INIT accepted, or the connection ended)."""
        pending = self._pending.pop(channel, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        if self._parked is not None and self._listener_timer is not None and self._loop:
            # a slot is free: admit the parked connection now, not at the end of the grace
            self._listener_timer.cancel()
            self._listener_timer = self._loop.call_soon(self._resume_listener)

    # --- listener: is the socket file still ours? ---------------------------------------------
    def _check_listener(self) -> None:
        """When the path may have changed (inotify), or every LISTENER_CHECK_INTERVAL without
        a watch: lstat it and compare with the inode we bound.  Gone: bind a new listener
        there.  Someone else's file, or an error: report it and leave it alone (checked again
        every interval as well until it is resolved; once it is gone we listen again)."""
        timer, self._check_timer = self._check_timer, None
        if timer is not None:
            timer.cancel()  # a no-op when it is the timer that called
        inode = self._listener_inode
        if self._listener is None or inode is None or self._loop is None:
            return
        try:
            st = os.lstat(self._address)
        except FileNotFoundError:
            self._recreate_listener()
        except OSError as exc:  # e.g. ENOTDIR, EACCES: report once; retried every interval
            self._report_foreign((-1, exc.errno or 0),
                                 f"cannot check the socket file {self._address}: "
                                 f"{exc.strerror}; new slaves may not reach this socket")
        else:
            found = (st.st_dev, st.st_ino)
            if found == inode:
                self._foreign_inode = None
            else:
                kind = ("another socket" if stat.S_ISSOCK(st.st_mode)
                        else "a file that is not a socket")
                self._report_foreign(found, f"the socket file {self._address} was replaced by "
                                            f"{kind}; it is left alone, and new slaves reach "
                                            "whatever is there now, not this socket")
        if self._listener is not None and self._listener_inode is not None:
            self._arm_check(poll=self._foreign_inode is not None)

    def _report_foreign(self, found: tuple[int, int], message: str) -> None:
        if found != self._foreign_inode:  # once per change, not every second
            self._foreign_inode = found
            self._background_error(ListenerLost(message, self._address, recreated=False))

    def _recreate_listener(self) -> None:
        try:
            sock, inode = self._bind(remove_stale=False)  # whatever appeared there is not ours
        except (MemifError, OSError) as exc:
            self._report_foreign((-2, 0), f"the socket file {self._address} was deleted and "
                                          f"cannot be re-created ({exc}); retrying every "
                                          f"{LISTENER_CHECK_INTERVAL:g} s")
            return
        old = self._listener
        assert old is not None
        self._stop_reading(old)
        old.close()  # its file is gone: nobody can connect to it any more
        self._listener, self._listener_inode = sock, inode
        self._foreign_inode = None
        if self._listener_timer is None:
            assert self._loop is not None
            self._loop.add_reader(sock.fileno(), self._accept_ready)
        self._background_error(ListenerLost(
            f"the socket file {self._address} was deleted; listening again on a new one "
            "(established links are not affected)", self._address, recreated=True))

    # --- background errors --------------------------------------------------------------------
    def _background_error(self, exc: MemifError) -> None:
        """Every error that happens in the background (accept failures, listener loss,
        evictions) goes through here.  For now it is logged at WARNING, at most one line per
        kind (exception class) every BACKGROUND_LOG_INTERVAL seconds, with the number of
        lines not logged since; the record carries the exception as ``memif_error``.
        Every one reaches ``error_func`` and the :meth:`errors` subscribers, logged or not."""
        self._deliver_error(exc)
        kind = type(exc).__name__
        if isinstance(exc, ListenerLost) and exc.recreated:  # the good news is not held back
            kind += " (re-created)"
        now = time.monotonic()
        last = self._error_log.get(kind)
        if last is not None and now - last[0] < BACKGROUND_LOG_INTERVAL:
            last[1] += 1
            return
        more = ""
        if last is not None and last[1]:
            more = f" ({last[1]:.0f} more {kind} in the last {now - last[0]:.0f} s not logged)"
        self._error_log[kind] = [now, 0]
        log.warning("%s: %s%s", kind, exc, more, extra={"memif_error": exc})

    def _flush_error_log(self) -> None:
        for kind, (since, count) in self._error_log.items():
            if count:
                log.warning("%s: %s: %.0f more %s in the last %.0f s not logged",
                            kind, self._filename, count, kind, time.monotonic() - since)
        self._error_log.clear()

    # --- called by server channels -----------------------------------------------------------
    def _lookup(self, interface_id: int) -> ServerTarget | None:
        itf = self._interfaces.get((True, interface_id))
        return itf._server_target() if itf is not None else None

    def _claim(self, channel: ControlChannel, interface_id: int) -> None:
        """INIT accepted: the channel now belongs to master ``interface_id``."""
        self._unpend(channel)
        itf = self._interfaces.get((True, interface_id))
        if itf is not None and itf._attach(channel):
            self._server_channels[channel] = itf
        else:
            channel.close("interface busy")

    def _channel_established(self, channel: ControlChannel, session: Session) -> None:
        itf = self._server_channels.get(channel)
        if itf is None:  # its interface went away meanwhile
            session.close()
            channel.close("interface deleted")
            return
        itf._on_established(channel, session)

    def _channel_closed(self, channel: ControlChannel, reason: str, by_peer: bool) -> None:
        self._unpend(channel)
        itf = self._server_channels.pop(channel, None)
        if itf is not None:
            itf._channel_closed(channel, reason, by_peer)
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
