"""``memif-aio demo``: a master here, a slave in a second process, verified traffic both ways.

The job: start a master interface in this process and a slave in a child
process (``python -m memif_aio demo-peer ...``) on a socket in a fresh
temporary directory, send packets of mixed sizes (64 up to 9000 bytes by
default, so packets larger than the 2048-byte buffers travel as chains) in both
directions on every queue pair for ``--duration`` seconds, verify every byte
that arrives, print the figures per direction and end with ``OK`` (exit status
0) or ``FAILED`` (exit status 1).

Every packet is ``HEADER`` (magic, direction, kind, queue, sequence number)
followed by a slice of a precomputed pseudo-random pattern chosen by the
sequence number, and its size is chosen by the sequence number too, so the
receiver rebuilds the exact packet it expects and compares all of it: order,
content, loss and duplicates are all checked.  Each sender ends its stream with
an END packet carrying the number of data packets it sent.

Flow control needs no extra window: ``write_burst`` waits for ring space, so the
ring is the window and nothing is dropped.  The processes only shut down once
both sides have received each other's END packets (the child waits for the
parent's ``exit`` line), so no packet is left in a ring at teardown.

Clean-up is unconditional: the child is asked to exit, then terminated, then
killed and always reaped; the temporary directory is always removed; a
watchdog thread bounds the whole run even if the event loop is stuck.  The child
exits when the parent dies (``PR_SET_PDEATHSIG`` and EOF on its stdin) and then
removes the parent's socket directory if nobody else can.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence, TypeVar

from .._text import printable
from ..config import Arguments, MemoryConfig
from ..errors import Disconnected, MemifError
from ..interface import Interface
from ..queue import RxQueue, TxQueue
from ..socket import Socket
from .common import fmt_rate, run_loop

T = TypeVar("T")

#: magic, direction, kind, queue id, sequence number (END: number of data packets sent)
HEADER = struct.Struct("<IBBHQ")
MAGIC = 0x4D454D46  # "FMEM" little-endian
KIND_DATA = 0
KIND_END = 1
MASTER_TO_SLAVE = 0
SLAVE_TO_MASTER = 1
DIRECTION_NAMES = {MASTER_TO_SLAVE: "master -> slave", SLAVE_TO_MASTER: "slave -> master"}

DEFAULT_SIZES = (64, 128, 256, 512, 1024, 1500, 2048, 2049, 4096, 9000)
MIN_SIZE = HEADER.size
MAX_SIZE = 65535
#: pattern period (a prime, so offsets do not line up with sizes)
PERIOD = 65521
#: packets per write_burst
BURST = 32
#: how long the two sides may take to connect
CONNECT_TIMEOUT = 10.0
#: extra time for connecting, draining and exiting, beyond --duration
GRACE = 20.0
#: faults the peer can inject (for tests of the verifier and of the clean-up)
PEER_FAULTS = ("corrupt", "drop", "dup", "crash", "hang")
#: "freeze" blocks the master's event loop: only the watchdog thread can end that run
FAULTS = (*PEER_FAULTS, "freeze")
FAULT_AT = 100

log = logging.getLogger("memif_aio.demo")


# --- traffic ------------------------------------------------------------------------------


class Traffic:
    """The deterministic packet stream: packet ``seq`` of a direction and queue."""

    def __init__(self, sizes: Sequence[int], seed: int) -> None:
        if not sizes:
            raise ValueError("at least one packet size is needed")
        for s in sizes:
            if not MIN_SIZE <= s <= MAX_SIZE:
                raise ValueError(f"packet size {s} is outside {MIN_SIZE}..{MAX_SIZE}")
        self.sizes = tuple(sizes)
        self.pattern = random.Random(seed).randbytes(PERIOD + max(sizes))

    def size(self, seq: int) -> int:
        return self.sizes[((seq * 2654435761) >> 7) % len(self.sizes)]

    def packet(self, direction: int, qid: int, seq: int) -> bytes:
        n = self.size(seq) - HEADER.size
        off = (seq * 7919 + qid * 104729 + direction * 1299709) % PERIOD
        return HEADER.pack(MAGIC, direction, KIND_DATA, qid, seq) + self.pattern[off:off + n]

    @staticmethod
    def end(direction: int, qid: int, count: int) -> bytes:
        return HEADER.pack(MAGIC, direction, KIND_END, qid, count)


@dataclass
class RxCheck:
    """Verification of one received stream (one direction of one queue)."""

    direction: int
    qid: int
    expected: int = 0
    packets: int = 0
    octets: int = 0
    lost: int = 0
    duplicates: int = 0
    corrupt: int = 0
    end_count: int | None = None
    elapsed: float = 0.0
    errors: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(f"queue {self.qid}: {text}")

    @property
    def ok(self) -> bool:
        return not self.errors and self.end_count is not None

    def check(self, traffic: Traffic, pkt: bytes) -> bool:
        """Check one packet; True when it is the END packet."""
        if len(pkt) < HEADER.size:
            self.corrupt += 1
            self.error(f"packet of {len(pkt)} bytes is shorter than the header")
            return False
        magic, direction, kind, qid, seq = HEADER.unpack_from(pkt)
        if magic != MAGIC or direction != self.direction or qid != self.qid or \
                kind not in (KIND_DATA, KIND_END):
            self.corrupt += 1
            self.error(f"bad header after packet {self.expected - 1}: "
                       f"{pkt[:HEADER.size].hex()}")
            return False
        if kind == KIND_END:
            self.end_count = seq
            if seq > self.expected:
                self.lost += seq - self.expected
                self.error(f"the sender sent {seq} packets, {seq - self.expected} never arrived")
            elif seq < self.expected:
                self.error(f"the sender sent {seq} packets but {self.expected} arrived")
            return True
        self.packets += 1
        self.octets += len(pkt)
        if seq != self.expected:
            if seq > self.expected:
                self.lost += seq - self.expected
                self.error(f"packets {self.expected}..{seq - 1} lost")
            else:
                self.duplicates += 1
                self.error(f"packet {seq} arrived again (duplicate or reordered) "
                           f"after packet {self.expected - 1}")
        self.expected = max(self.expected, seq + 1)
        want = traffic.packet(direction, qid, seq)
        if pkt != want:
            self.corrupt += 1
            if len(pkt) != len(want):
                self.error(f"packet {seq}: {len(pkt)} bytes instead of {len(want)}")
            else:
                at = next(i for i in range(len(pkt)) if pkt[i] != want[i])
                self.error(f"packet {seq}: content differs from byte {at} on")
        return False

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "qid": self.qid, "packets": self.packets,
                "bytes": self.octets, "lost": self.lost, "duplicates": self.duplicates,
                "corrupt": self.corrupt, "end_count": self.end_count,
                "elapsed": self.elapsed, "errors": self.errors}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RxCheck:
        return cls(direction=int(d["direction"]), qid=int(d["qid"]),
                   packets=int(d["packets"]), octets=int(d["bytes"]), lost=int(d["lost"]),
                   duplicates=int(d["duplicates"]), corrupt=int(d["corrupt"]),
                   end_count=d["end_count"], elapsed=float(d["elapsed"]),
                   errors=[str(e) for e in d["errors"]])


@dataclass
class TxResult:
    qid: int
    packets: int = 0
    error: str | None = None


async def _receive(q: RxQueue, traffic: Traffic, chk: RxCheck, t0: float) -> None:
    try:
        while True:
            for pkt in await q.read_burst(64):
                if chk.check(traffic, pkt):
                    chk.elapsed = time.monotonic() - t0
                    return
            chk.elapsed = time.monotonic() - t0
    except Disconnected as exc:
        chk.elapsed = time.monotonic() - t0
        chk.error(f"link went down before the END packet: {exc.reason or 'no reason'}")


async def _send(q: TxQueue, traffic: Traffic, direction: int, stop_at: float, res: TxResult,
                fault: str | None = None) -> None:
    qid = q.qid
    seq = 0
    try:
        while time.monotonic() < stop_at:
            burst = [traffic.packet(direction, qid, s) for s in range(seq, seq + BURST)]
            if fault is not None and seq <= FAULT_AT < seq + BURST:
                burst = await _inject(fault, burst, FAULT_AT - seq, q)
            await _write_all(q, burst)
            seq += BURST
            res.packets = seq
        await q.write_packet(Traffic.end(direction, qid, seq))
    except Disconnected as exc:
        res.error = f"queue {qid}: link went down while sending: {exc.reason or 'no reason'}"


async def _write_all(q: TxQueue, packets: list[bytes]) -> None:
    """``write_burst`` may publish fewer than asked (like ``socket.send``): send the rest."""
    done = 0
    while done < len(packets):
        done += await q.write_burst(packets[done:])


async def _inject(fault: str, burst: list[bytes], i: int, q: TxQueue) -> list[bytes]:
    """Damage the stream the way ``fault`` says (the verifier must notice)."""
    if fault == "corrupt":
        b = bytearray(burst[i])
        b[-1] ^= 0xFF
        burst[i] = bytes(b)
    elif fault == "drop":
        del burst[i]
    elif fault == "dup":
        burst.insert(i + 1, burst[i])
    elif fault == "crash":
        await _write_all(q, burst[:i])
        os._exit(3)
    elif fault == "hang":
        await _write_all(q, burst[:i])
        await asyncio.sleep(3600)  # stop sending but keep the link up
    return burst


async def run_traffic(itf: Interface, traffic: Traffic, tx_direction: int, duration: float,
                      tx: list[TxResult], rx: list[RxCheck],
                      fault: str | None = None) -> None:
    """Send on every tx queue for ``duration`` s and verify every rx queue until END.

    Fills ``tx`` and ``rx`` (one entry per queue) as it goes, so a caller that
    gives up early still sees how far it got.
    """
    t0 = time.monotonic()
    txq, rxq = itf.tx_queues, itf.rx_queues
    tx[:] = [TxResult(q.qid) for q in txq]
    rx[:] = [RxCheck(1 - tx_direction, q.qid) for q in rxq]
    if not itf.is_connected() or not txq or not rxq:
        for r in tx:
            r.error = f"queue {r.qid}: link down before traffic started: " \
                      f"{printable(itf.get_disconnect_reason()) or 'no reason'}"
        return
    tasks = [_send(q, traffic, tx_direction, t0 + duration, tx[i], fault if i == 0 else None)
             for i, q in enumerate(txq)]
    tasks += [_receive(q, traffic, rx[i], t0) for i, q in enumerate(rxq)]
    await asyncio.gather(*tasks)


# --- processes ---------------------------------------------------------------------------


def _emit(obj: dict[str, Any]) -> None:
    """One JSON line to the parent; a vanished parent cancels the peer."""
    try:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError):  # no more writes to the dead pipe at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise asyncio.CancelledError() from None


def _set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: stdin EOF still tells us
        pass


async def _connect_stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def peer_main(ns: argparse.Namespace) -> int:
    """The hidden ``demo-peer`` subcommand: the slave side of the demo."""
    _set_parent_death_signal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    if ns.parent_pid and os.getppid() != ns.parent_pid:
        return 2  # the parent died before we could watch it
    orphaned = False
    try:
        return run_loop(_peer(ns), ns.uvloop)
    except (KeyboardInterrupt, asyncio.CancelledError):
        orphaned = True  # SIGTERM (the parent's death signal) or EOF on stdin
        return 1
    except (MemifError, TimeoutError, ValueError) as exc:
        print(f"memif-aio demo-peer: {exc}", file=sys.stderr)
        return 1
    finally:
        d = ns.cleanup_dir
        # only the demo's own directory, and only when the parent cannot remove it itself
        if d and (orphaned or os.getppid() != ns.parent_pid) and \
                os.path.basename(d).startswith("memif-aio-demo-") and \
                os.path.dirname(os.path.abspath(ns.socket)) == os.path.abspath(d):
            shutil.rmtree(d, ignore_errors=True)


async def _peer(ns: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    loop.add_signal_handler(signal.SIGTERM, main.cancel)
    traffic = Traffic(ns.sizes, ns.seed)
    stdin = await _connect_stdin()
    quit_ev = asyncio.Event()

    async def watch_stdin() -> None:
        while True:
            line = await stdin.readline()
            if not line or line.strip() == b"exit":
                quit_ev.set()
                if not line:  # EOF without "exit": the parent is gone, stop at once
                    main.cancel()
                return

    watcher = asyncio.create_task(watch_stdin())
    try:
        async with Socket(ns.socket, app_name="memif-aio demo-peer") as sock:
            itf = sock.new_interface(Arguments(
                id=ns.id, is_master=False, name="demo-slave",
                memory_config=MemoryConfig(num_queue_pairs=ns.queues)))
            await itf.wait_connected(CONNECT_TIMEOUT)
            _emit({"event": "connected", "queues": len(itf.tx_queues)})
            tx: list[TxResult] = []
            rx: list[RxCheck] = []
            await run_traffic(itf, traffic, SLAVE_TO_MASTER, ns.duration, tx, rx, ns.fault)
            _emit({"event": "result", "tx": [{"qid": t.qid, "packets": t.packets,
                                               "error": t.error} for t in tx],
                   "rx": [c.to_json() for c in rx]})
            await quit_ev.wait()
        return 0
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


@dataclass
class _Cleanup:
    """What must go away however the run ends (shared with the watchdog thread)."""

    tmpdir: str
    proc: subprocess.Popen[bytes] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False

    def run(self, grace: float = 3.0, wait_lock: float = -1) -> None:
        """Stop the child and remove the directory (once).  ``wait_lock`` bounds the wait
        for another thread that is cleaning up already (the watchdog does not wait forever)."""
        locked = self.lock.acquire(timeout=wait_lock)
        try:
            if self.done and locked:
                return
            self.done = True
            proc = self.proc
            if proc is not None:
                if locked:
                    _stop_child(proc, grace)
                else:
                    with contextlib.suppress(OSError):
                        proc.kill()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        finally:
            if locked:
                self.lock.release()


def _stop_child(proc: subprocess.Popen[bytes], grace: float) -> None:
    """exit line (stdin EOF), then SIGTERM, then SIGKILL; always reaped."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        with contextlib.suppress(OSError, ValueError):
            proc.stdout.close()


