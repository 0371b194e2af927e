"""Master and slave in separate processes, both ways round.

The other process is ``tests/peers/peer.py``: it serves one or more interfaces
on a socket and echoes every packet back on the queue it came in on; it reports
link events as JSON lines.  This process sends numbered packets with a
deterministic payload on every queue and checks that each comes back, in
order, byte for byte.  Every child is killed and reaped in ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import struct
import sys
import time
from typing import Any, Callable

import pytest
from _harness import loop_name, until

from memif_aio import (
    Arguments,
    Disconnected,
    Interface,
    MemoryConfig,
    NotConnected,
    RxMode,
    Socket,
)

pytestmark = pytest.mark.timeout(60)

PEER = os.path.join(os.path.dirname(__file__), "peers", "peer.py")
HDR = struct.Struct("<IHQ")  # interface id, queue id, sequence number
PATTERN = random.Random(7).randbytes(70000)
SIZES = (64, 1500, 2048, 2049, 4000, 9000)


def packet(itf_id: int, qid: int, seq: int, size: int | None = None) -> bytes:
    n = (size or SIZES[seq % len(SIZES)]) - HDR.size
    off = (seq * 7919 + qid * 131 + itf_id * 17) % 60000
    return HDR.pack(itf_id, qid, seq) + PATTERN[off:off + n]


class Peer:
    """A peer process: start it, read its events, send it commands, always reap it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.pid = proc.pid

    @classmethod
    async def start(cls, role: str, path: str, *, ids: tuple[int, ...] = (0,), queues: int = 1,
                    secret: str = "", loop: str = "asyncio", rx_mode: str = "interrupt") -> Peer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, PEER, "--role", role, "--socket", path,
            "--ids", ",".join(map(str, ids)), "--queues", str(queues), "--secret", secret,
            "--loop", loop, "--rx-mode", rx_mode,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        peer = cls(proc)
        try:
            await peer.wait_event(lambda e: e["event"] == "ready")
        except BaseException:
            await peer.kill()
            raise
        return peer

    async def wait_event(self, pred: Callable[[dict[str, Any]], bool],
                         timeout: float = 10.0) -> dict[str, Any]:
        """The first event, past or future, that ``pred`` accepts."""
        for e in self.events:
            if pred(e):
                return e
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"peer {self.pid} exited "
                                         f"(status {await self.proc.wait()}); saw {self.events}")
                event: dict[str, Any] = json.loads(line)
                self.events.append(event)
                if pred(event):
                    return event

    async def command(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        await self.proc.stdin.drain()

    async def status(self) -> list[dict[str, Any]]:
        n = sum(1 for e in self.events if e["event"] == "status")
        await self.command("status")
        seen = [0]

        def nth_status(e: dict[str, Any]) -> bool:
            if e["event"] != "status":
                return False
            seen[0] += 1
            return seen[0] > n

        return (await self.wait_event(nth_status))["interfaces"]  # type: ignore[no-any-return]

    async def quit(self) -> int:
        """Ask the peer to exit cleanly (it removes its socket file); kill it if it will not."""
        try:
            await self.command("quit")
            await self.wait_event(lambda e: e["event"] == "bye", 5.0)
            return await asyncio.wait_for(self.proc.wait(), 5.0)
        finally:
            await self.kill()

    async def kill(self) -> None:
        """SIGKILL (if still running) and reap."""
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        await asyncio.wait_for(self.proc.wait(), 10.0)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


async def echo_round(itf: Interface, qid: int, count: int, *,
                     sizes: tuple[int, ...] | None = None, start: int = 0) -> None:
    """Send ``count`` packets on tx queue ``qid`` and check that the peer echoes each back
    on rx queue ``qid``, in order and unchanged (sending and receiving overlap)."""
    tx, rx = itf.get_tx_queue(qid), itf.get_rx_queue(qid)
    iid = itf.get_id()

    def make(seq: int) -> bytes:
        size = None if sizes is None else sizes[seq % len(sizes)]
        return packet(iid, qid, seq, size)

    async def send() -> None:
        for seq in range(start, start + count):
            await tx.write_packet(make(seq))

    async def receive() -> None:
        for seq in range(start, start + count):
            got = await rx.read_packet()
            want = make(seq)
            assert got[:HDR.size] == want[:HDR.size], \
                f"interface {iid} queue {qid}: expected header of packet {seq}, " \
                f"got {HDR.unpack_from(got)}"
            assert got == want, f"interface {iid} queue {qid}: packet {seq} differs"

    await asyncio.wait_for(asyncio.gather(send(), receive()), 20)


# --- both roles, 4 queue pairs, chained packets -------------------------------------------


@pytest.mark.both_loops
async def test_our_master_child_slave_4_queues(sock_path: str, no_leaks: None) -> None:
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True, name="ours"))
        peer = await Peer.start("slave", sock_path, queues=4, loop=loop_name())
        try:
            await m.wait_connected(10)
            up = await peer.wait_event(lambda e: e["event"] == "connected")
            assert up["queues"] == 4
            assert len(m.rx_queues) == len(m.tx_queues) == 4
            assert m.get_peer_name() == "peer-slave-0"
            assert m.get_remote_name() == "peer-slave"
            # the slave's buffers are 2048 bytes: 9000-byte packets travel as 5-buffer chains
            assert m.get_memory_config().packet_buffer_size == 2048
            await asyncio.gather(*(echo_round(m, q, 300) for q in range(4)))
            await asyncio.gather(*(echo_round(m, q, 50, sizes=(9000,), start=300)
                                   for q in range(4)))
            for q in range(4):
                assert m.get_rx_queue(q).stats().packets == 350
                assert m.get_tx_queue(q).stats().packets == 350
            assert await peer.quit() == 0
            # the slave's DISCONNECT reached us: a clean close with its reason
            await until(lambda: not m.is_connected(), 5, "the master to see the slave leave")
            assert m.get_disconnect_reason() != ""
        finally:
            await peer.kill()


