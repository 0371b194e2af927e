"""Floors: the least work any Python code must do for a benchmark's job, with no library.

Each headline row of the runner is reported as a ratio to its floor, measured in the same run:

* ``floor-rx``: slice 256 packets out of an mmap laid out like a memif region (a ring of
  16-byte descriptors, then 2048-byte buffers) into a list, after one strided read of the
  descriptors' lengths;
* ``floor-tx``: the reverse: copy 256 packets into the buffers, then one strided write of
  their lengths;
* ``floor-busy-poll``: two processes spinning on a shared u16 in an mmap (a memfd): one
  stores a sequence number, the other sees it change and stores it back in a second u16;
* ``floor-interrupt``: an eventfd ping-pong between two processes running the same event loop
  type, each waiting with ``loop.add_reader``.

The two-process floors run their other side as ``python -m benchmarks.floors`` on the peer CPU;
it ends when its stdin closes, when its parent dies, or after ``--lifetime`` seconds, whichever
comes first, and the runner kills it by PID if it does not.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import mmap
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

#: a memif descriptor: flags u16, region u16, length u32, offset u32, metadata u32
DESC_SIZE = 16
_W32 = DESC_SIZE // 4
_L32 = 1  # the length field, as the u32 index inside a descriptor
BURST = 256
#: how long a two-process floor's peer may live at most (seconds)
PEER_LIFETIME = 120.0
#: spins between two checks of the deadline (a busy-poll floor never spins unbounded)
SPIN_CHECK = 4096


class _Ring:
    """An anonymous mmap laid out like a memif region: 256 descriptors, then the buffers."""

    def __init__(self, size: int) -> None:
        self.slot = max(2048, size)
        base = BURST * DESC_SIZE
        self.mm = mmap.mmap(-1, base + BURST * self.slot)
        self.d32 = memoryview(self.mm)[:base].cast("I")
        self.offsets = [base + i * self.slot for i in range(BURST)]
        pkt = bytes((i * 7) & 0xFF for i in range(size))
        for o in self.offsets:
            self.mm[o:o + size] = pkt
        self.d32[_L32::_W32] = array.array("I", [size] * BURST)
        self.pkts = [pkt] * BURST

    def close(self) -> None:
        self.d32.release()
        self.mm.close()


def make_rx_step(ring: _Ring) -> Callable[[], int]:
    """One rx floor step: a strided read of 256 lengths, 256 slices into a list."""
    mm, d32, offs = ring.mm, ring.d32, ring.offsets

    def step() -> int:
        lens = d32[_L32:BURST * _W32:_W32].tolist()
        out = [mm[o:o + n] for o, n in zip(offs, lens)]
        return len(out)
    return step


def make_tx_step(ring: _Ring) -> Callable[[], int]:
    """One tx floor step: 256 slice assignments into the buffers, a strided write of lengths."""
    mm, d32, offs, pkts = ring.mm, ring.d32, ring.offsets, ring.pkts

    def step() -> int:
        lens = list(map(len, pkts))
        for p, o, n in zip(pkts, offs, lens):
            mm[o:o + n] = p
        d32[_L32:BURST * _W32:_W32] = array.array("I", lens)
        return len(lens)
    return step


@contextlib.contextmanager
def ring(size: int = 64) -> Iterator[_Ring]:
    r = _Ring(size)
    try:
        yield r
    finally:
        r.close()


# --------------------------------------------------------------------------------------------
# The other side of the two-process floors
# --------------------------------------------------------------------------------------------
class FloorPeer:
    """``python -m benchmarks.floors MODE`` on the peer CPU, holding the fds it is given."""

    def __init__(self, mode: str, fds: list[int], uvloop: bool, cpu: int) -> None:
        self.argv = [sys.executable, "-m", "benchmarks.floors", mode,
                     "--fds", ",".join(map(str, fds)), "--cpu", str(cpu),
                     "--lifetime", str(PEER_LIFETIME)] + (["--uvloop"] if uvloop else [])
        self.fds = fds
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> FloorPeer:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=here,
            pass_fds=self.fds)
        return self

    async def ready(self, timeout: float = 30) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if line.strip() != b"READY":
            raise RuntimeError(f"floor peer did not get ready: {line!r}")

    async def __aexit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.communicate(), 10)
        except TimeoutError:
            proc.kill()  # by PID: this is our own child
            await proc.wait()


def _spin_until(u16: memoryview, i: int, value: int, deadline: float) -> None:
    """Spin until ``u16[i] == value``; raise TimeoutError past ``deadline`` (monotonic)."""
    while True:
        for _ in range(SPIN_CHECK):
            if u16[i] == value:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("the busy-poll floor's peer stopped answering")


async def busy_poll_rtts(count: int, uvloop: bool, cpu: int, warmup: int = 200) -> list[float]:
    """Round trips (µs) of a u16 stored by us and stored back by a spinning peer process."""
    fd = os.memfd_create("memif-bench-floor", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, mmap.PAGESIZE)
        mm = mmap.mmap(fd, mmap.PAGESIZE)
    except OSError:
        os.close(fd)
        raise
    u16 = memoryview(mm).cast("H")
    rtts: list[float] = []
    try:
        async with FloorPeer("busy-poll", [fd], uvloop, cpu) as peer:
            try:
                await peer.ready()
                clock = time.perf_counter_ns
                deadline = time.monotonic() + 60
                seq = 0
                for k in range(warmup + count):
                    seq = seq % 0xFFFF + 1  # never 0, the value the peer starts from
                    t0 = clock()
                    u16[0] = seq
                    _spin_until(u16, 1, seq, deadline)
                    if k >= warmup:
                        rtts.append((clock() - t0) / 1000)
            finally:
                u16[2] = 1  # tells the peer to stop
    finally:
        os.close(fd)
        u16.release()
        mm.close()
    return rtts


async def interrupt_rtts(count: int, uvloop: bool, cpu: int, warmup: int = 200) -> list[float]:
    """Round trips (µs) of an eventfd ping answered by a peer process's ``add_reader``."""
    flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC
    ping = os.eventfd(0, flags)
    pong = os.eventfd(0, flags)
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[None] | None] = [None]

    def on_pong() -> None:
        try:
            os.eventfd_read(pong)
        except BlockingIOError:
            return
        f = waiter[0]
        if f is not None and not f.done():
            f.set_result(None)

    rtts: list[float] = []
    try:
        async with FloorPeer("interrupt", [ping, pong], uvloop, cpu) as peer:
            await peer.ready()
            assert peer.proc is not None
            proc = peer.proc

            def peer_gone(_: object) -> None:
                f = waiter[0]
                if f is not None and not f.done():
                    f.set_exception(RuntimeError("the interrupt floor's peer exited"))

            watch = asyncio.ensure_future(proc.wait())
            watch.add_done_callback(peer_gone)
            loop.add_reader(pong, on_pong)
            try:
                clock = time.perf_counter_ns
                for k in range(warmup + count):
                    f = waiter[0] = loop.create_future()
                    t0 = clock()
                    os.eventfd_write(ping, 1)
                    await f
                    if k >= warmup:
                        rtts.append((clock() - t0) / 1000)
            finally:
                loop.remove_reader(pong)
                waiter[0] = None
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
    finally:
        os.close(ping)
        os.close(pong)
    return rtts


