"""Attacks on a master's listener and on what an unconnected peer can make it hold
(issue 9, items 3, 4, 5 and 7; the bounds are listed in docs/security.md).

* accept() at the fd limit (EMFILE): the listener is not read while accept() fails and is
  retried with backoff, so the master stays idle and logs a bounded number of lines; once
  fds are free, a slave connects.  Run in a child process with a lowered RLIMIT_NOFILE.
* fds and memory held for peers that have not sent CONNECT: per connection (regions) and in
  total over the socket (fds, bytes), counted in /proc/self/fd; refusals carry a reason.
* pending-slot denial of service: 80 idle connections held open and re-opened by a child
  process, from our uid or another; a legitimate slave still connects within 2 s.
* the socket file deleted or replaced under a listening master: re-created when gone, never
  someone else's file removed, reported; established links undisturbed.

Run as a script, this file is the child process of those tests
(``python tests/test_listener_attacks.py emfile-master|hold ...``).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import resource
import selectors
import socket
import stat
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

if __name__ == "__main__":  # run as a child process: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest
from _harness import child_process, loop_name, read_line, sealed_memfd, until
from hostile import HostileClient, HostileServer, PeerMemory, T, guard_loop
from leaks import open_fds

from memif_aio import Arguments, Interface, Socket
from memif_aio.errors import AcceptFailed, ConnectionEvicted, ListenerLost, MemifError
from memif_aio.protocol import (
    ClientConfig,
    ClientHandshake,
    Closed,
    Established,
    HandshakeBudget,
    SendMessage,
    ServerConfig,
    ServerHandshake,
    ServerTarget,
)
from memif_aio.wire import (
    MSG_ADD_RING_FLAG_S2M,
    MsgAddRegion,
    MsgAddRing,
    MsgDisconnect,
    MsgInit,
    MsgType,
    RingLayout,
    decode_message,
)

THIS = os.path.abspath(__file__)
FAST: dict[str, Any] = {"reconnect_min_delay": 0.01, "reconnect_max_delay": 0.05}
EVICTED = "evicted: too many connections waiting for INIT"
TOO_MANY_FDS = "too many file descriptors held by handshakes in progress"
TOO_MUCH_MEMORY = "too much memory mapped by handshakes in progress"

both_loops = pytest.mark.both_loops


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------
async def connected(*itfs: Interface, timeout: float = T) -> None:
    await asyncio.wait_for(asyncio.gather(*(i.wait_connected() for i in itfs)), timeout)


async def exchange(tx: Interface, rx: Interface, n: int = 10) -> None:
    pkts = [bytes([i]) * (60 + i) for i in range(n)]
    await asyncio.wait_for(tx.get_tx_queue(0).write_burst(pkts), T)
    got: list[bytes] = []
    while len(got) < n:
        got.extend(await asyncio.wait_for(rx.get_rx_queue(0).read_burst(n - len(got)), T))
    assert got == pkts


def background_errors(caplog: pytest.LogCaptureFixture, kind: type[MemifError]) -> list[Any]:
    """The typed errors Socket._background_error logged (each record carries its error)."""
    found = (getattr(r, "memif_error", None) for r in caplog.records)
    return [e for e in found if isinstance(e, kind)]


def child(*args: str) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """``python tests/test_listener_attacks.py ARGS``, killed and reaped at the end."""
    return child_process(THIS, *args)


async def line(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> str:
    return await read_line(proc, timeout, eof_fails=True)


async def tell(proc: asyncio.subprocess.Process, command: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(command.encode() + b"\n")
    await proc.stdin.drain()


def reason_of(data: bytes) -> str:
    msg = decode_message(data)
    assert isinstance(msg, MsgDisconnect)
    return msg.string.decode()


def fields(text: str) -> dict[str, float]:
    """``"word k=v k=v"`` -> {k: float(v)}."""
    return {k: float(v) for k, v in (kv.split("=") for kv in text.split()[1:])}


# ----------------------------------------------------------------------------
# Item 3: accept() at the fd limit
# ----------------------------------------------------------------------------
@both_loops
async def test_accept_at_the_fd_limit_backs_off(sock_path: str, no_leaks: None) -> None:
    """A master whose fd table is full (RLIMIT_NOFILE lowered, then filled) gets a
    connection: accept() fails with EMFILE.  Over a 2 s window the master uses little CPU
    (a busy loop would use a whole core) and logs a bounded number of lines (main logged
    65k-130k a second), and it reports AcceptFailed.  Once the fds are freed, the waiting
    slave connects without being restarted."""
    async with child("emfile-master", "--path", sock_path, "--loop", loop_name()) as proc:
        assert await line(proc) == "ready"
        await tell(proc, "fill")
        assert (await line(proc)).startswith("full")
        async with Socket(sock_path) as ssock:  # slave only: this socket does not listen
            s = ssock.new_interface(Arguments(id=0, is_master=False, **FAST))
            await tell(proc, "measure")
            m = fields(await line(proc))
            print(f"at the fd limit: {m['cpu']:.1%} of a core, {m['lines']:.0f} log lines "
                  "in 2 s")
            assert m["cpu"] < 0.1, m  # fraction of one core over the window (main: 25-100 %)
            assert m["lines"] <= 3, m  # (main: 30 000 in the window)
            assert m["accept_failed"] >= 1, m  # the attack happened: accept() did fail
            assert not s.is_connected()
            await tell(proc, "free")
            assert await line(proc) == "freed"
            await s.wait_connected(5.0)  # retries are at most 1 s apart
            await tell(proc, "quit")
            assert (await line(proc)).startswith("connected")
        assert await asyncio.wait_for(proc.wait(), T) == 0
    assert not os.path.exists(sock_path)


async def _emfile_master(args: argparse.Namespace) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logging.getLogger("memif_aio").addHandler(Collect(logging.WARNING))
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)

    async def command(expected: str) -> None:
        got = (await commands.readline()).decode().strip()
        assert got == expected, (got, expected)

    async with Socket(args.path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        _say("ready")
        await command("fill")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 64, hard))
        fillers: list[int] = []
        try:
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
        _say("full", len(fillers))
        await command("measure")
        n0 = len(records)
        await asyncio.sleep(0.2)  # the slave's connect() has reached the backlog by now
        t0, c0 = time.monotonic(), time.process_time()
        await asyncio.sleep(2.0)
        cpu = (time.process_time() - c0) / (time.monotonic() - t0)
        failed = sum(isinstance(getattr(r, "memif_error", None), AcceptFailed)
                     for r in records)
        _say("measured", f"cpu={cpu:.3f}", f"lines={len(records) - n0}",
             f"accept_failed={failed}")
        await command("free")
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        _say("freed")
        await command("quit")
        _say("connected" if m.is_connected() else "not-connected")


# ----------------------------------------------------------------------------
# Item 4: what a peer that has not sent CONNECT can make us hold
# ----------------------------------------------------------------------------
@contextmanager
def soft_nofile(limit: int) -> Iterator[None]:
    """RLIMIT_NOFILE's soft limit lowered for the block (this process has far fewer fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert len(open_fds()) < limit // 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def flood_rings(hc: HostileClient, efd: int, count: int, held: Any,
                      bound: int) -> tuple[int, str]:
    """ADD_RING (one-slot rings, S2M then M2S, laid out in region 0) until refused or
    ``count`` rings: returns (rings accepted, DISCONNECT reason or "").  ``held()`` (the
    fds we hold) must stay <= ``bound`` after every answer."""
    stride = RingLayout.for_cache_line(64).ring_size(0)
    for k in range(count):
        s2m, i = (True, k) if k < 256 else (False, k - 256)
        await hc.send(MsgAddRing(MSG_ADD_RING_FLAG_S2M if s2m else 0, i, 0, k * stride, 0),
                      [efd])
        r = await hc.recv()
        assert held() <= bound, f"{held()} fds held after {k + 1} rings (bound {bound})"
        if r.type != MsgType.ACK:
            assert r.type == MsgType.DISCONNECT, r.describe()
            await hc.expect_eof()
            return k, reason_of(r.data)
    return count, ""