@pytest.mark.both_loops
async def test_child_master_our_slave_4_queues(sock_path: str, no_leaks: None) -> None:
    peer = await Peer.start("master", sock_path, loop=loop_name())
    try:
        async with Socket(sock_path) as sock:
            s = sock.new_interface(Arguments(id=0, is_master=False, name="ours",
                                             memory_config=MemoryConfig(num_queue_pairs=4)))
            await s.wait_connected(10)
            up = await peer.wait_event(lambda e: e["event"] == "connected")
            assert up["queues"] == 4
            assert len(s.rx_queues) == len(s.tx_queues) == 4
            assert s.get_peer_name() == "peer-master-0"
            await asyncio.gather(*(echo_round(s, q, 300) for q in range(4)))
            await asyncio.gather(*(echo_round(s, q, 50, sizes=(9000,), start=300)
                                   for q in range(4)))
        # our socket deleted the interface: the master saw the slave go
        ev = await peer.wait_event(lambda e: e["event"] == "disconnected")
        assert ev["reason"] == "interface deleted"
        assert await peer.quit() == 0
    finally:
        await peer.kill()
    assert not os.path.exists(sock_path)


# --- receive modes: interrupts (eventfds passed between the processes) and polling ----------


@pytest.mark.parametrize("ours, theirs", [(RxMode.INTERRUPT, RxMode.POLLING),
                                          (RxMode.POLLING, RxMode.INTERRUPT),
                                          (RxMode.ADAPTIVE, RxMode.ADAPTIVE)])