def _peer_busy_poll(fd: int, lifetime: float) -> None:
    mm = mmap.mmap(fd, mmap.PAGESIZE)
    u16 = memoryview(mm).cast("H")
    ppid = os.getppid()
    deadline = time.monotonic() + lifetime
    last = u16[0]
    print("READY", flush=True)
    try:
        while True:
            for _ in range(SPIN_CHECK):
                v = u16[0]
                if v != last:
                    u16[1] = last = v
                    break
            else:
                if u16[2] or os.getppid() != ppid or time.monotonic() > deadline:
                    return
    finally:
        u16.release()
        mm.close()


async def _peer_interrupt(ping: int, pong: int, lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_ping() -> None:
        try:
            os.eventfd_read(ping)
        except BlockingIOError:
            return
        os.eventfd_write(pong, 1)

    loop.add_reader(ping, on_ping)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(0, 1) else None)
    print("READY", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), lifetime)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(ping)
        loop.remove_reader(sys.stdin.fileno())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.floors",
                                description="the peer side of the two-process floors")
    p.add_argument("mode", choices=["busy-poll", "interrupt"])
    p.add_argument("--fds", required=True, help="comma-separated inherited fds")
    p.add_argument("--cpu", type=int, default=None)
    p.add_argument("--lifetime", type=float, default=PEER_LIFETIME)
    p.add_argument("--uvloop", action="store_true")
    ns = p.parse_args(argv)
    if ns.cpu is not None:
        os.sched_setaffinity(0, {ns.cpu})
    fds = [int(x) for x in ns.fds.split(",")]
    if ns.mode == "busy-poll":
        _peer_busy_poll(fds[0], ns.lifetime)
    elif ns.uvloop:
        import uvloop

        uvloop.run(_peer_interrupt(fds[0], fds[1], ns.lifetime))
    else:
        asyncio.run(_peer_interrupt(fds[0], fds[1], ns.lifetime))


if __name__ == "__main__":
    main()
