"""WorkerPool: one interface's queue pairs driven by worker processes (issue 14 §3).

The peer is a memif_aio interface in this process (the same socket, the other role); the
pool's owner is the other interface.  Workers are real processes (``python -m
memif_aio.workers``) that import their handler from this module.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from leaks import child_processes, memfd_mappings, open_fds

from memif_aio import Arguments, Disconnected, Interface, MemoryConfig, RxQueue, Socket, TxQueue
from memif_aio.workers import WorkerEvent, WorkerPool, handler_name

pytestmark = [pytest.mark.both_loops, pytest.mark.timeout(90)]
T = 20.0  # bound for things that take milliseconds on a quiet machine (workers start Python)
TAG = struct.Struct(">4sHI")  # b"WRKR", queue pair, worker pid


# --- handlers (imported by the workers: module level, importable) -----------------------------
async def echo(rx: RxQueue | None, tx: TxQueue | None, crash_qid: int = -1) -> int:
    """Echo every packet back on the same queue pair, tagged with (qid, our pid).  A packet
    ``b"crash"`` on queue ``crash_qid`` ends the process at once (a crash)."""
    assert rx is not None and tx is not None
    tag = TAG.pack(b"WRKR", rx.qid, os.getpid())
    n = 0
    while True:
        pkts = await rx.read_burst(64)
        if rx.qid == crash_qid and b"crash" in pkts:
            os._exit(3)
        out = [tag + p for p in pkts]
        done = 0
        while done < len(out):
            done += await tx.write_burst(out[done:])
        n += len(pkts)


async def count_until_down(rx: RxQueue | None, tx: TxQueue | None) -> int:
    """Count packets until the link goes down; return the count (the 'finished' result)."""
    assert rx is not None
    n = 0
    try:
        while True:
            n += len(await rx.read_burst(256))
    except Disconnected:
        return n


# --- helpers ------------------------------------------------------------------------------------
@asynccontextmanager
async def pair(path: str, owner_role: str, queues: int = 2
               ) -> AsyncIterator[tuple[Interface, Interface]]:
    """(owner, peer): two interfaces over one socket; the owner gets the pool."""
    mc = MemoryConfig(num_queue_pairs=queues, log2_ring_size=8, packet_buffer_size=2048)
    async with Socket(path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True, name="m", memory_config=mc))
        s = sock.new_interface(Arguments(id=0, is_master=False, name="s", memory_config=mc,
                                         reconnect_min_delay=0.02, reconnect_max_delay=0.1))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        yield (m, s) if owner_role == "master" else (s, m)


class Events:
    """Every WorkerEvent of a pool, recorded; waits count what was recorded (nothing that
    arrives while waiting for something else is lost)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.sub = pool.events()
        self.seen: list[WorkerEvent] = []

    def of(self, kind: str, connection: int | None = None) -> list[WorkerEvent]:
        return [e for e in self.seen if e.kind == kind
                and (connection is None or e.connection == connection)]

    async def wait(self, kind: str, n: int = 1, connection: int | None = None,
                   timeout: float = T) -> list[WorkerEvent]:
        try:
            async with asyncio.timeout(timeout):
                while len(self.of(kind, connection)) < n:
                    self.seen.append(await self.sub.__anext__())
        except TimeoutError:
            raise AssertionError(f"no {n} {kind!r} events in {timeout} s: {self.seen}") \
                from None
        return self.of(kind, connection)


async def round_trip(peer: Interface, qid: int, n: int, payload: bytes = b"x" * 60
                     ) -> list[bytes]:
    """Send ``n`` packets on the peer's queue ``qid`` and collect ``n`` echoes."""
    tx, rx = peer.get_tx_queue(qid), peer.get_rx_queue(qid)
    pkts = [struct.pack(">HI", qid, i) + payload for i in range(n)]
    got: list[bytes] = []
    async with asyncio.timeout(T):
        done = 0
        while done < n:
            done += await tx.write_burst(pkts[done:])
        while len(got) < n:
            got.extend(await rx.read_burst(256))
    return got


def check_echoes(got: list[bytes], qid: int, pid: int, n: int) -> None:
    assert len(got) == n
    for i, p in enumerate(got):
        magic, q, wpid = TAG.unpack_from(p)
        assert (magic, q, wpid) == (b"WRKR", qid, pid), (i, magic, q, wpid, pid)
        assert struct.unpack_from(">HI", p, TAG.size) == (qid, i)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def loop_of() -> str:
    return "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"


# --- tests ----------------------------------------------------------------------------------
def test_handler_names() -> None:
    assert handler_name(echo) == "test_workers:echo"
    assert handler_name("a.b:c") == "a.b:c"
    with pytest.raises(ValueError):
        handler_name("nocolon")
    with pytest.raises(ValueError):
        handler_name(lambda rx, tx: None)


