"""The ``memif-aio`` tools: responder, ping, bench, capture, show; and their library side
(:mod:`memif_aio.cli.packet`, :mod:`memif_aio.capture`, :mod:`memif_aio.cli.status`).

Every tool runs as ``python -m memif_aio ...`` in a subprocess, against another tool
(both roles), against a peer in this process, or against DPDK ``dpdk-testpmd``
(marker ``interop``).  Packets and pcap files are checked with dpkt, an independent
implementation, never with our own parsers.  Each test's processes are stopped and
reaped, and the socket directory must be empty at the end (``sock_dir``): the status
endpoints (``<socket>.ctl``) are removed too.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import dpkt
import pytest

from memif_aio import Arguments, MemoryConfig, Socket
from memif_aio.capture import LINKTYPE_ETHERNET, LINKTYPE_RAW, Capture, PcapWriter, capture
from memif_aio.cli import packet as pk
from memif_aio.cli.status import StatusEndpoint, find_endpoints, format_show, query_status
from memif_aio.testing.testpmd import TestPmd
from memif_aio.wire import InterfaceMode

# every test, the real-peer ones included: no fd, mapping, child process or DPDK runtime
# directory may outlive it
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLES = pytest.mark.parametrize("resp_role, ping_role", [("master", "slave"),
                                                         ("slave", "master")],
                                ids=["responder-master", "responder-slave"])
REPLY = re.compile(r"^(\d+) bytes from ([\d.]+): icmp_seq=(\d+) ttl=(\d+) time=([\d.]+) ms$", re.M)
SUMMARY = re.compile(r"^(\d+) packets transmitted, (\d+) received, ([\d.]+)% packet loss, "
                     r"time \d+ms$", re.M)
RTT = re.compile(r"^rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms$", re.M)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


class Tool:
    """One ``memif-aio`` command in the background; stdout read incrementally."""

    def __init__(self, cwd: str, args: tuple[str, ...], tty: bool = False) -> None:
        self.args = args
        self.master_fd: int | None = None
        stdout: int = subprocess.PIPE
        if tty:
            self.master_fd, slave_fd = pty.openpty()
            stdout = slave_fd
        self.proc = subprocess.Popen([sys.executable, "-m", "memif_aio", *args], cwd=cwd,
                                     env=env(), stdout=stdout, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        if tty:
            os.close(slave_fd)
        self.out = ""
        self.err = ""
        self._eof_out = self._eof_err = False

    def _fds(self) -> list[int]:
        assert self.proc.stderr is not None
        out = self.master_fd if self.master_fd is not None else self.proc.stdout.fileno()  # type: ignore[union-attr]
        return [fd for fd, done in ((out, self._eof_out), (self.proc.stderr.fileno(),
                                                          self._eof_err)) if not done]

    def _read(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout``); False at EOF of both."""
        fds = self._fds()
        if not fds:
            return False
        for fd in select.select(fds, [], [], max(0.0, timeout))[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                chunk = b""
            is_err = fd == self.proc.stderr.fileno()  # type: ignore[union-attr]
            if not chunk:
                if is_err:
                    self._eof_err = True
                else:
                    self._eof_out = True
            elif is_err:
                self.err += chunk.decode(errors="replace")
            else:
                self.out += chunk.decode(errors="replace")
        return bool(self._fds())

    def wait_for(self, text: str, timeout: float = 15, stderr: bool = False) -> None:
        deadline = time.monotonic() + timeout
        while text not in (self.err if stderr else self.out):
            left = deadline - time.monotonic()
            assert left > 0, f"{self.args}: no {text!r} in {self.out!r} {self.err!r}"
            if not self._read(left):
                break
        assert text in (self.err if stderr else self.out), \
            f"{self.args} ended without {text!r}: {self.out!r} {self.err!r}"

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        deadline = time.monotonic() + timeout
        while self._read(max(0.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                break
        rc = self.proc.wait(max(0.1, deadline - time.monotonic()))
        self.close()
        return rc, self.out, self.err

    def signal(self, sig: int = signal.SIGINT) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        if self.master_fd is not None:
            os.close(self.master_fd)
            self.master_fd = None


@pytest.fixture
def tools(sock_dir: str) -> Iterator[list[Tool]]:
    """Start tools with ``start(tools, sock_dir, *args)``; any still running at the end
    is killed (and the test fails: tests stop what they start)."""
    started: list[Tool] = []
    yield started
    alive = []
    for t in started:
        if t.proc.poll() is None:
            alive.append(t.args)
            t.proc.kill()
        t.proc.wait(10)
        t.close()
    assert not alive, f"tools left running: {alive}"


def start(started: list[Tool], cwd: str, *args: str, tty: bool = False) -> Tool:
    t = Tool(cwd, args, tty)
    started.append(t)
    return t


def run(cwd: str, *args: str, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memif_aio", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def wait_path(path: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def start_responder(tools: list[Tool], sock_dir: str, role: str, *extra: str) -> Tool:
    path = os.path.join(sock_dir, "memif.sock")
    t = start(tools, sock_dir, "responder", "--socket", path, "--role", role, *extra)
    t.wait_for("answering for")
    if role == "master":
        wait_path(path)
    return t


def check_ping_output(out: str, count: int, size: int = 56) -> list[float]:
    replies = REPLY.findall(out)
    assert [int(r[2]) for r in replies] == list(range(1, count + 1)), out
    assert all(int(r[0]) == size + 8 and r[1] == "192.168.1.1" and r[3] == "64"
               for r in replies), out
    m = SUMMARY.search(out)
    assert m and (int(m[1]), int(m[2]), float(m[3])) == (count, count, 0.0), out
    rtt = RTT.search(out)
    assert rtt, out
    lo, avg, hi, _mdev = map(float, rtt.groups())
    times = [float(r[4]) for r in replies]
    assert lo == pytest.approx(min(times), abs=1e-3) and hi == pytest.approx(max(times), abs=1e-3)
    assert lo <= avg <= hi
    return times


# --- packet: our builders checked by dpkt ------------------------------------------------------


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2, the checksum 220d
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert pk.checksum(data) == 0x220D
    assert pk.checksum(data + b"\x22\x0d") == 0  # a correct checksum sums to zero
    assert pk.checksum(b"") == 0xFFFF
    assert pk.checksum(b"\x01") == (~0x0100) & 0xFFFF  # odd length: padded with zero


def test_echo_request_frame_parsed_by_dpkt() -> None:
    mac_a, mac_b = pk.parse_mac("02:00:00:00:00:0a"), pk.parse_mac("02-00-00-00-00-0B")
    ip_a, ip_b = pk.parse_ip("10.1.2.3"), pk.parse_ip("10.1.2.4")
    frame = pk.echo_request_frame(mac_a, mac_b, ip_a, ip_b, ident=0x1234, seq=7,
                                  payload=b"abc" * 11)
    eth = dpkt.ethernet.Ethernet(frame)
    assert (eth.src, eth.dst, eth.type) == (mac_a, mac_b, 0x0800)
    ip = eth.data
    assert isinstance(ip, dpkt.ip.IP)
    assert (ip.src, ip.dst, ip.p, ip.ttl, ip.len) == (ip_a, ip_b, 1, 64, 20 + 8 + 33)
    icmp = ip.data
    assert isinstance(icmp, dpkt.icmp.ICMP)
    assert (icmp.type, icmp.code) == (8, 0)
    assert (icmp.data.id, icmp.data.seq, icmp.data.data) == (0x1234, 7, b"abc" * 11)
    # dpkt recomputes both checksums when they are zeroed: they must equal ours
    ours_ip, ours_icmp = ip.sum, icmp.sum
    ip.sum = 0
    icmp.sum = 0
    again = dpkt.ip.IP(bytes(ip))
    assert again.sum == ours_ip and again.data.sum == ours_icmp
    # ip mode: the same packet without the Ethernet header
    bare = pk.echo_request_frame(None, None, ip_a, ip_b, 0x1234, 7, b"abc" * 11)
    assert bare == frame[14:]


def test_responder_replies_parsed_by_dpkt() -> None:
    me_mac, me_ip = pk.parse_mac("02:fe:00:00:00:01"), pk.parse_ip("192.168.1.1")
    peer_mac, peer_ip = pk.parse_mac("02:fe:00:00:00:02"), pk.parse_ip("192.168.1.2")
    # ARP request for our address -> reply
    req = dpkt.ethernet.Ethernet(dst=b"\xff" * 6, src=peer_mac, type=0x0806,
                                 data=dpkt.arp.ARP(op=1, sha=peer_mac, spa=peer_ip,
                                                   tha=b"\0" * 6, tpa=me_ip))
    reply = pk.respond(bytes(req), me_mac, me_ip)
    assert reply is not None
    eth = dpkt.ethernet.Ethernet(reply)
    arp = eth.data
    assert (eth.dst, eth.src, eth.type) == (peer_mac, me_mac, 0x0806)
    assert (arp.op, arp.sha, arp.spa, arp.tha, arp.tpa) == (2, me_mac, me_ip, peer_mac, peer_ip)
    # ... but not for another address
    req.data.tpa = pk.parse_ip("192.168.1.9")
    assert pk.respond(bytes(req), me_mac, me_ip) is None
    # echo request built by dpkt (with its own checksums) -> echo reply
    echo = dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=99, seq=3, data=b"x" * 100))
    ip = dpkt.ip.IP(src=peer_ip, dst=me_ip, p=1, ttl=17, data=echo, id=5)
    ip.len = len(bytes(ip))
    frame = bytes(dpkt.ethernet.Ethernet(dst=me_mac, src=peer_mac, type=0x0800, data=ip))
    out = pk.respond(frame + b"\0" * 10, me_mac, me_ip)  # Ethernet padding is ignored
    assert out is not None
    eth = dpkt.ethernet.Ethernet(out)
    rip = eth.data
    assert (eth.dst, eth.src) == (peer_mac, me_mac)
    assert (rip.src, rip.dst, rip.p) == (me_ip, peer_ip, 1)
    assert (rip.data.type, rip.data.data.id, rip.data.data.seq, rip.data.data.data) == \
        (0, 99, 3, b"x" * 100)
    sums = rip.sum, rip.data.sum
    rip.sum = 0
    rip.data.sum = 0
    again = dpkt.ip.IP(bytes(rip))
    assert (again.sum, again.data.sum) == sums
    # ip mode: the bare IPv4 packet
    bare = pk.respond(bytes(ip), None, me_ip)
    assert bare == out[14:]
    # a corrupted ICMP checksum, a wrong destination MAC, a truncated packet: no answer
    bad = bytearray(frame)
    bad[-1] ^= 0xFF
    assert pk.respond(bytes(bad), me_mac, me_ip) is None
    assert pk.respond(pk.ethernet(b"\x02" * 6, peer_mac, 0x0800, bytes(ip)), me_mac,
                      me_ip) is None
    assert pk.respond(frame[:30], me_mac, me_ip) is None
    assert pk.respond(b"", me_mac, me_ip) is None


def test_address_parsing() -> None:
    assert pk.format_mac(pk.parse_mac("2:FE:0:0:0:1")) == "02:fe:00:00:00:01"
    assert pk.format_ip(pk.parse_ip("192.168.1.1")) == "192.168.1.1"
    for bad in ("02:fe:00:00:00", "02:fe:00:00:00:0g", "", "02:fe:00:00:00:001"):
        with pytest.raises(ValueError):
            pk.parse_mac(bad)
    for bad in ("192.168.1", "1.2.3.256", "::1"):
        with pytest.raises(ValueError):
            pk.parse_ip(bad)


# --- responder + ping ----------------------------------------------------------------------------


@ROLES
def test_ping_our_responder(sock_dir: str, tools: list[Tool], resp_role: str,
                            ping_role: str) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    resp = start_responder(tools, sock_dir, resp_role)
    r = run(sock_dir, "ping", "--socket", path, "--role", ping_role, "-c", "5", "-i", "0.05")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ARP: 192.168.1.1 is at 02:fe:00:00:00:01" in r.stdout
    assert "PING 192.168.1.1 (192.168.1.1) 56(84) bytes of data." in r.stdout
    check_ping_output(r.stdout, 5)
    if resp_role == "master":  # a master responder serves the next slave too
        r = run(sock_dir, "ping", "--socket", path, "--role", ping_role, "-c", "2", "-i",
                "0.05")
        assert r.returncode == 0, r.stdout + r.stderr
    else:
        resp.wait_for("link down: interface deleted", stderr=True)
    resp.signal(signal.SIGINT)
    rc, out, err = resp.finish()
    assert rc == 0, out + err
    n_arp, n_echo = (2, 7) if resp_role == "master" else (1, 5)
    assert f"answered {n_arp} ARP and {n_echo} echo requests, ignored 0 packets" in out, out
    assert "connected to 'memif-aio ping' interface 'ping'" in out


def test_ping_ip_mode_chained_and_queues(sock_dir: str, tools: list[Tool]) -> None:
    """ip mode (bare IPv4, no ARP), 5000-byte payloads over 1024-byte buffers (chains of
    five), two queue pairs, the responder as slave: --bsize comes from it."""
    path = os.path.join(sock_dir, "memif.sock")
    resp = start_responder(tools, sock_dir, "slave", "--mode", "ip", "--bsize", "1024",
                           "--queues", "2", "--ip", "10.0.0.1")
    r = run(sock_dir, "ping", "10.0.0.1", "--socket", path, "--role", "master", "--mode", "ip",
            "--queues", "2", "--ip", "10.0.0.2", "-c", "4", "-i", "0.02", "-s", "5000")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ARP" not in r.stdout
    replies = REPLY.findall(r.stdout)
    assert [(int(x[0]), x[1], int(x[2])) for x in replies] == \
        [(5008, "10.0.0.1", i) for i in range(1, 5)], r.stdout
    assert SUMMARY.search(r.stdout)[2] == "4"  # type: ignore[index]
    resp.wait_for("link down", stderr=True)
    resp.signal(signal.SIGTERM)
    rc, out, _ = resp.finish()
    assert rc == 0 and "answered 0 ARP and 4 echo requests" in out, out
    assert "2 queue pair(s), ring 1024, buffer 1024" in out


def test_ping_losses_exit_1(sock_dir: str, tools: list[Tool]) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    resp = start_responder(tools, sock_dir, "master", "--ip", "10.9.9.9")
    # ethernet: nobody answers ARP for 192.168.1.1
    r = run(sock_dir, "ping", "--socket", path, "-c", "2", "--timeout", "0.6")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no ARP reply from 192.168.1.1 within 0.6 s" in r.stderr
    # the same responder answers for its own address
    r = run(sock_dir, "ping", "10.9.9.9", "--socket", path, "-c", "3", "-i", "0.02",
            "-W", "0.3")
    assert r.returncode == 0, r.stdout + r.stderr
    resp.signal()
    assert resp.finish()[0] == 0
    # ip mode, a responder for another address: every request lost
    resp = start_responder(tools, sock_dir, "master", "--mode", "ip", "--ip", "10.9.9.9")
    r = run(sock_dir, "ping", "10.9.9.8", "--socket", path, "--mode", "ip", "-c", "3", "-i",
            "0.02", "-W", "0.3")
    assert r.returncode == 1, r.stdout + r.stderr
    assert not REPLY.search(r.stdout)
    assert "3 packets transmitted, 0 received, 100% packet loss" in r.stdout
    assert "rtt" not in r.stdout
    resp.signal()
    rc, out, _ = resp.finish()
    assert rc == 0 and "answered 0 ARP and 0 echo requests, ignored 3 packets" in out, out


def test_ping_connection_errors_exit_2(sock_dir: str, tools: list[Tool]) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    # nothing listens: a slave retries until --timeout
    t0 = time.monotonic()
    r = run(sock_dir, "ping", "--socket", path, "-c", "1", "--timeout", "0.5")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"memif-aio ping: could not connect to {path} within 0.5 s: connect to {path}: " \
           "No such file or directory" in r.stderr
    assert time.monotonic() - t0 < 10
    # a master nobody connects to
    r = run(sock_dir, "ping", "--socket", path, "--role", "master", "-c", "1", "--timeout",
            "0.3")
    assert r.returncode == 2
    assert f"no slave connected to {path} (id 0) within 0.3 s" in r.stderr
    # --timeout 0: the responder waits for its first slave without a limit; the refused
    # pings below give it none, and on a loaded machine they take longer than its default 10 s
    resp = start_responder(tools, sock_dir, "master", "--secret", "s3cret", "--id", "4",
                           "--timeout", "0")
    # refused by the peer: its DISCONNECT reason is printed, at once (no waiting --timeout)
    for extra, reason in ((["--id", "4", "--secret", "wrong"], "incorrect secret"),
                          (["--id", "4"], "secret required"),
                          (["--id", "5", "--secret", "s3cret"], "unmatched interface id"),
                          (["--id", "4", "--secret", "s3cret", "--mode", "ip"],
                           "mode mismatch")):
        t0 = time.monotonic()
        r = run(sock_dir, "ping", "--socket", path, "-c", "1", "--timeout", "20", *extra)
        assert r.returncode == 2, (extra, r.stdout, r.stderr)
        assert r.stderr.strip().splitlines()[-1].lower() == \
            f"memif-aio ping: connection refused: {reason}".lower(), r.stderr
        assert time.monotonic() - t0 < 10
    # a second master on a path a live process serves
    r = run(sock_dir, "ping", "--socket", path, "--role", "master", "-c", "1")
    assert r.returncode == 2
    assert "in use by a live listener" in r.stderr
    # the right secret works
    r = run(sock_dir, "ping", "--socket", path, "-c", "1", "--id", "4", "--secret", "s3cret")
    assert r.returncode == 0, r.stdout + r.stderr
    resp.signal()
    assert resp.finish()[0] == 0
    # usage errors
    for bad in (["ping", "-c", "x"], ["ping", "--role", "boss"], ["ping", "999.1.1.1"],
                ["ping", "--rsize", "15"], ["bench", "fly"], ["bench", "tx", "--size", "10"],
                ["capture"], ["responder", "--mac", "zz"]):
        r = run(sock_dir, *bad, "--socket", path, "--timeout", "0.2")
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        assert r.stderr.strip(), bad


def test_socket_and_secret_from_the_environment(sock_dir: str, tools: list[Tool]) -> None:
    """A ping with neither --socket nor --secret reaches the responder through
    $MEMIF_SOCKET with $MEMIF_SECRET; a wrong $MEMIF_SECRET is refused at once (the peer's
    reason); --secret beats the environment."""
    path = os.path.join(sock_dir, "memif.sock")
    resp = start_responder(tools, sock_dir, "master", "--secret", "s3cret", "--timeout", "0")

    def ping(secret: str, *extra: str) -> subprocess.CompletedProcess[str]:
        e = dict(env(), MEMIF_SOCKET=path, MEMIF_SECRET=secret)
        return subprocess.run([sys.executable, "-m", "memif_aio", "ping", "-c", "1",
                               "--timeout", "20", *extra], cwd=sock_dir, env=e,
                              capture_output=True, text=True, timeout=40,
                              stdin=subprocess.DEVNULL)

    r = ping("s3cret")
    assert r.returncode == 0, r.stdout + r.stderr
    check_ping_output(r.stdout, 1)
    r = ping("wrong")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        "memif-aio ping: connection refused: incorrect secret", r.stderr
    r = ping("wrong", "--secret", "s3cret")
    assert r.returncode == 0, r.stdout + r.stderr
    resp.signal()
    rc, out, _ = resp.finish()
    # both links were served (the refused attempt never got one)
    assert rc == 0 and "answered 2 ARP and 2 echo requests" in out, out


def test_ping_link_down_mid_run_exit_1(sock_dir: str, tools: list[Tool]) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    resp = start_responder(tools, sock_dir, "master", "--duration", "4")
    r = run(sock_dir, "ping", "--socket", path, "-c", "200", "-i", "0.05")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "memif-aio ping: link down: interface deleted" in r.stderr
    m = SUMMARY.search(r.stdout)
    assert m and 5 < int(m[1]) < 200, r.stdout
    assert resp.finish()[0] == 0


def test_ping_sigint_prints_statistics(sock_dir: str, tools: list[Tool]) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    resp = start_responder(tools, sock_dir, "master")
    ping = start(tools, sock_dir, "ping", "--socket", path, "-i", "0.05")  # no -c: forever
    ping.wait_for("icmp_seq=3 ")
    ping.signal(signal.SIGINT)
    rc, out, err = ping.finish()
    assert rc == 0, out + err
    m = SUMMARY.search(out)
    assert m and int(m[1]) == int(m[2]) >= 3, out
    resp.signal()
    assert resp.finish()[0] == 0


# --- bench -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rx_role", ["master", "slave"])
def test_bench_tx_to_rx(sock_dir: str, tools: list[Tool], rx_role: str) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    tx_role = "slave" if rx_role == "master" else "master"
    rx = start(tools, sock_dir, "bench", "rx", "--socket", path, "--role", rx_role, "--json",
               "--queues", "2", "--progress", "0.2")
    if rx_role == "master":
        wait_path(path)
    r = run(sock_dir, "bench", "tx", "--socket", path, "--role", tx_role, "--count", "30000",
            "--size", "100", "--queues", "2", "--json", "--progress", "0", "--rate", "50000")
    assert r.returncode == 0, r.stdout + r.stderr
    txs = json.loads(r.stdout)
    assert (txs["mode"], txs["packets"], txs["bytes"], txs["drops"], txs["queues"]) == \
        ("tx", 30000, 3_000_000, 0, 2), txs
    assert txs["link_down"] is None and txs["exit_status"] == 0
    rc, out, err = rx.finish()
    assert rc == 0, out + err
    rxs = json.loads(out)  # the summary alone on stdout; progress went to stderr
    # tx waited for the rings to drain before leaving: everything arrived, in order
    assert (rxs["packets"], rxs["bytes"], rxs["drops"], rxs["reordered"], rxs["other"]) == \
        (30000, 3_000_000, 0, 0, 0), rxs
    assert rxs["link_down"] == "interface deleted"
    assert "memif-aio bench: link down: interface deleted" in err
    assert re.search(r"^bench rx +\d+\.\d s +\d+ packets .* drops 0$", err, re.M), err


def test_bench_progress_on_a_terminal(sock_dir: str, tools: list[Tool]) -> None:
    """On a TTY the progress line is redrawn with \\r, then the summary follows."""
    path = os.path.join(sock_dir, "memif.sock")
    rx = start(tools, sock_dir, "bench", "rx", "--socket", path, "--role", "master",
               "--progress", "0.2", tty=True)
    wait_path(path)
    r = run(sock_dir, "bench", "tx", "--socket", path, "--duration", "1.2", "--rate", "20000",
            "--progress", "0.3")
    assert r.returncode == 0, r.stdout + r.stderr
    # not a terminal: one plain line per period
    plain = re.findall(r"^bench tx +[\d.]+ s +(\d+) packets +[\d.]+ [kM]?pkt/s +drops 0$",
                       r.stdout, re.M)
    assert len(plain) >= 2 and "\r" not in r.stdout, r.stdout
    m = re.search(r"^bench tx: (\d+) packets, (\d+) bytes in ([\d.]+) s: .* 0 drops$",
                  r.stdout, re.M)
    assert m and int(m[2]) == 64 * int(m[1]), r.stdout
    sent = int(m[1])
    # --rate 20000 for 1.2 s
    assert 1000 < sent <= 20000 * 1.2 + 64, r.stdout
    rc, out, err = rx.finish()
    assert rc == 0, out + err
    redraws = re.findall(r"\rbench rx +[\d.]+ s +\d+ packets", out)
    assert len(redraws) >= 3, repr(out)
    last_progress = out.rindex("\rbench rx")
    summary = out.index("bench rx: ")
    assert summary > last_progress and out[summary - 2:summary] == "\r\n", repr(out)
    assert f"bench rx: {sent} packets" in out


@pytest.mark.parametrize("bench_role", ["master", "slave"])
async def test_bench_echo_against_a_library_peer(sock_dir: str, tools: list[Tool],
                                                 bench_role: str) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    echo = start(tools, sock_dir, "bench", "echo", "--socket", path, "--role", bench_role,
                 "--macswap", "--json", "--progress", "0")
    if bench_role == "master":
        await asyncio.to_thread(wait_path, path)
    frames = [pk.ethernet(b"\x02" * 5 + bytes([1]), b"\x02" * 5 + bytes([2]), 0x88B6,
                          i.to_bytes(4, "big") * (i % 300 + 12)) for i in range(500)]
    async with Socket(path) as sock:
        itf = sock.new_interface(Arguments(id=0, is_master=bench_role != "master"))
        await itf.wait_connected(15)
        rx, tx = itf.get_rx_queue(0), itf.get_tx_queue(0)
        got: list[bytes] = []
        for i in range(0, len(frames), 50):
            await tx.write_burst(frames[i:i + 50])
            while len(got) < i + 50:
                got += await asyncio.wait_for(rx.read_burst(64), 10)
    assert got == [f[6:12] + f[0:6] + f[12:] for f in frames]
    rc, out, err = await asyncio.to_thread(echo.finish)
    assert rc == 0, out + err
    s = json.loads(out)
    assert (s["mode"], s["packets"], s["bytes"]) == ("echo", 500, sum(map(len, frames))), s


# --- capture -----------------------------------------------------------------------------------


def read_pcap(path: str) -> tuple[int, list[tuple[float, bytes]]]:
    """Read a pcap file with dpkt (not with our own code)."""
    with open(path, "rb") as f:
        r = dpkt.pcap.Reader(f)
        return r.datalink(), [(ts, bytes(buf)) for ts, buf in r]


def test_capture_command_as_responder(sock_dir: str, tools: list[Tool]) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    pcap = os.path.join(sock_dir, "out.pcap")
    t0 = time.time()
    cap = start(tools, sock_dir, "capture", "-w", pcap, "--socket", path, "--role", "master",
                "--act", "responder")
    wait_path(path)
    r = run(sock_dir, "ping", "--socket", path, "-c", "3", "-i", "0.05", "-s", "100")
    assert r.returncode == 0, r.stdout + r.stderr
    cap.signal(signal.SIGINT)
    rc, out, err = cap.finish()
    t1 = time.time()
    assert rc == 0, out + err
    assert out == ""  # messages go to stderr: stdout may carry the pcap ('-w -')
    assert f"8 packets (4 received, 4 sent) written to {pcap}" in err
    linktype, recs = read_pcap(pcap)
    os.unlink(pcap)
    assert linktype == dpkt.pcap.DLT_EN10MB == LINKTYPE_ETHERNET
    assert len(recs) == 8
    stamps = [ts for ts, _ in recs]
    assert stamps == sorted(stamps) and t0 - 1 <= stamps[0] and stamps[-1] <= t1 + 1
    kinds: list[tuple[Any, ...]] = []
    for _ts, buf in recs:
        eth = dpkt.ethernet.Ethernet(buf)
        if isinstance(eth.data, dpkt.arp.ARP):
            kinds.append(("arp", eth.data.op))
        else:
            ip = eth.data
            assert isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.icmp.ICMP)
            assert len(ip.data.data.data) == 100
            kinds.append(("icmp", ip.data.type, ip.data.data.seq))
    assert kinds == [("arp", 1), ("arp", 2)] + [x for s in (1, 2, 3)
                                                for x in (("icmp", 8, s), ("icmp", 0, s))]


def test_capture_command_limits_and_ip_mode(sock_dir: str, tools: list[Tool]) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    pcap = os.path.join(sock_dir, "ip.pcap")
    # --count ends the capture by itself; ip mode is LINKTYPE_RAW; --snaplen cuts
    cap = start(tools, sock_dir, "capture", "-w", pcap, "--socket", path, "--role", "slave",
                "--mode", "ip", "--act", "echo", "--count", "6", "--direction", "rx",
                "--snaplen", "40")
    r = run(sock_dir, "ping", "10.1.1.1", "--socket", path, "--role", "master", "--mode", "ip",
            "-c", "6", "-i", "0.05", "-W", "0.2")
    # the echo sends the requests back unchanged: ping ignores them (they are not replies)
    assert r.returncode == 1, r.stdout + r.stderr
    rc, out, err = cap.finish()
    assert rc == 0, out + err
    assert f"6 packets (6 received, 0 sent) written to {pcap}" in err
    linktype, recs = read_pcap(pcap)
    assert linktype == LINKTYPE_RAW == 101
    assert len(recs) == 6
    with open(pcap, "rb") as f:
        raw = f.read()
    # classic pcap, microseconds, snaplen 40; each record keeps the original length 84
    assert struct.unpack_from("<IHHiIII", raw) == (0xA1B2C3D4, 2, 4, 0, 0, 40, 101)
    assert struct.unpack_from("<II", raw, 24 + 8) == (40, 84)
    for _ts, buf in recs:
        assert len(buf) == 40
        ip = dpkt.ip.IP(buf)
        assert (ip.len, ip.p, ip.dst) == (84, 1, pk.parse_ip("10.1.1.1"))
    # --duration counts from the start: with no peer at all it ends by itself, long
    # before --timeout (an empty but valid file)
    cap = start(tools, sock_dir, "capture", "-w", pcap, "--socket", path, "--role", "master",
                "--duration", "0.5", "--timeout", "120")
    rc, out, err = cap.finish(timeout=60)
    assert rc == 0 and "0 packets (0 received, 0 sent)" in err, out + err
    assert "memif-aio capture: --duration 0.5 s ended before a link came up" in err, err
    assert read_pcap(pcap) == (LINKTYPE_ETHERNET, [])
    os.unlink(pcap)
    # an unwritable file: exit status 2
    r = run(sock_dir, "capture", "-w", os.path.join(sock_dir, "no", "such.pcap"), "--socket",
            path)
    assert r.returncode == 2 and "cannot write" in r.stderr


async def test_capture_library_api(sock_path: str, tmp_path: object, no_leaks: None) -> None:
    out = os.path.join(str(tmp_path), "lib.pcap")
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True, name="m"))
        s = sock.new_interface(Arguments(id=0, is_master=False, name="s"))
        await asyncio.gather(m.wait_connected(5), s.wait_connected(5))
        pkts = [bytes([i]) * (60 + i) for i in range(10)]
        async with capture(m, out, count=15) as cap:
            assert cap.linktype == LINKTYPE_ETHERNET
            await s.get_tx_queue(0).write_burst(pkts)  # master receives 10
            got: list[bytes] = []
            while len(got) < 10:
                got += await m.get_rx_queue(0).read_burst(64)
            await m.get_tx_queue(0).write_burst(pkts[:8])  # master sends 8: 5 recorded
            assert await cap.wait(5)
            assert (cap.packets, cap.received, cap.sent, cap.done) == (15, 10, 5, True)
        # detached: later traffic is not recorded
        await m.get_tx_queue(0).write_burst(pkts)
        n = 0
        while n < 18:
            n += len(await s.get_rx_queue(0).read_burst(64))
    _lt, recs = read_pcap(out)
    assert [b for _, b in recs] == pkts + pkts[:5]
    # the capture object alone, as a tap on both interfaces, by duration, tx only
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=1, is_master=True, mode=InterfaceMode.IP))
        s = sock.new_interface(Arguments(id=1, is_master=False, mode=InterfaceMode.IP))
        await asyncio.gather(m.wait_connected(5), s.wait_connected(5))
        with open(out, "wb") as f:
            cap = Capture(f, LINKTYPE_RAW, duration=0.3, direction="tx")
            cap.attach(m)
            cap.attach(s)
            await s.get_tx_queue(0).write_packet(b"\x45" + bytes(19))
            await m.get_rx_queue(0).read_packet()
            assert await cap.wait(5)
            await s.get_tx_queue(0).write_packet(b"late")  # after the duration
            await m.get_rx_queue(0).read_packet()
            cap.close()
            assert not f.closed  # a file we passed in stays open
    lt, recs = read_pcap(out)
    assert lt == LINKTYPE_RAW and [b for _, b in recs] == [b"\x45" + bytes(19)]
    # PcapWriter timestamps: microseconds, as given
    with PcapWriter(out, linktype=LINKTYPE_ETHERNET) as w:
        w.write(b"abc", ts=1700000000.123456)
        w.write(b"defg" * 100, ts=1700000001.5)
    _lt, recs = read_pcap(out)
    assert [b for _, b in recs] == [b"abc", b"defg" * 100]
    assert [t for t, _ in recs] == pytest.approx([1700000000.123456, 1700000001.5], abs=1e-6)


