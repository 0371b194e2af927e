"""Interrupt eventfds shared with a peer that may be hostile.

``O_NONBLOCK`` belongs to the open file description, which SCM_RIGHTS shares
with the peer: a peer can make "our" eventfd blocking at any time, then empty
it just before we read (the read blocks) or saturate it just before we write
(the write blocks), and so freeze the event loop.  These helpers make sure the
loop thread never blocks on such an fd:

* :func:`drain` reads with ``preadv2(RWF_NOWAIT)``, which never blocks whatever
  the file flags say (Linux 5.12+; older kernels fall back to a flag check);
* :func:`signal` refuses a blocking fd (a protocol violation), and a watchdog
  thread un-sticks a write that blocks anyway (the peer won the race between
  the flag check and the write) by draining the counter; the caller then sees
  :class:`StuckEventfd` and disconnects.
"""

from __future__ import annotations

import errno
import os
import threading
import time

_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_nowait_works = bool(_NOWAIT)
_STUCK_AFTER = 0.2  # seconds a write may block before the watchdog drains the counter


class StuckEventfd(OSError):
    """The peer made an interrupt eventfd block us (a protocol violation)."""


def drain(fd: int, buf: bytearray) -> None:
    """Reset the eventfd counter if it is set; never blocks."""
    global _nowait_works
    if _nowait_works:
        try:
            os.preadv(fd, [buf], -1, _NOWAIT)
            return
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                return  # closed or broken: nothing to drain
            _nowait_works = False
    if os.get_blocking(fd):
        raise StuckEventfd(errno.EAGAIN, "the peer made the interrupt eventfd blocking")
    try:
        os.read(fd, 8)
    except OSError:
        pass


def signal(fd: int) -> None:
    """Add 1 to the eventfd counter; never blocks the caller for long.

    Raises :class:`StuckEventfd` when the peer made the fd blocking.  A full
    (non-blocking) counter is fine: the peer has interrupts pending anyway.
    """
    if os.get_blocking(fd):
        raise StuckEventfd(errno.EAGAIN, "the peer made the interrupt eventfd blocking")
    token = _watchdog.arm(fd)
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:
        pass
    finally:
        stuck = _watchdog.disarm(token)
    if stuck:
        raise StuckEventfd(errno.EAGAIN, "the peer blocked the interrupt eventfd")


class _Watchdog:
    """One daemon thread, started on first use, that drains eventfds whose write hangs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[int, float]] = {}
        self._stuck: set[int] = set()
        self._next = 0
        self._thread: threading.Thread | None = None
        self._buf = bytearray(8)

    def arm(self, fd: int) -> int:
        with self._lock:
            self._next += 1
            token = self._next
            self._armed[token] = (fd, time.monotonic())
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="memif_aio eventfd watchdog",
                                                daemon=True)
                self._thread.start()
        return token

    def disarm(self, token: int) -> bool:
        with self._lock:
            self._armed.pop(token, None)
            if token in self._stuck:
                self._stuck.discard(token)
                return True
        return False

    def _run(self) -> None:
        while True:
            time.sleep(_STUCK_AFTER / 2)
            now = time.monotonic()
            with self._lock:
                late = [(t, fd) for t, (fd, since) in self._armed.items()
                        if now - since > _STUCK_AFTER and t not in self._stuck]
                self._stuck.update(t for t, _ in late)
            for _t, fd in late:
                try:  # emptying the counter lets the blocked write complete
                    os.preadv(fd, [self._buf], -1, _NOWAIT) if _NOWAIT else os.read(fd, 8)
                except OSError:
                    pass


_watchdog = _Watchdog()
