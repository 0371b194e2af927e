"""Worker processes: one interface's queue pairs spread over several processes (cores).

Python's GIL keeps one process on one core.  A :class:`WorkerPool` keeps the control
channel (the :class:`~memif_aio.Socket` and :class:`~memif_aio.Interface`) in the process
that created it, the *owner*, and hands queue pair ``q`` of every connection to a worker
process.  Each worker maps the connection's regions, builds its own
:class:`~memif_aio.RxQueue`/:class:`~memif_aio.TxQueue` over the same rings (the same ring
classes, so the same validation of everything the peer writes), and runs the user's
``async def handler(rx, tx, *args)`` on its own event loop.

How (docs/workers.md has the whole story):

* Workers are started with :mod:`subprocess` (``python -m memif_aio.workers``): a fresh
  interpreter, never a fork of a process with a running loop and threads.  Each keeps one
  end of a ``SOCK_SEQPACKET`` socketpair; the owner the other.
* On every "up" of the interface the owner *parks* the queue pairs it hands over (its own
  queue objects stop listening to their interrupt eventfd and are never used) and sends each
  worker one message: the ring geometry as JSON, and with ``SCM_RIGHTS`` the fds of every
  region and of the pair's two eventfds.  A master owner no longer holds the region fds (it
  closes a peer's fd once mapped), so it reopens each of its mappings through
  ``/proc/self/map_files`` (root or ``CAP_SYS_ADMIN``; see docs/workers.md).
* On "down" each worker gets a message: its queues raise :class:`~memif_aio.Disconnected`, the
  handler's task ends (it is cancelled after ``stop_timeout``), the worker unmaps and closes
  everything of that connection, says so, and waits for the next "up".
* A protocol violation found by a worker's ring is sent to the owner, which disconnects the
  link with that reason (as it would for one of its own queues).
* A worker that exits (crash, kill) is reported as a :class:`WorkerEvent` ``"exited"``; the
  link stays up and the other workers go on.  Its queue pair stays parked.
* When the owner goes away (closed, killed), every worker reads EOF on its socket and exits.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import ctypes
import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import RxMode
from .errors import Disconnected, MemifError, ProtocolViolation
from .eventfd import check_peer_eventfd, close_fds
from .events import DEFAULT_MAXSIZE, Subscription, end_all, publish
from .memory import Region
from .queue import RxQueue, TxQueue
from .ring import (
    M2SConsumer,
    M2SProducer,
    S2MConsumer,
    S2MProducer,
    check_ring_geometry,
)
from .wire import RingLayout

if TYPE_CHECKING:
    from .interface import Interface
    from .link import Link

__all__ = ["WorkerEvent", "WorkerInfo", "WorkerPool"]

log = logging.getLogger("memif_aio")

#: largest control message between owner and worker (ring geometry as JSON)
_MSG_MAX = 1 << 20
#: fds one message may carry: every region of a connection, and two eventfds
_MAX_FDS = 512
_FDSIZE = array.array("i").itemsize
_ANCBUF = socket.CMSG_SPACE(_MAX_FDS * _FDSIZE)

Handler = Callable[..., Any]


@dataclass(frozen=True)
class WorkerEvent:
    """Something that happened to a worker, as delivered by :meth:`WorkerPool.events`.

    ``kind``:

    * ``"attached"``: the worker mapped connection ``connection``'s memory and its handler runs;
    * ``"finished"``: its handler ended for that connection: ``result`` is what it returned
      (JSON-serialisable, else its ``repr``), ``error`` the traceback if it raised something
      other than :class:`~memif_aio.Disconnected`; ``rx_packets``/``tx_packets`` the worker's
      queue counters for the connection;
    * ``"released"``: the worker unmapped and closed everything of that connection;
    * ``"exited"``: the worker process ended (``returncode``); the link stays up.
    """

    kind: str
    worker: int  #: the worker's index in the pool
    qid: int  #: the queue pair it drives
    pid: int
    connection: int = 0  #: the owner's count of connections (1 for the first "up")
    result: Any = None
    error: str = ""
    rx_packets: int = 0
    tx_packets: int = 0
    returncode: int | None = None
    time: float = 0.0


@dataclass(frozen=True)
class WorkerInfo:
    """A snapshot of one worker (:meth:`WorkerPool.get_workers`)."""

    index: int
    qid: int
    pid: int
    alive: bool
    connection: int  #: the connection it drives now (0: none)
    returncode: int | None


def handler_name(handler: Handler | str) -> str:
    """``"module:qualname"`` of an importable function (what a worker imports)."""
    if isinstance(handler, str):
        if ":" not in handler:
            raise ValueError(f"handler {handler!r} is not 'module:function'")
        return handler
    mod = getattr(handler, "__module__", None)
    qual = getattr(handler, "__qualname__", None)
    if not mod or not qual or "<" in qual:
        raise ValueError(f"handler {handler!r} is not an importable module-level function")
    if mod == "__main__":  # run with ``python -m pkg.mod``: the module has a real name
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name and spec.name != "__main__":
            return f"{spec.name}:{qual}"
        raise ValueError("the handler must live in an importable module, not __main__ "
                         "(the worker is a fresh interpreter, as with multiprocessing spawn)")
    return f"{mod}:{qual}"


def _resolve(name: str) -> Handler:
    mod, _, qual = name.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{name} is not callable")
    return obj  # type: ignore[no-any-return]


# --- messages ------------------------------------------------------------------------------
def _send(sock: socket.socket, msg: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(msg).encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def _recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message (None at EOF) and its fds; raises BlockingIOError when none is ready."""
    data, anc, flags, _ = sock.recvmsg(_MSG_MAX, _ANCBUF)
    fds: list[int] = []
    for level, ctype, cdata in anc:
        if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
            usable = len(cdata) - len(cdata) % _FDSIZE
            fds.extend(array.array("i", cdata[:usable]))
    if not data:
        close_fds(fds)
        return None, []
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        close_fds(fds)
        raise MemifError("worker message truncated")
    return json.loads(data), fds


