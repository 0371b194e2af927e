"""Interfaces and the control-channel protocol (the asyncio shell over :mod:`.protocol`)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket as _socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Protocol, Union

from ._text import printable
from .config import Arguments, MemoryConfig
from .errors import ConnectionRefused, Disconnected, MemifError, NotConnected
from .protocol import (
    ClientConfig,
    ClientHandshake,
    Closed,
    Established,
    InitAccepted,
    Output,
    SendMessage,
    ServerHandshake,
    Session,
)
from .queue import Queue, QueueStats, Tap
from .transport import SeqpacketTransport
from .wire import to_text

if TYPE_CHECKING:
    from .socket import Socket

log = logging.getLogger("memif_aio")


@dataclass(frozen=True)
class LinkEvent:
    """A link state change, as delivered by :meth:`Interface.events`."""

    kind: str  #: "up" or "down"
    reason: str  #: for "down": why (the peer's DISCONNECT string, or ours)
    by_peer: bool
    time: float  #: ``time.time()`` of the change


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


class _Owner(Protocol):
    def _claim(self, interface_id: int, channel: ControlChannel) -> Interface | None: ...

    def _channel_closed(self, channel: ControlChannel, reason: str, by_peer: bool) -> None: ...


class ControlChannel(asyncio.Protocol):
    """asyncio Protocol for one control connection: feeds the sans-I/O machine
    with what the :class:`~memif_aio.transport.SeqpacketTransport` delivers and
    carries out its outputs."""

    def __init__(self, machine: Union[ServerHandshake, ClientHandshake], owner: _Owner,
                 handshake_timeout: float, interface: Interface | None = None) -> None:
        self.machine = machine
        self.owner = owner
        self.interface = interface
        self.transport: SeqpacketTransport | None = None
        self.peer_credentials: Any = None  # PeerCredentials of an accepted connection
        self._timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        self.established = False

    # --- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, SeqpacketTransport)
        self.transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._on_timeout)
        self._apply(self.machine.start())

    def message_received(self, data: bytes, fds: list[int], truncated: bool) -> None:
        self._apply(self.machine.receive(data, fds, truncated))

    def eof_received(self) -> bool | None:
        self._apply(self.machine.eof())
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._apply(self.machine.eof())

    # --- local actions ------------------------------------------------------------
    def close(self, reason: str) -> None:
        """Send DISCONNECT(reason) and close."""
        self._apply(self.machine.close(reason))

    def _on_timeout(self) -> None:
        self._timer = None
        self._apply(self.machine.timeout())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _apply(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, SendMessage):
                assert self.transport is not None
                self.transport.send_message(out.data, out.fd)
            elif isinstance(out, InitAccepted):
                self.interface = self.owner._claim(out.interface_id, self)
                log.debug("INIT accepted for interface %d from %r", out.interface_id,
                          to_text(out.peer_name))
            elif isinstance(out, Established):
                self._cancel_timer()
                self.established = True
                assert self.interface is not None
                self.interface._on_established(out.session, self)
            elif isinstance(out, Closed):
                self._cancel_timer()
                if self.transport is not None:
                    self.transport.close()
                self.owner._channel_closed(self, out.reason, out.by_peer)


class Interface:
    """One memif interface, master or slave (gomemif ``Interface``).

    Create it with :meth:`Socket.new_interface`.  A slave connects when its
    socket starts polling and reconnects by itself (capped exponential backoff
    between ``reconnect_min_delay`` and ``reconnect_max_delay``) after a
    disconnect or a refused connect, until :meth:`disconnect` or :meth:`delete`.
    """

    def __init__(self, sock: Socket, args: Arguments) -> None:
        self._socket = sock
        self._args = args
        self._channel: ControlChannel | None = None
        self._session: Session | None = None
        self._rxq: list[Queue] = []
        self._txq: list[Queue] = []
        self._memory: MemoryConfig | None = None
        self._peer_name = ""
        self._remote_name = ""
        self._last_reason = ""
        self._last_refusal = ""
        self._connect_error = ""
        self._deleted = False
        self._paused = False
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self._closed_fut: asyncio.Future[bool] | None = None
        self._attempt_waiters: list[asyncio.Future[str | None]] = []
        self._callback_tasks: set[asyncio.Task[Any]] = set()
        self._connections = 0
        self._subscribers: list[asyncio.Queue[LinkEvent | None]] = []
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
        return self._session is not None

    def is_connecting(self) -> bool:
        return self._channel is not None and self._session is None

    def get_disconnect_reason(self) -> str:
        """Why the last connection ended, or the last handshake was refused ('' if none yet).

        This is the peer's DISCONNECT string when it sent one.  A failed ``connect()``
        (socket missing, nobody listening) does not overwrite it: see
        :meth:`get_connect_error`."""
        return self._last_reason

    def get_peer_credentials(self) -> Any:
        """Master: the :class:`~memif_aio.socket.PeerCredentials` (pid, uid, gid) of the
        connected peer process, from ``SO_PEERCRED``; None for a slave or while down."""
        ch = self._channel
        return ch.peer_credentials if ch is not None and self._session is not None else None

    def get_connect_error(self) -> str:
        """Why the last attempt to reach the socket failed ('' after a successful connect)."""
        return self._connect_error

    def get_rx_queue(self, qid: int) -> Queue:
        """Receive queue ``qid`` of the current connection."""
        return self._queue(self._rxq, qid)

    def get_tx_queue(self, qid: int) -> Queue:
        """Transmit queue ``qid`` of the current connection."""
        return self._queue(self._txq, qid)

    def _queue(self, queues: list[Queue], qid: int) -> Queue:
        if self._session is None:
            raise NotConnected(self._last_reason or "interface is not connected")
        if not 0 <= qid < len(queues):
            raise IndexError(f"queue {qid} does not exist (this connection has {len(queues)})")
        return queues[qid]

    def stats(self) -> InterfaceStats:
        """A frozen snapshot: state, names, negotiated memory, regions, per-queue counters."""
        state = "connected" if self.is_connected() else (
            "connecting" if self.is_connecting() else "down")
        regions = tuple((i, r.size) for i, r in enumerate(self._session.regions)) \
            if self._session is not None else ()
        return InterfaceStats(
            id=self.get_id(), role="master" if self.is_master() else "slave",
            name=self.get_name(), state=state, peer_name=self._peer_name,
            remote_name=self._remote_name, socket=self._socket.get_filename(),
            mode=self._args.mode.name.lower(), connections=self._connections,
            last_reason=self._last_reason, memory=self.get_memory_config(), regions=regions,
            rx=tuple(q.stats() for q in self._rxq), tx=tuple(q.stats() for q in self._txq))

    async def events(self) -> AsyncIterator[LinkEvent]:
        """``async for ev in itf.events()``: link up/down events from now on
        (beside the callbacks); ends when the interface is deleted."""
        q: asyncio.Queue[LinkEvent | None] = asyncio.Queue()
        self._subscribers.append(q)
        try:
            while True:
                ev = await q.get()
                if ev is None:
                    return
                yield ev
        finally:
            self._subscribers.remove(q)

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

    def _publish(self, ev: LinkEvent | None) -> None:
        for q in self._subscribers:
            q.put_nowait(ev)

    @property
    def rx_queues(self) -> list[Queue]:
        return list(self._rxq)

    @property
    def tx_queues(self) -> list[Queue]:
        return list(self._txq)

    def __repr__(self) -> str:
        state = "connected" if self.is_connected() else (
            "connecting" if self.is_connecting() else "down")
        role = "master" if self.is_master() else "slave"
        return f"<Interface {role} id={self.get_id()} {state}>"

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the link is up; ``TimeoutError`` (with the last reason) otherwise."""
        if self._deleted:
            raise MemifError("interface was deleted")
        ev = self._connected_event()
        if ev.is_set():
            return
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            why = "; ".join(printable(x) for x in (self._last_reason, self._connect_error) if x)
            why = f" (last: {why})" if why else ""
            raise TimeoutError(f"interface {self.get_id()} did not connect in {timeout} s{why}") \
                from None
        if self._deleted:
            raise MemifError("interface was deleted")

    async def request_connection(self) -> None:
        """Slave: try to connect now (and resume automatic reconnection).

        Raises :class:`ConnectionRefused` if the socket cannot be reached; the
        interface keeps retrying in the background.  Wait for the handshake
        with :meth:`wait_connected`.
        """
        if self.is_master():
            raise MemifError("only a slave interface requests a connection")
        if self._deleted:
            raise MemifError("interface was deleted")
        self._paused = False
        if self._session is not None or self._channel is not None:
            return
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._attempt_waiters.append(fut)
        self._ensure_task()
        assert self._wake is not None
        self._wake.set()
        reason = await fut
        if reason is not None:
            raise ConnectionRefused(reason)

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
        """Disconnect ("interface deleted") and remove the interface from its socket."""
        await self._shutdown("interface deleted")
        self._socket._forget(self)

    # --- internals ------------------------------------------------------------------------
    @property
    def mode(self) -> int:
        return int(self._args.mode)

    @property
    def secret(self) -> bytes:
        return self._args.secret

    @property
    def busy(self) -> bool:
        return self._channel is not None or self._deleted

    @property
    def if_name(self) -> bytes:
        return self._args.name.encode()

    @property
    def cache_line_size(self) -> int:
        return self._args.cache_line_size

    @property
    def require_seal(self) -> bool:
        return self._args.require_seal

    def _connected_event(self) -> asyncio.Event:
        if self._connected is None:
            self._connected = asyncio.Event()
            if self._session is not None:
                self._connected.set()
        return self._connected

    async def _shutdown(self, reason: str) -> None:
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
        for fut in self._attempt_waiters:
            if not fut.done():
                fut.set_result(reason)
        self._attempt_waiters.clear()
        if self._deleted and self._connected is not None:
            self._connected.set()  # release wait_connected() callers (they raise)
        if self._deleted:
            self._publish(None)  # ends events() iterators
        if self._callback_tasks:
            await asyncio.gather(*self._callback_tasks, return_exceptions=True)

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
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    def _finish_attempt(self, reason: str | None) -> None:
        for fut in self._attempt_waiters:
            if not fut.done():
                fut.set_result(reason)
        self._attempt_waiters.clear()

    async def _connect_once(self) -> bool:
        """One connection: connect(), handshake, run until it closes.  True if it got up."""
        loop = asyncio.get_running_loop()
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            sock.connect(self._socket._address)
        except OSError as exc:
            sock.close()
            reason = f"connect to {self._socket.get_filename()}: {exc.strerror or exc}"
            if reason != self._connect_error:
                log.info("interface %d: %s (retrying)", self.get_id(), reason)
            self._connect_error = reason
            self._finish_attempt(reason)
            return False
        self._connect_error = ""
        self._finish_attempt(None)
        args = self._args
        mc = args.memory_config
        cfg = ClientConfig(id=args.id, mode=int(args.mode), secret=args.secret,
                           app_name=self._socket._app_name, if_name=self.if_name,
                           num_queue_pairs=mc.num_queue_pairs, log2_ring_size=mc.log2_ring_size,
                           buffer_size=mc.packet_buffer_size, cache_line=args.cache_line_size)
        channel = ControlChannel(ClientHandshake(cfg), self, args.handshake_timeout, self)
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

    # --- called by the control channel ----------------------------------------------------
    def _claim(self, interface_id: int, channel: ControlChannel) -> Interface | None:
        return self

    def _on_established(self, session: Session, channel: ControlChannel) -> None:
        args = self._args
        self._session = session
        self._channel = channel
        self._connections += 1
        self._peer_name = to_text(session.peer_if_name)
        self._remote_name = to_text(session.peer_name)
        self._memory = session.memory_config
        self._rxq = [Queue(self, i, ring, session.rx_eventfds[i], True, args.rx_mode,
                           taps=self._taps) for i, ring in enumerate(session.rx)]
        self._txq = [Queue(self, i, ring, session.tx_eventfds[i], False, args.rx_mode,
                           args.tx_timeout, taps=self._taps) for i, ring in enumerate(session.tx)]
        if not session.is_master:
            for ring in session.rx:
                ring.refill()  # type: ignore[union-attr]  # post M2S buffers only now (§7.9)
        self._last_reason = ""
        log.info("interface %d (%s) connected to %r / %r: %d rx, %d tx queues, ring 2^%d, "
                 "buffer %d", self.get_id(), "master" if self.is_master() else "slave",
                 self._remote_name, self._peer_name, len(self._rxq), len(self._txq),
                 session.log2_ring_size, session.buffer_size)
        self._connected_event().set()
        self._publish(LinkEvent("up", "", False, time.time()))
        self._callback(args.connected_func)

    def _channel_closed(self, channel: ControlChannel, reason: str, by_peer: bool) -> None:
        if channel is not self._channel:
            return
        self._channel = None
        self._last_reason = reason
        session = self._session
        was_up = session is not None
        if session is not None:
            self._session = None
            exc = Disconnected(reason, by_peer)
            for q in (*self._rxq, *self._txq):
                q._kill(exc)
            session.close()
            self._memory = None
            if self._connected is not None:
                self._connected.clear()
            log.info("interface %d disconnected (%s: %s)", self.get_id(),
                     "peer" if by_peer else "local", printable(reason))
        elif reason != self._last_refusal:
            log.warning("interface %d: connection refused or failed during handshake (%s: %s)",
                        self.get_id(), "peer" if by_peer else "local", printable(reason))
        self._last_refusal = "" if was_up else reason
        if self._closed_fut is not None and not self._closed_fut.done():
            self._closed_fut.set_result(was_up)
        if was_up:
            self._publish(LinkEvent("down", reason, by_peer, time.time()))
            self._callback(self._args.disconnected_func)

    def _protocol_violation(self, reason: str) -> None:
        """A ring check failed on the data path: disconnect with that reason."""
        log.warning("interface %d: peer violated the protocol: %s", self.get_id(),
                    printable(reason))
        ch = self._channel
        if ch is not None:
            ch.close(reason)

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
