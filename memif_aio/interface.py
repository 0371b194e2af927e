"""Interfaces: the user's facade over one memif connection at a time, and the
slave's reconnect supervisor.  Each established connection is owned by a
:class:`~memif_aio.link.Link`; the control channel lives in :mod:`.channel`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._text import printable
from .channel import ControlChannel
from .config import CACHE_LINE_AUTO, Arguments, MemoryConfig
from .errors import ConnectionRefused, InterfaceDeleted, MemifError, NotConnected
from .events import DEFAULT_MAXSIZE, LinkEvent, Subscription, end_all, publish
from .link import Link
from .protocol import ClientConfig, ClientHandshake, ServerTarget, Session
from .queue import QueueStats, RxQueue, Tap, TxQueue
from .transport import SeqpacketTransport
from .wire import to_text

if TYPE_CHECKING:
    from .socket import Socket

__all__ = ["ControlChannel", "Interface", "InterfaceStats", "LinkEvent"]

log = logging.getLogger("memif_aio")
Q = TypeVar("Q", RxQueue, TxQueue)


@dataclass(frozen=True)
class InterfaceStats:
    """A snapshot of an interface, much like VPP's ``show memif``."""

    id: int
    role: str
    name: str
    state: str  #: "connected", "connecting" or "down"
    peer_name: str
    remote_name: str
    socket: str
    mode: str
    connections: int
    last_reason: str
    memory: MemoryConfig
    regions: tuple[tuple[int, int], ...]  #: (index, size) of each mapped region
    rx: tuple[QueueStats, ...]
    tx: tuple[QueueStats, ...]
    #: the socket's network namespace as the user named it (None: the process's own)
    netns: str | None = None
    #: the ring layout's cache-line size while connected (a master in auto mode: the one
    #: it inferred from the slave's layout), else 0
    cache_line_size: int = 0