def held_since(baseline: set[int]) -> Any:
    return lambda: len(open_fds() - baseline)


@both_loops
async def test_unconnected_peer_fds_with_the_usual_limit(sock_path: str,
                                                         no_leaks: None) -> None:
    """With the usual soft RLIMIT_NOFILE of 1024, a client that sent INIT (no secret) and
    floods ADD_REGION, then ADD_RING, makes us hold at most 256 fds (a quarter of the
    limit; main held 1,025): 16 regions at most ("too many regions"), then rings until
    the socket's handshake budget is spent.  Everything is released on close."""
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    mfd = sealed_memfd(1 << 20)
    try:
        with soft_nofile(1024):
            async with guard_loop(), Socket(sock_path) as sock:
                sock.new_interface(Arguments(id=0, is_master=True))
                async with await HostileClient.connect(sock_path) as hc:
                    await hc.ok(MsgInit(0))
                    baseline = open_fds()
                    held = held_since(baseline)
                    for i in range(16):
                        await hc.ok(MsgAddRegion(i, 1 << 20), [mfd])
                        assert held() <= 2 * (i + 1)
                    await hc.send(MsgAddRegion(16, 1 << 20), [mfd])
                    assert await hc.expect_disconnect() == "too many regions"
                    assert held() == 0  # released at once
                async with await HostileClient.connect(sock_path) as hc:
                    await hc.ok(MsgInit(0))
                    await hc.ok(MsgAddRegion(0, 1 << 20), [mfd])
                    baseline = open_fds()
                    n, reason = await flood_rings(hc, efd, 512, held_since(baseline), 256)
                    assert reason == TOO_MANY_FDS
                    assert n == 256 - 2  # region 0 is charged 2 fds
                    assert held_since(baseline)() == 0
    finally:
        os.close(efd)
        os.close(mfd)


