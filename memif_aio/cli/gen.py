"""``memif-aio gen``: generate Ethernet/IPv4/UDP traffic (bare IPv4/UDP in ``ip`` mode)
with distinct flows, at a set rate or as fast as the ring allows.

Packet *k* belongs to flow ``k % --flows`` and has size ``sizes[k % len(sizes)]``
(``imix`` is the simple IMIX: 7 x 64, 4 x 570 and 1 x 1518 bytes, interleaved).
Flow *f* sends from ``--src-ip`` + *f* and UDP port ``--sport`` + *f* to
``--dst-ip``:``--dport``, on queue ``f % queues``.  The sizes are those of the
frames on the memif (the whole Ethernet frame, no FCS; in ``ip`` mode the IPv4
packet).  Checksums are correct (IPv4 header and UDP).

With ``--rate`` and ``--duration`` it sends exactly ``rate x duration`` packets
on the schedule of :mod:`memif_aio.cli.traffic` (ending early only on a signal
or a link down), so a receiver that keeps up counts exactly that many.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import struct
import sys
from collections.abc import Iterator

from .common import (
    EXIT_FAILED,
    Tool,
    ToolError,
    add_interface_options,
    fmt_rate,
    int_range,
    ip_arg,
    mac_arg,
    positive_float,
    run,
)
from .packet import ETH_P_IPV4, checksum, ethernet, ipv4
from .traffic import Item, Sender, add_sender_options, send

IPPROTO_UDP = 17
#: the simple IMIX, 7:4:1, interleaved over a cycle of 12 packets
IMIX = (64, 570, 64, 64, 570, 64, 1518, 64, 570, 64, 64, 570)
MAX_FLOWS = 65536
_UDP = struct.Struct("!HHHH")
#: after an unpaced --duration, how long a write stuck on a full ring may take
DRAIN_GRACE = 1.0


def sizes_arg(text: str) -> tuple[int, ...]:
    if text.strip().lower() == "imix":
        return IMIX
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not 'imix' or a comma-separated list of sizes: {text!r}") from None
    if not sizes:
        raise argparse.ArgumentTypeError("at least one size is needed")
    bad = [s for s in sizes if not 1 <= s <= 65535]
    if bad:
        raise argparse.ArgumentTypeError(f"sizes must be in 1..65535 bytes: {bad}")
    return sizes


def _ones_sum(data: bytes) -> int:
    """The 16-bit ones' complement sum of ``data`` (even length, or last)."""
    return (~checksum(data)) & 0xFFFF


class Flows:
    """The frames: a header per (flow, size) built on first use, a payload per size."""

    def __init__(self, ethernet_mode: bool, src_mac: bytes, dst_mac: bytes, src_ip: bytes,
                 dst_ip: bytes, sport: int, dport: int, flows: int,
                 sizes: tuple[int, ...]) -> None:
        self.eth = ethernet_mode
        self.src_mac = src_mac
        self.dst_mac = dst_mac
        self.src_ip = int.from_bytes(src_ip, "big")
        self.dst_ip = dst_ip
        self.sport = sport
        self.dport = dport
        self.flows = flows
        self.sizes = sizes
        self.overhead = (14 if ethernet_mode else 0) + 20 + 8
        small = [s for s in sizes if s < self.overhead]
        if small:
            mode = "ethernet" if ethernet_mode else "ip"
            raise ValueError(f"sizes must be at least {self.overhead} bytes in {mode} mode "
                             f"(the headers), not {small}")
        self._payload = {s: bytes(i & 0xFF for i in range(s - self.overhead))
                         for s in set(sizes)}
        self._payload_sum = {s: _ones_sum(p) for s, p in self._payload.items()}
        self._headers: dict[tuple[int, int], bytes] = {}

    def addresses(self, flow: int) -> tuple[bytes, int]:
        """Source address and port of ``flow``."""
        src = ((self.src_ip + flow) & 0xFFFFFFFF).to_bytes(4, "big")
        return src, (self.sport + flow - 1) % 65535 + 1

    def header(self, flow: int, size: int) -> bytes:
        key = (flow, size)
        h = self._headers.get(key)
        if h is None:
            h = self._headers[key] = self._build(flow, size)
        return h

    def _build(self, flow: int, size: int) -> bytes:
        src, sport = self.addresses(flow)
        udp_len = size - self.overhead + 8
        pseudo = src + self.dst_ip + struct.pack("!BBH", 0, IPPROTO_UDP, udp_len)
        s = _ones_sum(pseudo + _UDP.pack(sport, self.dport, udp_len, 0)) + \
            self._payload_sum[size]
        s = (s & 0xFFFF) + (s >> 16)
        csum = (~s) & 0xFFFF or 0xFFFF  # UDP sends a computed 0 as 0xffff
        udp = _UDP.pack(sport, self.dport, udp_len, csum)
        ip_hdr = ipv4(src, self.dst_ip, IPPROTO_UDP, udp + self._payload[size])[:20]
        hdr = ip_hdr + udp
        if self.eth:
            hdr = ethernet(self.dst_mac, self.src_mac, ETH_P_IPV4, hdr)
        return hdr

    def frame(self, k: int) -> tuple[int, bytes]:
        """Packet ``k``: (its flow, the frame)."""
        flow = k % self.flows
        size = self.sizes[k % len(self.sizes)]
        return flow, self.header(flow, size) + self._payload[size]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "gen", help="generate UDP traffic with distinct flows, at a rate or flat out",
        description="Generate Ethernet/IPv4/UDP frames (bare IPv4/UDP in ip mode) over one "
                    "memif connection: --flows distinct flows (source address and port vary), "
                    "frames of the --size sizes in turn, at --rate packets per second on an "
                    "absolute schedule (bursts allowed), or as fast as the ring allows. With "
                    "--rate and --duration it sends exactly rate x duration packets. The run "
                    "ends after --duration seconds counted from link-up (the wait for the "
                    "link is bounded by --timeout), --count packets, SIGINT/SIGTERM, or when "
                    "the link goes down; it then waits up to 1 s for the peer to take what "
                    "is in the rings.",
        epilog="Exit status: 0 packets were sent (with --rate and --duration or --count: all "
               "of them); 1 none were, or the link went down first; 2 bad arguments or no "
               "link within --timeout (a refusing peer's reason is printed); 130 forced by a "
               "second signal.")
    p.add_argument("--size", type=sizes_arg, default=(64,), metavar="N,N,...|imix",
                   help="frame sizes in bytes, used in turn, or 'imix' (7 x 64, 4 x 570, "
                        "1 x 1518) (default: 64; at least 42 in ethernet mode, 28 in ip mode)")
    p.add_argument("--rate", type=positive_float, default=None, metavar="PPS",
                   help="packets per second, all queues together (default: as fast as the "
                        "ring allows)")
    p.add_argument("--duration", type=positive_float, default=None, metavar="SECONDS",
                   help="how long to send, counted from link-up (default: until --count, "
                        "SIGINT/SIGTERM or link down)")
    p.add_argument("--count", type=int_range(1, 1 << 62), default=None, metavar="PACKETS",
                   help="stop after this many packets (default: no limit)")
    p.add_argument("--flows", type=int_range(1, MAX_FLOWS), default=1, metavar="N",
                   help="distinct flows (default: %(default)s)")
    p.add_argument("--src-ip", type=ip_arg, default=ip_arg("198.18.0.1"), metavar="ADDR",
                   help="source address of flow 0; flow f uses ADDR + f (default: 198.18.0.1)")
    p.add_argument("--dst-ip", type=ip_arg, default=ip_arg("198.19.0.1"), metavar="ADDR",
                   help="destination address (default: 198.19.0.1)")
    p.add_argument("--sport", type=int_range(1, 65535), default=1024, metavar="PORT",
                   help="UDP source port of flow 0; flow f uses PORT + f (default: "
                        "%(default)s)")
    p.add_argument("--dport", type=int_range(0, 65535), default=9, metavar="PORT",
                   help="UDP destination port (default: %(default)s, discard)")
    p.add_argument("--mac", type=mac_arg, default=mac_arg("02:fe:00:00:00:02"),
                   help="source MAC (default: 02:fe:00:00:00:02)")
    p.add_argument("--dst-mac", type=mac_arg, default=mac_arg("02:fe:00:00:00:01"),
                   help="destination MAC (default: 02:fe:00:00:00:01)")
    add_sender_options(p)
    add_interface_options(p, "gen")
    p.set_defaults(func=main)


