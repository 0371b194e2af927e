"""memif_aio.scapy: scapy's own send/sr/sr1/sniff over a memif.

Peers: ``memif-aio responder`` in a subprocess (both roles, Ethernet and IP mode), DPDK
``dpdk-testpmd`` in ``icmpecho`` mode (both roles; marker ``interop``: fails under CI=true
when testpmd is missing), and interfaces of this test on the test's event loop (both
loops).  The adapter's private loop runs on asyncio and on uvloop.  Frames are built and
checked with scapy, an independent implementation.  Every test ends with no thread, fd,
mapping, process or socket file of its own left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import test_tools as tt  # the tools' subprocess helpers: one copy
import uvloop
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.sendrecv import AsyncSniffer, sendp, sniff

from memif_aio import Arguments, InterfaceMode, NotConnected, Socket
from memif_aio.scapy import MemifSocket
from memif_aio.testing.testpmd import TestPmd

pytestmark = pytest.mark.timeout(60)

tools = tt.tools  # fixture: tools started by a test are stopped and checked

PRIVATE_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "private-asyncio": asyncio.new_event_loop,
    "private-uvloop": uvloop.new_event_loop,
}
RESPONDER_IP = "192.168.1.1"
RESPONDER_MAC = "02:fe:00:00:00:01"  # memif-aio responder's default
OUR_IP = "192.168.1.2"
OUR_MAC = "02:00:00:00:00:02"
ADAPTER_THREAD = "memif-scapy-"


@pytest.fixture(params=list(PRIVATE_LOOPS), ids=list(PRIVATE_LOOPS))
def loop_factory(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    return PRIVATE_LOOPS[request.param]


@pytest.fixture
def no_threads_left() -> Iterator[None]:
    """Every adapter thread (``memif-scapy-<id>``, a private loop) has ended by the end.
    Only those are checked: asyncio's child watcher (``asyncio-waitpid-N``) and the
    library's eventfd watchdog are not the adapter's and outlive a test legitimately."""
    assert not [t for t in threading.enumerate() if t.name.startswith(ADAPTER_THREAD)]
    yield
    left = [t.name for t in threading.enumerate() if t.name.startswith(ADAPTER_THREAD)]
    assert not left, f"adapter threads left running: {left}"


def echo(seq: int, dst: str = RESPONDER_IP) -> IP:
    return IP(src=OUR_IP, dst=dst) / ICMP(id=0x4D49, seq=seq) / Raw(b"memif-scapy" * 4)


def check_reply(reply: object, seq: int, src: str = RESPONDER_IP) -> None:
    assert isinstance(reply, (IP, Ether)), f"no reply to echo request {seq}: {reply!r}"
    ip = reply[IP]
    assert (ip.src, ip.dst) == (src, OUR_IP), ip.summary()
    icmp = ip[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (0, 0, 0x4D49, seq), icmp.summary()
    assert icmp[Raw].load == b"memif-scapy" * 4
    # scapy recomputes checksums left unset: the peer's must equal them
    again = IP(bytes(ip))
    del again.chksum, again[ICMP].chksum
    again = IP(bytes(again))
    assert (ip.chksum, icmp.chksum) == (again.chksum, again[ICMP].chksum)


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)


def frames(n: int, tag: int = 0) -> list[bytes]:
    """n distinct Ethernet frames (ICMP echo requests numbered by seq)."""
    return [bytes(Ether(src=RESPONDER_MAC, dst=OUR_MAC) / IP(src=RESPONDER_IP, dst=OUR_IP)
                  / ICMP(id=tag, seq=i) / Raw(bytes([i % 256]) * (i % 50)))
            for i in range(n)]


# --- against memif-aio responder (a subprocess) ----------------------------------------------


@pytest.mark.parametrize("resp_role", ["master", "slave"], ids=["responder-master",
                                                                 "responder-slave"])
def test_sr1_echo_against_responder(sock_dir: str, tools: list[tt.Tool], resp_role: str,
                                    loop_factory: Callable[[], asyncio.AbstractEventLoop],
                                    no_threads_left: None) -> None:
    resp = tt.start_responder(tools, sock_dir, resp_role)
    path = os.path.join(sock_dir, "memif.sock")
    with MemifSocket(path, is_master=resp_role == "slave", loop_factory=loop_factory,
                     src_mac=OUR_MAC, connect_timeout=20) as s:
        # the responder answers ARP for its address with its MAC
        arp = s.sr1(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc=OUR_IP, hwsrc=OUR_MAC,
                                                          pdst=RESPONDER_IP),
                    timeout=5, verbose=0)
        assert arp is not None and arp[ARP].op == 2, arp
        assert (arp[ARP].psrc, arp[ARP].hwsrc) == (RESPONDER_IP, RESPONDER_MAC)
        for seq in (1, 2, 3):
            # an L2 socket: scapy matches Ether to Ether; the unset addresses are
            # src_mac and broadcast (no lookup in the host's tables)
            reply = s.sr1(Ether() / echo(seq), timeout=5, verbose=0)
            check_reply(reply, seq)
            assert isinstance(reply, Ether)
            assert (reply.src, reply.dst) == (RESPONDER_MAC, OUR_MAC)
        # an Ether whose addresses are set is sent as it is
        reply = s.sr1(Ether(src=OUR_MAC, dst=RESPONDER_MAC) / echo(4), timeout=5, verbose=0)
        check_reply(reply, 4)
        st = s.stats()
        assert (st.sent, st.received, st.dropped, st.buffered) == (5, 5, 0, 0), st
    resp.signal()
    rc, out, err = resp.finish()
    assert rc == 0, out + err
    assert "answered 1 ARP and 4 echo requests" in out, out


def test_sr_ip_mode_against_responder(sock_dir: str, tools: list[tt.Tool],
                                      loop_factory: Callable[[], asyncio.AbstractEventLoop],
                                      no_threads_left: None) -> None:
    """IP mode: a layer 3 socket; ``sr`` of several requests, each matched to its reply."""
    resp = tt.start_responder(tools, sock_dir, "master", "--mode", "ip")
    path = os.path.join(sock_dir, "memif.sock")
    with MemifSocket(path, mode=InterfaceMode.IP, loop_factory=loop_factory,
                     connect_timeout=20) as s:
        ans, unans = s.sr([echo(seq) for seq in range(1, 9)], timeout=5, verbose=0)
        assert len(unans) == 0 and len(ans) == 8, (ans, unans)
        for sent, received in ans:
            assert isinstance(received, IP) and not isinstance(received, Ether)
            check_reply(received, sent[ICMP].seq)
        # a payload without an IP layer gets IP() (its own addresses): the responder
        # ignores it, and scapy sees no answer within the timeout
        assert s.sr1(ICMP(seq=99), timeout=0.3, verbose=0) is None
    resp.signal()
    rc, out, err = resp.finish()
    assert rc == 0, out + err
    assert "answered 0 ARP and 8 echo requests, ignored 1 packets" in out, out


# --- against dpdk-testpmd --forward-mode=icmpecho ---------------------------------------------


@pytest.mark.interop
@pytest.mark.both_loops
@pytest.mark.parametrize("role", ["master", "slave"], ids=["py-master", "py-slave"])
async def test_sr1_echo_against_testpmd_icmpecho(
        sock_dir: str, dpdk: str, role: str,
        loop_factory: Callable[[], asyncio.AbstractEventLoop], no_threads_left: None) -> None:
    """testpmd's icmpecho swaps the MACs and the IPs of an echo request and answers ARP
    with its port's MAC.  A testpmd forwarder drops what it receives in its first moments
    after link-up (docs/interop.md): scapy's own ``retry`` resends until answered."""
    path = os.path.join(sock_dir, "memif.sock")
    s: MemifSocket | None = None
    try:
        if role == "master":  # DPDK's client connects once, at start: we listen first
            s = await asyncio.to_thread(MemifSocket, path, is_master=True, src_mac=OUR_MAC,
                                        connect_timeout=None, loop_factory=loop_factory)
            tp = await TestPmd("client", path, forward_mode="icmpecho").__aenter__()
        else:
            tp = await TestPmd("server", path, forward_mode="icmpecho").__aenter__()
            s = await asyncio.to_thread(MemifSocket, path, src_mac=OUR_MAC,
                                        connect_timeout=None, loop_factory=loop_factory)
        try:
            await asyncio.to_thread(s.wait_connected, 15)
            await tp.wait_connected(15)
            arp = await asyncio.to_thread(
                s.sr1, Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc=OUR_IP, hwsrc=OUR_MAC,
                                                            pdst=RESPONDER_IP),
                timeout=0.5, retry=20, verbose=0)
            assert arp is not None and arp[ARP].op == 2, arp
            assert tp.mac is not None and arp[ARP].hwsrc == tp.mac.lower()
            for seq in (1, 2, 3):
                reply = await asyncio.to_thread(s.sr1, Ether(dst=tp.mac) / echo(seq),
                                                timeout=2, retry=3, verbose=0)
                check_reply(reply, seq)
                assert isinstance(reply, Ether) and (reply.src, reply.dst) == (tp.mac, OUR_MAC)
        finally:
            await tp.stop()
    finally:
        if s is not None:
            await asyncio.to_thread(s.close)


