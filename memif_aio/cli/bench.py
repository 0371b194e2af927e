"""``memif-aio bench``: traffic generator (``tx``), sink (``rx``) and reflector (``echo``).

``tx`` sends ``--size``-byte packets in bursts of ``--burst`` on every queue pair;
each carries a bench header (magic ``MAIO``, queue, sequence number) after the
Ethernet header (EtherType 0x88B5, IEEE local experimental) or, in ``ip`` mode,
after an IPv4 header (protocol 253, experimental).  By default the sender waits
for ring space, so nothing is dropped; ``--drop`` counts what does not fit
instead (like testpmd's txonly).  ``rx`` counts what arrives and, for bench
packets, checks the sequence numbers: a gap counts as drops.  ``echo`` sends
back what it receives (``--macswap`` swaps the Ethernet addresses).

A run is one connection: it ends after ``--duration`` (tx: 5 s by default),
``--count`` packets, SIGINT/SIGTERM, or when the link goes down.  Progress is
one line redrawn in place on a terminal, or a plain line per ``--progress``
seconds otherwise; then a summary, or one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from ..errors import Disconnected, MemifError
from ..queue import RxQueue, TxQueue
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    ProgressLine,
    Tool,
    add_interface_options,
    fmt_rate,
    int_range,
    mac_arg,
    positive_float,
    run,
)
from .packet import ethernet, ipv4, parse_ip

MAGIC = b"MAIO"
HDR = struct.Struct("!4sHQ")  #: magic, queue id, sequence number
ETHERTYPE_BENCH = 0x88B5
IPPROTO_BENCH = 253
DEFAULT_TX_DURATION = 5.0
#: how long tx waits at the end for the peer to take what is still in the rings
DRAIN_TIMEOUT = 1.0


class Frames:
    """Bench packets of one size: a template with the header patched per packet."""

    def __init__(self, mode: str, size: int, src_mac: bytes, dst_mac: bytes) -> None:
        if mode == "ethernet":
            prefix = ethernet(dst_mac, src_mac, ETHERTYPE_BENCH, b"")
        else:
            body = bytes(size - 20) if size >= 20 else b""
            prefix = ipv4(parse_ip("198.18.0.1"), parse_ip("198.18.0.2"), IPPROTO_BENCH,
                          body)[:20]
        self.offset = len(prefix)
        self.min_size = self.offset + HDR.size
        if size < self.min_size:
            raise ValueError(f"--size must be at least {self.min_size} bytes in {mode} mode")
        pad = bytes(i & 0xFF for i in range(size - self.min_size))
        self.template = bytearray(prefix + bytes(HDR.size) + pad)
        self.size = size

    def frame(self, qid: int, seq: int) -> bytes:
        HDR.pack_into(self.template, self.offset, MAGIC, qid, seq)
        return bytes(self.template)

    def parse(self, pkt: bytes) -> tuple[int, int] | None:
        o = self.offset
        if len(pkt) < o + HDR.size or pkt[o:o + 4] != MAGIC:
            return None
        _magic, qid, seq = HDR.unpack_from(pkt, o)
        return qid, seq


@dataclass
class Totals:
    packets: int = 0
    bytes: int = 0
    drops: int = 0
    reordered: int = 0
    other: int = 0
    first: float = 0.0
    last: float = 0.0


class Bench:
    def __init__(self, tool: Tool) -> None:
        ns = tool.ns
        self.tool = tool
        self.mode: str = ns.bench_mode
        self.frames = Frames(ns.mode, ns.size, ns.mac, ns.dst_mac)
        self.t = Totals()
        self.done = asyncio.Event()
        self.seqs: dict[int, int] = {}
        self.claimed = 0  # tx packets being written or written (for --count)

    def _count(self, n: int, nbytes: int) -> None:
        t = self.t
        now = time.monotonic()
        if not t.packets:
            t.first = now
        t.last = now
        t.packets += n
        t.bytes += nbytes
        count = self.tool.ns.count
        if count and t.packets >= count:
            self.done.set()

    # --- per queue pair ----------------------------------------------------------------
    async def tx_queue(self, _rx: RxQueue, tx: TxQueue) -> None:
        ns = self.tool.ns
        qid = tx.qid
        seq = self.seqs.get(qid, 0)
        nq = max(1, len(self.tool.itf.tx_queues))
        per_queue_rate = ns.rate / nq if ns.rate else 0.0
        next_t = time.monotonic()
        try:
            while not self.done.is_set():
                n = ns.burst
                if ns.count:
                    n = min(n, ns.count - self.claimed)
                    if n <= 0:
                        return
                self.claimed += n
                pkts = [self.frames.frame(qid, seq + i) for i in range(n)]
                try:
                    if ns.drop:
                        k = tx.write_burst_nowait(pkts)
                        self.t.drops += n - k
                    else:
                        k = 0  # write_burst may publish fewer than asked
                        while k < n:
                            k += await tx.write_burst(pkts[k:])
                finally:
                    self.claimed -= n
                self.claimed += k
                seq += k
                self.seqs[qid] = seq
                if k:
                    self._count(k, k * self.frames.size)
                if per_queue_rate:
                    next_t += n / per_queue_rate
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                        continue
                if ns.drop:  # write_burst_nowait never yields to the loop
                    await asyncio.sleep(0)
        except Disconnected:
            return

    async def rx_queue(self, rx: RxQueue, _tx: TxQueue) -> None:
        burst = self.tool.ns.burst
        expected: dict[int, int] = {}
        parse = self.frames.parse
        t = self.t
        try:
            while not self.done.is_set():
                pkts = await rx.read_burst(burst)
                for p in pkts:
                    h = parse(p)
                    if h is None:
                        t.other += 1
                        continue
                    q, seq = h
                    want = expected.get(q)
                    if want is not None and seq != want:
                        if seq > want:
                            t.drops += seq - want
                        else:
                            t.reordered += 1
                            continue
                    expected[q] = seq + 1
                self._count(len(pkts), sum(map(len, pkts)))
        except Disconnected:
            return

    async def echo_queue(self, rx: RxQueue, tx: TxQueue) -> None:
        burst = self.tool.ns.burst
        swap = self.tool.ns.macswap and self.tool.ns.mode == "ethernet"
        try:
            while not self.done.is_set():
                pkts = await rx.read_burst(burst)
                if swap:
                    pkts = [p[6:12] + p[0:6] + p[12:] if len(p) >= 12 else p for p in pkts]
                sent = 0  # write_burst may publish fewer than asked
                while sent < len(pkts):
                    sent += await tx.write_burst(pkts[sent:])
                self._count(len(pkts), sum(map(len, pkts)))
        except Disconnected:
            return


def _json_summary(b: Bench, tool: Tool, seconds: float, down: str | None,
                  status: int) -> dict[str, Any]:
    t = b.t
    ns = tool.ns
    return {"mode": b.mode, "role": ns.role, "packets": t.packets, "bytes": t.bytes,
            "seconds": round(seconds, 6), "pps": t.packets / seconds if seconds else 0.0,
            "bps": t.bytes * 8 / seconds if seconds else 0.0, "drops": t.drops,
            "reordered": t.reordered, "other": t.other, "size": ns.size, "burst": ns.burst,
            "queues": len(tool.itf.tx_queues) if tool.itf.is_connected() else ns.queues,
            "link_down": down, "exit_status": status}


class Progress:
    """One line per period (:class:`ProgressLine`), with the rate since the last one."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.line = ProgressLine(stream)
        self.label = label
        self.prev = (0, time.monotonic())

    def update(self, t: Totals, elapsed: float) -> None:
        now = time.monotonic()
        p0, t0 = self.prev
        rate = (t.packets - p0) / (now - t0) if now > t0 else 0.0
        self.prev = (t.packets, now)
        self.line.show(f"{self.label} {elapsed:7.1f} s  {t.packets:>12} packets  "
                       f"{fmt_rate(rate, 'pkt/s'):>14}  drops {t.drops}")

    def finish(self) -> None:
        self.line.finish()


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bench", help="traffic generator (tx), sink (rx) or reflector (echo)",
        description="Measure packet rates over one memif connection: 'tx' sends bench packets "
                    "on every queue pair, 'rx' counts what arrives (checking the sequence "
                    "numbers of bench packets), 'echo' sends back what arrives. The run ends "
                    "after --duration, --count packets, SIGINT/SIGTERM, or when the link goes "
                    "down.",
        epilog="Exit status: 0 packets moved (and, rx, no sequence gap); 1 no packet moved, or "
               "rx saw sequence gaps (lost packets); 2 bad arguments or no link within "
               "--timeout (a refusing peer's reason is printed); 130 forced by a second "
               "signal.")
    p.add_argument("bench_mode", choices=("tx", "rx", "echo"), metavar="MODE",
                   help="tx, rx or echo")
    p.add_argument("--duration", type=positive_float, default=None, metavar="SECONDS",
                   help=f"how long to run after the link is up (default: tx "
                        f"{DEFAULT_TX_DURATION:g}, rx and echo until the link goes down)")
    p.add_argument("--count", type=int_range(0, 1 << 62), default=0, metavar="PACKETS",
                   help="stop after this many packets (default: 0, no limit)")
    p.add_argument("--size", type=int_range(1, 65535), default=64, metavar="BYTES",
                   help="tx packet size (default: %(default)s; at least 28 in ethernet mode, "
                        "34 in ip mode)")
    p.add_argument("--burst", type=int_range(1, 1024), default=32, metavar="N",
                   help="packets per read or write call (default: %(default)s)")
    p.add_argument("--rate", type=positive_float, default=None, metavar="PPS",
                   help="tx: limit to this many packets per second (default: as fast as "
                        "possible)")
    p.add_argument("--drop", action="store_true",
                   help="tx: do not wait for ring space, count what does not fit as drops")
    p.add_argument("--macswap", action="store_true",
                   help="echo: swap the source and destination MAC addresses")
    p.add_argument("--mac", type=mac_arg, default=mac_arg("02:fe:00:00:00:02"),
                   help="tx: source MAC (default: 02:fe:00:00:00:02)")
    p.add_argument("--dst-mac", type=mac_arg, default=mac_arg("02:fe:00:00:00:01"),
                   help="tx: destination MAC (default: 02:fe:00:00:00:01)")
    p.add_argument("--start-delay", type=positive_float, default=None, metavar="SECONDS",
                   help="wait this long after the link is up before the run starts (DPDK "
                        "testpmd, for one, does not count or forward what arrives in the "
                        "first moments after link-up)")
    p.add_argument("--linger", type=positive_float, default=None, metavar="SECONDS",
                   help="keep the link up this long after the run (for example to read "
                        "the peer's counters before they reset on disconnect)")
    p.add_argument("--progress", type=float, default=1.0, metavar="SECONDS",
                   help="progress period; 0 for none (default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object on stdout (progress goes to "
                        "stderr)")
    add_interface_options(p, "bench")
    p.set_defaults(func=main)


