"""The test harness, written once: the handshake machines' ``pump``, ``Target``, an
established pair, the leak guard, and the small helpers the fault tests share.

* Sans-I/O (tests/test_protocol.py, tests/test_fuzz.py): :class:`Target`,
  :func:`make_server`, :func:`pump` (a lock-step exchange between a server and a client
  machine, SCM_RIGHTS imitated by ``os.dup``), :class:`Trace`, :func:`established_pair`
  (two Sessions), :func:`session_fds`.
* The leak guard: :class:`LeakGuard` (from :mod:`memif_aio.testing.leaks`, which the
  ``no_leaks`` fixture of tests/conftest.py and the pytest plugin use too).
* Processes and waits: :func:`child_process` (a Python script as a child, always killed
  and reaped), :func:`read_line`, :func:`until`, :func:`loop_name`, :func:`sealed_memfd`.

A plain module (tests/ is on ``sys.path``; not conftest.py, see leaks.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from memif_aio.interface import Interface
from memif_aio.protocol import (
    ClientConfig,
    ClientHandshake,
    Closed,
    Established,
    SendMessage,
    ServerConfig,
    ServerHandshake,
    ServerTarget,
    Session,
)
from memif_aio.testing.leaks import LeakGuard
from memif_aio.wire import decode_message

__all__ = ["LeakGuard", "Target", "Trace", "child_process", "decoded", "established_pair",
           "loop_name", "make_server", "pump", "read_line", "sealed_memfd", "sends",
           "session_fds", "until"]

# ---------------------------------------------------------------------------
# Sans-I/O: the handshake machines against each other
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target(ServerTarget):
    """The server machine's view of an interface, named as the tests like it."""

    if_name: bytes = b"srv0"


def make_server(targets: dict[int, Target] | None = None, **kw: object) -> ServerHandshake:
    table = {0: Target()} if targets is None else targets
    return ServerHandshake(ServerConfig(lookup=table.get, **kw))  # type: ignore[arg-type]


def sends(outs: Sequence[object]) -> list[SendMessage]:
    return [o for o in outs if isinstance(o, SendMessage)]


def decoded(outs: Sequence[object]) -> list[object]:
    return [decode_message(o.data) for o in sends(outs)]


@dataclass
class Trace:
    client_msgs: list[object] = field(default_factory=list)
    client_fds: list[int | None] = field(default_factory=list)
    #: (type of message the client received, number of messages it sent in reply)
    client_replies: list[tuple[int, int]] = field(default_factory=list)
    server_replies: list[tuple[int, int]] = field(default_factory=list)
    to_server_fds: list[int] = field(default_factory=list)
    to_client_fds: list[int] = field(default_factory=list)
    server_events: list[object] = field(default_factory=list)
    client_events: list[object] = field(default_factory=list)

    def session(self, side: str) -> Session:
        events = self.server_events if side == "s" else self.client_events
        got = [e.session for e in events if isinstance(e, Established)]
        assert len(got) == 1, events
        return got[0]

    def closed(self, side: str) -> Closed:
        events = self.server_events if side == "s" else self.client_events
        got = [e for e in events if isinstance(e, Closed)]
        assert len(got) == 1, events
        return got[0]


def pump(srv: ServerHandshake, cli: ClientHandshake, hello: bytes | None = None,
         max_steps: int = 2000) -> Trace:
    """Lock-step exchange: one message to the client, one to the server, and so on."""
    tr = Trace()
    to_client: deque[SendMessage] = deque()
    to_server: deque[SendMessage] = deque()
    start = srv.start()
    assert all(isinstance(o, SendMessage) for o in start)
    to_client.extend(start)  # type: ignore[arg-type]
    if hello is not None:
        to_client = deque([SendMessage(hello)])
    assert cli.start() == []
    for _ in range(max_steps):
        if not to_client and not to_server:
            return tr
        if to_client:
            m = to_client.popleft()
            fds = [os.dup(m.fd)] if m.fd is not None else []
            tr.to_client_fds.extend(fds)
            outs = cli.receive(m.data, fds)
            s = sends(outs)
            tr.client_replies.append((m.data[0], len(s)))
            for o in s:
                tr.client_msgs.append(decode_message(o.data))
                tr.client_fds.append(o.fd)
            to_server.extend(s)
            tr.client_events.extend(o for o in outs if not isinstance(o, SendMessage))
        if to_server:
            m = to_server.popleft()
            fds = [os.dup(m.fd)] if m.fd is not None else []
            tr.to_server_fds.extend(fds)
            outs = srv.receive(m.data, fds)
            s = sends(outs)
            tr.server_replies.append((m.data[0], len(s)))
            to_client.extend(s)
            tr.server_events.extend(o for o in outs if not isinstance(o, SendMessage))
    raise AssertionError("handshake did not settle")


def session_fds(session: Session) -> set[int]:
    return ({r.fd for r in session.regions if r.fd >= 0} | set(session.rx_eventfds)
            | set(session.tx_eventfds))


def established_pair(num_queue_pairs: int = 1, log2: int = 4, bsize: int = 256,
                     cache_line: int = 64, **target_kw: object) -> tuple[Trace, Session, Session]:
    srv = make_server({5: Target(cache_line_size=cache_line, **target_kw)})  # type: ignore[arg-type]
    cli = ClientHandshake(ClientConfig(id=5, num_queue_pairs=num_queue_pairs, log2_ring_size=log2,
                                       buffer_size=bsize, cache_line=cache_line, if_name=b"cli0",
                                       app_name=b"client-app"))
    tr = pump(srv, cli)
    return tr, tr.session("s"), tr.session("c")



# ---------------------------------------------------------------------------
# Processes, waits, memory
# ---------------------------------------------------------------------------


@asynccontextmanager
async def child_process(script: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python SCRIPT ARGS`` with pipes for stdin and stdout; killed (if still running)
    and reaped at the end whatever happens."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, script, *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def read_line(proc: asyncio.subprocess.Process, timeout: float = 10.0,
                    eof_fails: bool = False) -> str:
    """The next line of the child's stdout, stripped (``""`` at EOF, or with
    ``eof_fails`` an AssertionError with its exit status)."""
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not raw and eof_fails:
        raise AssertionError(f"the child exited (status {await proc.wait()})")
    return raw.decode().strip()


async def until(cond: Callable[[], object], timeout: float = 10.0, what: str = "",
                interval: float = 0.01) -> None:
    """Wait (bounded) until ``cond()`` is true; AssertionError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(interval)


def loop_name() -> str:
    """``"uvloop"`` or ``"asyncio"``: the running loop's kind."""
    return "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"


def sealed_memfd(size: int = 1 << 16, file_size: int | None = None, extra_seals: int = 0,
                 name: str = "hostile") -> int:
    """A memfd of ``file_size`` (default ``size``) bytes sealed against shrinking (plus
    ``extra_seals``): what a peer's region must be."""
    fd = os.memfd_create(name, os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, size if file_size is None else file_size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | extra_seals)
    return fd


async def both_ways(a: Interface, b: Interface, n: int = 16, timeout: float = 10.0) -> None:
    """``n`` packets a -> b, then ``n`` packets b -> a, in order and intact."""
    for src, dst in ((a, b), (b, a)):
        pkts = [bytes([i, src.is_master()]) * (30 + i) for i in range(n)]
        tx, rx = src.get_tx_queue(0), dst.get_rx_queue(0)
        done = 0
        while done < n:
            done += await tx.write_burst(pkts[done:])
        got: list[bytes] = []
        while len(got) < n:
            got += await asyncio.wait_for(rx.read_burst(n), timeout)
        assert got == pkts
