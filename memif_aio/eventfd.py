"""Interrupt eventfds shared with a peer that may be hostile.

A ring's eventfd is one open file description shared with the peer through
SCM_RIGHTS, and so is its ``O_NONBLOCK`` flag: the peer can make the fd
blocking at any moment and keep the counter full (or empty).  The rule is that
the event-loop thread never makes a syscall the peer can make block:

* :func:`drain` (receive side) reads with ``preadv2(RWF_NOWAIT)``, which never
  blocks whatever the file flags say (on kernels without it, a flag check and
  a read: a race the peer can win, see docs/security.md).
* :class:`Interrupt` (transmit side) never writes on the loop thread.
  :meth:`Interrupt.signal` hands the fd to a signaller thread (a deque append, and
  a write to a private eventfd of ours that wakes the thread, only when it is not
  already woken: a syscall the peer cannot make block; a signal already queued is
  not queued twice).  The thread sleeps in a blocking read of that private eventfd
  while idle, so an idle process makes no wake-ups, and writes everything queued
  before it sleeps again.  A watchdog timer runs on the loop only while a write is
  queued or in flight; a write still in flight at two consecutive on-time checks
  (0.1 s apart) against a full counter is stuck: its thread is abandoned and
  replaced (other interfaces keep their interrupts), the link is told through its
  ``on_stuck`` callback (which disconnects it with the reason), and the fd is kept
  open and drained with ``RWF_NOWAIT`` reads until the abandoned thread gets
  through; then it is closed and the thread exits.  At most one thread per hostile
  link, while the attack lasts.
* :func:`check_peer_eventfd` (handshake) refuses what is not an eventfd, and
  an ``EFD_SEMAPHORE`` eventfd (readable after every read: we would spin)
  where ``/proc/self/fdinfo`` tells; where it does not, :func:`drain` notices
  a counter that never resets and raises :class:`SpinningEventfd`.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import errno
import logging
import os
import sys
import threading
import time
import weakref
from typing import Callable, Union

from .errors import ProtocolViolation

log = logging.getLogger("memif_aio")

_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_nowait_works = bool(_NOWAIT)
#: the eventfd counter's maximum: a write of 1 blocks (or fails with EAGAIN) at this value
COUNTER_MAX = 0xFFFFFFFFFFFFFFFE
#: seconds between two looks of the watchdog at a write in flight
_CHECK = 0.1
#: a write in flight this many on-time checks is stuck, counter full or not
_GIVE_UP = 20
#: seconds between two drains of a stuck eventfd (lets its abandoned writer through)
_DRAIN_EVERY = 0.02
#: reads in a row that find a counter still set right after reading it (no fdinfo)
_SPIN_STRIKES = 64
_ONE = (1).to_bytes(8, "little")
#: what the loop adds to a channel's wake-up counter to tell its worker to exit (a kick
#: adds 1: the counter never gets near this from kicks)
_EXIT = 1 << 32


class StuckEventfd(OSError):
    """The peer made an interrupt eventfd block us, or spin (a protocol violation)."""


class SpinningEventfd(StuckEventfd):
    """The peer's interrupt eventfd never resets (an ``EFD_SEMAPHORE`` eventfd)."""


# ----------------------------------------------------------------------------
# fds: creation, checks and closing (the one home of the fd helpers)
# ----------------------------------------------------------------------------
def close_fds(fds: list[int]) -> None:
    """Close every fd of ``fds`` (ignoring those already closed) and empty the list."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def new_eventfd() -> int:
    """An eventfd of ours for a ring (what every reference client creates, §2.5)."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def is_eventfd(fd: int) -> bool:
    """True when ``fd`` is an eventfd (``anon_inode:[eventfd]``, §12.4)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


def fdinfo(fd: int) -> dict[str, str]:
    """The ``key: value`` lines of ``/proc/self/fdinfo/<fd>`` (empty if unreadable)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _probe_semaphore_visible() -> bool:
    """Does this kernel say in fdinfo whether an eventfd is a semaphore?"""
    try:
        fd = os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    except OSError:
        return False
    try:
        return fdinfo(fd).get("eventfd-semaphore") == "1"
    finally:
        os.close(fd)


#: True where fdinfo tells semaphores apart (checked at the handshake, and the drain
#: then needs no second read); False makes :func:`drain` detect them itself.
semaphore_visible = _probe_semaphore_visible()