@dataclass
class DirectionReport:
    direction: int
    checks: list[RxCheck]
    tx_errors: list[str]

    @property
    def packets(self) -> int:
        return sum(c.packets for c in self.checks)

    @property
    def octets(self) -> int:
        return sum(c.octets for c in self.checks)

    @property
    def elapsed(self) -> float:
        return max((c.elapsed for c in self.checks), default=0.0)

    @property
    def errors(self) -> list[str]:
        out = list(self.tx_errors)
        if not self.checks:
            out.append("no receive report")
        for c in self.checks:
            out += c.errors
            if not c.errors and c.end_count is None:
                out.append(f"queue {c.qid}: no END packet")
        return out

    @property
    def ok(self) -> bool:
        return bool(self.checks) and not self.errors and all(c.ok for c in self.checks)

    def line(self) -> str:
        t = self.elapsed or 1e-9
        status = "verified" if self.ok else "FAILED"
        return (f"  {DIRECTION_NAMES[self.direction]}: {self.packets} packets, "
                f"{fmt_rate(self.packets / t, 'pkt/s')}, {fmt_rate(self.octets * 8 / t, 'bit/s')}"
                f" ({self.octets} bytes in {self.elapsed:.2f} s) {status}")


def demo_main(ns: argparse.Namespace) -> int:
    """The ``demo`` subcommand."""
    try:
        Traffic(ns.sizes, ns.seed)
    except ValueError as exc:
        print(f"memif-aio demo: {exc}", file=sys.stderr)
        return 2
    timeout = ns.timeout if ns.timeout is not None else ns.duration + GRACE
    cleanup = _Cleanup(tempfile.mkdtemp(prefix="memif-aio-demo-"))

    def watchdog() -> None:
        print(f"FAILED: watchdog: the demo did not finish within {timeout + 5:.0f} s",
              flush=True)
        cleanup.run(grace=1.0, wait_lock=2.0)
        os._exit(3)

    dog = threading.Timer(timeout + 5, watchdog)
    dog.daemon = True
    dog.start()
    try:
        return run_loop(_demo(ns, cleanup, timeout), ns.uvloop)
    except KeyboardInterrupt:
        print("FAILED: interrupted", flush=True)
        return 130
    finally:
        cleanup.run()
        dog.cancel()