@both_loops
async def test_handshake_budget_is_shared_by_the_socket(sock_path: str,
                                                        no_leaks: None) -> None:
    """Socket(max_handshake_fds=40): two unconnected peers (ids 0 and 2) hold at most 40
    fds together; the second is refused with the reason once the total would pass 40, and
    when the first goes away its share is free again.  A completed handshake gives its
    share back too (the link owns its fds): a third peer can take the full 40 while the
    first link is up."""
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    mfd = sealed_memfd(1 << 20)
    try:
        async with guard_loop(), Socket(sock_path, max_handshake_fds=40) as sock:
            for i in (0, 1, 2):
                sock.new_interface(Arguments(id=i, is_master=True))
            baseline = open_fds()
            held = held_since(baseline)
            a = await HostileClient.connect(sock_path)
            try:
                await a.ok(MsgInit(0))
                for i in range(10):  # 20 fds
                    await a.ok(MsgAddRegion(i, 4096), [mfd])
                async with await HostileClient.connect(sock_path) as b:
                    await b.ok(MsgInit(2))
                    await b.ok(MsgAddRegion(0, 1 << 20), [mfd])  # 22 fds in all
                    # + both ends of the two connections' sockets (the client is in-process)
                    n, reason = await flood_rings(b, efd, 100, held, 40 + 4)
                    assert (n, reason) == (18, TOO_MANY_FDS)
            finally:
                a.close()
            await until(lambda: held() == 0, T, "everything released")
            # a completed handshake gives its share back
            mem = PeerMemory()
            async with await HostileClient.connect(sock_path) as c:
                await c.handshake(mem, id=1)  # 2 (region) + 2 (rings) while handshaking
                async with await HostileClient.connect(sock_path) as d:
                    await d.ok(MsgInit(0))
                    await d.ok(MsgAddRegion(0, 1 << 20), [mfd])
                    n, reason = await flood_rings(d, efd, 100, lambda: 0, 0)
                    assert (n, reason) == (38, TOO_MANY_FDS)
    finally:
        os.close(efd)
        os.close(mfd)


@both_loops
async def test_handshake_memory_is_bounded_per_socket(sock_path: str, no_leaks: None) -> None:
    """Socket(max_handshake_memory=3 MiB): one unconnected peer maps 2 MiB; a second one
    asking for 2 MiB more is refused ("too much memory ...") although each is far below
    max_total_region_size; once the first is gone the second's attempt succeeds."""
    mfd = sealed_memfd(2 << 20)
    try:
        async with guard_loop(), Socket(sock_path, max_handshake_memory=3 << 20) as sock:
            m0 = sock.new_interface(Arguments(id=0, is_master=True))
            sock.new_interface(Arguments(id=1, is_master=True))
            async with await HostileClient.connect(sock_path) as a:
                await a.ok(MsgInit(0))
                await a.ok(MsgAddRegion(0, 2 << 20), [mfd])
                async with await HostileClient.connect(sock_path) as b:
                    await b.ok(MsgInit(1))
                    await b.send(MsgAddRegion(0, 2 << 20), [mfd])
                    assert await b.expect_disconnect() == TOO_MUCH_MEMORY
            await until(lambda: not m0.is_connecting(), T, "the first peer gone")
            async with await HostileClient.connect(sock_path) as b:
                await b.ok(MsgInit(1))
                await b.ok(MsgAddRegion(0, 2 << 20), [mfd])
    finally:
        os.close(mfd)