# --- show --------------------------------------------------------------------------------------


def test_show_other_processes(sock_dir: str, tools: list[Tool]) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    resp = start_responder(tools, sock_dir, "master", "--rx-mode", "polling")
    ping = start(tools, sock_dir, "ping", "--socket", path, "-i", "0.02", "--rsize", "8",
                 "--bsize", "4096", "--name", "pinger")
    ping.wait_for("icmp_seq=5 ")
    r = run(sock_dir, "show", "--socket", path, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    docs = {d["app"]: d for d in json.loads(r.stdout)}
    assert set(docs) == {"memif-aio responder", "memif-aio ping"}
    assert docs["memif-aio responder"]["pid"] == resp.proc.pid
    assert docs["memif-aio responder"]["endpoint"] == path + ".ctl"
    assert docs["memif-aio ping"]["endpoint"] == f"{path}.{ping.proc.pid}.ctl"
    (m,) = docs["memif-aio responder"]["interfaces"]
    (s,) = docs["memif-aio ping"]["interfaces"]
    assert (m["role"], m["name"], m["state"], m["peer_name"], m["remote_name"]) == \
        ("master", "responder", "connected", "pinger", "memif-aio ping")
    assert (s["role"], s["name"], s["state"], s["peer_name"], s["remote_name"]) == \
        ("slave", "pinger", "connected", "responder", "memif-aio responder")
    for d in (m, s):  # the slave's geometry, negotiated
        assert d["memory"] == {"num_queue_pairs": 1, "log2_ring_size": 8,
                               "packet_buffer_size": 4096, "num_rx_queues": 1,
                               "num_tx_queues": 1}
        assert len(d["regions"]) == 1 and d["regions"][0][1] > 2 * 256 * 4096
        assert d["rx"][0]["packets"] >= 5 and d["tx"][0]["packets"] >= 5
    assert (m["rx_mode"], s["rx_mode"]) == ("polling", "interrupt")
    assert m["rx"][0]["ring_size"] == 256
    r = run(sock_dir, "show", "--socket", path)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert f"process {resp.proc.pid} (memif-aio responder, memif_aio " in text
    assert "interface responder (id 0, master)" in text
    assert "interface pinger (id 0, slave)" in text
    assert text.count("state connected, connections 1") == 2
    assert 'remote-name "memif-aio ping" remote-interface "pinger"' in text
    assert "mode ethernet rx-mode polling secret no" in text
    assert text.count("queue-pairs 1 ring-size 256 buffer-size 4096 num-regions 1") == 2
    assert re.search(r"rx queue 0 \(slave-to-master ring\): ring-size 256 head \d+ tail \d+ "
                     r"interrupts \d+\n    packets \d+ bytes \d+ drops 0 bad-descriptors 0",
                     text), text
    assert re.search(r"rx queue 0 \(master-to-slave ring\)", text), text
    ping.signal(signal.SIGINT)
    assert ping.finish()[0] == 0
    resp.signal(signal.SIGINT)
    assert resp.finish()[0] == 0
    assert not [n for n in os.listdir(sock_dir) if n.endswith(".ctl")]
    r = run(sock_dir, "show", "--socket", path)
    assert r.returncode == 2
    assert f"no memif-aio process answers for {path}" in r.stderr


async def test_status_endpoint_library(sock_path: str, no_leaks: None) -> None:
    """format_show on this process's interfaces; the endpoint serves them, refuses
    garbage, replaces a stale file, steps aside for a live one, and cleans up."""
    stale = sock_path + ".ctl"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)  # a file left by a killed process: nobody listens
    s.close()
    async with Socket(sock_path, app_name="lib") as sock:
        m = sock.new_interface(Arguments(id=3, is_master=True, name="lib-m", secret=b"x"))
        sl = sock.new_interface(Arguments(id=3, is_master=False, name="lib-s", secret=b"x"))
        await asyncio.gather(m.wait_connected(5), sl.wait_connected(5))
        await sl.get_tx_queue(0).write_packet(b"x" * 100)
        await m.get_rx_queue(0).read_packet()
        text = format_show([m, sl])
        assert "interface lib-m (id 3, master)" in text and "secret yes" in text
        assert re.search(r"rx queue 0 \(slave-to-master ring\): ring-size 1024 head 1 tail 1 "
                         r"interrupts \d+\n    packets 1 bytes 100 drops 0", text), text
        async with StatusEndpoint(sock_path, lambda: sock.interfaces, "lib") as ep1:
            assert ep1.name == stale  # the stale file was replaced
            assert os.stat(stale).st_mode & 0o777 == 0o600
            async with StatusEndpoint(sock_path, lambda: [m], "lib2") as ep2:
                assert ep2.name == f"{sock_path}.{os.getpid()}.ctl"
                assert find_endpoints(sock_path) == [ep1.name, ep2.name]
                doc1 = await asyncio.to_thread(query_status, stale)
                doc2 = await asyncio.to_thread(query_status, ep2.name)
            assert [i["name"] for i in doc1["interfaces"]] == ["lib-m", "lib-s"]
            assert [i["name"] for i in doc2["interfaces"]] == ["lib-m"]
            assert doc1["pid"] == os.getpid() and doc1["app"] == "lib"
            assert format_show(doc1["interfaces"]).splitlines()[0] == \
                "interface lib-m (id 3, master)"

            def garbage() -> bytes:
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.settimeout(5)
                c.connect(stale)
                c.sendall(b"hello\n")
                data = c.recv(4096)
                c.close()
                return data

            assert b"unknown request" in await asyncio.to_thread(garbage)
        assert not os.path.exists(stale) and find_endpoints(sock_path) == []
    # abstract memif sockets get abstract endpoints
    name = f"@memif-aio-test-{os.getpid()}"
    async with StatusEndpoint(name, lambda: [], "abs") as ep:
        assert ep.name == name + ".ctl"
        assert find_endpoints(name) == [name + ".ctl"]
        doc = await asyncio.to_thread(query_status, ep.name)
        assert doc["interfaces"] == [] and doc["app"] == "abs"
    assert find_endpoints(name) == []