@pytest.mark.parametrize("our_role", ["master", "slave"])
async def test_rx_modes_across_processes(sock_path: str, no_leaks: None, ours: RxMode,
                                         theirs: RxMode, our_role: str) -> None:
    """Each side's receive mode is its own business (the MASK_INT flag tells the sender
    whether to signal); idle gaps make an adaptive side fall back to waiting on its eventfd,
    and the next packet must still wake it."""
    their_role = "slave" if our_role == "master" else "master"
    peer = await Peer.start(their_role, sock_path, queues=2, rx_mode=theirs.value)
    try:
        async with Socket(sock_path) as sock:
            itf = sock.new_interface(Arguments(
                id=0, is_master=our_role == "master", rx_mode=ours,
                memory_config=MemoryConfig(num_queue_pairs=2, log2_ring_size=5)))
            await itf.wait_connected(10)
            for k in range(3):
                await asyncio.gather(echo_round(itf, 0, 100, start=100 * k),
                                     echo_round(itf, 1, 100, sizes=(9000, 100), start=100 * k))
                await asyncio.sleep(0.05)  # idle
            if ours is RxMode.INTERRUPT:  # the other process woke us through the eventfd
                assert itf.get_rx_queue(0).stats().interrupts > 0
        assert await peer.quit() == 0
    finally:
        await peer.kill()


# --- several interfaces on one socket -----------------------------------------------------


async def test_four_interfaces_on_one_socket_child_master(sock_path: str, no_leaks: None) -> None:
    peer = await Peer.start("master", sock_path, ids=(0, 1, 2, 3))
    try:
        async with Socket(sock_path) as sock:
            itfs = [sock.new_interface(Arguments(id=i, is_master=False, name=f"s{i}",
                                                 memory_config=MemoryConfig(num_queue_pairs=2)))
                    for i in range(4)]
            await asyncio.gather(*(i.wait_connected(10) for i in itfs))
            assert [i.get_peer_name() for i in itfs] == [f"peer-master-{i}" for i in range(4)]
            await asyncio.gather(*(echo_round(i, q, 100) for i in itfs for q in range(2)))
            status = await peer.status()
            assert [(e["id"], e["connected"], e["peer"]) for e in status] == \
                [(i, True, f"s{i}") for i in range(4)]
        assert await peer.quit() == 0
    finally:
        await peer.kill()


async def test_four_interfaces_on_one_socket_our_master(sock_path: str, no_leaks: None) -> None:
    async with Socket(sock_path) as sock:
        itfs = [sock.new_interface(Arguments(id=i, is_master=True, name=f"m{i}"))
                for i in range(4)]
        peer = await Peer.start("slave", sock_path, ids=(0, 1, 2, 3), queues=2)
        try:
            await asyncio.gather(*(i.wait_connected(10) for i in itfs))
            assert [i.get_peer_name() for i in itfs] == [f"peer-slave-{i}" for i in range(4)]
            await asyncio.gather(*(echo_round(i, q, 100, sizes=(64, 9000))
                                   for i in itfs for q in range(2)))
            assert await peer.quit() == 0
        finally:
            await peer.kill()


# --- secrets --------------------------------------------------------------------------------


async def test_secret_accepted_both_ways(sock_dir: str, no_leaks: None) -> None:
    path1, path2 = os.path.join(sock_dir, "a.sock"), os.path.join(sock_dir, "b.sock")
    peers = []
    try:
        async with Socket(path1) as sock1, Socket(path2) as sock2:
            m = sock1.new_interface(Arguments(id=0, is_master=True, secret=b"opensesame"))
            peers.append(await Peer.start("slave", path1, secret="opensesame"))
            peers.append(await Peer.start("master", path2, secret="letmein"))
            s = sock2.new_interface(Arguments(id=0, is_master=False, secret=b"letmein"))
            await asyncio.gather(m.wait_connected(10), s.wait_connected(10))
            await asyncio.gather(echo_round(m, 0, 50), echo_round(s, 0, 50))
        for p in peers:
            assert await p.quit() == 0
    finally:
        for p in peers:
            await p.kill()


@pytest.mark.parametrize("slave_secret, reason", [("wrong", "incorrect secret"),
                                                  ("", "secret required")])
