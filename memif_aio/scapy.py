"""scapy over memif: :class:`MemifSocket`, a scapy ``SuperSocket`` on queue pair 0 of a
memif interface (optional extra ``memif-aio[scapy]``; ``import memif_aio`` does not load it).

::

    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether
    from memif_aio.scapy import MemifSocket

    with MemifSocket("/run/vpp/memif.sock", id=0) as s:       # a slave, Ethernet mode
        reply = s.sr1(Ether() / IP(dst="192.168.1.1") / ICMP(), timeout=2, verbose=0)
        frames = s.sniff(count=10, timeout=5)

Design (see docs/scapy.md):

* scapy is synchronous, memif_aio is asyncio.  ``MemifSocket(path, ...)`` runs a private
  event loop (``asyncio``, or any ``loop_factory`` such as ``uvloop.new_event_loop``) in a
  daemon thread it starts, opens a :class:`~memif_aio.Socket` and one
  :class:`~memif_aio.Interface` on it there, and by default waits until the link is up.
  Every call from scapy's side crosses to that loop with
  :func:`asyncio.run_coroutine_threadsafe`; nothing of memif_aio is touched from another
  thread.  :meth:`MemifSocket.from_interface` wraps an interface of yours instead, on your
  loop, which must be running in another thread than the one calling scapy.
* Receiving: a task on the loop reads bursts from RX queue 0 (following the link down and
  up again) into a bounded buffer of ``buffer_size`` frames, each stamped with its arrival
  time.  An eventfd is readable exactly while the buffer holds a frame: it is the socket's
  ``fileno()``, so scapy's ``select()`` (``sniff``, ``sr``, ``AsyncSniffer``) waits on it
  like on a kernel socket.
* Overflow: when the buffer is full, newly arrived frames are dropped (tail drop, as a NIC
  ring does), counted in :attr:`MemifSocketStats.dropped` and reported by a warning on the
  ``memif_aio.scapy`` logger, once per overflow episode.  Nothing is dropped silently.
* Sending: :meth:`MemifSocket.send` blocks until the frame is on TX ring 0 and returns its
  length; it raises :class:`~memif_aio.NotConnected` while the link is down, and
  ``TimeoutError`` when the ring stays full longer than ``tx_timeout`` (5 s by default
  for the interface this socket opens).
* :meth:`MemifSocket.close` (also ``with``, and garbage collection) stops the receive task,
  deletes the interface and the socket (which removes a listener file we created), stops
  and closes the loop, joins the thread and closes the eventfd: nothing is left behind.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import random
import select as _select
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from scapy.config import conf
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6, IPv46
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.supersocket import SuperSocket

from .config import Arguments
from .errors import Disconnected, MemifError
from .interface import Interface
from .socket import Socket
from .wire import InterfaceMode

__all__ = ["MemifSocket", "MemifSocketStats"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: frames read from the RX ring in one go by the receive task
_BURST = 64
#: the ``tx_timeout`` given to interfaces this module opens, unless the caller sets one
DEFAULT_TX_TIMEOUT = 5.0
BROADCAST = "ff:ff:ff:ff:ff:ff"
#: bound for each step of close(): the shutdown on the loop, then joining its thread
CLOSE_TIMEOUT = 10.0


@dataclass(frozen=True)
class MemifSocketStats:
    """Counters of one :class:`MemifSocket`.

    ``received``: frames read from the ring; ``dropped``: those of them thrown away
    because the buffer was full; ``delivered``: frames handed to scapy (``recv``);
    ``buffered``: waiting now; ``sent``: frames published on the TX ring.
    """

    received: int
    dropped: int
    delivered: int
    buffered: int
    sent: int
    buffer_size: int


class _Inbox:
    """Received frames waiting for scapy, and an eventfd that is readable exactly while
    there is one.

    Written by the loop thread, read by scapy's threads; one lock keeps the frames and
    the eventfd's counter in step (counter > 0 iff frames are waiting).  The eventfd is
    closed only when no thread is inside ``select()`` on it (see :meth:`hold`), so
    ``close()`` from another thread can never make a waiting thread select on a reused
    fd number.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._frames: deque[tuple[float, bytes]] = deque()
        self._lock = threading.Lock()
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._holders = 0
        self.closed = False
        self.received = 0
        self.dropped = 0
        self.delivered = 0
        self.sent = 0
        self._overflowing = False

    def fileno(self) -> int:
        return self._fd

    def put(self, frames: Sequence[bytes], stamp: float) -> None:
        """Loop thread: buffer ``frames`` (tail drop beyond the limit).  The warning is
        logged under the lock, so that whoever sees the drop in the counters also finds
        it in the log."""
        with self._lock:
            if self.closed:
                return
            was_empty = not self._frames
            room = self.limit - len(self._frames)
            keep = frames if len(frames) <= room else frames[:max(room, 0)]
            self._frames.extend((stamp, f) for f in keep)
            self.received += len(frames)
            lost = len(frames) - len(keep)
            if lost:
                self.dropped += lost
                if not self._overflowing:
                    self._overflowing = True
                    log.warning("memif scapy socket: receive buffer full (%d frames): "
                                "dropping new frames (%d dropped so far); read faster or "
                                "raise buffer_size", self.limit, self.dropped)
            if was_empty and self._frames:
                os.eventfd_write(self._fd, 1)

    def get(self) -> tuple[float, bytes] | None:
        """Take the oldest frame, or None if there is none."""
        with self._lock:
            if not self._frames:
                return None
            item = self._frames.popleft()
            self.delivered += 1
            if not self._frames:
                os.eventfd_read(self._fd)  # back to 0: not readable any more
            if len(self._frames) < self.limit:
                self._overflowing = False
            return item

    def __len__(self) -> int:
        return len(self._frames)

    def hold(self) -> bool:
        """Keep the eventfd open while the caller selects on it; False if closed."""
        with self._lock:
            if self.closed:
                return False
            self._holders += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            self._close_fd_if_free()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._frames.clear()
            if self._holders:
                os.eventfd_write(self._fd, 1)  # wake whoever is selecting: it sees closed
            self._close_fd_if_free()

    def _close_fd_if_free(self) -> None:
        if self.closed and not self._holders and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _check_buffer_size(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError("buffer_size must be an int of at least 1")


def _random_mac() -> str:
    """A random locally administered unicast MAC, as memif drivers give themselves."""
    b = bytearray(random.randbytes(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class MemifSocket(SuperSocket):
    """A scapy ``SuperSocket`` over queue pair 0 of a memif interface.

    ``MemifSocket(path, id=0, is_master=False, **arguments)`` opens its own
    :class:`~memif_aio.Socket` on ``path`` and one interface on it, built from
    ``Arguments(id=id, is_master=is_master, **arguments)`` (``name`` defaults to
    ``"scapy"``, ``tx_timeout`` to 5 s), on a private event loop in a daemon thread.

    In Ethernet mode (the default) it is a layer 2 socket: it receives ``Ether`` frames, and
    a packet sent without an ``Ether`` layer gets one; an ``Ether`` whose ``src`` or ``dst``
    is unset gets ``src_mac`` (default: a random locally administered MAC) and ``dst_mac``
    (default: broadcast), never a lookup in the host's routing or ARP tables.  In IP mode
    (``mode=InterfaceMode.IP``) it is a layer 3 socket: it receives ``IP`` or ``IPv6``
    packets, and a packet sent without an IP layer gets ``IP()``.  In punt/inject mode
    frames are ``conf.raw_layer``.

    Adapter options (keyword only): ``connect_timeout`` (wait this long for the link in
    the constructor, ``TimeoutError`` otherwise; None: do not wait), ``buffer_size``
    (frames kept for scapy; newer ones are dropped and counted when it is full),
    ``loop_factory`` (the private loop, default :func:`asyncio.new_event_loop`),
    ``src_mac``/``dst_mac`` (above), ``socket_options`` (keyword arguments of
    :class:`~memif_aio.Socket`, e.g. ``app_name``).

    Call it from any thread but not from a thread whose event loop the interface needs
    (from async code: ``await asyncio.to_thread(s.sr1, pkt)``).
    """

    desc = "memif (shared memory packet interface) queue pair 0, by memif_aio"
    nonblocking_socket = False

    def __init__(self, path: str, id: int = 0, is_master: bool = False, *,
                 connect_timeout: float | None = 10.0, buffer_size: int = 4096,
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
                 src_mac: str | None = None, dst_mac: str = BROADCAST,
                 socket_options: dict[str, Any] | None = None,
                 **arguments: Any) -> None:
        arguments.setdefault("name", "scapy")
        arguments.setdefault("tx_timeout", DEFAULT_TX_TIMEOUT)
        args = Arguments(id=id, is_master=is_master, **arguments)  # ValueError names the field
        _check_buffer_size(buffer_size)
        self._loop = (loop_factory or asyncio.new_event_loop)()
        self._setup(args, buffer_size, src_mac, dst_mac, f"memif:{path}#{id}")
        self._owned = True
        self._sock: Socket | None = None
        self._path = path
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run_loop, name=f"memif-scapy-{id}", daemon=True)
        self._thread.start()
        try:
            self._call(self._open(path, args, socket_options or {}, connect_timeout))
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_interface(cls, itf: Interface, loop: asyncio.AbstractEventLoop, *,
                       buffer_size: int = 4096, src_mac: str | None = None,
                       dst_mac: str = BROADCAST) -> MemifSocket:
        """Wrap an existing interface (queue pair 0) that lives on ``loop``.

        ``loop`` must be running in another thread than the callers of this socket's
        methods.  The interface stays yours: :meth:`close` stops only this adapter's
        receive task; it neither disconnects nor deletes the interface.  Another reader
        of RX queue 0 would compete with this socket for frames.
        """
        if _running_loop() is loop:
            raise RuntimeError("MemifSocket.from_interface called on the interface's own "
                               "event loop thread: scapy calls would block that loop; call it "
                               "from another thread (e.g. asyncio.to_thread)")
        if not loop.is_running():
            raise RuntimeError("the interface's event loop is not running")
        _check_buffer_size(buffer_size)
        self = cls.__new__(cls)
        self._loop = loop
        self._setup(itf.get_arguments(), buffer_size, src_mac, dst_mac,
                    f"memif:{itf.get_socket().get_filename()}#{itf.get_id()}")
        self._owned = False
        self._sock = None
        self._path = itf.get_socket().get_filename()
        self._thread = None
        self._itf = itf
        try:
            self._call(self._start_pump())
        except BaseException:
            self.close()
            raise
        return self

    def _setup(self, args: Arguments, buffer_size: int, src_mac: str | None, dst_mac: str,
               label: str) -> None:
        self.closed = False
        self._close_lock = threading.Lock()
        self.mode = InterfaceMode(args.mode)
        self.src_mac = src_mac or _random_mac()
        self.dst_mac = dst_mac
        self.iface = label
        self.promisc = True
        self._itf: Interface | None = None
        self._pump: asyncio.Task[None] | None = None
        self._inbox = _Inbox(buffer_size)
        _live.add(self)
        if self.mode == InterfaceMode.ETHERNET:
            self.basecls: type[Packet] = Ether
        elif self.mode == InterfaceMode.IP:
            self.basecls = IPv46
        else:
            self.basecls = conf.raw_layer

    # --- the loop side ----------------------------------------------------------------
    def _run_loop(self) -> None:
        """The private loop's thread: runs until close() stops the loop, then closes it."""
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            _close_loop(self._loop)
            asyncio.set_event_loop(None)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (cancelled if we are
        interrupted or time out, so that nothing keeps running for a caller that gave up)."""
        if _running_loop() is self._loop:
            coro.close()
            raise RuntimeError("a blocking MemifSocket call on the event loop it needs: call "
                               "it from another thread (e.g. asyncio.to_thread)")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except BaseException:
            if not fut.done():
                fut.cancel()
                try:
                    fut.result(5.0)
                except (concurrent.futures.CancelledError, Exception):
                    pass
            raise

    async def _open(self, path: str, args: Arguments, socket_options: dict[str, Any],
                    connect_timeout: float | None) -> None:
        self._sock = Socket(path, **socket_options)
        await self._sock.start_polling()
        self._itf = self._sock.new_interface(args)
        await self._start_pump()
        if connect_timeout is not None:
            await self._itf.wait_connected(connect_timeout)

    async def _start_pump(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(self._receive())

    async def _receive(self) -> None:
        itf = self._itf
        assert itf is not None
        inbox = self._inbox
        while True:
            try:
                await itf.wait_connected()
            except MemifError:  # the interface was deleted
                return
            try:
                rx = itf.get_rx_queue(0)
                while True:
                    frames = await rx.read_burst(_BURST)
                    inbox.put(frames, time.time())
                    await asyncio.sleep(0)  # a flood must not starve sends on this loop
            except Disconnected:
                continue
            except Exception:  # a bug: say so rather than stop receiving unnoticed
                log.exception("memif scapy socket: the receive task failed; nothing more "
                              "will be received")
                return

    async def _write(self, frame: bytes) -> int:
        assert self._itf is not None
        n = await self._itf.get_tx_queue(0).write_packet(frame)
        self._inbox.sent += 1
        return n

    async def _shutdown(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            try:
                await pump
            except asyncio.CancelledError:
                pass
        if self._owned and self._sock is not None:
            sock, self._sock = self._sock, None
            await sock.delete()

    # --- the scapy side -----------------------------------------------------------------
    def _prepare(self, x: Packet) -> Packet:
        if self.mode == InterfaceMode.ETHERNET:
            if not isinstance(x, Ether):
                return Ether(src=self.src_mac, dst=self.dst_mac) / x
            if x.fields.get("src") is None or x.fields.get("dst") is None:
                x = x.copy()
                if x.fields.get("src") is None:
                    x.src = self.src_mac
                if x.fields.get("dst") is None:
                    x.dst = self.dst_mac
        elif self.mode == InterfaceMode.IP and not isinstance(x, (IP, IPv6)):
            return IP() / x
        return x

    def send(self, x: Packet) -> int:
        """Send one packet on TX queue 0; returns its length in bytes."""
        if self.closed:
            raise OSError("send on a closed MemifSocket")
        frame = bytes(self._prepare(x))
        try:
            x.sent_time = time.time()
        except AttributeError:
            pass
        return self._call(self._write(frame))

    def recv_raw(self, x: int = 65535) -> tuple[type[Packet] | None, bytes | None,
                                                 float | None]:
        """The oldest buffered frame (blocking until there is one).  ``x`` is ignored:
        frames are never truncated.  Raises ``EOFError`` once closed, as scapy's
        ``sniff`` expects of a finished source."""
        while True:
            item = self._inbox.get()
            if item is not None:
                stamp, frame = item
                return self.basecls, frame, stamp
            if not self._wait_readable(None):
                raise EOFError("MemifSocket closed")

    def _wait_readable(self, timeout: float | None) -> bool:
        """Wait for a frame (or close); False once closed."""
        inbox = self._inbox
        if not inbox.hold():
            return False
        try:
            try:
                _select.select([inbox.fileno()], [], [], timeout)
            except InterruptedError:
                pass
            return not inbox.closed
        finally:
            inbox.release()

    def fileno(self) -> int:
        """The eventfd that is readable while frames are buffered (-1 once closed)."""
        return self._inbox.fileno()

    @staticmethod
    def select(sockets: list[SuperSocket],
               remain: float | None = conf.recv_poll_rate) -> list[SuperSocket]:
        """scapy's ``select`` for these sockets (and any selectable objects beside them,
        such as ``sniff``'s control pipe): closed ones are returned at once, so that
        ``recv`` reports the end; the others through ``select(2)`` on their fds."""
        done = [s for s in sockets if getattr(s, "closed", False)]
        if done:
            return done
        ours = [s for s in sockets if isinstance(s, MemifSocket)]
        held: list[MemifSocket] = []
        try:
            for s in ours:
                if not s._inbox.hold():
                    return [s]
                held.append(s)
            try:
                ready: list[SuperSocket] = _select.select(sockets, [], [], remain)[0]
            except InterruptedError:
                return []
            return ready
        finally:
            for s in held:
                s._inbox.release()

    # --- extras -------------------------------------------------------------------------
    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until the link is up (``TimeoutError`` naming the last reason)."""
        assert self._itf is not None
        self._call(self._itf.wait_connected(timeout))

    def is_connected(self) -> bool:
        return self._itf is not None and self._itf.is_connected()

    @property
    def interface(self) -> Interface | None:
        """The memif_aio interface (use it only on its own loop)."""
        return self._itf

    def stats(self) -> MemifSocketStats:
        ib = self._inbox
        return MemifSocketStats(received=ib.received, dropped=ib.dropped,
                                delivered=ib.delivered, buffered=len(ib), sent=ib.sent,
                                buffer_size=ib.limit)

    def close(self) -> None:
        """Stop receiving, delete the interface and socket we opened, stop the loop and
        its thread, close the eventfd.  Idempotent; safe from any thread."""
        lock = getattr(self, "_close_lock", None)
        if lock is None:  # __init__ failed before _setup
            return
        with lock:
            if self.closed:
                return
            self.closed = True
        _live.discard(self)
        try:
            self._teardown()
        finally:
            self._inbox.close()

    def _teardown(self) -> None:
        loop = self._loop
        if loop.is_closed():
            return
        if _running_loop() is loop:  # e.g. closed by a callback on the loop: cannot wait here
            task = loop.create_task(self._shutdown())
            if self._thread is not None:
                task.add_done_callback(lambda _t: loop.stop())
            return
        # our own thread runs the loop until we stop it (even if it has not entered
        # run_forever yet); a loop of the user's must be running to shut down on it
        alive = self._thread.is_alive() if self._thread is not None else loop.is_running()
        if alive:
            try:
                self._call(self._shutdown(), CLOSE_TIMEOUT)
            except Exception as exc:
                log.warning("memif scapy socket: error while closing: %r", exc)
        if self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(CLOSE_TIMEOUT)
            if self._thread.is_alive():
                log.warning("memif scapy socket: its loop thread did not stop within %s s",
                            CLOSE_TIMEOUT)
                return
            self._thread = None

    def __repr__(self) -> str:
        role = "master" if self._itf is not None and self._itf.is_master() else "slave"
        return f"<MemifSocket {self.iface} {role} {self.mode.name}" + \
            (" closed>" if self.closed else ">")


#: open sockets: the receive task keeps a socket alive (so ``__del__`` does not run) until
#: it is closed; those still open at interpreter exit are closed then, while their loop
#: threads still run, so that a forgotten socket leaves no socket file behind
_live: weakref.WeakSet[MemifSocket] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for s in list(_live):
        s.close()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a stopped private loop, after running what is left on it."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
