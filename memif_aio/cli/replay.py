"""``memif-aio replay``: send the frames of a pcap or pcapng file through a memif
interface, at their recorded pace (scaled by ``--speed``) or at a fixed ``--rate``.

The file is read with dpkt (the ``pcap`` extra: ``pip install memif-aio[pcap]``)
before the link comes up, to check it (link type, frames, timestamps); a file of
up to 256 MiB is kept in memory, a larger one is read again for every ``--loop``.
Its link type must suit the interface mode: Ethernet (1) for ``ethernet``, raw IP
(101, 12, 14, 228, 229) for ``ip``.  Frame *i* is due at ``(ts_i - ts_0) / speed``
after the start (timestamps that go backwards count as equal to the previous
one), or at ``i / rate``; a loop starts one mean frame gap after the previous one
ended.  With several queue pairs a frame goes to the queue of its flow (a hash of
its IP addresses, protocol and ports, or of its MAC addresses), so the frames of
one flow keep their order.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import zlib
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from .common import (
    EXIT_FAILED,
    Tool,
    ToolError,
    add_interface_options,
    fmt_rate,
    int_range,
    positive_float,
    run,
)
from .traffic import Item, Sender, add_sender_options, send

LINKTYPE_ETHERNET = 1
#: raw IPv4/IPv6: LINKTYPE_RAW, DLT_RAW (12, 14 on OpenBSD), LINKTYPE_IPV4, LINKTYPE_IPV6
RAW_LINKTYPES = (101, 12, 14, 228, 229)
#: files up to this size are read once and kept in memory (dpkt reads ~60k records/s)
PRELOAD_LIMIT = 256 << 20


@dataclass(frozen=True)
class FileInfo:
    frames: int
    first: float  #: timestamp of the first frame
    span: float  #: last timestamp (never going backwards) minus the first
    linktype: int
    truncated: bool  #: the file ends inside a record header (that record is ignored)


def _open(path: str) -> tuple[IO[bytes], Any]:
    try:
        import dpkt
    except ImportError:
        raise ToolError("reading capture files needs dpkt: pip install 'memif-aio[pcap]'") \
            from None
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return f, dpkt.pcap.UniversalReader(f)
    except (ValueError, dpkt.dpkt.Error) as exc:
        f.close()
        raise ToolError(f"{path} is not a pcap or pcapng file ({exc})") from None
    except BaseException:
        f.close()
        raise


def _records(reader: Any) -> Iterator[tuple[float, bytes]]:
    import dpkt

    try:
        for ts, buf in reader:
            yield float(ts), bytes(buf)
    except (dpkt.dpkt.Error, ValueError, EOFError):
        return  # a record cut short: the file ends there


def scan(path: str, keep: bool) -> tuple[FileInfo, list[tuple[float, bytes]] | None]:
    """Read the whole file once: frames, first timestamp, span, link type; and, with
    ``keep``, the records themselves (so that the loops do not read it again)."""
    f, reader = _open(path)  # first: it explains a missing dpkt
    import dpkt

    records: list[tuple[float, bytes]] | None = [] if keep else None
    with f:
        linktype = int(reader.datalink())
        n = 0
        first = last = 0.0
        complete = True
        it = iter(reader)
        while True:
            try:
                ts, buf = next(it)
            except StopIteration:
                break
            except (dpkt.dpkt.Error, ValueError, EOFError):
                complete = False
                break
            ts = float(ts)
            if n == 0:
                first = last = ts
            last = max(last, ts)
            n += 1
            if records is not None:
                records.append((ts, bytes(buf)))
    return FileInfo(n, first, last - first, linktype, not complete), records


def _spread(key: bytes, queues: int) -> int:
    # CRC-32 is linear: a multiplicative (Fibonacci) mix spreads nearby keys over queues
    return (((zlib.crc32(key) * 0x9E3779B1) & 0xFFFFFFFF) >> 16) % queues


def flow_queue(frame: bytes, ip_mode: bool, queues: int) -> int:
    """The queue of ``frame``'s flow: a hash of the IPv4/IPv6 addresses, protocol and
    TCP/UDP/SCTP ports (or of the MAC addresses for non-IP frames)."""
    off = 0
    if not ip_mode:
        if len(frame) < 14:
            return 0
        et = int.from_bytes(frame[12:14], "big")
        off = 14
        for _ in range(2):  # VLAN tags
            if et not in (0x8100, 0x88A8) or len(frame) < off + 4:
                break
            et = int.from_bytes(frame[off + 2:off + 4], "big")
            off += 4
        if et not in (0x0800, 0x86DD):
            return _spread(frame[:12], queues)
    if len(frame) <= off:
        return 0
    version = frame[off] >> 4
    if version == 4 and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        proto = frame[off + 9]
        key = frame[off + 9:off + 10] + frame[off + 12:off + 20]
        fragment = int.from_bytes(frame[off + 6:off + 8], "big") & 0x3FFF
        l4 = off + ihl
    elif version == 6 and len(frame) >= off + 40:
        proto = frame[off + 6]
        key = frame[off + 6:off + 7] + frame[off + 8:off + 40]
        fragment = 0
        l4 = off + 40
    else:
        return _spread(frame[:12], queues)
    if proto in (6, 17, 132) and not fragment and len(frame) >= l4 + 4:
        key += frame[l4:l4 + 4]
    return _spread(key, queues)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "replay", help="send the frames of a pcap/pcapng file at their pace or a set rate",
        description="Send the frames of a pcap or pcapng FILE (read with dpkt) through one "
                    "memif interface, at their recorded pace scaled by --speed, or at a "
                    "fixed --rate, --loop times, on an absolute schedule (bursts allowed). "
                    "With several queue pairs each flow keeps to one queue. The run ends "
                    "when every frame was sent (then waits up to 1 s for the peer to take "
                    "what is in the rings), on SIGINT/SIGTERM, or when the link goes down.",
        epilog="Exit status: 0 every frame was sent; 1 the link went down (or a frame could "
               "not be sent) first; 2 bad arguments, FILE unreadable, empty or of a link "
               "type the interface mode cannot carry, or no link within --timeout (a "
               "refusing peer's reason is printed); 130 forced by a second signal.")
    p.add_argument("file", metavar="FILE", help="pcap or pcapng file")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=positive_float, default=None, metavar="X",
                      help="play at X times the recorded pace (default: 1)")
    pace.add_argument("--rate", type=positive_float, default=None, metavar="PPS",
                      help="ignore the timestamps: send this many frames per second")
    p.add_argument("--loop", type=int_range(0, 1 << 62), default=1, metavar="N",
                   help="play the file N times, 0 for ever (default: %(default)s)")
    add_sender_options(p)
    add_interface_options(p, "replay")
    p.set_defaults(func=main)


def main(ns: argparse.Namespace) -> int:
    return run(ns, "replay", _body)


def schedule(path: str, info: FileInfo, records: list[tuple[float, bytes]] | None,
             speed: float, rate: float | None, loops: int, ip_mode: bool,
             queues: int) -> Generator[Item, None, None]:
    """The frames of ``loops`` passes over the file (0: for ever), with their offsets;
    from ``records`` when the file was kept in memory, else read again for each pass."""
    gap = info.span / (info.frames - 1) if info.frames > 1 else 0.0
    period = (info.span + gap) / speed
    k = 0
    for lap in itertools.count() if loops == 0 else range(loops):
        f: IO[bytes] | None = None
        if records is not None:
            source: Iterable[tuple[float, bytes]] = records
        else:
            f, reader = _open(path)
            source = _records(reader)
        try:
            prev = 0.0
            n = 0
            for ts, frame in source:
                if n == info.frames:
                    break
                n += 1
                prev = max(prev, ts - info.first)
                if rate is not None:
                    offset = k / rate
                else:
                    offset = lap * period + prev / speed
                k += 1
                yield offset, flow_queue(frame, ip_mode, queues) if queues > 1 else 0, frame
        finally:
            if f is not None:
                f.close()


async def _body(tool: Tool) -> int:
    ns = tool.ns
    try:
        keep = os.path.getsize(ns.file) <= PRELOAD_LIMIT
    except OSError:
        keep = False  # _open reports it
    info, records = scan(ns.file, keep)
    ip_mode = ns.mode == "ip"
    if ip_mode and info.linktype not in RAW_LINKTYPES:
        raise ToolError(f"{ns.file} has link type {info.linktype}; ip mode sends raw IP "
                        f"(link type 101, 12, 14, 228 or 229)")
    if not ip_mode and info.linktype != LINKTYPE_ETHERNET:
        raise ToolError(f"{ns.file} has link type {info.linktype}; ethernet mode sends "
                        "Ethernet frames (link type 1); use --mode ip for raw IP captures")
    if info.frames == 0:
        raise ToolError(f"{ns.file} holds no frames")
    if ns.json:
        tool.out = sys.stderr
    if info.truncated:
        tool.error(f"{ns.file} ends inside a record: replaying its first {info.frames} "
                   "frames")
    if not await tool.connect():
        return EXIT_FAILED
    tool.say(tool.link_summary())
    speed = ns.speed if ns.speed is not None else 1.0
    nq = len(tool.itf.tx_queues) or 1
    total = None if ns.loop == 0 else info.frames * ns.loop
    items = schedule(ns.file, info, records, speed, ns.rate, ns.loop, ip_mode, nq)

    def describe(s: Sender) -> str:
        t = s.seconds()
        pps = s.packets / t if t else 0.0
        bits = s.bytes * 8 / t if t else 0.0
        return (f"replay: {s.packets} packets, {s.bytes} bytes in {t:.3f} s: "
                f"{fmt_rate(pps, 'pkt/s')}, {fmt_rate(bits, 'bit/s')}, "
                f"{s.waits} ring-full waits")

    def ok(s: Sender, complete: bool) -> bool:
        if total is None:  # --loop 0: until a signal
            return bool(s.packets) and s.down is None and s.failed is None
        return complete and s.packets == total

    extra = {"file": os.path.abspath(ns.file), "frames": info.frames, "loops": ns.loop,
             "speed": None if ns.rate is not None else speed, "rate": ns.rate}
    try:
        return await send(tool, "replay", items, extra, describe, ok=ok)
    finally:
        items.close()
