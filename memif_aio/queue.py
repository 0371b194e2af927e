"""Async queues over the rings: ``await rx.read_packet()`` / ``await tx.write_packet()``.

A queue belongs to one connection of its interface: :class:`RxQueue` receives,
:class:`TxQueue` transmits, :class:`Queue` (the gomemif name) is their common
base.  When the link goes down every pending call raises
:class:`~memif_aio.errors.Disconnected` (packets already copied out of the ring
are still delivered first); after a reconnect, ask the interface for its new
queues.

The cancellation contract (docs/concepts.md): every await here happens before
anything is taken from or published to a ring, never after.  A read that raises
consumed nothing; a read that returns took exactly what it returned.  A write
that raises published nothing; a write that returns published exactly what it
reports.  A lease whose block raises gives its packets back; a reservation whose
block raises publishes nothing.  A cancelled waiter leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable, Protocol, Sequence, Union

from . import eventfd
from .config import RxMode
from .errors import Disconnected, ProtocolViolation, WouldBlock
from .ring import M2SConsumer, M2SProducer, S2MConsumer, S2MProducer
from .wire import RING_FLAG_MASK_INT

RxRing = Union[S2MConsumer, M2SConsumer]
#: ``tap(qid, is_rx, packets)``: sees every packet received or sent (see Interface.add_tap)
Tap = Callable[[int, bool, Sequence[bytes]], None]
log = logging.getLogger("memif_aio")
TxRing = Union[S2MProducer, M2SProducer]

#: packets pulled from the ring per refill of the local queue (read_packet: a bigger batch
#: spreads the cost of a ring read over more packets; 256 is the largest burst we measure)
_BATCH = 256
#: empty polls in ADAPTIVE mode before falling back to the eventfd
_ADAPTIVE_SPINS = 64
#: packets a queue may move without the loop getting a turn (see Queue._take_turn)
_FAIR_PACKETS = 4096
#: how long a polling reader spins on the ring before yielding to the loop
_SPIN_NS = 20_000
#: tx retries that only yield to the loop before sleeping
_TX_SPINS = 16
_TX_MAX_SLEEP = 0.002


class QueueOwner(Protocol):
    """What a queue needs from the connection that owns it (a ``link.Link``)."""

    @property
    def interface_id(self) -> int: ...

    def protocol_violation(self, reason: str) -> None:
        """A check on the data path failed: end the connection with ``reason``."""


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
    waiters: int = 0  #: receive: calls blocked waiting for an interrupt right now


class Queue:
    """One direction of one queue pair (gomemif ``Queue``): the common base of
    :class:`RxQueue` and :class:`TxQueue`."""

    is_rx: bool = False  #: True for a receive queue

    def __init__(self, owner: QueueOwner, qid: int, ring: Union[RxRing, TxRing],
                 eventfd: int, taps: list[Tap] | None = None) -> None:
        self._owner = owner
        self._qid = qid
        self._efd = eventfd
        self._loop = asyncio.get_running_loop()
        self._dead: Disconnected | None = None
        self._budget = _FAIR_PACKETS
        self._taps: list[Tap] = taps if taps is not None else []
        self._ring_stats = ring.stats
        self._any_ring: Union[RxRing, TxRing] = ring

    # --- identity and counters -------------------------------------------------
    def get_event_fd(self) -> int:
        """The ring's interrupt eventfd (readable when the peer signals)."""
        return self._efd

    @property
    def qid(self) -> int:
        return self._qid

    def is_connected(self) -> bool:
        return self._dead is None

    def _interrupts(self) -> int:
        return self._ring_stats.interrupts

    def _waiting(self) -> int:
        return 0

    def stats(self) -> QueueStats:
        st = self._ring_stats
        r = self._any_ring
        try:
            head, tail = (r.head, r.tail) if self._dead is None else (0, 0)
        except ValueError:  # ring memory already released
            head = tail = 0
        return QueueStats(self._qid, self.is_rx, st.packets, st.bytes, st.drops,
                          st.bad_descriptors, self._interrupts(), r.size, head, tail,
                          self._waiting())

    def __repr__(self) -> str:
        kind = "rx" if self.is_rx else "tx"
        return f"<{type(self).__name__} {kind}{self._qid} of interface {self._owner.interface_id}>"

    # --- lifetime (called by the owning link) ---------------------------------------
    def _kill(self, exc: Disconnected) -> None:
        """The connection is gone: wake everyone with ``exc``; stop touching the ring."""
        if self._dead is not None:
            return
        self._dead = exc
        self._release()

    def _release(self) -> None:
        """Subclasses: drop views and waiters (the mapping goes next)."""

    def _raise_dead(self) -> None:
        if self._dead is not None:
            raise Disconnected(self._dead.raw_reason, self._dead.by_peer)

    def _violation(self, exc: ProtocolViolation) -> None:
        self._owner.protocol_violation(exc.reason)

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

    async def _take_turn(self) -> None:
        """Yield to the event loop once every ``_FAIR_PACKETS`` packets.

        A read or write that finds the ring ready completes without suspending,
        so a loop over a flood would otherwise never let timers, signal handlers,
        other tasks or our own control channel run.  Callers await this BEFORE
        they take or publish anything (the cancellation contract)."""
        self._budget = _FAIR_PACKETS
        await asyncio.sleep(0)