def main(ns: argparse.Namespace) -> int:
    return run(ns, "bench", _body)


async def _body(tool: Tool) -> int:
    ns = tool.ns
    try:
        b = Bench(tool)
    except ValueError as exc:
        tool.error(str(exc))
        return 2
    if ns.json:
        tool.out = sys.stderr
    if not await tool.connect():
        return EXIT_FAILED
    if not ns.json:
        tool.say(tool.link_summary())
    loop = asyncio.get_running_loop()
    if ns.start_delay and not await tool.until([], end=loop.time() + ns.start_delay) and \
            tool.stop.is_set():
        return EXIT_FAILED
    duration = ns.duration if ns.duration is not None else \
        (DEFAULT_TX_DURATION if b.mode == "tx" else None)
    start = time.monotonic()
    end = None if duration is None else loop.time() + duration
    itf = tool.itf
    per_queue = {"tx": b.tx_queue, "rx": b.rx_queue, "echo": b.echo_queue}[b.mode]
    try:
        n = min(len(itf.rx_queues), len(itf.tx_queues))
        pairs = [(itf.get_rx_queue(q), itf.get_tx_queue(q)) for q in range(n)]
    except MemifError:
        pairs = []
    progress = Progress(sys.stderr if ns.json else sys.stdout, f"bench {b.mode}")

    async def report() -> None:
        while ns.progress > 0:
            await asyncio.sleep(ns.progress)
            progress.update(b.t, time.monotonic() - start)

    reporter = asyncio.ensure_future(report())
    try:
        ended = await tool.until([per_queue(rx, tx) for rx, tx in pairs], b.done, end)
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        progress.finish()
    stop = time.monotonic()
    down: str | None = None
    if ended and not b.done.is_set():
        down = itf.get_disconnect_reason() or "unknown reason"
        tool.error(f"link down: {down}")
    if b.mode == "tx":
        await tool.drain(DRAIN_TIMEOUT)
    if ns.linger and itf.is_connected():
        await tool.until([], end=loop.time() + ns.linger)
    t = b.t
    if b.mode == "tx":
        seconds = stop - start
    else:
        seconds = (t.last - t.first) if t.packets > 1 else 0.0
    status = EXIT_OK if t.packets and not (b.mode == "rx" and t.drops) else EXIT_FAILED
    if ns.json:
        print(json.dumps(_json_summary(b, tool, seconds, down, status)), flush=True)
    else:
        rate = t.packets / seconds if seconds else 0.0
        bits = t.bytes * 8 / seconds if seconds else 0.0
        extra = ""
        if b.mode == "rx":
            extra = f", {t.reordered} reordered, {t.other} not bench packets"
        tool.say(f"bench {b.mode}: {t.packets} packets, {t.bytes} bytes in {seconds:.3f} s: "
                 f"{fmt_rate(rate, 'pkt/s')}, {fmt_rate(bits, 'bit/s')}, "
                 f"{t.drops} drops{extra}")
    return status