async def test_secret_refused_child_slave(sock_path: str, no_leaks: None, slave_secret: str,
                                          reason: str) -> None:
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True, secret=b"right"))
        peer = await Peer.start("slave", sock_path, secret=slave_secret)
        try:
            async def refused() -> bool:
                return bool((await peer.status())[0]["reason"] == reason)

            deadline = time.monotonic() + 10
            while not await refused():
                assert time.monotonic() < deadline, await peer.status()
                await asyncio.sleep(0.05)
            st = (await peer.status())[0]
            assert not st["connected"]
            assert not m.is_connected()
            assert not any(e["event"] == "connected" for e in peer.events)
            assert await peer.quit() == 0
        finally:
            await peer.kill()


@pytest.mark.parametrize("our_secret, reason", [(b"wrong", "incorrect secret"),
                                                (b"", "secret required")])
async def test_secret_refused_our_slave(sock_path: str, no_leaks: None, our_secret: bytes,
                                        reason: str) -> None:
    peer = await Peer.start("master", sock_path, secret="right")
    try:
        async with Socket(sock_path) as sock:
            s = sock.new_interface(Arguments(id=0, is_master=False, secret=our_secret,
                                             reconnect_min_delay=0.05, reconnect_max_delay=0.2))
            with pytest.raises(TimeoutError, match=reason):
                await s.wait_connected(1.0)
            assert s.get_disconnect_reason() == reason
            with pytest.raises(NotConnected) as ei:
                s.get_tx_queue(0)
            assert isinstance(ei.value, Disconnected) and ei.value.reason == reason
            # it keeps retrying and keeps being refused
            assert (await peer.status())[0]["connected"] is False
        assert not any(e["event"] == "connected" for e in peer.events)
        assert await peer.quit() == 0
    finally:
        await peer.kill()


# --- peer restarts ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sigkill", "quit"])
@pytest.mark.both_loops
async def test_master_process_restart_slave_reconnects(sock_path: str, no_leaks: None,
                                                       how: str) -> None:
    peers: list[Peer] = []
    reasons: list[str] = []  # get_disconnect_reason() when each link went down
    try:
        peers.append(await Peer.start("master", sock_path, queues=2, loop=loop_name()))
        async with Socket(sock_path) as sock:
            s = sock.new_interface(Arguments(
                id=0, is_master=False, reconnect_min_delay=0.05, reconnect_max_delay=0.2,
                memory_config=MemoryConfig(num_queue_pairs=2),
                disconnected_func=lambda i: reasons.append(i.get_disconnect_reason())))
            await s.wait_connected(10)
            await echo_round(s, 0, 100)
            await echo_round(s, 1, 100)
            rx = s.get_rx_queue(0)
            pending = asyncio.ensure_future(rx.read_packet())
            await asyncio.sleep(0.05)
            if how == "sigkill":
                os.kill(peers[0].pid, signal.SIGKILL)
            else:
                assert await peers[0].quit() == 0
            with pytest.raises(Disconnected) as ei:
                await asyncio.wait_for(pending, 5)
            assert not s.is_connected()
            assert ei.value.by_peer
            assert reasons == [ei.value.reason]
            if how == "quit":  # a clean DISCONNECT carries the master's reason
                assert ei.value.reason == "interface deleted"
            await peers[0].kill()
            # a SIGKILLed master leaves its socket file behind, a clean one removes it
            assert os.path.exists(sock_path) == (how == "sigkill")
            await asyncio.sleep(0.3)  # the slave retries against a dead or missing socket
            assert not s.is_connected()
            peers.append(await Peer.start("master", sock_path, queues=2, loop=loop_name()))
            await s.wait_connected(10)  # no request from us: the slave reconnects by itself
            await asyncio.gather(echo_round(s, 0, 100, sizes=(9000, 64)),
                                 echo_round(s, 1, 100))
            assert s.get_rx_queue(0).stats().packets == 100  # counters of the new connection
        assert await peers[1].quit() == 0
    finally:
        for p in peers:
            await p.kill()


