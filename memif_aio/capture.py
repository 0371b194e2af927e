"""Packet capture to classic pcap files, through an interface tap.

Record what an interface receives and sends (every queue, across reconnects)::

    from memif_aio.capture import capture

    async with capture(itf, "out.pcap", count=100) as cap:
        await cap.wait()          # until 100 packets are written (or use duration=)
    print(cap.packets, "packets written")

The file is a classic pcap file (magic ``0xa1b2c3d4``, version 2.4, microsecond
timestamps) with link type ``LINKTYPE_ETHERNET`` (1) for an ``ethernet`` mode
interface and ``LINKTYPE_RAW`` (101, bare IPv4/IPv6) for an ``ip`` mode one;
Wireshark, tcpdump, dpkt and scapy read it.  pcap has no field for the
direction or the queue: :attr:`Capture.received` and :attr:`Capture.sent` count
them, and ``direction="rx"``/``"tx"`` records one direction only.

:class:`PcapWriter` is the file format alone; :class:`Capture` is a tap (a
callable ``capture(qid, is_rx, packets)``) that writes through a
:class:`PcapWriter` and stops at ``count`` packets or after ``duration`` seconds.
The tap runs on the data path, synchronously: each packet costs a ``struct.pack``
and a buffered file write.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Sequence
from typing import IO, Union

from .interface import Interface
from .wire import InterfaceMode

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "LINKTYPE_USER0",
    "Capture",
    "PcapWriter",
    "capture",
    "linktype_for",
]

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  #: bare IPv4 or IPv6 packets (memif ``ip`` mode)
LINKTYPE_USER0 = 147  #: for ``punt/inject`` mode, whose frames have no standard link type
PCAP_MAGIC = 0xA1B2C3D4  #: microsecond timestamps
DEFAULT_SNAPLEN = 65535

_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


def linktype_for(mode: InterfaceMode | int | str) -> int:
    """The pcap link type for a memif interface mode (ethernet, ip, punt/inject)."""
    if isinstance(mode, str):
        mode = InterfaceMode[mode.upper().replace("/", "_").replace("-", "_")]
    mode = InterfaceMode(mode)
    if mode is InterfaceMode.ETHERNET:
        return LINKTYPE_ETHERNET
    if mode is InterfaceMode.IP:
        return LINKTYPE_RAW
    return LINKTYPE_USER0


class PcapWriter:
    """A classic pcap file being written (``path`` or an open binary file).

    ``write(packet, ts)`` appends one record (``ts`` in seconds since the epoch,
    ``time.time()`` when omitted); packets longer than ``snaplen`` are truncated
    in the file, with their original length recorded.  ``close()`` flushes (and
    closes a file this writer opened).  Usable as a context manager.
    """

    def __init__(self, file: Union[str, IO[bytes]], linktype: int = LINKTYPE_ETHERNET,
                 snaplen: int = DEFAULT_SNAPLEN) -> None:
        if not 1 <= snaplen <= 0x7FFFFFFF:
            raise ValueError("snaplen must be in 1..2147483647")
        if not 0 <= linktype <= 0xFFFF:
            raise ValueError("linktype must be in 0..65535")
        self.linktype = linktype
        self.snaplen = snaplen
        self.packets = 0
        self.bytes = 0
        self._own = isinstance(file, str)
        self._file: IO[bytes] = open(file, "wb") if isinstance(file, str) else file
        self._file.write(_GLOBAL.pack(PCAP_MAGIC, 2, 4, 0, 0, snaplen, linktype))

    def write(self, packet: bytes | bytearray | memoryview, ts: float | None = None) -> None:
        if ts is None:
            ts = time.time()
        sec = int(ts)
        usec = min(999_999, round((ts - sec) * 1e6))
        n = len(packet)
        cap = min(n, self.snaplen)
        self._file.write(_RECORD.pack(sec, usec, cap, n))
        self._file.write(packet if cap == n else bytes(packet[:cap]))
        self.packets += 1
        self.bytes += n

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        if self._own:
            self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Capture:
    """A tap that writes the packets it sees to a pcap file.

    ``Capture(path, linktype=LINKTYPE_ETHERNET, count=None, duration=None,
    direction="both", snaplen=65535)``; attach it with :meth:`attach` (or use
    :func:`capture`).  It stops recording (and detaches) after ``count`` packets
    or ``duration`` seconds from :meth:`attach`, whichever comes first; ``await
    cap.wait()`` returns then (or at once if neither limit is set and
    :meth:`stop` was called).  ``packets``, ``received`` and ``sent`` count what
    was written.
    """

    def __init__(self, file: Union[str, IO[bytes]], linktype: int = LINKTYPE_ETHERNET, *,
                 count: int | None = None, duration: float | None = None,
                 direction: str = "both", snaplen: int = DEFAULT_SNAPLEN) -> None:
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        if duration is not None and not duration > 0:
            raise ValueError("duration must be a positive number of seconds")
        if direction not in ("both", "rx", "tx"):
            raise ValueError("direction must be 'both', 'rx' or 'tx'")
        self.count = count
        self.duration = duration
        self.direction = direction
        self.received = 0
        self.sent = 0
        self._writer = PcapWriter(file, linktype, snaplen)
        self._interfaces: list[Interface] = []
        self._done: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    @property
    def packets(self) -> int:
        """Packets written so far."""
        return self._writer.packets

    @property
    def linktype(self) -> int:
        return self._writer.linktype

    @property
    def done(self) -> bool:
        """True once the capture stopped (limit reached or :meth:`stop`)."""
        return self._stopped

    @property
    def stopped(self) -> asyncio.Event:
        """An :class:`asyncio.Event` set when the capture stops."""
        if self._done is None:
            self._done = asyncio.Event()
            if self._stopped:
                self._done.set()
        return self._done

    def __call__(self, qid: int, is_rx: bool, packets: Sequence[bytes]) -> None:
        if self._stopped:
            return
        if (self.direction == "rx" and not is_rx) or (self.direction == "tx" and is_rx):
            return
        ts = time.time()
        w = self._writer
        for p in packets:
            if self.count is not None and w.packets >= self.count:
                break
            w.write(p, ts)
            if is_rx:
                self.received += 1
            else:
                self.sent += 1
        if self.count is not None and w.packets >= self.count:
            self.stop()

    def attach(self, itf: Interface) -> None:
        """Start recording ``itf`` (several interfaces may share one capture)."""
        if self._stopped:
            raise RuntimeError("this capture has stopped")
        loop = asyncio.get_running_loop()
        if self._timer is None and self.duration is not None:
            self._timer = loop.call_later(self.duration, self.stop)
        itf.add_tap(self)
        self._interfaces.append(itf)

    def stop(self) -> None:
        """Stop recording: detach from every interface and flush the file (it stays
        open until :meth:`close`)."""
        if self._stopped:
            return
        self._stopped = True
        for itf in self._interfaces:
            itf.remove_tap(self)
        self._interfaces.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._writer.closed:
            self._writer.flush()
        if self._done is not None:
            self._done.set()

    def close(self) -> None:
        """Stop and close the file."""
        self.stop()
        self._writer.close()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the capture stops (``count`` reached, ``duration`` over, or
        :meth:`stop`); False if ``timeout`` expired first."""
        if self._stopped:
            return True
        try:
            await asyncio.wait_for(self.stopped.wait(), timeout)
        except TimeoutError:
            return False
        return True


@contextlib.asynccontextmanager
async def capture(itf: Interface, file: Union[str, IO[bytes]], *, count: int | None = None,
                  duration: float | None = None, linktype: int | None = None,
                  direction: str = "both",
                  snaplen: int = DEFAULT_SNAPLEN) -> AsyncIterator[Capture]:
    """``async with capture(itf, "out.pcap", count=100) as cap:`` records what ``itf``
    receives and sends to a pcap file until the block exits (or a limit is reached)
    and closes the file.  ``linktype`` defaults to the one of the interface's mode
    (:func:`linktype_for`)."""
    lt = linktype if linktype is not None else linktype_for(itf.get_arguments().mode)
    cap = Capture(file, lt, count=count, duration=duration, direction=direction,
                  snaplen=snaplen)
    try:
        cap.attach(itf)
        yield cap
    finally:
        cap.close()