def _Target() -> ServerTarget:  # the value object the server machine looks up
    return ServerTarget(if_name=b"srv")


def _drive(srv: ServerHandshake, cli: ClientHandshake) -> list[object]:
    """Lock-step, in memory (fds duplicated as the kernel would): the events of both
    machines.  Sessions handed over are closed; the client is closed at the end."""
    events: list[object] = []
    to_client = list(srv.start())
    while to_client:
        m = to_client.pop(0)
        assert isinstance(m, SendMessage)
        for c in cli.receive(m.data, [os.dup(m.fd)] if m.fd is not None else []):
            if isinstance(c, SendMessage):
                outs = srv.receive(c.data, [os.dup(c.fd)] if c.fd is not None else [])
                to_client.extend(o for o in outs if isinstance(o, SendMessage))
                events.extend(o for o in outs if not isinstance(o, SendMessage))
            else:
                events.append(c)
    cli.close("done")
    for e in events:
        if isinstance(e, Established):
            e.session.close()
    return events


@pytest.mark.parametrize("pairs", [1, 3])
def test_budget_is_given_back_on_every_path(no_leaks: None, pairs: int) -> None:
    """Sans-I/O: machines sharing one HandshakeBudget charge 2 fds per region and 1 per
    ring while they handshake, and give everything back when established (the session
    owns the fds), torn down by the peer, or refused; a budget one fd short refuses the
    last ring with the reason, and nothing is left charged."""
    need = 2 + 2 * pairs
    budget = HandshakeBudget(need, 1 << 40)
    cfg = ServerConfig(lookup=lambda _id: _Target(), budget=budget)

    def client() -> ClientHandshake:
        return ClientHandshake(ClientConfig(id=0, num_queue_pairs=pairs, log2_ring_size=2))

    srv, cli = ServerHandshake(cfg), client()
    events = _drive(srv, cli)
    assert sum(isinstance(e, Established) for e in events) == 2  # both machines
    assert budget.fds == budget.bytes == 0
    # one fd short: the last ADD_RING is refused, everything given back
    budget.max_fds = need - 1
    srv, cli = ServerHandshake(cfg), client()
    events = _drive(srv, cli)
    closed = [e for e in events if isinstance(e, Closed)]
    assert [(c.reason, c.by_peer) for c in closed] == [(TOO_MANY_FDS, False),  # ours
                                                       (TOO_MANY_FDS, True)]  # what it got
    assert budget.fds == budget.bytes == 0
    # the peer hangs up half-way
    budget.max_fds = need
    srv = ServerHandshake(cfg)
    srv.start()
    srv.receive(MsgInit(0).encode())
    mfd = sealed_memfd(4096)
    srv.receive(MsgAddRegion(0, 4096).encode(), [mfd])
    assert (budget.fds, budget.bytes) == (2, 4096)
    srv.eof()  # (the machine owned mfd: closed with the region)
    assert budget.fds == budget.bytes == 0


def test_socket_refuses_impossible_limits() -> None:
    kws: list[dict[str, Any]] = [
        {"max_regions": 0}, {"max_regions": 257}, {"max_handshake_fds": -1},
        {"max_pending": 0}, {"max_pending_per_uid": 0}, {"init_timeout": 0}]
    for kw in kws:
        with pytest.raises(ValueError):
            Socket("/nonexistent/x.sock", **kw)


# ----------------------------------------------------------------------------
# Item 5: pending-slot denial of service
# ----------------------------------------------------------------------------
@both_loops
async def test_idle_connection_times_out_before_init(sock_path: str, no_leaks: None) -> None:
    """A connection gets init_timeout to send INIT (a legitimate client sends it as soon
    as it reads HELLO); after INIT the longer handshake_timeout applies."""
    async with guard_loop(), \
            Socket(sock_path, init_timeout=0.3, handshake_timeout=3.0) as sock:
        sock.new_interface(Arguments(id=0, is_master=True))
        async with await HostileClient.connect(sock_path) as idle, \
                await HostileClient.connect(sock_path) as slow:
            t0 = time.monotonic()
            await slow.ok(MsgInit(0))
            assert await idle.expect_disconnect() == "handshake timeout (no INIT)"
            assert time.monotonic() - t0 < 1.2
            await slow.expect_silence(0.5)  # INIT sent: it is on the handshake timer now
            assert await slow.expect_disconnect(timeout=5.0) == "handshake timeout"