async def test_format_show_unequal_queues(sock_path: str, no_leaks: None) -> None:
    """Unequal rx and tx counts are shown as such (queue-pairs only when they are equal)."""
    async with Socket(sock_path) as sock:
        mc = MemoryConfig(num_rx_queues=1, num_tx_queues=2, log2_ring_size=4)
        sl = sock.new_interface(Arguments(id=4, is_master=False, name="uneq-s", memory_config=mc))
        m = sock.new_interface(Arguments(id=4, is_master=True, name="uneq-m"))
        await asyncio.gather(m.wait_connected(5), sl.wait_connected(5))
        text = format_show([sl, m])
        assert text.count("rx-queues 1 tx-queues 2 ring-size 16") == 1, text
        assert "queue-pairs" not in text.split("interface uneq-m")[0], text
        assert len(re.findall(r"  tx queue \d", text.split("interface uneq-m")[0])) == 2, text

# --- issue 13 §5: --duration from the start, --timeout 0, no log output by default ------------


def _help(sock_dir: str, tool: str) -> str:
    r = run(sock_dir, tool, "--help")
    assert r.returncode == 0, r.stderr
    return " ".join(r.stdout.split())  # argparse wraps lines


@pytest.mark.parametrize("role", ["master", "slave"])
def test_responder_duration_counts_from_the_start(sock_dir: str, tools: list[Tool],
                                                  role: str) -> None:
    """``responder --duration 1 --timeout 120`` with no peer ends by itself after the
    duration (it used to wait for a link first); exit status 0, as --help says."""
    path = os.path.join(sock_dir, "memif.sock")
    resp = start(tools, sock_dir, "responder", "--socket", path, "--role", role,
                 "--duration", "1", "--timeout", "120")
    rc, out, err = resp.finish(timeout=60)  # far less than --timeout
    assert rc == 0, out + err
    assert "memif-aio responder: --duration 1 s ended before a link came up" in err, err
    assert "answered 0 ARP and 0 echo requests, ignored 0 packets" in out, out
    for tool in ("responder", "capture"):
        assert "stop this long after the start, whether or not a link came up" in \
            _help(sock_dir, tool)


