"""Async queues over the rings: ``await rx.read_packet()`` / ``await tx.write_packet()``.

A :class:`Queue` belongs to one connection of its interface.  When the link
goes down every pending call raises :class:`~memif_aio.errors.Disconnected`
(packets already copied out of the ring are still delivered first); after a
reconnect, ask the interface for its new queues.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Sequence, Union

from . import eventfd
from .config import RxMode
from .errors import Disconnected, PacketTooLarge, ProtocolViolation, WouldBlock
from .ring import M2SConsumer, M2SProducer, S2MConsumer, S2MProducer

if TYPE_CHECKING:
    from .interface import Interface

RxRing = Union[S2MConsumer, M2SConsumer]
#: ``tap(qid, is_rx, packets)``: sees every packet received or sent (see Interface.add_tap)
Tap = Callable[[int, bool, Sequence[bytes]], None]
log = logging.getLogger("memif_aio")
TxRing = Union[S2MProducer, M2SProducer]

#: packets pulled from the ring per refill of the local queue
_BATCH = 64
#: empty polls in ADAPTIVE mode before falling back to the eventfd
_ADAPTIVE_SPINS = 64
#: packets a queue may move without the loop getting a turn (see Queue._take_turn)
_FAIR_PACKETS = 4096
#: how long a polling reader spins on the ring before yielding to the loop
_SPIN_NS = 20_000
#: tx retries that only yield to the loop before sleeping
_TX_SPINS = 16
_TX_MAX_SLEEP = 0.002


@dataclass(frozen=True)
class QueueStats:
    """Counters of one queue for the current connection."""

    qid: int
    is_rx: bool
    packets: int
    bytes: int
    drops: int
    bad_descriptors: int
    interrupts: int
    ring_size: int
    head: int
    tail: int


class Queue:
    """One direction of one queue pair (gomemif ``Queue``)."""

    #: how a transmit queue signals the peer (made at the first signal, see eventfd.py)
    _interrupt: eventfd.Interrupt | None = None

    def __init__(self, interface: Interface, qid: int, ring: Union[RxRing, TxRing],
                 eventfd: int, is_rx: bool, rx_mode: RxMode,
                 tx_timeout: float | None = None,
                 taps: list[Tap] | None = None) -> None:
        self._itf = interface
        self._qid = qid
        self._ring = ring
        self._efd = eventfd
        self._is_rx = is_rx
        self._mode = rx_mode
        self._tx_timeout = tx_timeout
        self._loop = asyncio.get_running_loop()
        self._dead: Disconnected | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._pending: collections.deque[bytes] = collections.deque()
        self._spins = 0
        self._reading = False
        self._signals = 0
        self._signal_pending = False
        self._budget = _FAIR_PACKETS
        self._evbuf = bytearray(8)
        self._taps: list[Tap] = taps if taps is not None else []
        self._leased: list[Any] | None = None
        self._reserved: Reservation | None = None
        if is_rx:
            ring.set_interrupt_mask(rx_mode is not RxMode.INTERRUPT)
            if rx_mode is not RxMode.POLLING:
                self._loop.add_reader(eventfd, self._on_interrupt)
                self._reading = True

    # --- identity and counters -------------------------------------------------
    def get_event_fd(self) -> int:
        """The ring's interrupt eventfd (readable when the peer signals)."""
        return self._efd

    @property
    def qid(self) -> int:
        return self._qid

    @property
    def is_rx(self) -> bool:
        return self._is_rx

    def is_connected(self) -> bool:
        return self._dead is None

    def stats(self) -> QueueStats:
        st = self._ring.stats
        r = self._ring
        try:
            head, tail = (r.head, r.tail) if self._dead is None else (0, 0)
        except ValueError:  # ring memory already released
            head = tail = 0
        return QueueStats(self._qid, self._is_rx, st.packets, st.bytes, st.drops,
                          st.bad_descriptors, st.interrupts if self._is_rx else self._signals,
                          r.size, head, tail)

    def __repr__(self) -> str:
        kind = "rx" if self._is_rx else "tx"
        return f"<Queue {kind}{self._qid} of interface {self._itf.get_id()}>"

    # --- lifetime ------------------------------------------------------------------
    def _kill(self, exc: Disconnected) -> None:
        """The connection is gone: wake everyone with ``exc``; stop touching the ring."""
        if self._dead is not None:
            return
        self._dead = exc
        if self._leased is not None:  # views must go before the mapping does
            self._end_lease()
        if self._reserved is not None:
            for v in self._reserved:
                v.release()
        if self._reading:
            self._loop.remove_reader(self._efd)
            self._reading = False
        if self._interrupt is not None:
            self._interrupt.close()
            self._interrupt = None
        for w in self._waiters:
            if not w.done():
                w.set_exception(exc)
        self._waiters.clear()

    def _raise_dead(self) -> None:
        if self._dead is not None:
            raise Disconnected(self._dead.raw_reason, self._dead.by_peer)

    def _violation(self, exc: ProtocolViolation) -> None:
        self._itf._protocol_violation(exc.reason)

    # --- receive -------------------------------------------------------------------
    def _on_interrupt(self) -> None:
        try:
            eventfd.drain(self._efd, self._evbuf)
        except eventfd.StuckEventfd as exc:
            self._itf._protocol_violation(exc.strerror or "interrupt eventfd made blocking")
            return
        self._ring.stats.interrupts += 1
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()

    def _fill(self, n: int = _BATCH) -> int:
        if self._dead is not None:
            return 0
        try:
            if self._taps:
                got: list[bytes] = []
                k: int = self._ring.read_burst(n, got)  # type: ignore[union-attr]
                self._pending.extend(got)
                self._tap(got, True)
                return k
            return self._ring.read_burst(n, self._pending)  # type: ignore[union-attr]
        except ProtocolViolation as exc:
            self._violation(exc)
            return 0

    def _tap(self, packets: Sequence[Any], is_rx: bool) -> None:
        """Show packets to the interface's taps (capture); a failing tap is dropped."""
        if not packets:
            return
        pkts = [p if isinstance(p, bytes) else bytes(p) for p in packets]
        for tap in list(self._taps):
            try:
                tap(self._qid, is_rx, pkts)
            except Exception:
                log.exception("tap %r failed; removing it", tap)
                with contextlib.suppress(ValueError):
                    self._taps.remove(tap)

    def _spin(self) -> bool:
        """Busy-poll the ring for up to ``_SPIN_NS`` without yielding (polling modes).

        True as soon as the peer has published something."""
        ready = self._ring.ready  # type: ignore[union-attr]
        if ready():
            return True
        clock = time.perf_counter_ns
        deadline = clock() + _SPIN_NS
        while clock() < deadline:
            if ready():
                return True
        return False

    async def _wait_rx(self) -> None:
        mode = self._mode
        if mode is RxMode.POLLING:
            if not self._spin():
                await asyncio.sleep(0)  # let the rest of the program run between spins
            return
        ring = self._ring
        if mode is RxMode.ADAPTIVE:
            if self._spins < _ADAPTIVE_SPINS:
                self._spins += 1
                if not self._spin():
                    await asyncio.sleep(0)
                return
            ring.set_interrupt_mask(False)  # going idle: ask for interrupts, then re-check
            if self._fill():
                return
        fut = self._loop.create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if mode is RxMode.ADAPTIVE and self._dead is None:
                ring.set_interrupt_mask(True)
                self._spins = 0

    def _check_rx(self) -> None:
        if not self._is_rx:
            raise TypeError("this is a transmit queue")

    def read_packet_nowait(self) -> bytes:
        """One packet if one is ready, else :class:`WouldBlock` (or :class:`Disconnected`)."""
        self._check_rx()
        if self._pending or self._fill():
            return self._pending.popleft()
        self._raise_dead()
        raise WouldBlock("no packet ready")

    async def read_packet(self) -> bytes:
        """Wait for the next packet (chains arrive reassembled)."""
        self._check_rx()
        pending = self._pending
        while True:
            if pending or self._fill():
                self._spins = 0
                pkt = pending.popleft()
                self._budget -= 1
                if self._budget <= 0:
                    await self._take_turn()
                return pkt
            self._raise_dead()
            await self._wait_rx()

    async def read_packet_into(self, buf: Union[bytearray, memoryview]) -> int:
        """Copy the next packet into ``buf``; return its length.

        A packet longer than ``buf`` raises ``ValueError`` and stays queued.
        """
        pkt = await self.read_packet()
        if len(pkt) > len(buf):
            self._pending.appendleft(pkt)
            raise ValueError(f"packet of {len(pkt)} bytes does not fit a {len(buf)}-byte buffer")
        memoryview(buf)[:len(pkt)] = pkt
        return len(pkt)

    def read_burst_nowait(self, max_packets: int) -> list[bytes]:
        """Up to ``max_packets`` packets that are ready now (maybe none)."""
        self._check_rx()
        if max_packets < 1:
            raise ValueError("max_packets must be at least 1")
        pending = self._pending
        if not pending:  # the common case: straight from the ring into the result
            out: list[bytes] = []
            if self._dead is None:
                ring = self._ring
                try:
                    ring.read_burst(max_packets, out)  # type: ignore[union-attr]
                except ProtocolViolation as exc:
                    self._violation(exc)
                if self._taps:
                    self._tap(out, True)
            if not out:
                self._raise_dead()
            return out
        if len(pending) < max_packets:
            self._fill(max(max_packets - len(pending), _BATCH))
        if not pending:
            self._raise_dead()
            return []
        if len(pending) <= max_packets:
            out = list(pending)
            pending.clear()
            return out
        return [pending.popleft() for _ in range(max_packets)]

    async def read_burst(self, max_packets: int) -> list[bytes]:
        """Wait for at least one packet; return up to ``max_packets``."""
        while True:
            out = self.read_burst_nowait(max_packets)
            if out:
                self._spins = 0
                self._budget -= len(out)
                if self._budget <= 0:
                    await self._take_turn()
                return out
            await self._wait_rx()

    async def _take_turn(self) -> None:
        """Yield to the event loop once every ``_FAIR_PACKETS`` packets.

        A read or write that finds the ring ready completes without suspending,
        so a loop over a flood would otherwise never let timers, signal handlers,
        other tasks or our own control channel run."""
        self._budget = _FAIR_PACKETS
        await asyncio.sleep(0)

    @contextlib.asynccontextmanager
    async def lease(self, max_packets: int = 64) -> AsyncIterator[list[Any]]:
        """Zero-copy receive: ``async with rx.lease(n) as pkts:``.

        Waits for at least one packet and yields up to ``max_packets`` of them
        as read-only ``memoryview`` objects into the shared memory (a chained
        packet, and any packet already copied out by an earlier read, comes as
        ``bytes``).  The slots go back to the peer when the block exits; the
        views are then released, so touching one afterwards raises
        ``ValueError`` instead of reading memory the peer may be reusing.
        Keep ``bytes(view)`` of what you need beyond the block.
        """
        self._check_rx()
        if max_packets < 1:
            raise ValueError("max_packets must be at least 1")
        if self._leased is not None:
            raise RuntimeError("a lease on this queue is already active")
        views: list[Any] = []
        pending = self._pending
        while True:
            while pending and len(views) < max_packets:
                views.append(pending.popleft())
            if views:
                break
            if self._dead is None:
                try:
                    if self._ring.read_burst(max_packets, views,  # type: ignore[union-attr]
                                             zero_copy=True):
                        if self._taps:
                            self._tap(views, True)
                        break
                except ProtocolViolation as exc:
                    self._violation(exc)
            self._raise_dead()
            await self._wait_rx()
        self._leased = views
        try:
            yield views
        finally:
            self._end_lease()

    def _end_lease(self) -> None:
        views = self._leased
        if views is None:
            return
        self._leased = None
        for v in views:
            if isinstance(v, memoryview):
                with contextlib.suppress(BufferError):  # exported on (e.g. PickleBuffer): it
                    v.release()  # stays valid and keeps the mapping until it is let go
        if self._dead is None:
            self._ring.end_lease()  # type: ignore[union-attr]
            self._spins = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        """``async for pkt in rx``: ends cleanly when the link goes down."""
        while True:
            try:
                pkt = await self.read_packet()
            except Disconnected:
                return
            yield pkt

    # --- transmit -------------------------------------------------------------------
    def _write(self, packets: Sequence[bytes], start: int = 0) -> int:
        self._raise_dead()
        try:
            n = self._ring.write_burst(packets, start)  # type: ignore[union-attr]
        except ProtocolViolation as exc:
            self._violation(exc)
            self._raise_dead()
            raise Disconnected(exc.reason) from None
        if n and not self._signal_pending and self._ring.peer_wants_interrupt():
            self._signal_pending = True
            self._loop.call_soon(self._signal)
        if n and self._taps:
            self._tap(packets[start:start + n], False)
        return n

    def _write_one(self, data: bytes) -> bool:
        if self._dead is not None:
            self._raise_dead()
        try:
            ok = self._ring.write_one(data)  # type: ignore[union-attr]
        except ProtocolViolation as exc:
            self._violation(exc)
            self._raise_dead()
            raise Disconnected(exc.reason) from None
        if ok and not self._signal_pending and self._ring.peer_wants_interrupt():
            self._signal_pending = True
            self._loop.call_soon(self._signal)
        if ok and self._taps:
            self._tap((data,), False)
        return ok

    def _signal(self) -> None:
        """Interrupt the peer once per loop iteration at most (if it wants interrupts).

        Signals are deferred to the next loop iteration so that a writer
        publishing many packets without yielding costs one ``eventfd`` write,
        not one per packet; it always happens before our next wait.
        """
        self._signal_pending = False
        if self._dead is None and self._ring.peer_wants_interrupt():
            intr = self._interrupt
            if intr is None:  # the write happens on a signaller thread (see eventfd.py)
                try:
                    intr = self._interrupt = eventfd.Interrupt(self._efd, self._stuck,
                                                               self._loop)
                except OSError:  # closed fd: the peer is gone
                    return
            intr.signal()
            self._signals += 1

    def _stuck(self, exc: eventfd.StuckEventfd) -> None:
        """The peer made our signal's write block: disconnect with the reason."""
        self._itf._protocol_violation(exc.strerror or "interrupt eventfd blocked")

    @contextlib.asynccontextmanager
    async def reserve(self, count: int, size: int) -> AsyncIterator[Reservation]:
        """Zero-copy transmit: ``async with tx.reserve(n, size) as bufs:``.

        Waits (with the transmit backoff and ``tx_timeout``) until ``count``
        buffers of at least ``size`` bytes are free, yields them as writable
        memoryviews, and publishes them on a clean exit, each with length
        ``bufs.lengths[i]`` (``size`` unless changed).  If the block raises
        (or is cancelled) nothing is published and no slot is lost.
        """
        self._check_tx()
        if self._reserved is not None:
            raise RuntimeError("a reservation on this queue is already active")
        retry: _Backoff | None = None
        while True:
            self._raise_dead()
            try:
                views = self._ring.reserve(count, size)  # type: ignore[union-attr]
            except ProtocolViolation as exc:
                self._violation(exc)
                self._raise_dead()
                raise Disconnected(exc.reason) from None
            if views is not None:
                break
            retry = retry or _Backoff(self._tx_timeout)
            await retry.wait()
        res = Reservation(views, size)
        self._reserved = res
        ok = False
        try:
            yield res
            ok = True
        finally:
            self._reserved = None
            copies = [bytes(v[:n]) for v, n in zip(views, res.lengths)] \
                if ok and self._taps and self._dead is None else []
            for v in views:
                v.release()
            if ok:
                lengths = res.lengths
                if len(lengths) > count or (lengths and (min(lengths) <= 0 or
                                                         max(lengths) > size)):
                    raise ValueError(f"lengths must be {count} values within 1..{size}")
                self._raise_dead()
                self._ring.commit(lengths)  # type: ignore[union-attr]
                if copies:
                    self._tap(copies, False)
                if not self._signal_pending and self._ring.peer_wants_interrupt():
                    self._signal_pending = True
                    self._loop.call_soon(self._signal)

    def _check_tx(self) -> None:
        if self._is_rx:
            raise TypeError("this is a receive queue")

    def write_packet_nowait(self, data: bytes) -> int:
        """Publish one packet now or raise :class:`WouldBlock` (ring full)."""
        self._check_tx()
        if not self._write_one(data):
            raise WouldBlock("ring full")
        return len(data)

    def write_burst_nowait(self, packets: Sequence[bytes]) -> int:
        """Publish as many of ``packets`` as fit now; return how many."""
        self._check_tx()
        return self._write(packets)

    async def write_packet(self, data: bytes) -> int:
        """Publish one packet, waiting for ring space; returns its length.

        memif has no "space available" signal, so waiting polls with a short
        backoff (yield, then sleeps up to 2 ms).  ``tx_timeout`` of the
        interface's :class:`~memif_aio.Arguments` bounds the wait
        (``TimeoutError``).
        """
        if self._is_rx:
            self._check_tx()
        if self._write_one(data):
            self._budget -= 1
            if self._budget <= 0:
                await self._take_turn()
            return len(data)
        retry = _Backoff(self._tx_timeout)
        while True:
            await retry.wait()
            if self._write_one(data):
                return len(data)

    async def write_burst(self, packets: Union[Sequence[bytes], Iterable[bytes]]) -> int:
        """Publish every packet in order, waiting for space as needed; returns the count.

        A packet that can never fit the ring raises :class:`PacketTooLarge` at once and
        nothing is published (see docs/concepts.md, Chained buffers, for the one case of
        a short count)."""
        self._check_tx()
        if not isinstance(packets, (list, tuple)):
            packets = list(packets)
        total = len(packets)
        done = self._write(packets)
        if done == total:
            self._budget -= total
            if self._budget <= 0:
                await self._take_turn()
            return total
        retry: _Backoff | None = None
        while done < total:
            retry = retry or _Backoff(self._tx_timeout)
            await retry.wait()
            try:
                n = self._write(packets, done)
            except PacketTooLarge:  # found only now (a peer posting buffers below its size)
                if not done:
                    raise
                return done  # a short count: exactly what was published
            if n:
                done += n
                retry.reset()
        return total


class Reservation(list):  # type: ignore[type-arg]
    """Writable buffers from :meth:`Queue.reserve`; set ``lengths[i]`` to publish less."""

    def __init__(self, views: list[memoryview], size: int) -> None:
        super().__init__(views)
        self.lengths = [size] * len(views)


class _Backoff:
    """Adaptive wait for ring space: yield a few times, then sleep up to 2 ms."""

    __slots__ = ("deadline", "n")

    def __init__(self, timeout: float | None) -> None:
        self.n = 0
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def reset(self) -> None:
        self.n = 0

    async def wait(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeoutError("transmit ring stayed full (the peer is not consuming)")
        self.n += 1
        if self.n <= _TX_SPINS:
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(min(_TX_MAX_SLEEP, 0.0001 * (self.n - _TX_SPINS)))
