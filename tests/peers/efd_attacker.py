"""A peer that attacks the interrupt eventfd memif_aio writes (issue 9, items 1 and 2).

    python tests/peers/efd_attacker.py race --role client|master --path P --seconds S
    python tests/peers/efd_attacker.py semaphore --path P

``race``: one link (interface id 0) whose interrupt eventfd, the one memif_aio
*writes* (M2S against a master, S2M against a slave), is attacked for ``S``
seconds by forked processes: one toggles ``O_NONBLOCK`` on the shared open
file description in a tight loop, four keep the counter at its maximum with
blocking writes.  The ring asks for interrupts and is consumed, so memif_aio
keeps publishing and signalling.  When memif_aio drops the link the round's
reason is reported, and the attack starts again on the next link (a slave
reconnects by itself; as a client we reconnect), the previous round's attackers
killed.  As a master it also serves interface id 1 correctly (it echoes every
packet), so that the slave's Socket has a healthy interface beside the
attacked one.

``semaphore``: a client that hands over an ``EFD_SEMAPHORE`` eventfd for its
S2M ring and writes 2**62 to it after CONNECT.

stdout: JSON lines ({"event": "up"|"attackers"|"down"|"refused"|"done", ...});
stdin EOF ends it.  Every forked attacker dies with its parent (PR_SET_PDEATHSIG) and
runs at nice 10 (see _child_setup).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import select
import signal
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from hostile import (
    EVENTFD_MAX,
    HarnessError,
    HostileClient,
    HostileServer,
    PeerMemory,
    RawRing,
    ServerConn,
)

from memif_aio.wire import MsgConnect, MsgDisconnect, MsgType

PR_SET_PDEATHSIG = 1


def emit(**obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------
# The forked attackers (no asyncio, no Python objects shared: just the fd)
# ----------------------------------------------------------------------------
def _child_setup() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(0)
    # A lower CPU weight: the toggler spins by design, and on a small machine five
    # spinning processes would starve the memif_aio process of CPU, which any local
    # process can do and which is not what this attack is about (a syscall that blocks).
    # The race is not weakened: the toggler still flips the flag millions of times a
    # second whenever it runs, and the fillers sleep in poll() or in blocking writes.
    os.nice(10)


def _toggler(fd: int) -> None:
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    blocking, nonblocking = fl & ~os.O_NONBLOCK, fl | os.O_NONBLOCK
    while True:
        fcntl.fcntl(fd, fcntl.F_SETFL, blocking)
        fcntl.fcntl(fd, fcntl.F_SETFL, nonblocking)


def _count(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("eventfd-count:"):
                return int(line.split(":")[1], 16)
    raise RuntimeError("no eventfd-count in fdinfo")


def _filler(fd: int) -> None:
    """Top the counter up to its maximum (a blocking write whenever the toggler left
    the fd blocking); while it is full, sleep in poll(POLLOUT), which wakes as soon
    as anyone reads it, whatever O_NONBLOCK says."""
    p = select.poll()
    p.register(fd, select.POLLOUT)
    while True:
        v = EVENTFD_MAX - _count(fd)
        if v <= 0:
            p.poll()
            continue
        try:
            os.write(fd, v.to_bytes(8, "little"))
        except BlockingIOError:  # caught in the non-blocking phase, or raced another filler
            pass


def attack(fd: int) -> list[int]:
    """Fork the toggler and four fillers on ``fd``; returns their pids."""
    pids = []
    for job in (_toggler, _filler, _filler, _filler, _filler):
        pid = os.fork()
        if pid == 0:  # child
            try:
                _child_setup()
                job(fd)
            finally:
                os._exit(0)
        pids.append(pid)
    return pids


def stop(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    pids.clear()


# ----------------------------------------------------------------------------
# race
# ----------------------------------------------------------------------------
async def _consume(ring_flags: RawRing, step: Any) -> None:
    """Keep asking for interrupts and keep the ring moving (so memif_aio keeps signalling)."""
    while True:
        ring_flags.flags = 0  # MASK_INT clear: "interrupt me"
        step()
        await asyncio.sleep(0.005)


async def _client_round(path: str) -> tuple[HostileClient, int, RawRing, Any]:
    mem = PeerMemory(log2_ring_size=4)
    hc = await HostileClient.connect(path)
    try:
        await hc.handshake(mem, id=0)
    except BaseException:
        hc.close()
        raise
    mem.post()
    return hc, mem.m2s_efd[0], mem.m2s[0], lambda: mem.receive(0)


async def race_client(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.seconds
    pids: list[int] = []
    rounds = 0
    try:
        while time.monotonic() < deadline:
            try:
                hc, efd, ring, step = await _client_round(args.path)
            except (OSError, HarnessError, TimeoutError) as exc:  # the master is busy or gone
                emit(event="retry", error=str(exc))
                await asyncio.sleep(0.2)
                continue
            rounds += 1
            emit(event="up", round=rounds)
            stop(pids)
            pids = attack(efd)
            emit(event="attackers", pids=pids)
            consumer = asyncio.ensure_future(_consume(ring, step))
            try:
                reason = await hc.expect_disconnect(timeout=max(0.1, deadline - time.monotonic()),
                                                    eof=False)
                emit(event="down", round=rounds, reason=reason)
            except TimeoutError:
                emit(event="still-up", round=rounds)
            finally:
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
                hc.close()
            await asyncio.sleep(0.5)
    finally:
        stop(pids)
    emit(event="done", rounds=rounds)


async def _echo(conn: ServerConn) -> None:
    s = conn.session
    assert s is not None
    while True:
        for r in (*s.s2m, *s.m2s):
            r.flags = 0
        pkts = s.receive(0)
        if pkts:
            s.send(0, pkts)
        await asyncio.sleep(0.005)


async def race_master(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.seconds
    pids: list[int] = []
    rounds = 0
    tasks: set[asyncio.Task[None]] = set()

    async def attacked(conn: ServerConn) -> None:
        nonlocal pids, rounds
        s = conn.session
        assert s is not None
        rounds += 1
        emit(event="up", round=rounds)
        stop(pids)
        pids = attack(s.s2m_efd[0])
        emit(event="attackers", pids=pids)
        consumer = asyncio.ensure_future(_consume(s.s2m[0], lambda: s.receive(0)))
        try:
            reason = await conn.expect_disconnect(timeout=max(0.1, deadline - time.monotonic()),
                                                  eof=False)
            emit(event="down", round=rounds, reason=reason)
        except TimeoutError:
            emit(event="still-up", round=rounds)
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer

    async def handle(conn: ServerConn) -> None:
        try:
            await conn.serve()
            assert conn.init is not None
            if conn.init.id == 0:
                await attacked(conn)
            else:
                echo = asyncio.ensure_future(_echo(conn))
                try:
                    r = await conn.recv(timeout=args.seconds + 30)
                    while not r.eof:
                        if r.type == MsgType.DISCONNECT:
                            break
                        r = await conn.recv(timeout=args.seconds + 30)
                finally:
                    echo.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await echo
        except (HarnessError, OSError, TimeoutError) as exc:
            emit(event="conn-error", error=str(exc))
        finally:
            conn.close()
            with contextlib.suppress(ValueError):
                server.conns.remove(conn)

    server = HostileServer(args.path)
    emit(event="listening")
    try:
        while True:
            left = deadline - time.monotonic() if rounds else args.seconds + 30
            try:
                conn = await server.accept(timeout=max(0.1, left))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    break
                continue
            t = asyncio.ensure_future(handle(conn))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            if time.monotonic() >= deadline:
                break
        stop(pids)
        emit(event="done", rounds=rounds)
        # keep serving the healthy interface until the test closes our stdin
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
    finally:
        stop(pids)
        for t in list(tasks):
            t.cancel()
        server.close()


# ----------------------------------------------------------------------------
# semaphore
# ----------------------------------------------------------------------------
async def semaphore(args: argparse.Namespace) -> None:
    mem = PeerMemory(log2_ring_size=4)
    sem = os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    os.close(mem.s2m_efd[0])
    mem.s2m_efd[0] = sem  # the ring memif_aio (the master) reads
    hc = await HostileClient.connect(args.path)
    try:
        hc.memory = mem
        await hc.init(0)
        for msg, fd in mem.setup_messages():
            r = await hc.request(msg, [fd])
            if r.type == MsgType.DISCONNECT:
                m = r.msg()
                assert isinstance(m, MsgDisconnect)
                emit(event="refused", reason=m.string.decode())
                return
        r = await hc.request(MsgConnect(b"semaphore"))
        if r.type != MsgType.CONNECTED:
            emit(event="refused", reason=r.describe())
            return
        os.eventfd_write(sem, 1 << 62)
        emit(event="written")
        reason = await hc.expect_disconnect(timeout=30, eof=False)
        emit(event="down", reason=reason)
    finally:
        hc.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("race")
    r.add_argument("--role", choices=("client", "master"), required=True)
    r.add_argument("--path", required=True)
    r.add_argument("--seconds", type=float, default=10.0)
    s = sub.add_parser("semaphore")
    s.add_argument("--path", required=True)
    args = p.parse_args()
    if args.cmd == "race":
        asyncio.run(race_client(args) if args.role == "client" else race_master(args))
    else:
        asyncio.run(semaphore(args))


if __name__ == "__main__":
    main()