def check_peer_eventfd(fd: int) -> None:
    """Validate a ring interrupt fd received from the peer; make it non-blocking.

    Raises :class:`ProtocolViolation` with the reason the peer receives."""
    if not is_eventfd(fd):
        raise ProtocolViolation("ring interrupt fd is not an eventfd")
    if semaphore_visible and fdinfo(fd).get("eventfd-semaphore", "0") != "0":
        raise ProtocolViolation("ring interrupt eventfd is a semaphore (EFD_SEMAPHORE)")
    # Every reference client creates it with EFD_NONBLOCK (§2.5).  The flag is shared
    # with the peer, who can clear it again: nothing below relies on it.
    os.set_blocking(fd, False)


def counter(fd: int) -> int | None:
    """The eventfd's counter as the kernel reports it (None if unknown)."""
    value = fdinfo(fd).get("eventfd-count")
    try:
        return None if value is None else int(value, 16)
    except ValueError:
        return None


# ----------------------------------------------------------------------------
# Receive side
# ----------------------------------------------------------------------------
_strikes: dict[int, int] = {}


def drain(fd: int, buf: bytearray) -> None:
    """Reset the eventfd counter if it is set; never blocks.

    Where fdinfo does not show semaphores (:data:`semaphore_visible` false), a
    read of exactly 1 is followed by a second read; a counter still set right
    after being read, :data:`_SPIN_STRIKES` interrupts in a row, is an
    ``EFD_SEMAPHORE`` eventfd: :class:`SpinningEventfd`."""
    if _nowait_works:  # the fast path, inline
        try:
            os.preadv(fd, [buf], -1, _NOWAIT)
        except BlockingIOError:
            return
        except OSError:
            if not _read(fd, buf):
                return
    elif not _read(fd, buf):
        return
    if semaphore_visible:
        return
    if buf != _ONE or not _read(fd, buf):
        _strikes.pop(fd, None)
        return
    n = _strikes.get(fd, 0) + 1
    if n < _SPIN_STRIKES:
        _strikes[fd] = n
        return
    _strikes.pop(fd, None)
    raise SpinningEventfd(errno.EINVAL, "the interrupt eventfd never resets (EFD_SEMAPHORE)")


def _read(fd: int, buf: bytearray) -> bool:
    """One non-blocking read of the counter into ``buf``: True if it was set."""
    global _nowait_works
    if _nowait_works:
        try:
            os.preadv(fd, [buf], -1, _NOWAIT)
            return True
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                return False  # closed or broken: nothing to drain
            _nowait_works = False
    if os.get_blocking(fd):
        raise StuckEventfd(errno.EAGAIN, "the peer made the interrupt eventfd blocking")
    try:
        buf[:] = os.read(fd, 8)
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------
# Transmit side
# ----------------------------------------------------------------------------
OnStuck = Callable[[StuckEventfd], None]


