"""``memif-aio capture``: run an interface and write what it receives and sends to a
pcap file.

The interface also does something with the traffic (``--act``): ``sink`` (the
default) reads and discards, ``responder`` answers ARP and ICMP echo like
``memif-aio responder``, ``echo`` sends every packet back.  What it receives and
what it sends are both recorded, through :mod:`memif_aio.capture`.  The run ends
after ``--count`` packets, ``--duration`` seconds from the start (the wait for
the first link counts), or SIGINT/SIGTERM; the link
may go down and come back meanwhile.  Messages go to stderr (like tcpdump), so
``-w -`` can write the pcap to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import IO, Any

from ..capture import DEFAULT_SNAPLEN, Capture, linktype_for
from ..errors import Disconnected
from ..queue import RxQueue, TxQueue
from .common import (
    EXIT_OK,
    Tool,
    ToolError,
    add_interface_options,
    int_range,
    ip_arg,
    mac_arg,
    positive_float,
    run,
)
from .responder import DEFAULT_IP, DEFAULT_MAC, Responder


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "capture", help="record an interface's traffic to a pcap file",
        description="Run one memif interface, act on its traffic (--act) and write every packet "
                    "it receives and sends to a classic pcap file (LINKTYPE_ETHERNET, or "
                    "LINKTYPE_RAW in ip mode; microsecond timestamps) until --count packets, "
                    "--duration seconds, or SIGINT/SIGTERM.",
        epilog="Exit status: 0 the file was written (even with no packet); 2 bad arguments, the "
               "file cannot be created, or no link within --timeout (a refusing peer's reason "
               "is printed); 130 forced by a second signal.")
    p.add_argument("-w", "--write", required=True, metavar="FILE",
                   help="pcap file to write ('-' for stdout)")
    p.add_argument("--count", type=int_range(1, 1 << 62), default=None, metavar="PACKETS",
                   help="stop after writing this many packets (default: no limit)")
    p.add_argument("--duration", type=positive_float, default=None, metavar="SECONDS",
                   help="stop this long after the start, whether or not a link came up "
                        "(the wait for a link counts; default: no limit)")
    p.add_argument("--act", choices=("sink", "responder", "echo"), default="sink",
                   help="what the interface does with what it receives (default: %(default)s)")
    p.add_argument("--direction", choices=("both", "rx", "tx"), default="both",
                   help="record received, sent or both (default: %(default)s)")
    p.add_argument("--snaplen", type=int_range(1, 0x7FFFFFFF), default=DEFAULT_SNAPLEN,
                   metavar="BYTES", help="record at most this much of each packet "
                                         "(default: %(default)s)")
    p.add_argument("--ip", type=ip_arg, default=ip_arg(DEFAULT_IP), metavar="ADDR",
                   help=f"--act responder: the address to answer for (default: {DEFAULT_IP})")
    p.add_argument("--mac", type=mac_arg, default=mac_arg(DEFAULT_MAC), metavar="MAC",
                   help=f"--act responder: our MAC (default: {DEFAULT_MAC})")
    add_interface_options(p, "capture")
    p.set_defaults(func=main)


def main(ns: argparse.Namespace) -> int:
    return run(ns, "capture", _body)


async def _sink(rx: RxQueue, _tx: TxQueue) -> None:
    try:
        while True:
            await rx.read_burst(64)
    except Disconnected:
        return


async def _echo(rx: RxQueue, tx: TxQueue) -> None:
    try:
        while True:
            pkts = await rx.read_burst(64)
            sent = 0  # write_burst may publish fewer than asked
            while sent < len(pkts):
                sent += await tx.write_burst(pkts[sent:])
    except Disconnected:
        return


async def _body(tool: Tool) -> int:
    ns = tool.ns
    tool.out = sys.stderr
    target: str | IO[bytes] = sys.stdout.buffer if ns.write == "-" else ns.write
    try:
        cap = Capture(target, linktype_for(tool.args.mode), count=ns.count,
                      direction=ns.direction, snaplen=ns.snaplen)
    except OSError as exc:
        raise ToolError(f"cannot write {ns.write}: {exc.strerror or exc}") from None
    name = "stdout" if ns.write == "-" else ns.write
    try:
        per_queue: Callable[[RxQueue, TxQueue], Coroutine[Any, Any, None]]
        if ns.act == "responder":
            resp = Responder(ns.mac if ns.mode == "ethernet" else None, ns.ip)
            per_queue = resp.serve_queue
        else:
            per_queue = _echo if ns.act == "echo" else _sink
        # record from the first packet on, even one that arrives before connect() returns
        cap.attach(tool.itf)
        loop = asyncio.get_running_loop()
        end = None if ns.duration is None else loop.time() + ns.duration
        if not await tool.connect(end):
            if not tool.stop.is_set():
                tool.error(f"--duration {ns.duration:g} s ended before a link came up")
            return EXIT_OK
        tool.say(tool.link_summary())
        if not cap.done:
            left = None if end is None else max(0.0, end - loop.time())
            await tool.serve(per_queue, duration=left, done=cap.stopped)
    finally:
        cap.close()
        tool.say(f"{tool.prog}: {cap.packets} packets ({cap.received} received, {cap.sent} "
                 f"sent) written to {name}")
    return EXIT_OK