class Interface:
    """One memif interface, master or slave (gomemif ``Interface``).

    Create it with :meth:`Socket.new_interface`.  A slave connects when its
    socket starts polling and reconnects by itself (capped exponential backoff
    between ``reconnect_min_delay`` and ``reconnect_max_delay``) after a
    disconnect or a refused connect, until :meth:`disconnect` or :meth:`delete`.

    ``async with sock.new_interface(args) as itf:`` deletes the interface when
    the block exits.
    """

    def __init__(self, sock: Socket, args: Arguments) -> None:
        self._socket = sock
        self._args = args
        self._channel: ControlChannel | None = None  # handshaking or established
        self._link: Link | None = None  # the established connection
        self._memory: MemoryConfig | None = None
        self._peer_name = ""
        self._remote_name = ""
        self._last_reason = ""
        self._connect_error = ""
        self._refusal: ConnectionRefused | None = None
        self._deleted = False
        self._paused = False
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self._closed_fut: asyncio.Future[bool] | None = None
        self._attempt_waiters: list[asyncio.Future[MemifError | None]] = []
        self._callback_tasks: set[asyncio.Task[Any]] = set()
        self._connections = 0
        self._subscribers: list[Subscription[LinkEvent]] = []
        self._taps: list[Tap] = []  # shared with every queue of every connection

    # --- gomemif surface --------------------------------------------------------------
    def get_id(self) -> int:
        return self._args.id

    def get_name(self) -> str:
        return self._args.name

    def get_peer_name(self) -> str:
        """The peer's interface name (from CONNECT/CONNECTED)."""
        return self._peer_name

    def get_remote_name(self) -> str:
        """The peer's application name (from HELLO or INIT)."""
        return self._remote_name

    def get_memory_config(self) -> MemoryConfig:
        """The negotiated memory configuration while connected, else the configured one."""
        return self._memory or self._args.memory_config

    def get_private_data(self) -> Any:
        return self._args.private_data

    def get_socket(self) -> Socket:
        return self._socket

    def get_arguments(self) -> Arguments:
        return self._args

    def is_master(self) -> bool:
        return self._args.is_master

    def is_connected(self) -> bool:
        return self._link is not None

    def is_connecting(self) -> bool:
        return self._channel is not None and self._link is None

    def is_deleted(self) -> bool:
        return self._deleted

    def get_disconnect_reason(self) -> str:
        """Why the last connection ended, or the last handshake was refused ('' if none yet).

        This is the peer's DISCONNECT string when it sent one.  A failed ``connect()``
        (socket missing, nobody listening) does not overwrite it: see
        :meth:`get_connect_error`."""
        return self._last_reason

    def get_peer_credentials(self) -> Any:
        """Master: the :class:`~memif_aio.socket.PeerCredentials` (pid, uid, gid) of the
        connected peer process, from ``SO_PEERCRED``; None for a slave or while down."""
        link = self._link
        return link.channel.peer_credentials if link is not None else None

    def get_connect_error(self) -> str:
        """Why the last attempt failed: the socket could not be reached, or the peer
        refused the handshake (its reason).  '' once an attempt gets the link up.
        :meth:`get_connect_exception` gives the same as a :class:`ConnectionRefused`."""
        return self._connect_error

    def get_connect_exception(self) -> ConnectionRefused | None:
        """The :class:`ConnectionRefused` of the last failed attempt (None once an
        attempt gets the link up): ``reason`` and ``by_peer`` say who refused and why."""
        return self._refusal

    def get_rx_queue(self, qid: int) -> RxQueue:
        """Receive queue ``qid`` of the current connection."""
        link = self._current_link()
        return self._queue(link.rx_queues, qid)

    def get_tx_queue(self, qid: int) -> TxQueue:
        """Transmit queue ``qid`` of the current connection."""
        link = self._current_link()
        return self._queue(link.tx_queues, qid)

    def _current_link(self) -> Link:
        link = self._link
        if link is None:
            if self._deleted:
                raise InterfaceDeleted(f"interface {self.get_id()} was deleted")
            raise NotConnected(self._last_reason or "interface is not connected")
        return link

    @staticmethod
    def _queue(queues: tuple[Q, ...], qid: int) -> Q:
        if not 0 <= qid < len(queues):
            raise IndexError(f"queue {qid} does not exist (this connection has {len(queues)})")
        return queues[qid]

    def stats(self) -> InterfaceStats:
        """A frozen snapshot: state, names, negotiated memory, regions, per-queue counters."""
        link = self._link
        regions = tuple((i, r.size) for i, r in enumerate(link.session.regions)) \
            if link is not None else ()
        return InterfaceStats(
            id=self.get_id(), role="master" if self.is_master() else "slave",
            name=self.get_name(), state=self._state(), peer_name=self._peer_name,
            remote_name=self._remote_name, socket=self._socket.get_filename(),
            mode=self._args.mode.name.lower(), connections=self._connections,
            last_reason=self._last_reason, memory=self.get_memory_config(), regions=regions,
            rx=tuple(q.stats() for q in self.rx_queues),
            tx=tuple(q.stats() for q in self.tx_queues), netns=self._socket.netns,
            cache_line_size=link.session.cache_line_size if link is not None else 0)

    def _state(self) -> str:
        return "connected" if self.is_connected() else (
            "connecting" if self.is_connecting() else "down")

    def events(self, maxsize: int = DEFAULT_MAXSIZE) -> Subscription[LinkEvent]:
        """``async for ev in itf.events()``: :class:`LinkEvent` s ("up", "down",
        "refused") from the moment of this call, beside the callbacks.

        The subscription is registered by the call itself, so nothing that
        happens before the first iteration is missed.  It buffers at most
        ``maxsize`` events; when full, the oldest is dropped and counted in
        ``.dropped``.  Iteration ends when the interface is deleted or after
        ``.close()`` (also ``async with itf.events() as evs:``)."""
        sub: Subscription[LinkEvent] = Subscription(self._subscribers, maxsize)
        if self._deleted:
            sub._end()
        return sub

    def add_tap(self, tap: Tap) -> None:
        """Call ``tap(qid, is_rx, packets)`` with every packet this interface receives
        (as it leaves the ring) or sends (as it is published), on every queue, across
        reconnects.  Taps run on the data path: keep them quick.  A tap that raises is
        logged and removed.  Used by packet capture."""
        if tap not in self._taps:
            self._taps.append(tap)

    def remove_tap(self, tap: Tap) -> None:
        with contextlib.suppress(ValueError):
            self._taps.remove(tap)

    def _established_link(self) -> Link | None:
        """The current connection's :class:`~memif_aio.link.Link` (None while down): what
        :class:`memif_aio.workers.WorkerPool` hands to its workers."""
        return self._link

    @property
    def rx_queues(self) -> list[RxQueue]:
        return list(self._link.rx_queues) if self._link is not None else []

    @property
    def tx_queues(self) -> list[TxQueue]:
        return list(self._link.tx_queues) if self._link is not None else []

    def __repr__(self) -> str:
        role = "master" if self.is_master() else "slave"
        return f"<Interface {role} id={self.get_id()} {self._state()}>"

    async def __aenter__(self) -> Interface:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.delete()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the link is up.

        A refused attempt does not end the wait: a slave retries by itself and
        the next attempt may succeed.  After ``timeout`` seconds this raises
        ``TimeoutError`` whose ``__cause__`` is the last attempt's
        :class:`ConnectionRefused` (None if no attempt failed); its message
        names the last reasons too.  :class:`InterfaceDeleted` if the interface
        is (or gets) deleted."""
        if self._deleted:
            raise InterfaceDeleted(f"interface {self.get_id()} was deleted")
        ev = self._connected_event()
        if ev.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await ev.wait()
        except TimeoutError:
            why = "; ".join(printable(x) for x in
                            dict.fromkeys((self._last_reason, self._connect_error)) if x)
            why = f" (last: {why})" if why else ""
            raise TimeoutError(f"interface {self.get_id()} did not connect in {timeout} s{why}") \
                from self._refusal
        if self._deleted:
            raise InterfaceDeleted(f"interface {self.get_id()} was deleted")

    async def request_connection(self) -> None:
        """Slave: try to connect now (and resume automatic reconnection).

        Returns when this attempt has the link up (at once if it already is).
        Raises :class:`ConnectionRefused` if the socket cannot be reached or the
        peer refuses the handshake (``reason`` is the peer's); the interface
        keeps retrying in the background.  The wait is bounded by the socket's
        ``handshake_timeout``; cancelling it does not stop the attempt.
        """
        if self.is_master():
            raise MemifError("only a slave interface requests a connection")
        if self._deleted:
            raise InterfaceDeleted(f"interface {self.get_id()} was deleted")
        self._paused = False
        if self._link is not None:
            return
        fut: asyncio.Future[MemifError | None] = asyncio.get_running_loop().create_future()
        self._attempt_waiters.append(fut)
        if self._channel is None:
            self._ensure_task()
            assert self._wake is not None
            self._wake.set()
        try:
            error = await fut
        finally:
            if fut in self._attempt_waiters:
                self._attempt_waiters.remove(fut)
        if error is not None:
            raise error

    async def disconnect(self) -> None:
        """Send DISCONNECT and tear the link down.  A slave then stays down until
        :meth:`request_connection`."""
        if not self.is_master():
            self._paused = True
        ch = self._channel
        if ch is not None:
            ch.close("interface disconnected")
        await asyncio.sleep(0)

    async def delete(self) -> None:
        """Disconnect ("interface deleted") and remove the interface from its socket.
        Later calls that need the interface raise :class:`InterfaceDeleted`."""
        await self._shutdown("interface deleted")
        self._socket._forget(self)

    # --- internals ------------------------------------------------------------------------
    def _server_target(self) -> ServerTarget:
        """What the server handshake needs to know about this (master) interface."""
        args = self._args
        return ServerTarget(mode=int(args.mode), secret=args.secret,
                            busy=self._channel is not None or self._deleted,
                            if_name=args.name.encode(),
                            cache_line_size=args.layout_cache_line_size(),
                            require_seal=args.require_seal,
                            infer_cache_line=args.cache_line_size == CACHE_LINE_AUTO)

    def _connected_event(self) -> asyncio.Event:
        if self._connected is None:
            self._connected = asyncio.Event()
            if self._link is not None:
                self._connected.set()
        return self._connected

    async def _shutdown(self, reason: str, *, resume: bool = False) -> None:
        """End the connection and the slave's supervisor.  ``resume``: a later
        :meth:`_start` brings a slave back (the socket stopped polling)."""
        self._deleted = reason == "interface deleted" or self._deleted
        self._paused = True
        ch = self._channel
        if ch is not None:
            ch.close(reason)
        task = self._task
        self._task = None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._finish_attempt(InterfaceDeleted(f"interface {self.get_id()} was deleted")
                             if self._deleted else ConnectionRefused(reason))
        if self._deleted and self._connected is not None:
            self._connected.set()  # release wait_connected() callers (they raise)
        if self._deleted:
            end_all(self._subscribers)  # ends events() iterators
        if self._callback_tasks:
            await asyncio.gather(*self._callback_tasks, return_exceptions=True)
        if resume and not self._deleted:
            self._paused = False

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._run_slave(), name=f"memif_aio slave {self.get_id()}")

    def _start(self) -> None:
        """Called by the socket when polling starts."""
        if not self.is_master() and not self._paused and not self._deleted:
            self._ensure_task()

    async def _run_slave(self) -> None:
        args = self._args
        delay = args.reconnect_min_delay
        assert self._wake is not None
        while not self._deleted:
            if self._paused:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._wake.clear()
            established = await self._connect_once()
            if established:
                delay = args.reconnect_min_delay
            else:
                delay = min(delay * 2, args.reconnect_max_delay)
            if self._deleted:
                return
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _finish_attempt(self, error: MemifError | None) -> None:
        for fut in self._attempt_waiters:
            if not fut.done():
                fut.set_result(error)
        self._attempt_waiters.clear()

    def _refused(self, exc: ConnectionRefused) -> None:
        """An attempt failed before the link came up: the three ways it surfaces."""
        self._connect_error = exc.reason
        self._refusal = exc
        publish(self._subscribers, LinkEvent("refused", exc.reason, exc.by_peer, time.time(), exc,
                                            netns=self._socket.netns))
        self._finish_attempt(exc)

    async def _connect_once(self) -> bool:
        """One connection: connect(), handshake, run until it closes.  True if it got up."""
        loop = asyncio.get_running_loop()
        try:  # a new socket for every attempt, in the socket's network namespace
            sock = self._socket._new_socket()
        except (OSError, ValueError) as exc:
            reason = f"cannot create a socket for {self._socket.get_filename()}: {exc}"
            if reason != self._connect_error:
                log.warning("interface %d: %s (retrying)", self.get_id(), reason)
            self._refused(ConnectionRefused(reason))
            return False
        try:
            self._socket._connect(sock)
        except OSError as exc:
            sock.close()
            reason = self._socket._connect_error(exc)
            if reason != self._connect_error:
                log.info("interface %d: %s (retrying)", self.get_id(), reason)
            self._refused(ConnectionRefused(reason))
            return False
        args = self._args
        mc = args.memory_config
        cfg = ClientConfig(id=args.id, mode=int(args.mode), secret=args.secret,
                           app_name=self._socket._app_name, if_name=args.name.encode(),
                           num_queue_pairs=mc.num_queue_pairs, log2_ring_size=mc.log2_ring_size,
                           buffer_size=mc.packet_buffer_size,
                           cache_line=args.layout_cache_line_size(),
                           num_rx_queues=mc.num_rx_queues, num_tx_queues=mc.num_tx_queues)
        channel = ControlChannel(ClientHandshake(cfg), args.handshake_timeout,
                                 on_established=self._on_established,
                                 on_closed=self._channel_closed)
        self._channel = channel
        self._closed_fut = loop.create_future()
        closed = self._closed_fut
        try:
            SeqpacketTransport(loop, sock, channel)
            return await asyncio.shield(closed)
        except asyncio.CancelledError:
            if self._channel is channel:
                channel.close("interface deleted" if self._deleted else "interface stopped")
            raise

    # --- called by the socket (master) and the control channel --------------------------
    def _attach(self, channel: ControlChannel) -> bool:
        """Master: an accepted connection's INIT named this interface.  False if it
        is taken (the server machine checks ``busy`` first, so only a race lands here)."""
        if self._channel is not None or self._deleted:
            return False
        self._channel = channel
        return True

    def _on_established(self, channel: ControlChannel, session: Session) -> None:
        if channel is not self._channel or self._deleted:
            session.close()
            channel.close("interface deleted" if self._deleted else "interface busy")
            return
        args = self._args
        link = Link(self.get_id(), channel, session, rx_mode=args.rx_mode,
                    tx_timeout=args.tx_timeout, taps=self._taps,
                    on_violation=self._socket._background_error)
        self._link = link
        self._connections += 1
        self._peer_name = to_text(session.peer_if_name)
        self._remote_name = to_text(session.peer_name)
        self._memory = session.memory_config
        self._last_reason = ""
        self._connect_error = ""
        self._refusal = None
        log.info("interface %d (%s) connected to %r / %r: %d rx, %d tx queues, ring 2^%d, "
                 "buffer %d, cache line %d", self.get_id(),
                 "master" if self.is_master() else "slave", self._remote_name, self._peer_name,
                 len(link.rx_queues), len(link.tx_queues), session.log2_ring_size,
                 session.buffer_size, session.cache_line_size)
        self._connected_event().set()
        self._finish_attempt(None)
        publish(self._subscribers, LinkEvent("up", "", False, time.time(),
                                            netns=self._socket.netns))
        self._callback(args.connected_func)

    def _channel_closed(self, channel: ControlChannel, reason: str, by_peer: bool) -> None:
        if channel is not self._channel:
            return
        self._channel = None
        self._last_reason = reason
        link = self._link
        if link is not None:
            self._link = None
            link.teardown(reason, by_peer)
            self._memory = None
            if self._connected is not None:
                self._connected.clear()
            log.info("interface %d disconnected (%s: %s)", self.get_id(),
                     "peer" if by_peer else "local", printable(reason))
        elif self._deleted or (self._paused and not by_peer):
            log.debug("interface %d: handshake abandoned (%s)", self.get_id(),
                      printable(reason))
        else:
            if reason != self._connect_error:
                log.warning("interface %d: connection refused or failed during handshake "
                            "(%s: %s)", self.get_id(), "peer" if by_peer else "local",
                            printable(reason))
            self._refused(ConnectionRefused(reason, by_peer))
        if self._closed_fut is not None and not self._closed_fut.done():
            self._closed_fut.set_result(link is not None)
        if link is not None:
            publish(self._subscribers, LinkEvent("down", reason, by_peer, time.time(),
                                                netns=self._socket.netns))
            self._callback(self._args.disconnected_func)

    def _callback(self, func: Any) -> None:
        if func is None:
            return
        try:
            result = func(self)
        except Exception:
            log.exception("interface %d: callback %r failed", self.get_id(), func)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._callback_tasks.add(task)
            task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._callback_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("interface %d: callback failed", self.get_id(), exc_info=task.exception())