@pytest.mark.parametrize("owner_role", ["master", "slave"])
async def test_traffic_per_queue_and_link_down_up(sock_path: str, owner_role: str,
                                                  no_leaks: None) -> None:
    """Each worker drives its own queue pair (its pid tags every echo); a link down ends
    every handler (Disconnected), the workers unmap, and after the link is back (new
    memory) they drive the new connection's queues."""
    async with pair(sock_path, owner_role) as (owner, peer), \
            WorkerPool(owner, echo, 2, loop=loop_of()) as pool:
        evs = Events(pool)
        pids = pool.get_pids()
        assert len(set(pids)) == 2 and os.getpid() not in pids
        await evs.wait("attached", 2)
        for qid in (0, 1):
            check_echoes(await round_trip(peer, qid, 300), qid, pids[qid], 300)
        assert [q.stats().packets for q in owner.rx_queues] == [0, 0]  # parked at the owner

        slave = peer if owner_role == "master" else owner
        await slave.disconnect()
        fin = await evs.wait("finished", 2, connection=1)
        assert sorted((e.qid, e.connection, e.error, e.rx_packets, e.tx_packets)
                      for e in fin) == [(0, 1, "", 300, 300), (1, 1, "", 300, 300)]
        await evs.wait("released", 2, connection=1)
        await slave.request_connection()
        await asyncio.wait_for(asyncio.gather(owner.wait_connected(), peer.wait_connected()), T)
        att = await evs.wait("attached", 2, connection=2)
        assert {e.connection for e in att} == {2}
        for qid in (1, 0):
            check_echoes(await round_trip(peer, qid, 100), qid, pids[qid], 100)
        assert pool.get_pids() == pids
    for pid in pids:
        assert not alive(pid)


async def test_worker_crash_is_reported_link_stays_up(sock_path: str, no_leaks: None) -> None:
    """Worker 1 dies (os._exit): an 'exited' event with its code; the link stays up and
    worker 0 keeps its queue pair."""
    async with pair(sock_path, "master") as (owner, peer), \
            WorkerPool(owner, echo, 2, handler_args=[1], loop=loop_of()) as pool:
        evs = Events(pool)
        await evs.wait("attached", 2)
        pids = pool.get_pids()
        await peer.get_tx_queue(1).write_packet(b"crash")
        ev = (await evs.wait("exited"))[0]
        assert (ev.worker, ev.qid, ev.pid, ev.returncode) == (1, 1, pids[1], 3)
        assert owner.is_connected() and peer.is_connected()
        check_echoes(await round_trip(peer, 0, 200), 0, pids[0], 200)
        infos = pool.get_workers()
        assert [(i.alive, i.returncode) for i in infos] == [(True, None), (False, 3)]
    assert not alive(pids[0])


async def test_handler_result_and_owner_drives_other_queue(sock_path: str,
                                                           no_leaks: None) -> None:
    """One worker on queue pair 1, the owner drives queue pair 0 itself; the handler's
    return value reaches the owner in 'finished'."""
    async with pair(sock_path, "slave") as (owner, peer), \
            WorkerPool(owner, count_until_down, 1, queues=[1], loop=loop_of()) as pool:
        evs = Events(pool)
        await evs.wait("attached")
        tx1 = peer.get_tx_queue(1)
        sent = 0
        async with asyncio.timeout(T):
            while sent < 1000:
                sent += await tx1.write_burst([b"y" * 64] * min(128, 1000 - sent))
        # the owner's own queue pair 0 still works in the owner
        await owner.get_tx_queue(0).write_packet(b"from-owner")
        assert await asyncio.wait_for(peer.get_rx_queue(0).read_packet(), T) == b"from-owner"
        # wait until the worker has read everything: every buffer is posted back to the
        # peer (master) again, head - tail == ring size
        async with asyncio.timeout(T):
            while ((st := tx1.stats()).head - st.tail) & 0xFFFF != st.ring_size:
                await asyncio.sleep(0.01)
        await owner.disconnect()
        ev = (await evs.wait("finished"))[0]
        assert (ev.qid, ev.result, ev.error, ev.rx_packets) == (1, 1000, "", 1000)


async def test_workers_follow_a_pool_started_while_down(sock_path: str, no_leaks: None) -> None:
    """A pool started before the link is up attaches at the first 'up'."""
    mc = MemoryConfig(num_queue_pairs=2, log2_ring_size=8)
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True, name="m", memory_config=mc))
        async with WorkerPool(m, echo, 2, loop=loop_of()) as pool:
            evs = Events(pool)
            assert [i.connection for i in pool.get_workers()] == [0, 0]
            s = sock.new_interface(Arguments(id=0, is_master=False, name="s", memory_config=mc,
                                             reconnect_min_delay=0.02))
            await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
            await evs.wait("attached", 2)
            check_echoes(await round_trip(s, 1, 50), 1, pool.get_pids()[1], 50)