def _offsets(values: Sequence[int]) -> list[int]:
    """Slot buffer offsets, compact when they are evenly spaced: ``[first, stride, count]``."""
    n = len(values)
    if n >= 2:
        stride = values[1] - values[0]
        if all(values[i] == values[0] + i * stride for i in range(n)):
            return [values[0], stride, n]
    return [-1, *values]


def _unpack_offsets(packed: Sequence[int]) -> list[int]:
    if packed and packed[0] == -1:
        return list(packed[1:])
    first, stride, n = packed
    return [first + i * stride for i in range(n)]


def _mapping_fd(region: Region) -> int:
    """An fd of the file behind ``region``: its own if it still has one (a dup), else the
    file of its mapping, reopened through ``/proc/self/map_files``."""
    if region.fd >= 0:
        return os.dup(region.fd)
    buf = ctypes.c_char.from_buffer(region.mm)
    try:
        start = ctypes.addressof(buf)
    finally:
        del buf
    with open("/proc/self/maps") as maps:
        for line in maps:
            lo, _, rest = line.partition("-")
            if int(lo, 16) == start:
                hi = rest.split(" ", 1)[0]
                return os.open(f"/proc/self/map_files/{lo}-{hi}", os.O_RDWR | os.O_CLOEXEC)
    raise MemifError("region mapping not found in /proc/self/maps")


# --- the owner's side ----------------------------------------------------------------------
class _Worker:
    """The owner's view of one worker process."""

    def __init__(self, index: int, qid: int, proc: subprocess.Popen[bytes],
                 sock: socket.socket) -> None:
        self.index = index
        self.qid = qid
        self.proc = proc
        self.sock = sock
        self.alive = True
        self.ready = asyncio.get_running_loop().create_future()
        self.connection = 0  # the connection it was told about last (0: down)
        self.released: asyncio.Event = asyncio.Event()
        self.released.set()
        self.reaper: asyncio.Task[None] | None = None