@both_loops
@pytest.mark.parametrize("attacker", ["same-uid", "other-uid"])
async def test_legitimate_slave_connects_under_a_pending_flood(
        sock_dir: str, no_leaks: None, caplog: pytest.LogCaptureFixture,
        attacker: str) -> None:
    """A child process keeps 80 connections open that never send INIT, re-opening each
    one as soon as it is closed (default policy: max_pending 64, 32 per uid, INIT within
    2 s, eviction of the oldest after 0.25 s).  From our own uid (all tests run as root)
    the eviction policy is what admits the slave; from another uid the per-uid cap keeps
    the attacker's share at 32.  Either way a legitimate slave connects within 2 s and
    exchanges packets, the attacker's connections are evicted (it sees the reason), and
    the log stays short."""
    caplog.set_level(logging.WARNING, logger="memif_aio")
    if attacker == "same-uid":
        path = os.path.join(sock_dir, "flood.sock")
        args = ["hold", "--path", path, "--n", "80"]
    else:  # an abstract name: no file permissions in the way of uid 65534
        path = f"@memif-aio-test-{uuid.uuid4().hex}"
        args = ["hold", "--path", path, "--n", "80", "--uid", "65534"]
    async with guard_loop(), Socket(path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        async with child(*args) as proc:
            assert await line(proc) == "holding"  # 32 of its connections got HELLO
            t0 = time.monotonic()
            s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
            await connected(m, s, timeout=10.0)
            elapsed = time.monotonic() - t0
            print(f"{attacker} flood: the legitimate slave connected in {elapsed:.3f} s")
            await exchange(s, m)
            await exchange(m, s)
            await tell(proc, "stats")
            st = fields(await line(proc))
        assert elapsed < 2.0, f"the legitimate slave took {elapsed:.2f} s"
        assert st["evicted"] >= 1, st
        assert m.is_connected() and s.is_connected()
    evictions = background_errors(caplog, ConnectionEvicted)
    assert evictions and all(e.credentials is not None for e in evictions)
    assert len(caplog.records) <= 10, [r.getMessage() for r in caplog.records]


def _hold(args: argparse.Namespace) -> None:
    """Keep ``--n`` connections open that never send INIT; re-open each one that is closed.
    Prints "holding" once 32 of them have received HELLO; answers "stats" on stdin."""
    if args.uid is not None:
        os.setgid(args.uid)
        os.setuid(args.uid)
    addr = "\0" + args.path[1:] if args.path.startswith("@") else args.path
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    counts = {"evicted": 0, "timeouts": 0, "reopened": 0, "hellos": 0}

    def open_one() -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        s.connect(addr)  # completes at once (the kernel queues it in the backlog)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)

    for _ in range(args.n):
        open_one()
    told = False
    while True:
        for key, _ in sel.select():
            if key.data == "stdin":
                cmd = sys.stdin.readline().strip()  # "stats", or "" (EOF): the test is over
                if not cmd:
                    return
                _say("stats", *(f"{k}={v}" for k, v in counts.items()))
                continue
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(256)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if data[:1] == bytes([MsgType.HELLO]):
                counts["hellos"] += 1
                if counts["hellos"] >= 32 and not told:
                    told = True
                    _say("holding")
            elif data[:1] == bytes([MsgType.DISCONNECT]):
                reason = reason_of(data)
                counts["evicted" if reason == EVICTED else "timeouts"] += 1
            elif not data:
                sel.unregister(s)
                s.close()
                open_one()
                counts["reopened"] += 1


# ----------------------------------------------------------------------------
# Item 7: the socket file deleted or replaced under a listening master
# ----------------------------------------------------------------------------
def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


@both_loops
async def test_deleted_socket_file_is_recreated(sock_path: str, no_leaks: None,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """The socket file of a listening master is deleted: within about a second the master
    binds a new listener at the same path and reports ListenerLost(recreated=True); a new
    slave connects; the established link was not disturbed.  Then twice more."""
    caplog.set_level(logging.WARNING, logger="memif_aio")
    async with guard_loop(), Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
        await connected(m, s)
        for round_ in (1, 2, 3):
            before = os.stat(sock_path).st_ino
            os.unlink(sock_path)
            await until(lambda: is_socket(sock_path), 5.0, "the listener re-created")
            assert os.stat(sock_path).st_ino != before
            late_m = sock.new_interface(Arguments(id=round_, is_master=True))
            late_s = sock.new_interface(Arguments(id=round_, is_master=False, **FAST))
            await connected(late_m, late_s)
            await exchange(late_s, late_m)
            await exchange(s, m)
            assert m.stats().connections == s.stats().connections == 1
        lost = background_errors(caplog, ListenerLost)
        assert lost and lost[0].recreated and lost[0].path == sock_path
    assert not os.path.exists(sock_path)


@both_loops
@pytest.mark.parametrize("replacement", ["socket", "regular-file"])
async def test_replaced_socket_file_is_left_alone(sock_path: str, no_leaks: None,
                                                  caplog: pytest.LogCaptureFixture,
                                                  replacement: str) -> None:
    """Someone else's socket (or a plain file) takes the path: the master reports it
    (ListenerLost(recreated=False)) and never removes it, even when it is deleted; once
    the path is free again, the master listens there again and new slaves connect."""
    caplog.set_level(logging.WARNING, logger="memif_aio")
    async with guard_loop(), Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
        await connected(m, s)
        os.unlink(sock_path)  # and, before the loop runs again, someone else's file:
        other: HostileServer | None = None
        if replacement == "socket":
            other = HostileServer(sock_path)
        else:
            with open(sock_path, "w") as f:
                f.write("not a socket")
        theirs = os.stat(sock_path).st_ino
        try:
            await until(lambda: background_errors(caplog, ListenerLost), 5.0, "the report")
            (lost,) = background_errors(caplog, ListenerLost)
            assert not lost.recreated and "replaced" in str(lost)
            await asyncio.sleep(1.5)  # more checks: nothing removed, reported once
            assert os.stat(sock_path).st_ino == theirs
            assert len(background_errors(caplog, ListenerLost)) == 1
            await exchange(s, m)
        finally:
            if other is not None:
                other.close()  # removes its file
            else:
                os.unlink(sock_path)
        await until(lambda: is_socket(sock_path), 5.0, "the listener re-created")
        late_m = sock.new_interface(Arguments(id=1, is_master=True))
        late_s = sock.new_interface(Arguments(id=1, is_master=False, **FAST))
        await connected(late_m, late_s)
        assert m.stats().connections == 1 and m.is_connected()
        # a replacement present when the socket closes is left alone as well
        os.unlink(sock_path)
        with open(sock_path, "w"):
            pass
        theirs = os.stat(sock_path).st_ino
        await sock.delete()
        assert os.stat(sock_path).st_ino == theirs
        os.unlink(sock_path)


# ----------------------------------------------------------------------------
# Background errors are rate-limited
# ----------------------------------------------------------------------------
async def test_background_errors_are_rate_limited(sock_path: str, no_leaks: None,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A burst of evictions: one log line for the first, and, when the socket closes,
    one line with the exact number not logged since (each evicted client saw the reason)."""
    caplog.set_level(logging.WARNING, logger="memif_aio")
    clients: list[HostileClient] = []
    try:
        async with Socket(sock_path, max_pending=2, init_timeout=0.5) as sock:
            sock.new_interface(Arguments(id=0, is_master=True))
            for _ in range(12):  # after the first 2, each one evicts the oldest (0.25 s grace)
                clients.append(await HostileClient.connect(sock_path))
            reasons = await asyncio.gather(*(c.expect_disconnect() for c in clients))
            evicted = reasons.count(EVICTED)
            assert evicted >= 2, reasons
        lines = [r.getMessage() for r in caplog.records if "ConnectionEvicted" in r.getMessage()]
        assert len(lines) == 2, lines
        assert f"{evicted - 1} more ConnectionEvicted" in lines[1] and "not logged" in lines[1]
    finally:
        for c in clients:
            c.close()


def _say(*words: object) -> None:
    print(*words, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("emfile-master")
    e.add_argument("--path", required=True)
    e.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    h = sub.add_parser("hold")
    h.add_argument("--path", required=True)
    h.add_argument("--n", type=int, default=80)
    h.add_argument("--uid", type=int)
    args = p.parse_args()
    if args.cmd == "emfile-master":
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(_emfile_master(args))
        else:
            asyncio.run(_emfile_master(args))
    else:
        _hold(args)


if __name__ == "__main__":
    main()
