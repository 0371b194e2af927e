"""``memif-aio ping``: ICMP echo requests through a memif interface.

In ``ethernet`` mode it first resolves the destination's MAC address with ARP
(requests every 200 ms until a reply, for at most ``--timeout`` seconds; 0: no limit), then
sends echo requests to it; in ``ip`` mode it sends bare IPv4 packets.  It answers
ARP requests for its own ``--ip`` (a VPP peer asks before replying).  Output and
exit status follow ``ping(8)``: one line per reply, then the statistics; 0 when
every request got its reply, 1 otherwise, 2 on usage or connection errors.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from dataclasses import dataclass, field

from ..errors import Disconnected, MemifError
from ..queue import RxQueue, TxQueue
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    Tool,
    add_interface_options,
    int_range,
    ip_arg,
    mac_arg,
    positive_float,
    run,
)
from .packet import (
    ARP_REPLY,
    ARP_REQUEST,
    ETH_P_ARP,
    ETH_P_IPV4,
    ICMP_ECHO_REPLY,
    IPPROTO_ICMP,
    arp_frame,
    echo_request_frame,
    format_ip,
    format_mac,
    parse_arp,
    parse_ethernet,
    parse_icmp,
    parse_ipv4,
    respond,
)

DEFAULT_IP = "192.168.1.2"
DEFAULT_MAC = "02:fe:00:00:00:02"
DEFAULT_DEST = "192.168.1.1"
ARP_INTERVAL = 0.2
#: the largest payload whose IPv4 packet fits the 16-bit total length
MAX_SIZE = 65535 - 20 - 8


@dataclass
class Stats:
    transmitted: int = 0
    received: int = 0
    duplicates: int = 0
    errors: int = 0
    rtts: list[float] = field(default_factory=list)


class Pinger:
    def __init__(self, tool: Tool) -> None:
        ns = tool.ns
        self.tool = tool
        self.ethernet = ns.mode == "ethernet"
        self.my_mac: bytes | None = ns.mac if self.ethernet else None
        self.my_ip: bytes = ns.ip
        self.dest: bytes = ns.destination
        self.dest_mac: bytes | None = None
        self.ident = os.getpid() & 0xFFFF
        self.size: int = ns.size
        self.stats = Stats()
        self.sent: dict[int, float] = {}  # seq -> send time (perf_counter)
        self.answered: set[int] = set()
        self.arp_done = asyncio.Event()
        self.all_answered = asyncio.Event()
        self.count: int = ns.count
        self.tx: TxQueue | None = None
        self.pattern: bytes = bytes(range(256)) * (self.size // 256 + 2)

    def payload(self, seq: int) -> bytes:
        off = seq % 256
        return bytes(self.pattern[off:off + self.size])

    # --- receive ---------------------------------------------------------------------
    async def reader(self, rx: RxQueue) -> None:
        try:
            while True:
                for p in await rx.read_burst(64):
                    self.on_packet(p, time.perf_counter())
        except Disconnected:
            return

    def on_packet(self, pkt: bytes, now: float) -> None:
        if self.ethernet:
            eth = parse_ethernet(pkt)
            if eth is None:
                return
            if eth.ethertype == ETH_P_ARP:
                self.on_arp(pkt, eth.payload)
                return
            if eth.ethertype != ETH_P_IPV4 or eth.dst != self.my_mac:
                return
            pkt = eth.payload
        ip = parse_ipv4(pkt)
        if ip is None or ip.proto != IPPROTO_ICMP or ip.dst != self.my_ip:
            return
        msg = parse_icmp(ip.payload)
        if msg is None or msg.type != ICMP_ECHO_REPLY or msg.ident != self.ident:
            return
        seq = msg.seq
        if seq not in self.sent:
            return
        rtt = (now - self.sent[seq]) * 1000.0
        src = format_ip(ip.src)
        nbytes = len(ip.payload)
        if ip.src != self.dest:
            return
        if msg.payload != self.payload(seq):
            self.stats.errors += 1
            self.tool.say(f"{nbytes} bytes from {src}: icmp_seq={seq} ttl={ip.ttl} "
                          f"time={rtt:.3f} ms (wrong data)")
            return
        if seq in self.answered:
            self.stats.duplicates += 1
            self.tool.say(f"{nbytes} bytes from {src}: icmp_seq={seq} ttl={ip.ttl} "
                          f"time={rtt:.3f} ms (DUP!)")
            return
        self.answered.add(seq)
        self.stats.received += 1
        self.stats.rtts.append(rtt)
        self.tool.say(f"{nbytes} bytes from {src}: icmp_seq={seq} ttl={ip.ttl} "
                      f"time={rtt:.3f} ms")
        if len(self.answered) == len(self.sent):
            self.all_answered.set()

    def on_arp(self, frame: bytes, body: bytes) -> None:
        arp = parse_arp(body)
        if arp is None:
            return
        if arp.op == ARP_REPLY and arp.sender_ip == self.dest and self.dest_mac is None:
            self.dest_mac = arp.sender_mac
            self.arp_done.set()
        elif arp.op == ARP_REQUEST and arp.target_ip == self.my_ip:
            reply = respond(frame, self.my_mac, self.my_ip)
            if reply is not None and self.tx is not None:
                try:
                    self.tx.write_packet_nowait(reply)
                except MemifError:
                    pass

    # --- send ------------------------------------------------------------------------
    async def resolve(self, tx: TxQueue, timeout: float) -> bool:
        assert self.my_mac is not None
        req = arp_frame(ARP_REQUEST, self.my_mac, self.my_ip, bytes(6), self.dest)
        deadline = time.monotonic() + timeout if timeout > 0 else math.inf  # 0: no limit
        while not self.arp_done.is_set():
            if self.tool.stop.is_set() or time.monotonic() >= deadline:
                return False
            await tx.write_packet(req)
            try:
                await asyncio.wait_for(self.arp_done.wait(),
                                       min(ARP_INTERVAL, deadline - time.monotonic()))
            except TimeoutError:
                pass
        return True

    async def send_loop(self, tx: TxQueue, interval: float) -> None:
        seq = 0
        next_at = time.monotonic()
        while not self.tool.stop.is_set() and (self.count == 0 or seq < self.count):
            seq += 1
            frame = echo_request_frame(self.my_mac, self.dest_mac, self.my_ip, self.dest,
                                       self.ident, seq & 0xFFFF, self.payload(seq & 0xFFFF))
            self.sent[seq & 0xFFFF] = time.perf_counter()
            self.answered.discard(seq & 0xFFFF)
            self.all_answered.clear()
            await tx.write_packet(frame)
            self.stats.transmitted += 1
            if self.count and seq >= self.count:
                return
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self.tool.stop.wait(), delay)
                except TimeoutError:
                    pass


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "ping", help="send ICMP echo requests through an interface",
        description="Send ICMP echo requests to DESTINATION through one memif interface and "
                    "print the replies and the statistics, like ping(8). In ethernet mode the "
                    "destination's MAC is resolved with ARP first. Works against memif-aio "
                    "responder, VPP, libmemif's icmp_responder and DPDK testpmd "
                    "--forward-mode=icmpecho.",
        epilog="Exit status: 0 every request got its reply; 1 some replies are missing (or "
               "ARP got no answer); 2 bad arguments or no link within --timeout (a refusing "
               "peer's reason is printed to stderr); 130 forced by a second signal. The first "
               "SIGINT/SIGTERM stops sending, waits up to -W for outstanding replies and "
               "prints the statistics.")
    p.add_argument("destination", type=ip_arg, nargs="?", default=ip_arg(DEFAULT_DEST),
                   metavar="DESTINATION",
                   help=f"IPv4 address to ping (default: {DEFAULT_DEST})")
    p.add_argument("-c", "--count", type=int_range(0, 1 << 62), default=0,
                   help="stop after this many requests (default: 0, until interrupted)")
    p.add_argument("-i", "--interval", type=positive_float, default=1.0, metavar="SECONDS",
                   help="time between requests (default: %(default)s)")
    p.add_argument("-s", "--size", type=int_range(0, MAX_SIZE), default=56, metavar="BYTES",
                   help="ICMP payload bytes (default: %(default)s)")
    p.add_argument("-W", "--wait", type=positive_float, default=1.0, metavar="SECONDS",
                   help="how long to wait for the replies after the last request "
                        "(default: %(default)s)")
    p.add_argument("--ip", type=ip_arg, default=ip_arg(DEFAULT_IP), metavar="ADDR",
                   help=f"our IPv4 source address (default: {DEFAULT_IP})")
    p.add_argument("--mac", type=mac_arg, default=mac_arg(DEFAULT_MAC), metavar="MAC",
                   help=f"our MAC address, ethernet mode (default: {DEFAULT_MAC})")
    add_interface_options(p, "ping")
    p.set_defaults(func=main)


def main(ns: argparse.Namespace) -> int:
    return run(ns, "ping", _body)


def summary(dest: str, st: Stats, elapsed_ms: float) -> list[str]:
    loss = 0.0 if st.transmitted == 0 else \
        100.0 * (st.transmitted - st.received) / st.transmitted
    extra = ""
    if st.duplicates:
        extra += f", +{st.duplicates} duplicates"
    if st.errors:
        extra += f", +{st.errors} errors"
    lines = [f"--- {dest} ping statistics ---",
             f"{st.transmitted} packets transmitted, {st.received} received{extra}, "
             f"{loss:g}% packet loss, time {elapsed_ms:.0f}ms"]
    if st.rtts:
        n = len(st.rtts)
        avg = sum(st.rtts) / n
        mdev = math.sqrt(max(0.0, sum(r * r for r in st.rtts) / n - avg * avg))
        lines.append(f"rtt min/avg/max/mdev = {min(st.rtts):.3f}/{avg:.3f}/"
                     f"{max(st.rtts):.3f}/{mdev:.3f} ms")
    return lines


async def _body(tool: Tool) -> int:
    ns = tool.ns
    p = Pinger(tool)
    dest = format_ip(ns.destination)
    if not await tool.connect():
        return EXIT_FAILED
    itf = tool.itf
    try:
        rxs = list(itf.rx_queues)
        tx = itf.get_tx_queue(0)
    except MemifError as exc:
        tool.error(f"link down: {exc}")
        return EXIT_FAILED
    p.tx = tx
    readers = [asyncio.ensure_future(p.reader(rx)) for rx in rxs]
    start = time.monotonic()
    down_reported = False
    try:
        if p.ethernet:
            if not await p.resolve(tx, ns.timeout):
                if not tool.stop.is_set():
                    tool.error(f"no ARP reply from {dest} within {ns.timeout:g} s")
                return EXIT_FAILED
            assert p.dest_mac is not None
            tool.say(f"ARP: {dest} is at {format_mac(p.dest_mac)}")
        tool.say(f"PING {dest} ({dest}) {ns.size}({ns.size + 28}) bytes of data.")
        start = time.monotonic()
        await tool.until([p.send_loop(tx, ns.interval)])
        # outstanding replies: wait up to -W (also after the first SIGINT/SIGTERM)
        if len(p.answered) < len(p.sent) and itf.is_connected():
            try:
                await asyncio.wait_for(p.all_answered.wait(), ns.wait)
            except TimeoutError:
                pass
    except Disconnected as exc:
        tool.error(f"link down: {exc.reason}")
        down_reported = True
    finally:
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    st = p.stats
    complete = bool(p.count) and st.transmitted == p.count and st.received == p.count
    # a link that goes down after every reply came in does not matter
    link_lost = not complete and (down_reported or not itf.is_connected())
    if link_lost and not down_reported:
        tool.error(f"link down: {itf.get_disconnect_reason() or 'unknown reason'}")
    for line in summary(dest, st, (time.monotonic() - start) * 1000.0):
        tool.say(line)
    ok = st.transmitted and st.received == st.transmitted and not st.errors and not link_lost
    return EXIT_OK if ok else EXIT_FAILED