class WorkerPool:
    """Spread ``interface``'s queue pairs over ``workers`` processes.

    ``handler``: ``async def handler(rx, tx, *handler_args)``, an importable module-level
    function (or its ``"module:function"`` name).  Worker ``k`` drives queue pair
    ``queues[k]`` (default ``k``): ``rx`` is its :class:`~memif_aio.RxQueue`, ``tx`` its
    :class:`~memif_aio.TxQueue` (None when the connection has no such queue).  It runs once per
    connection; :class:`~memif_aio.Disconnected` ends it quietly when the link goes down.  A
    connection with fewer queue pairs than ``queues[k] + 1`` leaves worker ``k`` idle.
    ``handler_args`` must be JSON-serialisable.

    ``loop`` is the workers' event loop (``"asyncio"`` or ``"uvloop"``); ``rx_mode`` and
    ``tx_timeout`` their queues' (the interface's arguments apply to the queues the owner
    drives itself).  ``cpus[k]``: the CPUs worker ``k`` may run on (``sched_setaffinity``);
    ``nice``: added to every worker's niceness.

    ``async with WorkerPool(itf, handler, 2) as pool:`` starts the workers (waits until each
    is ready) and closes the pool at the end.  Start it before or after the link comes up.
    The owner must not use the queues it handed over (they are parked); it may drive any
    other queue itself.
    """

    def __init__(self, interface: Interface, handler: Handler | str, workers: int = 2, *,
                 queues: Sequence[int] | None = None, handler_args: Sequence[Any] = (),
                 loop: str = "asyncio", rx_mode: RxMode = RxMode.INTERRUPT,
                 tx_timeout: float | None = None, cpus: Sequence[Sequence[int]] | None = None,
                 nice: int = 0, start_timeout: float = 30.0, stop_timeout: float = 5.0,
                 python: str | None = None) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        qids = list(range(workers)) if queues is None else [int(q) for q in queues]
        if len(qids) != workers or len(set(qids)) != workers or min(qids) < 0:
            raise ValueError("queues: one distinct queue pair index per worker")
        if loop not in ("asyncio", "uvloop"):
            raise ValueError("loop must be 'asyncio' or 'uvloop'")
        if cpus is not None and len(cpus) != workers:
            raise ValueError("cpus: one CPU set per worker")
        self._itf = interface
        self._handler = handler_name(handler)
        self._qids = qids
        self._args = json.loads(json.dumps(list(handler_args)))  # fails early if it cannot go
        self._loop_name = loop
        self._rx_mode = RxMode(rx_mode)
        self._tx_timeout = tx_timeout
        self._cpus = [sorted(c) for c in cpus] if cpus is not None else None
        self._nice = nice
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._python = python or sys.executable
        self._workers: list[_Worker] = []
        self._subscribers: list[Subscription[WorkerEvent]] = []
        self._watch: asyncio.Task[None] | None = None
        self._link: Link | None = None  # the connection the workers were told about
        self._connection = 0
        self._started = False
        self._closed = False

    # --- surface --------------------------------------------------------------------------
    def get_interface(self) -> Interface:
        return self._itf

    def get_queues(self) -> list[int]:
        """The queue pair index of each worker (by worker index)."""
        return list(self._qids)

    def get_workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(w.index, w.qid, w.proc.pid, w.alive, w.connection,
                           w.proc.returncode) for w in self._workers]

    def get_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def events(self, maxsize: int = DEFAULT_MAXSIZE) -> Subscription[WorkerEvent]:
        """``async for ev in pool.events()``: :class:`WorkerEvent` s from the moment of the
        call (bounded like :meth:`Interface.events`); ends when the pool closes."""
        sub: Subscription[WorkerEvent] = Subscription(self._subscribers, maxsize)
        if self._closed:
            sub._end()
        return sub

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        alive = sum(w.alive for w in self._workers)
        return f"<WorkerPool of interface {self._itf.get_id()}: {alive}/{len(self._qids)} alive>"

    async def start(self) -> None:
        """Start the workers, wait until each is ready, then follow the interface's link."""
        if self._started:
            raise RuntimeError("already started")
        if self._itf.is_deleted():
            raise MemifError("the interface is deleted")
        self._started = True
        loop = asyncio.get_running_loop()
        try:
            for k, qid in enumerate(self._qids):
                self._workers.append(self._spawn(k, qid))
            async with asyncio.timeout(self._start_timeout):
                for w in self._workers:
                    await w.ready
        except BaseException:
            await self.close()
            raise
        self._watch = loop.create_task(self._follow(self._itf.events()),
                                       name=f"memif_aio workers of {self._itf.get_id()}")

    def _spawn(self, index: int, qid: int) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cfg = {"fd": theirs.fileno(), "handler": self._handler, "args": self._args,
               "index": index, "qid": qid, "loop": self._loop_name,
               "rx_mode": self._rx_mode.name, "tx_timeout": self._tx_timeout,
               "interface_id": self._itf.get_id(), "sys_path": sys.path,
               "stop_timeout": self._stop_timeout,
               "cpus": self._cpus[index] if self._cpus is not None else None,
               "nice": self._nice}
        try:
            proc = subprocess.Popen([self._python, "-m", "memif_aio.workers", json.dumps(cfg)],
                                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                    close_fds=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        w = _Worker(index, qid, proc, ours)
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable, w)
        return w

    async def close(self) -> None:
        """Tell every worker to stop (its handler ends with Disconnected), wait for them
        (``stop_timeout``, then SIGKILL), reap them and close the sockets.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for w in self._workers:
            if w.alive:
                with contextlib.suppress(OSError):
                    _send(w.sock, {"op": "exit"})
        deadline = time.monotonic() + self._stop_timeout + 1.0
        for w in self._workers:
            while w.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if w.proc.poll() is None:
                log.warning("worker %d (pid %d) did not stop: killing it", w.index, w.proc.pid)
                w.proc.kill()
                w.proc.wait()
            self._dead(w)
        for w in self._workers:
            if w.reaper is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await w.reaper
        self._link = None
        end_all(self._subscribers)

    # --- following the link -----------------------------------------------------------------
    async def _follow(self, sub: Subscription[Any]) -> None:
        try:
            self._reconcile("")
            async for ev in sub:
                self._reconcile(getattr(ev, "reason", ""), getattr(ev, "by_peer", False))
            self._reconcile("interface deleted")  # the interface is gone: workers go idle
        finally:
            sub.close()

    def _reconcile(self, reason: str, by_peer: bool = False) -> None:
        """Tell the workers about the link the interface has now (down, then up)."""
        link = self._itf._established_link()
        if link is self._link:
            return
        if self._link is not None:
            for w in self._workers:
                self._tell_down(w, reason or "link down", by_peer)
            self._link = None
        if link is not None and not link.is_down:
            self._link = link
            self._connection += 1
            for w in self._workers:
                self._tell_up(w, link)

    def _tell_down(self, w: _Worker, reason: str, by_peer: bool) -> None:
        if not w.alive or not w.connection:
            return
        with contextlib.suppress(OSError):
            _send(w.sock, {"op": "down", "connection": w.connection, "reason": reason,
                           "by_peer": by_peer})
        w.connection = 0

    def _tell_up(self, w: _Worker, link: Link) -> None:
        if not w.alive:
            return
        session = link.session
        rxq = link.rx_queues[w.qid] if w.qid < len(link.rx_queues) else None
        txq = link.tx_queues[w.qid] if w.qid < len(link.tx_queues) else None
        if rxq is None and txq is None:
            return
        loop = asyncio.get_running_loop()
        if rxq is not None:  # parked: the owner's queue object never reads its interrupts
            loop.remove_reader(rxq.get_event_fd())
        msg: dict[str, Any] = {
            "op": "up", "connection": self._connection, "is_master": session.is_master,
            "cache_line": session.cache_line_size, "log2": session.log2_ring_size,
            "buffer_size": session.buffer_size,
            "regions": [r.size for r in session.regions]}
        fds: list[int] = []
        opened: list[int] = []
        try:
            for r in session.regions:
                fd = _mapping_fd(r)
                opened.append(fd)
                fds.append(fd)
            for name, q, ring in (("rx", rxq, session.rx), ("tx", txq, session.tx)):
                if q is None:
                    msg[name] = None
                    continue
                rg = ring[w.qid]
                desc: dict[str, Any] = {"region": rg.region_index, "offset": rg.ring_offset,
                                        "fd": len(fds)}
                if isinstance(rg, (M2SConsumer, S2MProducer)):
                    desc["buffers"] = _offsets(rg.slot_offsets)
                msg[name] = desc
                fds.append(q.get_event_fd())
            _send(w.sock, msg, fds)
        except (OSError, MemifError) as exc:
            log.error("worker %d: cannot hand over queue pair %d: %s", w.index, w.qid, exc)
            return
        finally:
            close_fds(opened)
        w.connection = self._connection
        w.released.clear()

    # --- messages from workers --------------------------------------------------------------
    def _readable(self, w: _Worker) -> None:
        for _ in range(32):
            try:
                msg, fds = _recv(w.sock)
            except (BlockingIOError, InterruptedError):
                return
            except (OSError, ValueError, MemifError) as exc:
                log.error("worker %d: bad message: %s", w.index, exc)
                msg, fds = None, []
            close_fds(fds)  # workers send no fds
            if msg is None:
                self._lost(w)
                return
            self._message(w, msg)

    def _message(self, w: _Worker, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        conn = int(msg.get("connection", 0))
        if op == "ready":
            if not w.ready.done():
                w.ready.set_result(None)
            return
        if op == "violation":
            link = self._link
            if link is not None and conn == self._connection and conn == w.connection:
                link.protocol_violation(str(msg.get("reason", "")))
            return
        if op == "released":
            if conn == w.connection or not w.connection:
                w.released.set()
        if op in ("attached", "finished", "released"):
            self._publish(w, op, connection=conn, result=msg.get("result"),
                          error=str(msg.get("error") or ""),
                          rx_packets=int(msg.get("rx_packets", 0)),
                          tx_packets=int(msg.get("tx_packets", 0)))

    def _publish(self, w: _Worker, kind: str, **kw: Any) -> None:
        publish(self._subscribers, WorkerEvent(kind, w.index, w.qid, w.proc.pid,
                                               time=time.time(), **kw))

    def _lost(self, w: _Worker) -> None:
        """EOF from a worker: it is exiting (or has)."""
        asyncio.get_running_loop().remove_reader(w.sock.fileno())
        if w.alive and w.reaper is None and not self._closed:
            w.reaper = asyncio.get_running_loop().create_task(self._reap(w))

    async def _reap(self, w: _Worker) -> None:
        deadline = time.monotonic() + self._stop_timeout
        while w.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
        self._dead(w)

    def _dead(self, w: _Worker) -> None:
        if not w.alive:
            return
        w.alive = False
        w.connection = 0
        w.released.set()
        if not w.ready.done():
            w.ready.set_exception(MemifError(
                f"worker {w.index} exited before it was ready (code {w.proc.returncode})"))
            w.ready.exception()  # retrieved: start() reports it
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(w.sock.fileno())
        w.sock.close()
        if not self._closed:
            log.warning("worker %d (pid %d, queue pair %d) exited with code %s", w.index,
                        w.proc.pid, w.qid, w.proc.returncode)
        self._publish(w, "exited", returncode=w.proc.returncode)


# --- the worker's side ---------------------------------------------------------------------
class _AdoptedM2SConsumer(M2SConsumer):
    """A slave's receive ring taken over from the owner, as the owner left it.

    :class:`M2SConsumer`'s constructor starts a ring afresh (``head = 0``), but by the time a
    worker attaches the owner's handshake has already posted the buffers (§7.9) and the
    master may have filled some of them: writing ``head = 0`` would take posted buffers back
    (the master would see ``head`` run backwards).  So this one keeps the shared ``head``:
    the owner posted it and never read (its queue is parked), so the read cursor is 0.
    ``ring.py`` offers no way to adopt a ring's state; this subclass sets the same fields its
    constructor sets (see the report of issue 14 §3)."""

    __slots__ = ()

    def __init__(self, regions: list[Region], region: int, offset: int, log2_ring_size: int,
                 layout: RingLayout, buffer_offsets: Sequence[int], buffer_size: int) -> None:
        super(M2SConsumer, self).__init__(regions, region, offset, log2_ring_size, layout,
                                          buffer_offsets, buffer_size)
        head = int(self.idx[self._head_i])
        if head > self.size:
            raise ProtocolViolation(f"M2S head {head} above the ring size at hand-over")
        self._head = head
        self._pos = 0
        self._refill_batch = max(1, min(32, self.size // 4))
        self._held = None


class _Attachment:
    """One connection's memory, rings and queues in a worker (the owner of the queues)."""

    def __init__(self, worker: _WorkerMain, msg: dict[str, Any], fds: list[int]) -> None:
        self._worker = worker
        self.connection = int(msg["connection"])
        self.interface_id = worker.interface_id
        self.regions: list[Region] = []
        self.rings: list[Any] = []
        self.efds: list[int] = []
        self.rx: RxQueue | None = None
        self.tx: TxQueue | None = None
        self.task: asyncio.Task[Any] | None = None
        self._down: Disconnected | None = None
        sizes = [int(s) for s in msg["regions"]]
        n = len(sizes)
        if len(fds) < n:
            close_fds(fds)
            raise MemifError("up message without its region fds")
        try:
            for i, size in enumerate(sizes):
                self.regions.append(Region.map_peer(fds[i], size, require_seal=False))
                fds[i] = -1
            layout = RingLayout.for_cache_line(int(msg["cache_line"]))
            log2 = int(msg["log2"])
            bsize = int(msg["buffer_size"])
            master = bool(msg["is_master"])
            for name in ("rx", "tx"):
                desc = msg.get(name)
                if desc is None:
                    continue
                efd = fds[int(desc["fd"])]
                fds[int(desc["fd"])] = -1
                self.efds.append(efd)
                check_peer_eventfd(efd)
                region, offset = int(desc["region"]), int(desc["offset"])
                check_ring_geometry(self.regions, region, offset, log2, layout)
                ring: Any
                if master:
                    cls: Any = S2MConsumer if name == "rx" else M2SProducer
                    ring = cls(self.regions, region, offset, log2, layout)
                else:
                    cls = _AdoptedM2SConsumer if name == "rx" else S2MProducer
                    ring = cls(self.regions, region, offset, log2, layout,
                               _unpack_offsets(desc["buffers"]), bsize)
                self.rings.append(ring)
                if name == "rx":
                    self.rx = RxQueue(self, worker.qid, ring, efd, worker.rx_mode)
                else:
                    self.tx = TxQueue(self, worker.qid, ring, efd, worker.tx_timeout)
        except BaseException:
            close_fds([fd for fd in fds if fd >= 0])
            self.close(Disconnected("worker could not attach", False))
            raise
        close_fds([fd for fd in fds if fd >= 0])

    # QueueOwner
    def protocol_violation(self, reason: str) -> None:
        if self._down is not None:
            return
        log.error("worker %d: interface %d: peer violated the protocol: %s",
                  self._worker.index, self.interface_id, reason)
        self._worker.send({"op": "violation", "connection": self.connection, "reason": reason})

    def close(self, exc: Disconnected) -> None:
        """Wake every pending call with ``exc``, then release rings, unmap, close fds."""
        if self._down is not None:
            return
        self._down = exc
        for q in (self.rx, self.tx):
            if q is not None:
                q._kill(exc)
        for ring in self.rings:
            ring.release()
        for region in self.regions:
            region.close()
        close_fds(self.efds)
        self.efds = []