@pytest.mark.both_loops
async def test_one_of_four_slave_processes_dies(sock_path: str, no_leaks: None) -> None:
    """Four slave processes on four interfaces of one master socket: killing one leaves the
    others running; a second slave for a busy id is refused ("already connected") until the
    first one dies, then takes over by itself."""
    peers: list[Peer] = []
    downs: list[int] = []
    async with Socket(sock_path) as sock:
        ms = [sock.new_interface(Arguments(id=i, is_master=True, name=f"m{i}",
                                           disconnected_func=lambda m: downs.append(m.get_id())))
              for i in range(4)]
        try:
            for i in range(4):
                peers.append(await Peer.start("slave", sock_path, ids=(i,), loop=loop_name()))
            await asyncio.gather(*(m.wait_connected(10) for m in ms))
            spare = await Peer.start("slave", sock_path, ids=(0,), loop=loop_name())
            peers.append(spare)

            async def spare_reason() -> str:
                return str((await spare.status())[0]["reason"])

            deadline = time.monotonic() + 10
            while await spare_reason() != "already connected":
                assert time.monotonic() < deadline, await spare.status()
                await asyncio.sleep(0.05)

            os.kill(peers[1].pid, signal.SIGKILL)
            await until(lambda: not ms[1].is_connected(), 5, "interface 1 to go down")
            assert [m.is_connected() for m in ms] == [True, False, True, True]
            await asyncio.gather(*(echo_round(m, 0, 200) for m in (ms[0], ms[2], ms[3])))
            assert peers[0].pid in {int(e["pid"]) for e in peers[0].events
                                    if e["event"] == "ready"}

            os.kill(peers[0].pid, signal.SIGKILL)
            # the master sees the link go down, and the spare slave, retrying, gets in
            await spare.wait_event(lambda e: e["event"] == "connected")
            assert downs == [1, 0]
            await ms[0].wait_connected(10)
            await echo_round(ms[0], 0, 200)
            assert [m.is_connected() for m in ms] == [True, False, True, True]
            for p in (peers[2], peers[3], spare):
                assert await p.quit() == 0
        finally:
            for p in peers:
                await p.kill()


@pytest.mark.both_loops
async def test_slave_process_killed_mid_traffic(sock_path: str, no_leaks: None) -> None:
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        peers = [await Peer.start("slave", sock_path, loop=loop_name())]
        try:
            await m.wait_connected(10)
            tx, rx = m.get_tx_queue(0), m.get_rx_queue(0)
            echoed = 0

            async def stream() -> None:
                seq = 0
                while True:
                    await tx.write_packet(packet(0, 0, seq))
                    seq += 1

            async def drain() -> None:
                nonlocal echoed
                while True:
                    got = await rx.read_packet()
                    assert got == packet(0, 0, echoed)
                    echoed += 1

            sender = asyncio.ensure_future(stream())
            receiver = asyncio.ensure_future(drain())
            try:
                await until(lambda: echoed >= 500, 10, "500 echoed packets")
                os.kill(peers[0].pid, signal.SIGKILL)
                for t in (sender, receiver):  # both directions fail, neither hangs
                    with pytest.raises(Disconnected):
                        await asyncio.wait_for(t, 5)
            finally:
                sender.cancel()
                receiver.cancel()
                await asyncio.gather(sender, receiver, return_exceptions=True)
            assert not m.is_connected()
            assert m.get_disconnect_reason() != ""
            await peers[0].kill()
            # a new slave process is accepted on the same interface
            peers.append(await Peer.start("slave", sock_path, loop=loop_name()))
            await m.wait_connected(10)
            await echo_round(m, 0, 200)
            assert await peers[1].quit() == 0
        finally:
            for p in peers:
                await p.kill()