def main(ns: argparse.Namespace) -> int:
    return run(ns, "gen", _body)


def planned(ns: argparse.Namespace) -> int | None:
    """How many packets the run sends: ``--count``, ``rate x duration``, or None."""
    n = ns.count
    if ns.rate is not None and ns.duration is not None:
        m = math.floor(ns.rate * ns.duration + 1e-6)
        if m < 1:
            raise ToolError("--rate x --duration is less than one packet")
        n = m if n is None else min(n, m)
    return n  # type: ignore[no-any-return]


async def _body(tool: Tool) -> int:
    ns = tool.ns
    try:
        flows = Flows(ns.mode == "ethernet", ns.mac, ns.dst_mac, ns.src_ip, ns.dst_ip,
                      ns.sport, ns.dport, ns.flows, ns.size)
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    total = planned(ns)
    if ns.json:
        tool.out = sys.stderr
    if not await tool.connect():
        return EXIT_FAILED  # nothing sent
    tool.say(tool.link_summary())
    loop = asyncio.get_running_loop()
    rate = ns.rate
    nq = len(tool.itf.tx_queues) or 1

    def items() -> Iterator[Item]:
        ks = itertools.count() if total is None else range(total)
        for k in ks:
            flow, frame = flows.frame(k)
            yield (k / rate if rate else None), flow % nq, frame

    now = loop.time()
    paced_window = rate is not None and ns.duration is not None
    # unpaced: stop at the duration; paced: the schedule ends it (rate x duration
    # packets), a peer that does not keep up at twice the duration plus a second
    until = now + ns.duration if ns.duration is not None and not paced_window else None
    hard = now + 2 * ns.duration + 1.0 if paced_window else \
        (until + DRAIN_GRACE if until is not None else None)

    def ok(s: Sender, complete: bool) -> bool:
        if total is not None:
            return complete and s.packets == total
        return bool(s.packets) and s.down is None and s.failed is None

    def describe(s: Sender) -> str:
        t = s.seconds()
        pps = s.packets / t if t else 0.0
        bits = s.bytes * 8 / t if t else 0.0
        return (f"gen: {s.packets} packets, {s.bytes} bytes in {t:.3f} s: "
                f"{fmt_rate(pps, 'pkt/s')}, {fmt_rate(bits, 'bit/s')}, {ns.flows} flows, "
                f"{s.waits} ring-full waits")

    extra = {"rate": rate, "duration": ns.duration, "planned": total, "flows": ns.flows,
             "sizes": list(ns.size)}
    return await send(tool, "gen", items(), extra, describe, until=until,
                      end_at=ns.duration if paced_window else None, hard_end=hard, ok=ok)

