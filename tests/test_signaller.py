"""The signaller (memif_aio/eventfd.py, transmit side): every signal gets through.

The loop thread hands each signal to a worker thread through a deque and a private
wake-up eventfd; the worker writes everything queued before it sleeps again.  These
tests pin what that hand-off must never lose: a signal after a read (no lost wake-up),
signals queued together, a worker that exits with its last interrupt and a new one that
starts, and the signals queued behind a write the peer made block (the replacement
worker writes them without waiting for another signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time

import pytest

from memif_aio import eventfd

pytestmark = pytest.mark.both_loops
T = 10.0


def _efd(blocking: bool = False) -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | (0 if blocking else os.EFD_NONBLOCK))


async def _read(fd: int, timeout: float = T) -> int:
    """The counter once it is set (reset by reading it)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(BlockingIOError):
            return os.eventfd_read(fd)
        if time.monotonic() > deadline:
            raise AssertionError(f"no signal on fd {fd} within {timeout} s")
        await asyncio.sleep(0.001)


def _pending(fd: int) -> int:
    """The counter now, without changing it (0: no signal)."""
    value = eventfd.counter(fd)
    assert value is not None
    return value


async def _retired() -> None:
    """Wait until the worker threads told to exit are gone."""
    deadline = time.monotonic() + T
    while not eventfd.settle(0):
        assert time.monotonic() < deadline, "a retired signaller thread is still alive"
        await asyncio.sleep(0.01)


async def test_every_signal_after_a_read_arrives(no_leaks: None) -> None:
    """Signal, see it, read it, signal again, 500 times: the flag that saves a kick of a
    worker already woken never swallows one (a lost wake-up would hang a round)."""
    fds = [_efd(), _efd()]
    intrs = [eventfd.Interrupt(fd, lambda exc: None) for fd in fds]
    try:
        for i in range(500):
            intr, fd = intrs[i % 2], fds[i % 2]
            intr.signal()
            assert await _read(fd) == 1
            if i % 50 == 0:
                await asyncio.sleep(0)  # sometimes the worker is asleep, sometimes not
    finally:
        for intr in intrs:
            intr.close()
        for fd in fds:
            os.close(fd)
    await _retired()


async def test_signals_queued_together_are_all_written(no_leaks: None) -> None:
    """Sixteen interrupts signalled in one go, twice each: every peer gets its signal,
    a signal already queued is not queued twice (each peer gets 1 or, if the worker
    took the first before the second came, 2, never more), and nothing is left queued."""
    fds = [_efd() for _ in range(16)]
    intrs = [eventfd.Interrupt(fd, lambda exc: None) for fd in fds]
    try:
        for _ in range(3):
            for intr in intrs:
                intr.signal()
                intr.signal()
            counts = [await _read(fd) for fd in fds]
            sig = eventfd._Signaller.current(asyncio.get_running_loop())
            assert sig is not None
            deadline = time.monotonic() + T
            while sig.chan.pending or any(i._queued for i in intrs):
                assert time.monotonic() < deadline, "signals left queued"
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.01)
            totals = [c + _pending(fd) for c, fd in zip(counts, fds)]
            assert all(t in (1, 2) for t in totals), totals
            for fd in fds:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(fd)
    finally:
        for intr in intrs:
            intr.close()
        for fd in fds:
            os.close(fd)
    await _retired()


async def test_a_signaller_starts_again_after_its_last_interrupt_closed(
        no_leaks: None) -> None:
    """The last interrupt's close tells the worker to exit (it closes its wake-up
    eventfd); a later interrupt on the same loop gets a new worker and channel, and a
    signal of a closed interrupt writes nothing."""
    for _ in range(3):
        fd = _efd()
        intr = eventfd.Interrupt(fd, lambda exc: None)
        try:
            intr.signal()
            assert await _read(fd) == 1
        finally:
            intr.close()
        intr.signal()  # closed: nothing queued, nothing written
        await _retired()
        assert _pending(fd) == 0
        os.close(fd)


async def test_signals_behind_a_blocked_write_get_through(no_leaks: None) -> None:
    """A write the peer made block (a blocking eventfd with a full counter) holds its
    worker; the signals queued behind it, with no signal after them, are written by the
    replacement worker; the blocked link is told (on_stuck), and once its counter is
    drained the abandoned thread gets through and exits."""
    loop = asyncio.get_running_loop()
    stuck_fd = _efd(blocking=True)
    os.eventfd_write(stuck_fd, eventfd.COUNTER_MAX)  # full: a write of 1 blocks
    others = [_efd() for _ in range(3)]
    told: list[eventfd.StuckEventfd] = []
    stuck = eventfd.Interrupt(stuck_fd, told.append, loop)
    intrs = [eventfd.Interrupt(fd, lambda exc: None, loop) for fd in others]
    try:
        stuck.signal()  # first in the queue: the worker blocks in its write
        for intr in intrs:
            intr.signal()
        for fd in others:
            assert await _read(fd) == 1
        deadline = time.monotonic() + T
        while not told:
            assert time.monotonic() < deadline, "the blocked write was never reported"
            await asyncio.sleep(0.01)
        assert isinstance(told[0], eventfd.StuckEventfd)
        for intr in intrs:  # the replacement keeps signalling
            intr.signal()
        for fd in others:
            assert await _read(fd) == 1
    finally:
        stuck.close()
        for intr in intrs:
            intr.close()
    # the watchdog drains the stuck counter: the abandoned write completes, its thread exits
    deadline = time.monotonic() + T
    while eventfd.threads() and any(w.abandoned and w.alive for w in list(eventfd._alive)):
        assert time.monotonic() < deadline, "the abandoned thread never got through"
        await asyncio.sleep(0.01)
    await _retired()
    os.close(stuck_fd)
    for fd in others:
        os.close(fd)


async def test_the_last_close_never_meets_a_worker_still_awake(
        monkeypatch: pytest.MonkeyPatch, no_leaks: None) -> None:
    """The worker may still be emptying its queue when the last interrupt closes and the
    loop tells it to exit.  The loop's wake-up write must never come after the worker
    closed its wake-up eventfd: that was EBADF on the loop thread, in the middle of a
    link's teardown (or, had the fd number been reused meanwhile, a write into someone
    else's fd).  The loop thread's wake-up writes are slowed down here (the GIL is
    released as they start, as in the real syscall) so that the worker always runs
    in between."""
    real = os.eventfd_write
    loop_thread = threading.get_ident()
    loop_writes: list[int] = []

    def slow_on_the_loop(fd: int, value: int) -> None:
        if threading.get_ident() == loop_thread:
            loop_writes.append(fd)
            time.sleep(0.02)  # the worker runs now, as it may before a syscall starts
        real(fd, value)

    monkeypatch.setattr(os, "eventfd_write", slow_on_the_loop)
    fd = _efd()
    try:
        for _ in range(5):
            intr = eventfd.Interrupt(fd, lambda exc: None)
            intr.signal()  # wakes the worker, which empties its queue during what follows
            intr.close()  # the last one: the worker is told to exit (a write on the loop)
            await _retired()
    finally:
        os.close(fd)
    assert len(loop_writes) >= 10  # the slowed writes did happen: a wake-up and an exit each