async def _demo(ns: argparse.Namespace, cleanup: _Cleanup, timeout: float) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    terminated = False

    def on_term() -> None:
        nonlocal terminated
        terminated = True
        main.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    path = os.path.join(cleanup.tmpdir, "memif.sock")
    traffic = Traffic(ns.sizes, ns.seed)
    loop_name = "uvloop" if ns.uvloop else "asyncio"
    print(f"memif-aio demo: master (pid {os.getpid()}) and slave in a child process on {path}")
    print(f"  {loop_name}, {ns.queues} queue pair(s), {ns.duration:g} s, packet sizes "
          f"{','.join(map(str, traffic.sizes))} bytes", flush=True)
    try:
        async with asyncio.timeout(timeout + 2):  # a backstop: _exchange keeps its own deadline
            return await _demo_body(ns, cleanup, path, traffic, timeout)
    except TimeoutError:
        print(f"FAILED: timed out after {timeout:g} s", flush=True)
        return 1
    except (MemifError, OSError, ValueError) as exc:
        print(f"FAILED: {exc}", flush=True)
        return 1
    except asyncio.CancelledError:
        if terminated:
            print("FAILED: terminated", flush=True)
            main.uncancel()
            return 143
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _demo_body(ns: argparse.Namespace, cleanup: _Cleanup, path: str,
                     traffic: Traffic, timeout: float) -> int:
    loop = asyncio.get_running_loop()
    async with Socket(path, app_name="memif-aio demo") as sock:
        itf = sock.new_interface(Arguments(id=0, is_master=True, name="demo-master"))
        argv = [sys.executable, "-m", "memif_aio", "demo-peer", "--socket", path,
                "--queues", str(ns.queues), "--duration", str(ns.duration),
                "--sizes", ",".join(map(str, traffic.sizes)), "--seed", str(ns.seed),
                "--parent-pid", str(os.getpid()), "--cleanup-dir", cleanup.tmpdir,
                "--uvloop" if ns.uvloop else "--no-uvloop"]
        if ns.fault in PEER_FAULTS:
            argv += ["--fault", ns.fault]
        if ns.verbose:
            argv.append("--verbose")
        with cleanup.lock:
            cleanup.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            close_fds=True)
        proc = cleanup.proc
        assert proc.stdout is not None and proc.stdin is not None
        print(f"  slave: pid {proc.pid}", flush=True)
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        try:
            return await _exchange(ns, itf, proc, reader, traffic, timeout)
        finally:
            transport.close()


