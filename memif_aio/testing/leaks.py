"""Leak probes and one leak guard: fds, memfd mappings, child processes, DPDK runtime dirs.

The pytest plugin's fixtures (:mod:`memif_aio.testing.plugin`) and the project's own test
suite (``tests/conftest.py`` ``no_leaks``, the strict per-test and per-example guards of the
protocol and fuzz tests) check with this same code.

* :func:`open_fds`, :func:`memfd_mappings`, :func:`child_processes`,
  :func:`dpdk_runtime_dirs` read ``/proc`` (Linux only).
* :class:`LeakGuard` takes a snapshot of all four and, at :meth:`LeakGuard.check`, raises
  :class:`AssertionError` naming what is new.  ``strict=False`` (the default) counts only
  the fds memif_aio creates (memfds, eventfds, ``SOCK_SEQPACKET`` sockets), so that an event
  loop's own fds (epoll, self-pipe), which close with the loop after the test, do not count.

Importing this module changes nothing in the process.
"""

from __future__ import annotations

import gc
import glob
import os
import socket
from types import TracebackType

__all__ = [
    "LeakGuard",
    "child_processes",
    "describe_fd",
    "describe_process",
    "dpdk_runtime_dirs",
    "is_memif_fd",
    "memfd_mappings",
    "open_fds",
]


def open_fds() -> set[int]:
    """Open fds of this process (not counting the one listdir itself used)."""
    fds = set()
    for n in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(n))
        except OSError:
            continue
        fds.add(int(n))
    return fds


def memfd_mappings() -> int:
    """Mappings of memfd regions (ours or a peer's) in this process."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:" in line)


def child_processes() -> set[int]:
    """pids of this process's children, zombies (not yet reaped) included."""
    me = os.getpid()
    kids = set()
    for n in os.listdir("/proc"):
        if not n.isdigit():
            continue
        try:
            with open(f"/proc/{n}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == me:
            kids.add(int(n))
    return kids


def describe_process(pid: int) -> str:
    """``pid (command line)``, for a message."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return f"{pid} ({cmd or 'zombie or gone'})"


def describe_fd(fd: int) -> str:
    """``fd->target`` (``/proc/self/fd``), for a message."""
    try:
        return f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return str(fd)


def dpdk_runtime_dirs(pid: int | None = None) -> set[str]:
    """DPDK runtime directories of the testpmds that process ``pid`` (default: this one)
    started through :mod:`memif_aio.testing.testpmd` (``--file-prefix=memif_aio_<pid>_...``)."""
    from memif_aio.testing.testpmd import runtime_dir

    pid = os.getpid() if pid is None else pid
    return set(glob.glob(runtime_dir(f"memif_aio_{pid}_*")))


def is_memif_fd(fd: int) -> bool:
    """True for the kinds of fd memif_aio creates: memfds, eventfds and ``SOCK_SEQPACKET``
    sockets (not event loop internals such as epoll, uvloop's pipes or asyncio's
    self-pipe socketpair)."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    if target.startswith("/memfd:") or target == "anon_inode:[eventfd]":
        return True
    if target.startswith("socket:"):
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            return False
        try:
            return s.type == socket.SOCK_SEQPACKET
        finally:
            s.close()
    return False


class LeakGuard:
    """A snapshot of fds, memfd mappings, child processes and DPDK runtime directories;
    :meth:`check` fails with what is new since.

    ``strict``: every new fd counts (default: only the kinds :func:`is_memif_fd` names).
    ``exact_mappings``: the mapping count must be equal again (default: not larger; a peer's
    mapping that was there before may go).  ``processes``/``dpdk``: check those too.
    ``collect``: ``gc.collect()`` before the snapshot and before the check (default); with
    ``collect=False`` the check collects only when something looks leaked, so that only
    reference cycles may excuse it (cheap enough for each hypothesis example).

    Usable as a context manager: the check runs at a normal exit, not when the body raised
    (the body's error is the one to report)::

        with LeakGuard(strict=True):
            ...
    """

    def __init__(self, *, strict: bool = False, exact_mappings: bool = False,
                 processes: bool = True, dpdk: bool = True, collect: bool = True) -> None:
        self.strict = strict
        self.exact_mappings = exact_mappings
        self.processes = processes
        self.dpdk = dpdk
        self.collect = collect
        self.snapshot()

    def snapshot(self) -> None:
        """Take (or take again) the snapshot the check compares with."""
        if self.collect:
            gc.collect()
        self.fds = open_fds()
        self.mappings = memfd_mappings()
        self.kids = child_processes() if self.processes else set()
        self.dirs = dpdk_runtime_dirs() if self.dpdk else set()

    def _fds(self) -> set[int]:
        new = open_fds() - self.fds
        return new if self.strict else {fd for fd in new if is_memif_fd(fd)}

    def _mappings_ok(self) -> bool:
        now = memfd_mappings()
        return now == self.mappings if self.exact_mappings else now <= self.mappings

    def problems(self) -> list[str]:
        """What is new since the snapshot, one line a kind (empty: nothing leaked)."""
        if self.collect:
            gc.collect()
        fds = self._fds()
        if not self.collect and (fds or not self._mappings_ok()):
            gc.collect()  # only reference cycles may excuse it
            fds = self._fds()
        if fds:
            from .. import eventfd  # imported only now: importing this module changes nothing

            if eventfd.settle():  # a retired signaller thread closing its wake-up eventfd
                fds = self._fds()
        out = []
        if fds:
            out.append(f"leaked fds: {[describe_fd(fd) for fd in sorted(fds)]}")
        if not self._mappings_ok():
            out.append(f"memfd mappings left behind ({self.mappings} before, "
                       f"{memfd_mappings()} now)")
        if self.processes:
            kids = child_processes() - self.kids
            if kids:
                out.append("child processes left behind: "
                           f"{[describe_process(p) for p in sorted(kids)]}")
        if self.dpdk:
            dirs = dpdk_runtime_dirs() - self.dirs
            if dirs:
                out.append(f"DPDK runtime directories left behind: {sorted(dirs)}")
        return out

    def check(self) -> None:
        """Raise :class:`AssertionError` naming everything new since the snapshot."""
        problems = self.problems()
        if problems:
            raise AssertionError("; ".join(problems))

    def __enter__(self) -> LeakGuard:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.check()