class RxQueue(Queue):
    """The receive direction of a queue pair."""

    is_rx = True

    def __init__(self, owner: QueueOwner, qid: int, ring: RxRing, eventfd: int,
                 rx_mode: RxMode, taps: list[Tap] | None = None) -> None:
        super().__init__(owner, qid, ring, eventfd, taps)
        self._ring: RxRing = ring
        self._mode = rx_mode
        self._waiters: list[asyncio.Future[None]] = []
        self._pending: collections.deque[bytes] = collections.deque()
        self._spins = 0
        self._reading = False
        self._evbuf = bytearray(8)
        self._leased: list[Any] | None = None
        ring.set_interrupt_mask(rx_mode is not RxMode.INTERRUPT)
        if rx_mode is not RxMode.POLLING:
            self._loop.add_reader(eventfd, self._on_interrupt)
            self._reading = True

    def _waiting(self) -> int:
        return len(self._waiters)

    def _release(self) -> None:
        exc = self._dead
        assert exc is not None
        if self._leased is not None:  # views must go before the mapping does
            self._end_lease()
        if self._reading:
            self._loop.remove_reader(self._efd)
            self._reading = False
        for w in self._waiters:
            if not w.done():
                w.set_exception(exc)
        self._waiters.clear()

    # --- receive -------------------------------------------------------------------
    def _on_interrupt(self) -> None:
        try:
            eventfd.drain(self._efd, self._evbuf)
        except eventfd.StuckEventfd as exc:
            self._owner.protocol_violation(exc.strerror or "interrupt eventfd made blocking")
            return
        self._ring.stats.interrupts += 1
        waiters = self._waiters
        if not waiters:
            # Nobody waits: stop listening until somebody does (_wait_rx listens again).
            # A peer that signals while its packets are not being read (DPDK's net_memif
            # writes the eventfd on every transmit call, even one that found the ring full)
            # would otherwise wake the loop for nothing, over and over.
            self._loop.remove_reader(self._efd)
            self._reading = False
            return
        for w in waiters:
            if not w.done():
                w.set_result(None)
        waiters.clear()

    def _fill(self, n: int = _BATCH) -> int:
        if self._dead is not None:
            return 0
        try:
            if self._taps:
                got: list[bytes] = []
                k: int = self._ring.read_burst(n, got)
                self._pending.extend(got)
                self._tap(got, True)
                return k
            return self._ring.read_burst(n, self._pending)
        except ProtocolViolation as exc:
            self._violation(exc)
            return 0

    def _spin(self) -> bool:
        """Busy-poll the ring for up to ``_SPIN_NS`` without yielding (polling modes).

        True as soon as the peer has published something."""
        ready = self._ring.ready
        if ready():
            return True
        clock = time.perf_counter_ns
        deadline = clock() + _SPIN_NS
        while True:
            # four looks per clock read: a store of the peer's is seen sooner
            if ready() or ready() or ready() or ready():
                return True
            if clock() >= deadline:
                return False

    async def _wait_rx(self) -> None:
        """Wait until the ring may have something.  Takes nothing itself (a fill
        moves packets into the queue's own buffer, where the next read finds them)."""
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
        if not self._reading and self._dead is None:
            # listen again (see _on_interrupt); a signal that came meanwhile left the
            # eventfd readable, so it wakes this wait at once
            self._loop.add_reader(self._efd, self._on_interrupt)
            self._reading = True
        fut = self._loop.create_future()
        waiters = self._waiters
        waiters.append(fut)
        try:
            await fut
        finally:
            if not fut.done() or fut.cancelled():  # cancelled: forget the waiter
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
            if mode is RxMode.ADAPTIVE and self._dead is None:
                ring.set_interrupt_mask(True)
                self._spins = 0

    def read_packet_nowait(self) -> bytes:
        """One packet if one is ready, else :class:`WouldBlock` (or :class:`Disconnected`)."""
        if self._pending or self._fill():
            return self._pending.popleft()
        self._raise_dead()
        raise WouldBlock("no packet ready")

    async def read_packet(self) -> bytes:
        """Wait for the next packet (chains arrive reassembled)."""
        pending = self._pending
        while True:
            if pending or self._fill():
                if self._budget <= 0:
                    await self._take_turn()  # before taking: a cancel here loses nothing
                    continue
                self._budget -= 1
                self._spins = 0
                return pending.popleft()
            self._raise_dead()
            if self._mode is RxMode.POLLING:  # _wait_rx's polling branch, inline (no coroutine)
                if not self._spin():
                    await asyncio.sleep(0)  # let the rest of the program run between spins
                continue
            await self._wait_rx()

    async def read_packet_into(self, buf: Union[bytearray, memoryview]) -> int:
        """Copy the next packet into ``buf``; return its length.

        ``buf`` is any writable, contiguous buffer (its size counts in bytes).  A packet
        longer than ``buf`` raises ``ValueError`` and stays queued; a read-only or
        non-contiguous ``buf`` raises ``TypeError`` before anything is taken.
        """
        with memoryview(buf) as whole:
            if whole.readonly:
                raise TypeError("read_packet_into needs a writable buffer")
            if not whole.c_contiguous:
                raise TypeError("read_packet_into needs a contiguous buffer")
            capacity = whole.nbytes
        pending = self._pending
        if not pending and not self._taps:
            # One copy, straight from the slot into buf, when one packet is ready and nothing
            # is queued before it (the ping-pong case).  With more ready, the path below reads
            # a burst (cheaper per packet) and copies from the queue; it also handles chains,
            # invalid packets and packets too long for buf.
            while not pending and self._dead is None:
                if self._budget <= 0:
                    await self._take_turn()  # before taking: a cancel here loses nothing
                    continue
                with memoryview(buf) as mv:  # released before any await
                    if mv.format != "B" or mv.ndim != 1 or mv.readonly:
                        break  # the path below raises what it always raised
                    try:
                        k = self._ring.read_into(mv)
                    except ProtocolViolation as exc:
                        self._violation(exc)
                        k = 0
                if k > 0:
                    self._budget -= 1
                    self._spins = 0
                    return k
                if k < 0:
                    break
                self._raise_dead()
                await self._wait_rx()
        pkt = await self.read_packet()
        if len(pkt) > capacity:
            self._pending.appendleft(pkt)
            raise ValueError(f"packet of {len(pkt)} bytes does not fit a {capacity}-byte buffer")
        with memoryview(buf) as whole, whole.cast("B") as out:
            out[:len(pkt)] = pkt
        return len(pkt)

    def read_burst_nowait(self, max_packets: int) -> list[bytes]:
        """Up to ``max_packets`` packets that are ready now (maybe none)."""
        if max_packets < 1:
            raise ValueError("max_packets must be at least 1")
        pending = self._pending
        if not pending:  # the common case: straight from the ring into the result
            out: list[bytes] = []
            if self._dead is None:
                try:
                    self._ring.read_burst(max_packets, out)
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
            if self._budget <= 0:
                await self._take_turn()  # before taking: a cancel here loses nothing
            out = self.read_burst_nowait(max_packets)
            if out:
                self._spins = 0
                self._budget -= len(out)
                return out
            await self._wait_rx()

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

        If the block raises (or is cancelled) the packets are not consumed:
        the next read returns them again, in order.
        """
        if max_packets < 1:
            raise ValueError("max_packets must be at least 1")
        if self._leased is not None:
            raise RuntimeError("a lease on this queue is already active")
        views: list[Any] = []
        pending = self._pending
        while True:
            if self._budget <= 0:
                await self._take_turn()
            while pending and len(views) < max_packets:
                views.append(pending.popleft())
            if views:
                break
            if self._dead is None:
                try:
                    if self._ring.read_burst(max_packets, views, zero_copy=True):
                        if self._taps:
                            self._tap(views, True)
                        break
                except ProtocolViolation as exc:
                    self._violation(exc)
            self._raise_dead()
            await self._wait_rx()
        self._leased = views
        self._budget -= len(views)
        ok = False
        try:
            yield views
            ok = True
        finally:
            if not ok and self._leased is views:  # give the packets back, in order
                pending.extendleft(reversed([v if isinstance(v, bytes) else bytes(v)
                                             for v in views]))
            self._end_lease()

    def _end_lease(self) -> None:
        views = self._leased
        if views is None:
            return
        self._leased = None
        _release_views(views)
        if self._dead is None:
            self._ring.end_lease()
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


class TxQueue(Queue):
    """The transmit direction of a queue pair."""

    is_rx = False
    #: how a transmit queue signals the peer (made at the first signal, see eventfd.py)
    _interrupt: eventfd.Interrupt | None = None

    def __init__(self, owner: QueueOwner, qid: int, ring: TxRing, eventfd: int,
                 tx_timeout: float | None = None, taps: list[Tap] | None = None) -> None:
        super().__init__(owner, qid, ring, eventfd, taps)
        self._ring: TxRing = ring
        # ring.peer_wants_interrupt(), inlined on the per-packet path: the u16 view of the
        # ring header and the index of its flags
        self._ring_idx = ring.idx
        self._flags_i = ring._flags_i
        self._tx_timeout = tx_timeout
        self._signals = 0
        self._signal_pending = False
        self._reserved: Reservation | None = None

    def _interrupts(self) -> int:
        return self._signals

    def _release(self) -> None:
        if self._reserved is not None:  # views must go before the mapping does
            _release_views(self._reserved)
        if self._interrupt is not None:
            self._interrupt.close()
            self._interrupt = None

    # --- transmit -------------------------------------------------------------------
    def _write(self, packets: Sequence[bytes], start: int = 0) -> int:
        self._raise_dead()
        try:
            n = self._ring.write_burst(packets, start)
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
            ok = self._ring.write_one(data)
        except ProtocolViolation as exc:
            self._violation(exc)
            self._raise_dead()
            raise Disconnected(exc.reason) from None
        if ok:
            if not self._signal_pending and \
                    not self._ring_idx[self._flags_i] & RING_FLAG_MASK_INT:
                self._signal_pending = True
                self._loop.call_soon(self._signal)
            if self._taps:
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
        self._owner.protocol_violation(exc.strerror or "interrupt eventfd blocked")

    @contextlib.asynccontextmanager
    async def reserve(self, count: int, size: int) -> AsyncIterator[Reservation]:
        """Zero-copy transmit: ``async with tx.reserve(n, size) as bufs:``.

        Waits (with the transmit backoff and ``tx_timeout``) until ``count``
        buffers of at least ``size`` bytes are free, yields them as writable
        memoryviews, and publishes them on a clean exit, each with length
        ``bufs.lengths[i]`` (``size`` unless changed).  If the block raises
        (or is cancelled) nothing is published and no slot is lost.
        """
        if self._reserved is not None:
            raise RuntimeError("a reservation on this queue is already active")
        retry: _Backoff | None = None
        while True:
            self._raise_dead()
            try:
                views = self._ring.reserve(count, size)
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
            _release_views(views)
            if ok:
                lengths = res.lengths
                if len(lengths) > count or (lengths and (min(lengths) <= 0 or
                                                         max(lengths) > size)):
                    raise ValueError(f"lengths must be {count} values within 1..{size}")
                self._raise_dead()
                self._ring.commit(lengths)
                if copies:
                    self._tap(copies, False)
                if not self._signal_pending and self._ring.peer_wants_interrupt():
                    self._signal_pending = True
                    self._loop.call_soon(self._signal)

    def write_packet_nowait(self, data: bytes) -> int:
        """Publish one packet now or raise :class:`WouldBlock` (ring full)."""
        if not self._write_one(data):
            raise WouldBlock("ring full")
        return len(data)

    def write_burst_nowait(self, packets: Sequence[bytes]) -> int:
        """Publish as many of ``packets`` as fit now; return how many."""
        return self._write(packets)

    async def write_packet(self, data: bytes) -> int:
        """Publish one packet, waiting for ring space; returns its length.

        memif has no "space available" signal, so waiting polls with a short
        backoff (yield, then sleeps up to 2 ms).  ``tx_timeout`` of the
        interface's :class:`~memif_aio.Arguments` bounds the wait
        (``TimeoutError``).  Raising (``TimeoutError``, cancellation,
        ``Disconnected``) means the packet was not published.
        """
        if self._budget <= 0:
            await self._take_turn()  # before publishing, never after
        if self._dead is None and not self._taps:  # _write_one, inlined: the common case
            try:
                ok = self._ring.write_one(data)
            except ProtocolViolation as exc:
                self._violation(exc)
                self._raise_dead()
                raise Disconnected(exc.reason) from None
            if ok:
                if not self._signal_pending and \
                        not self._ring_idx[self._flags_i] & RING_FLAG_MASK_INT:
                    self._signal_pending = True
                    self._loop.call_soon(self._signal)
                self._budget -= 1
                return len(data)
        elif self._write_one(data):
            self._budget -= 1
            return len(data)
        retry = _Backoff(self._tx_timeout)
        while True:
            await retry.wait()
            if self._write_one(data):
                self._budget -= 1
                return len(data)

    async def write_burst(self, packets: Union[Sequence[bytes], Iterable[bytes]]) -> int:
        """Publish packets from the front of ``packets``, in order; return how many.

        Like ``socket.send``: waits (with the transmit backoff and
        ``tx_timeout``) only while nothing at all fits, then publishes as many
        as fit and returns that count, which may be short of ``len(packets)``.
        Send the rest with another call (``packets[n:]``).  Raising
        (``TimeoutError``, cancellation, ``Disconnected``) means nothing was
        published.  A packet that can never fit the ring raises
        :class:`PacketTooLarge` when it comes first, and nothing is published;
        behind others it ends the count short (see docs/concepts.md, Chained buffers).
        """
        if not isinstance(packets, (list, tuple)):
            packets = list(packets)
        if not packets:
            return 0
        if self._budget <= 0:
            await self._take_turn()  # before publishing, never after
        n = self._write(packets)
        if not n:
            retry = _Backoff(self._tx_timeout)
            while not n:
                await retry.wait()
                n = self._write(packets)
        self._budget -= n
        return n


def _release_views(views: Iterable[Any]) -> None:
    """Release the memoryviews among ``views`` into shared memory.  One the user exported
    on (a ``PickleBuffer``, a NumPy array) cannot be released: it stays valid and keeps the
    mapping until the user lets go of it (docs/concepts.md, Zero copy)."""
    for v in views:
        if isinstance(v, memoryview):
            with contextlib.suppress(BufferError):
                v.release()


class Reservation(list):  # type: ignore[type-arg]
    """Writable buffers from :meth:`TxQueue.reserve`; set ``lengths[i]`` to publish less."""

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