def test_timeout_0_waits_for_a_peer_forever(sock_dir: str, tools: list[Tool]) -> None:
    """--timeout 0 is accepted and means no limit: a slave responder keeps retrying
    until a master comes; a ping with --timeout 0 resolves ARP without a limit."""
    path = os.path.join(sock_dir, "memif.sock")
    resp = start(tools, sock_dir, "responder", "--socket", path, "--role", "slave",
                 "--timeout", "0")
    resp.wait_for("answering for")
    time.sleep(1.0)  # with a zero deadline it would have given up at once
    assert resp.proc.poll() is None, resp.finish()
    r = run(sock_dir, "ping", "--socket", path, "--role", "master", "-c", "2", "-i", "0.05",
            "--timeout", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    check_ping_output(r.stdout, 2)
    resp.signal(signal.SIGINT)
    rc, out, err = resp.finish()
    assert rc == 0 and "answered 1 ARP and 2 echo requests" in out, out + err
    assert "0 waits for a peer forever" in _help(sock_dir, "responder")
    r = run(sock_dir, "responder", "--socket", path, "--timeout", "-1")
    assert r.returncode == 2 and "0 for no limit" in r.stderr, r.stderr


def test_library_logs_nothing_unless_configured(sock_dir: str) -> None:
    """memif_aio adds a NullHandler: its warnings do not reach stderr through Python's
    last-resort handler, and still show once the application configures logging."""
    import logging

    import memif_aio

    assert any(isinstance(h, logging.NullHandler)
               for h in logging.getLogger(memif_aio.__name__).handlers)
    emit = "import logging, memif_aio; logging.getLogger('memif_aio.interface').warning('w')"
    r = subprocess.run([sys.executable, "-c", emit], cwd=sock_dir, env=env(),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = subprocess.run([sys.executable, "-c", "import logging; logging.basicConfig(); " + emit],
                       cwd=sock_dir, env=env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == "WARNING:memif_aio.interface:w\n", r.stderr


# --- DPDK testpmd ------------------------------------------------------------------------------


async def tool_async(sock_dir: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "memif_aio", *args, cwd=sock_dir, env=env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL)


async def finish(proc: asyncio.subprocess.Process, timeout: float = 30) -> tuple[int, str, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


DPDK_ROLES = pytest.mark.parametrize("role", ["master", "slave"], ids=["py-master", "py-slave"])


@pytest.mark.interop
@DPDK_ROLES
async def test_ping_testpmd_icmpecho(sock_dir: str, dpdk: str, role: str) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    args = ("ping", "--socket", path, "--role", role, "-c", "5", "-i", "0.05", "--timeout", "20")
    if role == "master":  # DPDK's client connects once, at start: we listen first
        proc = await tool_async(sock_dir, *args)
        await asyncio.to_thread(wait_path, path)
        async with TestPmd("client", path, forward_mode="icmpecho") as tp:
            rc, out, err = await finish(proc)
            mac = tp.mac
    else:
        async with TestPmd("server", path, forward_mode="icmpecho") as tp:
            rc, out, err = await finish(await tool_async(sock_dir, *args))
            mac = tp.mac
    assert rc == 0, out + err
    # testpmd answers ARP with its port's MAC address
    assert mac is not None and f"ARP: 192.168.1.1 is at {mac.lower()}" in out, (mac, out)
    check_ping_output(out, 5)


@pytest.mark.interop
@DPDK_ROLES
async def test_bench_tx_to_testpmd_rxonly(sock_dir: str, dpdk: str, role: str) -> None:
    """Every packet bench tx sent is counted by testpmd (read while bench lingers: the
    memif counters reset when the link goes down)."""
    path = os.path.join(sock_dir, "memif.sock")
    n = 20000
    args = ("bench", "tx", "--socket", path, "--role", role, "--count", str(n), "--size", "128",
            "--linger", "20", "--json", "--progress", "0", "--timeout", "20")
    proc = None
    try:
        if role == "master":
            proc = await tool_async(sock_dir, *args)
            await asyncio.to_thread(wait_path, path)
        async with TestPmd("client" if role == "master" else "server", path,
                           forward_mode="rxonly") as tp:
            if proc is None:
                proc = await tool_async(sock_dir, *args)
            st = await tp.wait_stats(lambda s: s.rx_packets >= n, timeout=30)
            assert (st.rx_packets, st.rx_bytes, st.rx_errors) == (n, n * 128, 0), st
            proc.send_signal(signal.SIGINT)  # ends the linger
            rc, out, err = await finish(proc)
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rc == 0, out + err
    s = json.loads(out)
    assert (s["packets"], s["bytes"], s["drops"]) == (n, n * 128, 0), s


@pytest.mark.interop
@DPDK_ROLES
async def test_capture_testpmd_txonly(sock_dir: str, dpdk: str, role: str) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    pcap = os.path.join(sock_dir, "txonly.pcap")
    args = ("capture", "-w", pcap, "--socket", path, "--role", role, "--count", "50",
            "--timeout", "20")
    if role == "master":
        proc = await tool_async(sock_dir, *args)
        await asyncio.to_thread(wait_path, path)
        async with TestPmd("client", path, forward_mode="txonly") as tp:
            rc, out, err = await finish(proc)
            mac = tp.mac
    else:
        async with TestPmd("server", path, forward_mode="txonly") as tp:
            rc, out, err = await finish(await tool_async(sock_dir, *args))
            mac = tp.mac
    assert rc == 0, out + err
    assert f"50 packets (50 received, 0 sent) written to {pcap}" in err
    linktype, recs = read_pcap(pcap)
    os.unlink(pcap)
    assert linktype == LINKTYPE_ETHERNET and len(recs) == 50
    assert mac is not None
    for _ts, buf in recs:
        eth = dpkt.ethernet.Ethernet(buf)
        assert len(buf) == 64
        assert (eth.src, eth.dst) == (pk.parse_mac(mac), pk.parse_mac("02:00:00:00:00:00"))
        ip = eth.data
        assert isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP)
        assert (ip.src, ip.dst, ip.ttl) == (pk.parse_ip("198.18.0.1"),
                                            pk.parse_ip("198.18.0.2"), 64)
        assert (ip.data.sport, ip.data.dport) == (9, 9)