async def test_close_leaves_nothing(sock_path: str, no_leaks: None) -> None:
    """After close, with the link still up: no worker process, and the owner has exactly the
    fds and memfd mappings it had before the pool (the connection's own); after the link,
    nothing at all (no_leaks)."""
    async with pair(sock_path, "master") as (owner, _peer):
        fds0, maps0 = open_fds(), memfd_mappings()
        pool = WorkerPool(owner, echo, 2, loop=loop_of())
        await pool.start()
        evs = Events(pool)
        await evs.wait("attached", 2)
        pids = pool.get_pids()
        assert all(p in child_processes() for p in pids)
        await pool.close()
        await pool.close()  # idempotent
        assert [i.alive for i in pool.get_workers()] == [False, False]
        assert not any(alive(p) for p in pids)
        assert not set(pids) & child_processes()
        assert owner.is_connected()
        assert open_fds() == fds0
        assert memfd_mappings() == maps0


OWNER_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, sys.argv[2])
    from memif_aio import Arguments, MemoryConfig, Socket
    from memif_aio.workers import WorkerPool

    async def main():
        mc = MemoryConfig(num_queue_pairs=2, log2_ring_size=8)
        async with Socket(sys.argv[1]) as sock:
            m = sock.new_interface(Arguments(id=0, is_master=True, name="m", memory_config=mc))
            s = sock.new_interface(Arguments(id=0, is_master=False, name="s", memory_config=mc))
            await m.wait_connected(20)
            async with WorkerPool(m, "test_workers:echo", 2) as pool:
                evs = pool.events()
                n = 0
                async for ev in evs:
                    n += ev.kind == "attached"
                    if n == 2:
                        break
                print(" ".join(map(str, pool.get_pids())), flush=True)
                await asyncio.sleep(3600)
    asyncio.run(main())
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_owner_killed_workers_exit(sock_dir: str, sig: int, no_leaks: None) -> None:
    """The owner process dies (SIGTERM: the default action; SIGKILL): every worker reads EOF
    and exits; nothing is left running."""
    path = os.path.join(sock_dir, "owner.sock")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT, path, here],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
            None, proc.stdout.readline), T)
        pids = [int(x) for x in line.split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        proc.send_signal(sig)
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, proc.wait), T)
        deadline = time.monotonic() + T
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not any(alive(p) for p in pids), "workers outlived their owner"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        with_file = os.path.join(sock_dir, "owner.sock")
        if os.path.exists(with_file):  # SIGKILL/SIGTERM leave the listener's file
            os.unlink(with_file)


async def test_worker_sigterm_reported(sock_path: str, no_leaks: None) -> None:
    """A worker killed with SIGTERM is reported as exited; the others go on."""
    async with pair(sock_path, "slave") as (owner, peer), \
            WorkerPool(owner, echo, 2, loop=loop_of()) as pool:
        evs = Events(pool)
        await evs.wait("attached", 2)
        pids = pool.get_pids()
        os.kill(pids[0], signal.SIGTERM)
        ev = (await evs.wait("exited"))[0]
        assert ev.worker == 0 and ev.returncode is not None
        check_echoes(await round_trip(peer, 1, 100), 1, pids[1], 100)
        assert owner.is_connected()


async def test_violation_found_by_a_worker_disconnects(sock_path: str, no_leaks: None) -> None:
    """A hostile slave moves queue 1's S2M head more than a ring ahead: the worker's ring
    (the same S2MConsumer, the same check) finds it, the owner disconnects with that reason,
    and both workers' handlers end."""
    async with pair(sock_path, "master") as (owner, peer), \
            WorkerPool(owner, echo, 2, loop=loop_of()) as pool:
        evs = Events(pool)
        await evs.wait("attached", 2)
        link = peer._established_link()
        assert link is not None
        ring = link.session.tx[1]
        link_events = owner.events()
        ring.idx[ring.layout.head // 2] = (ring.tail + ring.size + 5) & 0xFFFF  # the attack
        # any interrupt makes the worker look at the ring
        os.eventfd_write(link.session.tx_eventfds[1], 1)
        down = await asyncio.wait_for(_next_down(link_events), T)
        assert "S2M head ran more than a ring ahead" in down.reason
        fin = await evs.wait("finished", 2, connection=1)
        assert {e.error for e in fin} == {""}


async def _next_down(sub: Any) -> Any:
    async for ev in sub:
        if ev.kind == "down":
            return ev
    raise AssertionError("events ended")


async def test_interface_deleted_workers_go_idle(sock_path: str, no_leaks: None) -> None:
    """Deleting the owner's interface ends every handler (Disconnected) and releases the
    memory; the workers stay alive (idle) until the pool closes."""
    async with pair(sock_path, "slave") as (owner, _peer), \
            WorkerPool(owner, echo, 2, loop=loop_of()) as pool:
        evs = Events(pool)
        await evs.wait("attached", 2)
        await owner.delete()
        fin = await evs.wait("finished", 2, connection=1)
        assert {e.error for e in fin} == {""}
        await evs.wait("released", 2, connection=1)
        assert [(i.alive, i.connection) for i in pool.get_workers()] == [(True, 0), (True, 0)]