class _WorkerMain:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.index = int(cfg["index"])
        self.qid = int(cfg["qid"])
        self.interface_id = int(cfg["interface_id"])
        self.rx_mode = RxMode[cfg["rx_mode"]]
        self.tx_timeout = cfg["tx_timeout"]
        self.stop_timeout = float(cfg["stop_timeout"])
        self.handler = _resolve(cfg["handler"])
        self.args = list(cfg["args"])
        self.sock = socket.socket(fileno=int(cfg["fd"]))
        self.sock.setblocking(False)
        self.inbox: asyncio.Queue[tuple[dict[str, Any] | None, list[int]]] = asyncio.Queue()
        self.current: _Attachment | None = None

    def send(self, msg: dict[str, Any]) -> None:
        try:
            _send(self.sock, msg)
        except BlockingIOError:
            log.warning("worker %d: owner not reading; message dropped: %s", self.index,
                        msg.get("op"))
        except OSError:
            pass  # the owner is gone: the EOF ends us

    def _readable(self) -> None:
        for _ in range(32):
            try:
                item = _recv(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            except (OSError, ValueError, MemifError) as exc:
                log.error("worker %d: bad message from the owner: %s", self.index, exc)
                item = (None, [])
            self.inbox.put_nowait(item)
            if item[0] is None:
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
                return

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.sock.fileno(), self._readable)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        self.send({"op": "ready", "pid": os.getpid()})
        stopper = loop.create_task(stop.wait())
        try:
            while True:
                getter = loop.create_task(self.inbox.get())
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                msg, fds = getter.result()
                if msg is None or msg.get("op") == "exit":
                    close_fds(fds)
                    break
                op = msg.get("op")
                if op == "up":
                    await self._detach("new connection", False)
                    self._attach(msg, fds)
                elif op == "down":
                    close_fds(fds)
                    if self.current is not None and \
                            self.current.connection == int(msg.get("connection", 0)):
                        await self._detach(str(msg.get("reason", "link down")),
                                           bool(msg.get("by_peer")))
                else:
                    close_fds(fds)
        finally:
            stopper.cancel()
            await self._detach("worker stopped", False)
            loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _attach(self, msg: dict[str, Any], fds: list[int]) -> None:
        try:
            att = _Attachment(self, msg, fds)
        except (ProtocolViolation, MemifError, OSError, ValueError, KeyError,
                TypeError) as exc:
            reason = exc.reason if isinstance(exc, ProtocolViolation) else str(exc)
            conn = int(msg.get("connection", 0))
            self.send({"op": "violation", "connection": conn, "reason": reason})
            return
        self.current = att
        att.task = asyncio.get_running_loop().create_task(self._run_handler(att))
        self.send({"op": "attached", "connection": att.connection})

    async def _run_handler(self, att: _Attachment) -> None:
        result: Any = None
        error = ""
        try:
            result = await self.handler(att.rx, att.tx, *self.args)
        except Disconnected:
            pass
        except asyncio.CancelledError:
            error = "cancelled after the link went down (stop_timeout)"
        except Exception:
            error = traceback.format_exc()
            log.error("worker %d: handler failed:\n%s", self.index, error)
        try:
            json.dumps(result)
        except (TypeError, ValueError):
            result = repr(result)
        self.send({"op": "finished", "connection": att.connection, "result": result,
                   "error": error,
                   "rx_packets": att.rx.stats().packets if att.rx is not None else 0,
                   "tx_packets": att.tx.stats().packets if att.tx is not None else 0})

    async def _detach(self, reason: str, by_peer: bool) -> None:
        att = self.current
        if att is None:
            return
        self.current = None
        task = att.task
        # counters before the memory goes (a finished message reads them)
        att_exc = Disconnected(reason, by_peer)
        for q in (att.rx, att.tx):
            if q is not None:
                q._kill(att_exc)
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=self.stop_timeout)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        att.close(att_exc)
        self.send({"op": "released", "connection": att.connection})


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memif_aio.workers",
                                     description="a memif_aio worker (started by WorkerPool)")
    parser.add_argument("config", help="JSON configuration from the owner")
    cfg = json.loads(parser.parse_args(argv).config)
    for p in reversed(cfg.get("sys_path") or []):
        if p not in sys.path:
            sys.path.insert(0, p)
    if cfg.get("cpus"):
        os.sched_setaffinity(0, set(cfg["cpus"]))
    if cfg.get("nice"):
        os.nice(int(cfg["nice"]))
    logging.basicConfig(level=logging.WARNING,
                        format=f"memif_aio worker {cfg.get('index')}: %(message)s")
    worker = _WorkerMain(cfg)
    if cfg["loop"] == "uvloop":
        import uvloop
        uvloop.run(worker.run())
    else:
        asyncio.run(worker.run())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