# --- against interfaces of this test ----------------------------------------------------------


async def started(*args: object, **kwargs: object) -> MemifSocket:
    """A MemifSocket made off this loop: its constructor blocks until the link is up,
    and the peer is an interface on this loop."""
    return await asyncio.to_thread(MemifSocket, *args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.both_loops
async def test_sniff_what_memif_aio_sends(sock_path: str, no_leaks: None,
                                          loop_factory: Callable[[], asyncio.AbstractEventLoop],
                                          no_threads_left: None) -> None:
    async with Socket(sock_path) as sock:
        master = sock.new_interface(Arguments(id=3, is_master=True, name="sender"))
        s = await started(sock_path, id=3, loop_factory=loop_factory)
        try:
            await master.wait_connected(5)
            tx = master.get_tx_queue(0)
            sent = frames(40)
            # sniff() (scapy's function) on the opened socket, frames sent meanwhile
            sniffing = asyncio.create_task(asyncio.to_thread(
                sniff, opened_socket=s, count=25, timeout=20))
            await tx.write_burst(sent[:30])
            got = await sniffing
            assert [bytes(p) for p in got] == sent[:25]
            assert all(isinstance(p, Ether) and p[ICMP].seq == i for i, p in enumerate(got))
            assert all(p.sniffed_on == "socket0" for p in got)
            # the socket's own sniff(): the 5 frames buffered meanwhile come first
            await tx.write_burst(sent[30:])
            got = await asyncio.to_thread(s.sniff, count=15, timeout=20)
            assert [bytes(p) for p in got] == sent[25:]
            # arrival times are the receive task's, between the send and now
            assert all(0 < time.time() - p.time < 30 for p in got)  # type: ignore[operator]
            # timeout= ends a sniff that gets fewer than count
            await tx.write_burst(sent[:3])
            t0 = time.monotonic()
            got = await asyncio.to_thread(s.sniff, count=10, timeout=0.5)
            assert [bytes(p) for p in got] == sent[:3]
            assert time.monotonic() - t0 >= 0.5
            st = s.stats()
            assert (st.received, st.delivered, st.dropped, st.buffered) == (43, 43, 0, 0), st
        finally:
            await asyncio.to_thread(s.close)


@pytest.mark.both_loops
async def test_send_reaches_memif_aio(sock_path: str, no_leaks: None,
                                      loop_factory: Callable[[], asyncio.AbstractEventLoop],
                                      no_threads_left: None) -> None:
    async with Socket(sock_path) as sock:
        slave = sock.new_interface(Arguments(id=1, is_master=False, name="receiver",
                                             reconnect_min_delay=0.02))
        s = await started(sock_path, id=1, is_master=True, loop_factory=loop_factory,
                          src_mac=OUR_MAC, dst_mac=RESPONDER_MAC)
        try:
            await slave.wait_connected(5)
            rx = slave.get_rx_queue(0)
            pkt = Ether(src="02:aa:aa:aa:aa:aa", dst="02:bb:bb:bb:bb:bb") / echo(1)
            n = await asyncio.to_thread(s.send, pkt)
            assert n == len(bytes(pkt)) and pkt.sent_time is not None and pkt.sent_time > 0
            assert await asyncio.wait_for(rx.read_packet(), 5) == bytes(pkt)
            # unset Ether addresses (and a missing Ether) take the socket's
            for p in (Ether() / echo(2), echo(3)):
                await asyncio.to_thread(s.send, p)
                got = Ether(await asyncio.wait_for(rx.read_packet(), 5))
                assert (got.src, got.dst) == (OUR_MAC, RESPONDER_MAC)
                assert bytes(got[IP]) == bytes(p[IP])
            # scapy's sendp() on the opened socket (which it leaves open)
            await asyncio.to_thread(sendp, [Ether() / echo(q) for q in (10, 11)], socket=s,
                                    verbose=0)
            both = [Ether(await asyncio.wait_for(rx.read_packet(), 5)) for _ in range(2)]
            assert [p[ICMP].seq for p in both] == [10, 11] and not s.closed
            assert s.stats().sent == 5
            # link down: send raises; the socket follows the link back up
            await slave.disconnect()
            wait = asyncio.to_thread(wait_until, lambda: not s.is_connected(), "link down")
            await wait
            with pytest.raises(NotConnected):
                await asyncio.to_thread(s.send, echo(4))
            await slave.request_connection()
            await slave.wait_connected(5)
            await asyncio.to_thread(s.wait_connected, 5)
            await asyncio.to_thread(s.send, echo(5))
            got = Ether(await asyncio.wait_for(slave.get_rx_queue(0).read_packet(), 5))
            assert got[ICMP].seq == 5
            # and receives again on the new connection
            await slave.get_tx_queue(0).write_packet(bytes(Ether() / echo(6)))
            (r,) = await asyncio.to_thread(s.sniff, count=1, timeout=10)
            assert r[ICMP].seq == 6
        finally:
            await asyncio.to_thread(s.close)


@pytest.mark.both_loops
async def test_overflow_drops_newest_and_counts(
        sock_path: str, no_leaks: None, caplog: pytest.LogCaptureFixture,
        loop_factory: Callable[[], asyncio.AbstractEventLoop], no_threads_left: None) -> None:
    caplog.set_level(logging.WARNING, logger="memif_aio.scapy")
    async with Socket(sock_path) as sock:
        master = sock.new_interface(Arguments(id=0, is_master=True))
        s = await started(sock_path, buffer_size=4, loop_factory=loop_factory)
        try:
            await master.wait_connected(5)
            sent = frames(10)
            await master.get_tx_queue(0).write_burst(sent)
            await asyncio.to_thread(wait_until, lambda: s.stats().received == 10,
                                    "10 frames received")
            st = s.stats()
            assert (st.received, st.buffered, st.dropped, st.buffer_size) == (10, 4, 6, 4), st
            warnings = [r for r in caplog.records if "receive buffer full" in r.getMessage()]
            assert len(warnings) == 1, warnings  # once per episode, not once per frame
            got = await asyncio.to_thread(s.sniff, count=4, timeout=10)
            assert [bytes(p) for p in got] == sent[:4]  # tail drop: the oldest are kept
            # a new overflow episode is reported again
            await master.get_tx_queue(0).write_burst(sent)
            await asyncio.to_thread(wait_until, lambda: s.stats().received == 20,
                                    "20 frames received")
            assert (s.stats().dropped, s.stats().delivered) == (12, 4)
            warnings = [r for r in caplog.records if "receive buffer full" in r.getMessage()]
            assert len(warnings) == 2, warnings
            m = re.search(r"\((\d+) dropped so far\)", warnings[1].getMessage())
            assert m and 7 <= int(m[1]) <= 12, warnings[1].getMessage()
        finally:
            await asyncio.to_thread(s.close)


@pytest.mark.both_loops
async def test_from_interface(sock_path: str, no_leaks: None, no_threads_left: None) -> None:
    """Wrap an interface of this loop; close() leaves the interface as it was."""
    loop = asyncio.get_running_loop()
    async with Socket(sock_path) as sock:
        master = sock.new_interface(Arguments(id=0, is_master=True, name="m"))
        slave = sock.new_interface(Arguments(id=0, is_master=False, name="s"))
        await slave.wait_connected(5)
        await master.wait_connected(5)
        with pytest.raises(RuntimeError, match="own event loop"):
            MemifSocket.from_interface(slave, loop)
        tasks_before = asyncio.all_tasks()
        s = await asyncio.to_thread(MemifSocket.from_interface, slave, loop)
        try:
            assert s.interface is slave and s.is_connected()
            with pytest.raises(RuntimeError, match="another thread"):
                s.send(echo(1))  # on the loop it needs: refused, not a deadlock
            await master.get_tx_queue(0).write_burst(frames(3))
            got = await asyncio.to_thread(s.sniff, count=3, timeout=10)
            assert [bytes(p) for p in got] == frames(3)
            reply = asyncio.create_task(master.get_rx_queue(0).read_packet())
            await asyncio.to_thread(s.send, echo(7))
            assert Ether(await asyncio.wait_for(reply, 5))[ICMP].seq == 7
        finally:
            await asyncio.to_thread(s.close)
        assert asyncio.all_tasks() == tasks_before  # the receive task is gone
        assert slave.is_connected() and master.is_connected()
        # the interface reads normally again
        await master.get_tx_queue(0).write_packet(frames(1)[0])
        assert await asyncio.wait_for(slave.get_rx_queue(0).read_packet(), 5) == frames(1)[0]


# --- close() ------------------------------------------------------------------------------------


def test_close_leaves_nothing_behind(sock_dir: str, sock_path: str, no_leaks: None,
                                     loop_factory: Callable[[], asyncio.AbstractEventLoop],
                                     no_threads_left: None) -> None:
    """Master and slave adapters in this process: after close() no thread, eventfd,
    memfd mapping, memif socket or socket file remains, even with a sniffer and a
    blocked recv() running in other threads."""
    m = MemifSocket(sock_path, is_master=True, connect_timeout=None, loop_factory=loop_factory)
    assert os.listdir(sock_dir) == ["memif.sock"]
    s = MemifSocket(sock_path, loop_factory=loop_factory)
    m.wait_connected(5)
    fds = {m.fileno(), s.fileno()}
    m.send(Ether() / echo(1))
    (got,) = s.sniff(count=1, timeout=10)
    assert got[ICMP].seq == 1
    sniffer = AsyncSniffer(opened_socket=s)
    sniffer.start()
    blocked: list[BaseException] = []

    def recv() -> None:
        try:
            m.recv()
        except BaseException as exc:
            blocked.append(exc)

    receiver = threading.Thread(target=recv)
    receiver.start()
    s.send(Ether() / echo(2))
    wait_until(lambda: m.stats().received == 1, "the frame for recv()")
    receiver.join(10)
    assert not receiver.is_alive() and not blocked
    receiver = threading.Thread(target=recv)
    receiver.start()
    wait_until(lambda: m._inbox._holders == 1, "recv() blocked in select")
    m.close()
    receiver.join(10)
    assert not receiver.is_alive() and len(blocked) == 1 and isinstance(blocked[0], EOFError)
    s.close()
    sniffer.join(10)
    assert not sniffer.running
    m.close()  # idempotent
    assert os.listdir(sock_dir) == []
    assert m.closed and s.closed and m.fileno() == -1 and s.fileno() == -1
    for fd in fds:  # unless reused since, the eventfds are closed
        if os.path.exists(f"/proc/self/fd/{fd}"):
            assert os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[eventfd]"
    with pytest.raises(OSError):
        s.send(echo(3))
    with pytest.raises(EOFError):
        s.recv()
    assert MemifSocket.select([s], 1) == [s]  # a closed socket is reported at once


def test_constructor_failure_leaves_nothing(sock_dir: str, sock_path: str, no_leaks: None,
                                            loop_factory: Callable[[], asyncio.AbstractEventLoop],
                                            no_threads_left: None) -> None:
    with pytest.raises(TimeoutError, match="did not connect"):
        MemifSocket(sock_path, connect_timeout=0.3, loop_factory=loop_factory)
    with pytest.raises(TimeoutError):  # a master nobody connects to: its file is removed
        MemifSocket(sock_path, is_master=True, connect_timeout=0.2, loop_factory=loop_factory)
    assert os.listdir(sock_dir) == []
    # bad arguments are refused before anything starts
    with pytest.raises(ValueError, match="cache_line_size"):
        MemifSocket(sock_path, cache_line_size=32)
    with pytest.raises(TypeError):
        MemifSocket(sock_path, no_such_argument=1)
    with pytest.raises(ValueError, match="buffer_size"):
        MemifSocket(sock_path, buffer_size=0)


def test_forgotten_sockets_are_closed_at_exit(sock_dir: str) -> None:
    """A script that never closes its sockets still leaves no socket file behind."""
    code = ("import sys; from memif_aio.scapy import MemifSocket; "
            "m = MemifSocket(sys.argv[1], is_master=True, connect_timeout=None); "
            "s = MemifSocket(sys.argv[1]); m.wait_connected(5); print(m.is_connected())")
    path = os.path.join(sock_dir, "memif.sock")
    r = subprocess.run([sys.executable, "-c", code, path], env=tt.env(), capture_output=True,
                       text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, "True\n", "")
    assert os.listdir(sock_dir) == []


def test_import_memif_aio_does_not_load_scapy() -> None:
    code = ("import sys, memif_aio; "
            "assert not [m for m in sys.modules if m == 'scapy' or m.startswith(('scapy.', "
            "'memif_aio.scapy'))], sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], env=tt.env(), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
