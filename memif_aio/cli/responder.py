"""``memif-aio responder``: answer ARP and ICMP echo requests, like libmemif's
``icmp_responder``.

In ``ethernet`` mode it answers ARP requests for ``--ip`` with ``--mac`` and ICMP
echo requests sent to ``--ip`` (and to ``--mac`` or broadcast); in ``ip`` mode the
packets are bare IPv4 and it answers the echo requests.  Every queue pair is
served: a reply leaves on the queue its request came in on.  The link may go down
and come back (a master waits for the next slave, a slave reconnects); the run
ends on SIGINT/SIGTERM or ``--duration`` seconds after the start (the wait for
the first link counts).
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

from ..errors import Disconnected
from ..queue import RxQueue, TxQueue
from .common import EXIT_OK, Tool, add_interface_options, ip_arg, mac_arg, positive_float, run
from .packet import (
    ETH_P_ARP,
    format_ip,
    format_mac,
    parse_ethernet,
    respond,
)

DEFAULT_IP = "192.168.1.1"
DEFAULT_MAC = "02:fe:00:00:00:01"


@dataclass
class Counters:
    arp: int = 0
    echo: int = 0
    ignored: int = 0


class Responder:
    """The packet logic: ``handle(packets)`` returns the replies and counts."""

    def __init__(self, mac: bytes | None, ip: bytes | None) -> None:
        self.mac = mac
        self.ip = ip
        self.counters = Counters()

    def handle(self, packets: list[bytes]) -> list[bytes]:
        out = []
        c = self.counters
        for p in packets:
            r = respond(p, self.mac, self.ip)
            if r is None:
                c.ignored += 1
                continue
            out.append(r)
            if self.mac is not None and (e := parse_ethernet(r)) is not None and \
                    e.ethertype == ETH_P_ARP:
                c.arp += 1
            else:
                c.echo += 1
        return out

    async def serve_queue(self, rx: RxQueue, tx: TxQueue, burst: int = 64) -> None:
        """Answer on ``tx`` what arrives on ``rx`` until the link goes down."""
        try:
            while True:
                replies = self.handle(await rx.read_burst(burst))
                sent = 0  # write_burst may publish fewer than asked
                while sent < len(replies):
                    sent += await tx.write_burst(replies[sent:])
        except Disconnected:
            return


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "responder", help="answer ARP and ICMP echo requests (like libmemif's icmp_responder)",
        description="Run one memif interface that answers ARP requests for --ip and ICMP echo "
                    "requests sent to --ip, on every queue pair, until SIGINT/SIGTERM or "
                    "--duration. In ip mode it answers echo requests in bare IPv4 packets. "
                    "The link may go down and come up again meanwhile.",
        epilog="Exit status: 0 stopped by a signal or --duration; 2 bad arguments or no link "
               "within --timeout (the peer's refusal reason is printed); 130 forced by a "
               "second signal.")
    p.add_argument("--ip", type=ip_arg, default=ip_arg(DEFAULT_IP), metavar="ADDR",
                   help=f"the IPv4 address to answer for (default: {DEFAULT_IP})")
    p.add_argument("--mac", type=mac_arg, default=mac_arg(DEFAULT_MAC), metavar="MAC",
                   help=f"our MAC address, ethernet mode (default: {DEFAULT_MAC})")
    p.add_argument("--duration", type=positive_float, default=None, metavar="SECONDS",
                   help="stop this long after the start, whether or not a link came up "
                        "(the wait for a link counts; default: run until SIGINT/SIGTERM)")
    add_interface_options(p, "responder")
    p.set_defaults(func=main)


def main(ns: argparse.Namespace) -> int:
    return run(ns, "responder", _body)


async def _body(tool: Tool) -> int:
    ns = tool.ns
    mac = ns.mac if ns.mode == "ethernet" else None
    resp = Responder(mac, ns.ip)
    where = f"{format_ip(ns.ip)}" + (f" at {format_mac(mac)}" if mac else "")
    tool.say(f"{tool.prog}: answering for {where} on {ns.socket} as {ns.role} (id {ns.id})")
    loop = asyncio.get_running_loop()
    end = None if ns.duration is None else loop.time() + ns.duration
    if await tool.connect(end):
        tool.say(tool.link_summary())
        left = None if end is None else max(0.0, end - loop.time())
        await tool.serve(resp.serve_queue, duration=left)
    elif not tool.stop.is_set():
        tool.error(f"--duration {ns.duration:g} s ended before a link came up")
    c = resp.counters
    tool.say(f"{tool.prog}: answered {c.arp} ARP and {c.echo} echo requests, "
             f"ignored {c.ignored} packets")
    return EXIT_OK