class Interrupt:
    """How a transmit queue signals its peer: :meth:`signal` on the loop thread
    costs a flag test when a signal is already queued, and never a syscall the
    peer can make block.  Owns a duplicate of the ring's eventfd (so that the fd
    number the signaller writes stays ours until it is done with it); call
    :meth:`close` when the link goes down."""

    __slots__ = ("_closed", "_fd", "_inflight", "_on_stuck", "_queued", "_sig", "_stuck")

    def __init__(self, fd: int, on_stuck: OnStuck,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        loop = loop or asyncio.get_running_loop()
        self._fd = os.dup(fd)
        self._on_stuck = on_stuck
        self._queued = False  # in the signaller's queue, its write not started
        self._inflight = False  # a signaller thread is writing it (guarded by the lock)
        self._closed = False
        self._stuck = False
        self._sig = _Signaller.of(loop)
        self._sig.opened(self)
        self._sig.box.fds.add(self._fd)

    def signal(self) -> None:
        """Add 1 to the peer's counter, soon, from the signaller thread."""
        if self._queued or self._closed:
            return
        self._queued = True
        sig = self._sig
        chan = sig.chan
        chan.pending.append(self)
        if not chan.kicked:
            chan.kick()
        if sig.timer is None:
            sig.arm()

    def close(self) -> None:
        """No more signals.  The fd is closed now, or by the thread writing it."""
        if self._closed:
            return
        self._closed = True  # a worker checks it under the lock before and after writing
        self._try_close()
        self._sig.closed(self)

    def _try_close(self) -> None:
        # Never wait for the lock on the loop thread (a worker holding it may be waiting
        # for a CPU): try again on the next iteration instead.
        sig = self._sig
        if not sig.lock.acquire(blocking=False):
            sig.loop.call_soon(self._try_close)
            return
        try:
            if not self._inflight:
                self._close_fd()
        finally:
            sig.lock.release()

    def _close_fd(self) -> None:  # with the lock held
        if self._fd >= 0:
            self._sig.box.fds.discard(self._fd)
            os.close(self._fd)
            self._fd = -1


_Item = Union["Interrupt", "_Box"]


class _Channel:
    """How the loop thread hands signals to a worker: a deque of what to write, and a
    private eventfd (never shared with anyone: it cannot be made to block) that wakes
    the worker.  The worker sleeps in a blocking ``read`` of that fd, which wakes it in
    a few microseconds where a ``SimpleQueue.get`` (a lock) takes three to four times as
    long on a loaded machine.  ``kicked`` is True from the kick until the worker starts
    emptying the deque, so a burst of signals costs one kick (one syscall).

    The worker closes the wake-up eventfd as it exits, so nothing may write to it after
    that: the exit is told by the wake-up write itself (:data:`_EXIT` added to the
    counter), never by an item in the deque.  The worker learns of it from the value it
    reads, that is once the write has completed; an item would let a worker already
    awake see it, and close the fd, while the loop thread was still on its way into
    the write (EBADF, or a write into whatever reused the fd number)."""

    __slots__ = ("fd", "kicked", "pending")

    def __init__(self, live: bool = True) -> None:
        self.pending: collections.deque[_Item] = collections.deque()
        #: blocking (the worker sleeps in read); -1: no worker reads it (retired, or not
        #: made yet), and then nothing is kicked
        self.fd = os.eventfd(0, os.EFD_CLOEXEC) if live else -1
        self.kicked = False

    def kick(self) -> None:
        self.kicked = True
        if self.fd >= 0:
            # ours alone: the counter never nears its maximum, so this never blocks
            os.eventfd_write(self.fd, 1)

    def tell_exit(self, box: _Box | None = None) -> None:
        """Tell the worker to exit once it has written what is queued (and closed the
        fds of ``box``, the signaller collected); nothing may kick this channel after."""
        if box is not None:
            self.pending.append(box)
        self.kicked = True
        if self.fd >= 0:
            os.eventfd_write(self.fd, _EXIT)


class _Worker:
    """One signaller thread; abandoned (and replaced) when a write gets stuck."""

    def __init__(self, sig: _Signaller) -> None:
        # Not the signaller itself: a thread that holds it would keep it, its loop and
        # its interrupts alive for ever once the loop is gone (see _Box).
        self.chan, self.lock = sig.chan, sig.lock
        self.inflight: Interrupt | None = None
        self.seq = 0  # writes started
        self.seen = -1  # seq in flight at the watchdog's last on-time check
        self.strikes = 0
        self.abandoned = False
        self.replaced = False  # abandoned, and a new worker took over the channel
        self.retired = False  # told to exit (it closes its channel's fd as it does)
        self.alive = True
        self.native_id = 0  # set by the thread
        _alive.add(self)
        # Not threading.Thread.start(): it waits until the new thread runs, and on a
        # loaded machine the loop thread would wait for the scheduler.
        _thread.start_new_thread(self._main, ())

    def _main(self) -> None:
        self.native_id = threading.get_native_id()
        try:
            self.run()
        finally:
            self.alive = False
            _alive.discard(self)

    def run(self) -> None:
        chan, lock = self.chan, self.lock
        pending, fd = chan.pending, chan.fd
        popleft = pending.popleft
        write = os.eventfd_write
        order = sys.byteorder
        while True:
            try:
                woken = int.from_bytes(os.read(fd, 8), order)  # sleeps (the GIL released)
            except OSError:
                return  # closed under us (a fork's child): nothing is ours to write
            chan.kicked = False  # a signal from now on kicks again
            # Everything queued, in one go: the GIL is taken once per write, not per wake-up.
            while pending:
                item = popleft()
                if isinstance(item, _Box):
                    self._close_box(item)
                    continue
                intr = item
                with lock:
                    intr._queued = False  # a signal from now on queues another write
                    wfd = intr._fd
                    if intr._closed or intr._stuck or wfd < 0:
                        continue
                    intr._inflight = True
                    self.inflight = intr
                    self.seq += 1
                try:
                    write(wfd, 1)
                except OSError:
                    pass  # EAGAIN, a full counter: the peer has interrupts pending anyway
                with lock:
                    self.inflight = None
                    intr._inflight = False
                    if intr._closed:
                        intr._close_fd()
                    if self.replaced:
                        return  # the channel is the replacement worker's now
            if woken >= _EXIT:  # told to exit, by a write that is over: nothing follows it
                self._exit()
                return

    def _close_box(self, box: _Box) -> None:
        """The signaller was collected: close its interrupts' fds."""
        with self.lock:
            close_fds(list(box.fds))  # one already closed does not keep the others open
            box.fds.clear()

    def _exit(self) -> None:
        """Retired, or the signaller collected: close the channel's wake-up eventfd."""
        with self.lock:
            fd, self.chan.fd = self.chan.fd, -1
            close_fds([fd])


class _Box:
    """What outlives a signaller: its current channel and the fds of its open
    interrupts.  A loop closed while links were up (``asyncio.run()`` returning with
    an interface not deleted) never closes those interrupts; once the signaller, the
    loop and the interrupts are garbage, a finalizer puts the box in the channel and
    the worker closes the fds and exits.  No thread wakes up to look."""

    __slots__ = ("__weakref__", "chan", "fds")

    def __init__(self) -> None:
        self.chan: _Channel | None = None
        self.fds: set[int] = set()


def _collected(box: _Box) -> None:
    chan = box.chan
    if chan is not None and chan.fd >= 0:
        chan.tell_exit(box)


class _Signaller:
    """The signaller of one event loop: a channel, one live worker thread (plus
    abandoned ones stuck in a write), a watchdog timer armed only while work is
    outstanding, and the drain of stuck eventfds."""

    #: weak both ways: the interrupts (and the loop's timers) keep a signaller alive,
    #: and nothing here keeps a loop that its owner dropped
    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.ref[_Signaller]] = (
        weakref.WeakKeyDictionary())

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Signaller:
        ref = cls._by_loop.get(loop)
        sig = ref() if ref is not None else None
        if sig is None:
            sig = cls(loop)
            cls._by_loop[loop] = weakref.ref(sig)
        return sig

    @classmethod
    def current(cls, loop: asyncio.AbstractEventLoop) -> _Signaller | None:
        """The signaller in use on ``loop``, if any."""
        ref = cls._by_loop.get(loop)
        return ref() if ref is not None else None

    def _forget(self) -> None:
        if self.current(self.loop) is self:
            del self._by_loop[self.loop]

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.box = _Box()
        #: the current worker's channel (a fresh one with each new worker after a retire)
        self.chan = _Channel()
        self.box.chan = self.chan
        weakref.finalize(self, _collected, self.box)
        self.lock = threading.Lock()
        self.users = 0
        self.interrupts: set[Interrupt] = set()  # open ones
        self.worker: _Worker | None = None
        self.workers: list[_Worker] = []
        self.timer: asyncio.TimerHandle | None = None
        self.due = 0.0
        self.stuck: list[Interrupt] = []
        self.drain_timer: asyncio.TimerHandle | None = None
        self.buf = bytearray(8)

    def opened(self, intr: Interrupt) -> None:
        self.users += 1
        self.interrupts.add(intr)
        if self.worker is None:
            if self.chan.fd < 0:  # retired: the old worker closed its channel
                self.chan = self.box.chan = _Channel()
            self.worker = _Worker(self)
            self.workers.append(self.worker)

    def closed(self, intr: Interrupt) -> None:
        self.users -= 1
        self.interrupts.discard(intr)
        if self.users == 0:
            self._retire()

    def _retire(self) -> None:
        """No Interrupt left: the worker exits, the loop forgets us (once no
        stuck fd is left to drain)."""
        if self.worker is not None:
            self.worker.retired = True
            self.worker = None
            # it exits and closes the channel (once through a stuck write, if it is in
            # one); a later worker gets a channel of its own
            self.chan.tell_exit()
            self.chan = self.box.chan = _Channel(live=False)
        busy = any(w.inflight is not None for w in self.workers)
        if self.timer is not None and not busy:  # a write in flight is still watched
            self.timer.cancel()
            self.timer = None
        if not self.stuck and not busy:
            self._forget()

    # --- the watchdog -------------------------------------------------------------
    def arm(self) -> None:
        self.due = self.loop.time() + _CHECK
        self.timer = self.loop.call_later(_CHECK, self._check)

    def _check(self) -> None:
        self.timer = None
        # A late timer means the loop itself stalled (code holding the GIL): no verdict.
        on_time = self.loop.time() - self.due < _CHECK / 2
        outstanding = bool(self.chan.pending)
        verdicts: list[Interrupt] = []
        if not self.lock.acquire(blocking=False):  # a worker holds it: look again soon
            self.arm()
            return
        try:
            self.workers = [w for w in self.workers if w.alive]
            for w in self.workers:
                intr = w.inflight
                if intr is None or w.abandoned:
                    w.seen, w.strikes = -1, 0
                    continue
                outstanding = True
                if not on_time:
                    continue
                if w.seen != w.seq:
                    w.seen, w.strikes = w.seq, 0
                    continue
                w.strikes += 1
                full = counter(intr._fd) == COUNTER_MAX
                if full or w.strikes >= _GIVE_UP:
                    w.abandoned = True
                    intr._stuck = True
                    self.stuck.append(intr)
                    verdicts.append(intr)
                    if w is self.worker:
                        w.replaced = True
                        self.worker = _Worker(self)
                        self.workers.append(self.worker)
                        self.chan.kick()  # what the stuck one had not taken is the new one's
        finally:
            self.lock.release()
        if verdicts and self.drain_timer is None:
            self.drain_timer = self.loop.call_later(_DRAIN_EVERY, self._drain)
        if outstanding and (self.users or self.workers):
            self.arm()
        elif self.users == 0 and not self.stuck:
            self._forget()
        for intr in verdicts:
            exc = StuckEventfd(errno.EAGAIN, f"the peer blocked the interrupt eventfd (a write "
                               f"did not complete in {_CHECK:g} s)")
            try:
                intr._on_stuck(exc)
            except Exception:  # the watchdog must survive its callbacks
                log.exception("on_stuck callback failed")

    def _drain(self) -> None:
        """Empty the stuck counters, so that their abandoned writers get through."""
        self.drain_timer = None
        if not self.lock.acquire(blocking=False):  # a worker holds it: drain soon
            self.drain_timer = self.loop.call_later(_DRAIN_EVERY, self._drain)
            return
        try:
            left = []
            for intr in self.stuck:
                if intr._inflight and intr._fd >= 0:
                    try:
                        _read(intr._fd, self.buf)
                    except StuckEventfd:
                        pass  # no RWF_NOWAIT and blocking: wait for the peer to relent
                    left.append(intr)
            self.stuck = left
        finally:
            self.lock.release()
        if left:
            self.drain_timer = self.loop.call_later(_DRAIN_EVERY, self._drain)
        elif self.users == 0:
            self._retire()


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's threads: start afresh (a worker for
    every signaller still in use, no abandoned thread, no stuck fd to drain)."""
    _alive.clear()
    for ref in list(_Signaller._by_loop.values()):
        sig = ref()
        if sig is None:
            continue
        sig.lock = threading.Lock()
        if sig.chan.fd >= 0:  # the parent's: its worker reads it, not ours
            os.close(sig.chan.fd)
        sig.chan = sig.box.chan = _Channel(live=sig.users > 0)
        sig.workers, sig.worker, sig.stuck = [], None, []
        for intr in sig.interrupts:
            intr._queued = intr._inflight = False
        if sig.users:
            sig.worker = _Worker(sig)
            sig.workers.append(sig.worker)


os.register_at_fork(after_in_child=_after_fork_in_child)


#: workers whose thread has not exited
_alive: set[_Worker] = set()


def threads() -> int:
    """Signaller threads alive in this process (for tests and ``show``)."""
    return len(_alive)


def settle(timeout: float = 2.0) -> bool:
    """Wait until every signaller thread told to exit has exited (and closed its
    fds); True if they all did within ``timeout`` seconds.  For leak checks, on a
    thread that runs no event loop: the last link's close tells its thread to exit,
    and the thread closes its wake-up eventfd a moment later."""
    deadline = time.monotonic() + timeout
    while any(w.retired and w.alive for w in list(_alive)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True
