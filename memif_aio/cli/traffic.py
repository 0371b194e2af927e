"""What ``memif-aio gen`` and ``memif-aio replay`` share: pacing, the sender, live
progress and the summary.

Pacing is a token bucket on the monotonic clock (the default event loop's clock),
written as an absolute schedule: packet *i* is due at ``start + offset(i)`` (``i / rate``, or the
recorded time of a frame divided by ``--speed``), and everything already due goes
out at once, in bursts of at most ``--burst`` packets per write.  Sleeping never
accumulates drift: a late wake-up is made up by the next burst.  The bucket depth is
:data:`MAX_LAG` seconds of traffic: when the sender falls further behind than that
(the peer does not keep up, or the process was stalled), the schedule slips instead
of bursting ever more to catch up, and the slip is reported (``behind_seconds``).
When the ring is full the sender waits for space (counted as ``ring_full_waits``);
nothing is dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import Disconnected, MemifError
from ..queue import TxQueue
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    ProgressLine,
    Tool,
    fmt_rate,
    int_range,
    positive_float,
)

#: how far (seconds) the sender may fall behind its schedule before the schedule slips
MAX_LAG = 0.25
#: how long the end of a run waits for the peer to take what is still in the rings
DRAIN_TIMEOUT = 1.0
DEFAULT_PROGRESS = 1.0

#: (offset in seconds from the start, or None for "as soon as possible", queue index,
#: frame)
Item = tuple[float | None, int, bytes]


def add_sender_options(p: argparse.ArgumentParser) -> None:
    """Options of every sending tool: burst, progress, JSON summary, linger."""
    p.add_argument("--burst", type=int_range(1, 1024), default=32, metavar="N",
                   help="at most this many packets per write (default: %(default)s)")
    p.add_argument("--progress", type=positive_float, nargs="?", const=DEFAULT_PROGRESS,
                   default=None, metavar="SECONDS",
                   help="show progress (rate, packets sent, ring-full waits) on stderr every "
                        f"SECONDS (default {DEFAULT_PROGRESS:g}); without this option "
                        "progress is shown only when stderr is a terminal")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress, even on a terminal")
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object on stdout (messages go to "
                        "stderr)")
    p.add_argument("--linger", type=positive_float, default=None, metavar="SECONDS",
                   help="keep the link up this long after sending (for example to read "
                        "the peer's counters before they reset on disconnect)")


class Pacer:
    """The schedule: ``delay(offset)`` is how long until the packet at ``offset``
    seconds from :meth:`start` is due (0 when it is due or late), on ``clock``.
    More than ``max_lag`` late, the schedule slips to ``max_lag`` behind:
    :attr:`slipped` sums the slips."""

    def __init__(self, clock: Callable[[], float], max_lag: float = MAX_LAG) -> None:
        self.clock = clock
        self.max_lag = max_lag
        self.t0 = clock()
        self.slipped = 0.0

    def start(self) -> None:
        self.t0 = self.clock()
        self.slipped = 0.0

    def delay(self, offset: float) -> float:
        late = self.clock() - (self.t0 + offset)
        if late > self.max_lag:
            self.slipped += late - self.max_lag
            self.t0 += late - self.max_lag
            return 0.0
        return max(0.0, -late)

    def at(self, offset: float) -> float:
        """The clock time of ``offset`` on the (possibly slipped) schedule."""
        return self.t0 + offset


class Sender:
    """Sends :data:`Item` s on the queues of one connection, paced, counting what it
    sends; :meth:`progress_loop` reports while it runs."""

    def __init__(self, tool: Tool, label: str) -> None:
        self.tool = tool
        self.label = label
        self.burst: int = tool.ns.burst
        # the monotonic clock: the default loop's own; uvloop's loop.time() is cached
        # per loop iteration (in milliseconds), so a schedule started on it could
        # begin in the past and send its first packets early
        self.pacer = Pacer(time.monotonic)
        self.packets = 0
        self.bytes = 0
        self.waits = 0
        self.started = time.monotonic()
        self.stopped: float | None = None
        self.down: str | None = None
        self.failed: str | None = None
        self.complete = False  #: every item was sent (or an unpaced run reached its end)

    def seconds(self) -> float:
        end = self.stopped if self.stopped is not None else time.monotonic()
        return max(0.0, end - self.started)

    async def _write(self, tx: TxQueue, pkts: list[bytes]) -> None:
        k = tx.write_burst_nowait(pkts)
        self.packets += k
        self.bytes += sum(map(len, pkts if k == len(pkts) else pkts[:k]))
        while k < len(pkts):
            # the ring is full: wait for space one packet at a time (a cancelled
            # write_packet published nothing, so the counts stay exact)
            self.waits += 1
            await tx.write_packet(pkts[k])
            self.packets += 1
            self.bytes += len(pkts[k])
            k += 1
            if k < len(pkts):
                rest = pkts[k:]
                n = tx.write_burst_nowait(rest)
                self.packets += n
                self.bytes += sum(map(len, rest[:n]))
                k += n

    async def run(self, items: Iterable[Item], until: float | None = None,
                  end_at: float | None = None) -> bool:
        """Send ``items`` (queue indexes are taken modulo the queues of the link);
        stop taking new items once the loop time ``until`` has come; after the last
        item, wait until the schedule's offset ``end_at`` (the end of a paced
        window).  True when every item was sent; False when the link went down."""
        itf = self.tool.itf
        try:
            queues = [itf.get_tx_queue(q) for q in range(len(itf.tx_queues))]
        except MemifError as exc:
            self.down = str(exc)
            return False
        nq = len(queues)
        loop = asyncio.get_running_loop()
        pacer = self.pacer
        pacer.start()
        self.started = time.monotonic()
        pending: list[list[bytes]] = [[] for _ in range(nq)]
        npending = 0
        burst = self.burst
        stop = self.tool.stop

        async def flush() -> None:
            nonlocal npending
            for q, pkts in enumerate(pending):
                if pkts:
                    pending[q] = []
                    await self._write(queues[q], pkts)
            npending = 0

        try:
            for offset, qid, frame in items:
                if stop.is_set():
                    break
                if until is not None and loop.time() >= until:
                    self.complete = True  # the planned end of an unpaced run
                    break
                if offset is not None:
                    wait = pacer.delay(offset)
                    if wait > 0:
                        if npending:
                            await flush()
                            wait = pacer.delay(offset)
                        if wait > 0:
                            await asyncio.sleep(wait)
                pending[qid % nq].append(frame)
                npending += 1
                if npending >= burst:
                    await flush()
                    # write_burst_nowait does not yield: let the loop breathe
                    await asyncio.sleep(0)
            else:
                self.complete = True
            if npending:
                await flush()
            if self.complete and end_at is not None and not stop.is_set():
                wait = pacer.at(end_at) - pacer.clock()
                if wait > 0:
                    await self.tool.until([], end=loop.time() + wait)
        except Disconnected as exc:
            self.complete = False
            self.down = exc.reason
        except MemifError as exc:  # a frame the link cannot carry (PacketTooLarge)
            self.complete = False
            self.failed = str(exc)
        finally:
            self.stopped = time.monotonic()
        return self.complete

    def progress_line(self, prev: tuple[int, float]) -> tuple[str, tuple[int, float]]:
        now = time.monotonic()
        p0, t0 = prev
        rate = (self.packets - p0) / (now - t0) if now > t0 else 0.0
        line = (f"{self.label} {now - self.started:7.1f} s  {self.packets:>12} sent  "
                f"{fmt_rate(rate, 'pkt/s'):>14}  ring-full waits {self.waits}")
        return line, (self.packets, now)

    async def progress_loop(self, line: ProgressLine, period: float) -> None:
        prev = (self.packets, time.monotonic())
        while True:
            await asyncio.sleep(period)
            text, prev = self.progress_line(prev)
            line.show(text)

    def summary(self) -> dict[str, Any]:
        s = self.seconds()
        return {"packets": self.packets, "bytes": self.bytes, "seconds": round(s, 6),
                "pps": self.packets / s if s else 0.0,
                "bps": self.bytes * 8 / s if s else 0.0, "ring_full_waits": self.waits,
                "behind_seconds": round(self.pacer.slipped, 6)}


async def send(tool: Tool, label: str, items: Iterable[Item], extra: dict[str, Any],
               describe: Callable[[Sender], str], *, until: float | None = None,
               end_at: float | None = None, hard_end: float | None = None,
               ok: Callable[[Sender, bool], bool] | None = None) -> int:
    """One sending run on a connected tool: progress, drain, linger, summary (text or
    ``--json``) and the exit status (0 when ``ok(sender, complete)``, by default
    when packets were sent, 1 otherwise)."""
    ns = tool.ns
    s = Sender(tool, label)
    period = ns.progress if ns.progress is not None else \
        (DEFAULT_PROGRESS if sys.stderr.isatty() else None)
    if ns.no_progress:
        period = None
    line = ProgressLine(sys.stderr)
    reporter = asyncio.ensure_future(s.progress_loop(line, period)) if period else None
    try:
        await tool.until([s.run(items, until, end_at)], end=hard_end)
    finally:
        if reporter is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        line.finish()
    itf = tool.itf
    # (a peer that leaves once everything was sent is no failure)
    if s.down is None and not s.complete and not itf.is_connected() and not tool.stop.is_set():
        s.down = itf.get_disconnect_reason() or "unknown reason"
    if s.down is not None:
        tool.error(f"link down: {s.down}")
    if s.failed is not None:
        tool.error(f"cannot send: {s.failed}")
    complete = s.complete
    await tool.drain(DRAIN_TIMEOUT)
    if ns.linger and itf.is_connected():
        await tool.until([], end=asyncio.get_running_loop().time() + ns.linger)
    good = ok(s, complete) if ok is not None else bool(s.packets)
    status = EXIT_OK if good else EXIT_FAILED
    if ns.json:
        doc = {"command": label, "role": ns.role, **extra, **s.summary(),
               "queues": len(itf.tx_queues) if itf.is_connected() else ns.queues,
               "complete": complete, "link_down": s.down, "exit_status": status}
        print(json.dumps(doc), flush=True)
    else:
        tool.say(describe(s))
    return status