async def _child_event(reader: asyncio.StreamReader, proc: subprocess.Popen[bytes],
                       kind: str) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        rc = await _reaped(proc, 2.0)
        raise MemifError(f"the slave process exited (status {rc}) before reporting {kind!r}")
    msg: dict[str, Any] = json.loads(line)
    if msg.get("event") != kind:
        raise MemifError(f"the slave process said {msg!r} instead of {kind!r}")
    return msg


async def _reaped(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return proc.returncode


async def _exchange(ns: argparse.Namespace, itf: Interface, proc: subprocess.Popen[bytes],
                    reader: asyncio.StreamReader, traffic: Traffic, timeout: float) -> int:
    assert proc.stdin is not None
    deadline = time.monotonic() + timeout
    child_up = asyncio.ensure_future(_child_event(reader, proc, "connected"))
    local_up = asyncio.ensure_future(itf.wait_connected(CONNECT_TIMEOUT))
    try:
        done, _ = await asyncio.wait({child_up, local_up}, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            t.result()
    except (MemifError, TimeoutError, ValueError) as exc:
        print(f"FAILED: {exc}", flush=True)
        return 1
    finally:
        for t in (child_up, local_up):
            t.cancel()
        await asyncio.gather(child_up, local_up, return_exceptions=True)
    if ns.fault == "freeze":
        time.sleep(3600)  # a stuck event loop: no timeout in the loop can fire now
    mc = itf.get_memory_config()
    print(f"  connected: {len(itf.tx_queues)} queue pair(s), ring {1 << mc.log2_ring_size} "
          f"slots x {mc.packet_buffer_size} bytes", flush=True)

    tx: list[TxResult] = []
    rx: list[RxCheck] = []
    local = asyncio.ensure_future(run_traffic(itf, traffic, MASTER_TO_SLAVE, ns.duration, tx, rx))
    remote = asyncio.ensure_future(_child_event(reader, proc, "result"))
    problems: list[str] = []
    try:
        _, pending = await asyncio.wait({local, remote}, timeout=max(0.0, deadline -
                                                                     time.monotonic()))
        if pending:
            problems.append(f"timed out after {timeout:g} s: "
                            + " and ".join(("the master's traffic did not end" if t is local
                                            else "the slave did not report") for t in pending))
    finally:
        for t in (local, remote):
            t.cancel()
        await asyncio.gather(local, remote, return_exceptions=True)
    peer: dict[str, Any] = {"tx": [], "rx": []}
    if not local.cancelled() and local.exception() is not None:
        problems.append(f"master: {local.exception()!r}")
    if remote.cancelled():
        pass
    elif remote.exception() is not None:
        problems.append(f"slave: {remote.exception()}")
    else:
        peer = remote.result()
        with contextlib.suppress(OSError):
            proc.stdin.write(b"exit\n")  # everything arrived: the slave may go
            proc.stdin.flush()
    with contextlib.suppress(OSError):
        proc.stdin.close()  # EOF without "exit" makes the slave stop at once
    m2s = DirectionReport(MASTER_TO_SLAVE, [RxCheck.from_json(c) for c in peer["rx"]],
                          [t.error for t in tx if t.error])
    s2m = DirectionReport(SLAVE_TO_MASTER, rx,
                          [str(t["error"]) for t in peer["tx"] if t["error"]])
    ok = not problems
    for rep in (m2s, s2m):
        print(rep.line())
        for e in rep.errors:
            print(f"    {e}")
        ok = ok and rep.ok
    for p in problems:
        print(f"  {p}")
    rc = await _reaped(proc, 5.0)
    if rc is None:
        print("  the slave process did not exit when asked")
        ok = False
    elif rc != 0:
        print(f"  the slave process exited with status {rc}")
        ok = False
    total = m2s.packets + s2m.packets
    if ok:
        print(f"OK: {total} packets ({m2s.octets + s2m.octets} bytes) verified in both directions",
              flush=True)
        return 0
    print(f"FAILED: {total} packets received, see the errors above", flush=True)
    return 1
