"""Attacks on the interrupt eventfds (issue 9, items 1 and 2), with peers in child processes.

* The freeze race: a peer toggles ``O_NONBLOCK`` on the eventfd we write (the open
  file description is shared) while four processes keep its counter full with
  blocking writes.  The loop thread never writes a peer's eventfd (a signaller
  thread does, see memif_aio/eventfd.py), so the loop keeps running; the stuck
  link is disconnected with a reason, and a healthy interface on the same
  Socket keeps passing traffic.  Both roles, both loops.
* A semaphore eventfd (readable after every read) is refused at ADD_RING where
  fdinfo tells; where it does not, the drain notices it and the link goes down
  instead of the loop spinning.

The attacker program is tests/peers/efd_attacker.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from memif_aio import Arguments, Disconnected, Interface, RxMode, Socket, eventfd

ATTACKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "efd_attacker.py")
#: how long the attack runs (issue 9 asks for at least 10 s)
ATTACK_SECONDS = 10.0
#: the loop must never stall longer than this during the race
MAX_LAG = 0.1
REASON = "the peer blocked the interrupt eventfd"


class Attacker:
    """The attacker process: its JSON lines, and every pid it forked (killed at the end)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.pids: set[int] = set()

    async def next(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise AssertionError(f"the attacker exited; events so far: {self.events}")
        ev: dict[str, Any] = json.loads(raw)
        self.events.append(ev)
        if ev["event"] == "attackers":
            self.pids.update(ev["pids"])
        return ev

    async def until(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            ev = await self.next(max(0.01, deadline - time.monotonic()))
            if ev["event"] == name:
                return ev

    def kill_forks(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def attacker(*args: str, path: str) -> AsyncIterator[Attacker]:
    """Start the attacker; at the end kill everything it forked (by pid), let it
    exit (stdin EOF), kill it if it does not, and remove a socket file it left."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, ATTACKER, *args, "--path", path, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    a = Attacker(proc)
    try:
        yield a
    finally:
        a.kill_forks()  # by pid; they also die with their parent (PR_SET_PDEATHSIG)
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 3.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if args[:1] == ("race",) and "master" in args and os.path.exists(path):
            os.unlink(path)  # a listener that was killed leaves its file


def _runqueue_waits() -> dict[str, float]:
    """Seconds each thread of this process has spent runnable but waiting for a CPU."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/schedstat") as f:
            out[tid] = int(f.read().split()[1]) / 1e9
    return out


async def lag_monitor(lags: list[tuple[float, float]], stop: asyncio.Event) -> None:
    """Sleep 10 ms again and again; record how late each wake-up was, and how much of
    that is not explained by our threads waiting for a CPU on a loaded machine.

    A loop thread stuck in a syscall is asleep, not runnable, so a freeze shows in
    full.  A loop thread that is only waiting for a CPU, or for the GIL held by one of
    our threads that is itself waiting for a CPU, is starved, not blocked by the peer:
    the largest runqueue wait of any of our threads over the interval is taken off."""
    clock = time.monotonic
    while not stop.is_set():
        t0, w0 = clock(), _runqueue_waits()
        await asyncio.sleep(0.01)
        late = clock() - t0 - 0.01
        w1 = _runqueue_waits()
        starved = max((w1[t] - w0.get(t, w1[t]) for t in w1), default=0.0)
        lags.append((late, max(0.0, late - starved)))


async def keep_signalling(itf: Interface, reasons: list[str], stop: asyncio.Event) -> None:
    """Publish packets on the attacked link whenever it is up (each one signals the peer)."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(itf.wait_connected(), 0.5)
        except TimeoutError:
            continue
        try:
            tx = itf.get_tx_queue(0)
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    tx.write_packet_nowait(b"\x01" * 60)
                if not tx.is_connected():
                    raise Disconnected("down")
                await asyncio.sleep(0.002)
        except Disconnected:
            reasons.append(itf.get_disconnect_reason())
        except Exception:  # a queue of a connection already gone
            await asyncio.sleep(0.01)


class Pinger:
    """Round trips over the healthy interface: one packet out, its echo back."""

    def __init__(self, itf: Interface) -> None:
        self.itf = itf
        self.ok = {"attack": 0, "after": 0}
        self.failures: list[str] = []
        self.phase = "attack"

    async def run(self, stop: asyncio.Event) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            pkt = seq.to_bytes(8, "little") * 8
            try:
                await self.itf.get_tx_queue(0).write_packet(pkt)
                got = await asyncio.wait_for(self.itf.get_rx_queue(0).read_packet(), 5.0)
            except (TimeoutError, Exception) as exc:
                self.failures.append(f"{self.phase}: {type(exc).__name__} {exc}")
                await asyncio.sleep(0.05)
                continue
            if got != pkt:
                self.failures.append(f"{self.phase}: wrong echo")
            else:
                self.ok[self.phase] += 1
            await asyncio.sleep(0.02)


async def echo(itf: Interface, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            pkt = await itf.get_rx_queue(0).read_packet()
            await itf.get_tx_queue(0).write_packet(pkt)
        except Disconnected:
            await asyncio.sleep(0.01)


#: signaller threads already alive when the running test started (another test's
#: loop may have ended with a link open); the tests count only their own
_before: set[Any] = set()


@pytest.fixture(autouse=True)
def _own_threads() -> None:
    _before.clear()
    _before.update(eventfd._alive)


def own_threads() -> int:
    """Signaller threads alive that this test started."""
    return len(eventfd._alive - _before)


async def wait_threads(most: int, timeout: float) -> int:
    """Wait until at most ``most`` of this test's signaller threads are alive; return
    how many are."""
    deadline = time.monotonic() + timeout
    while own_threads() > most and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return own_threads()


async def run_race(role: str, sock_dir: str) -> None:
    """Our side plays ``role``; the attacker the other role, with the healthy
    interface (id 1) beside the attacked one (id 0) on the same Socket."""
    path = os.path.join(sock_dir, f"race-{role}.sock")
    ours_master = role == "master"
    stop = asyncio.Event()
    lags: list[tuple[float, float]] = []
    reasons: list[str] = []
    a: Attacker
    async with contextlib.AsyncExitStack() as stack:
        if not ours_master:  # the attacker listens; our slaves connect to it
            a = await stack.enter_async_context(
                attacker("race", "--role", "master", "--seconds", str(ATTACK_SECONDS),
                         path=path))
            await a.until("listening", 10)
        sock = await stack.enter_async_context(Socket(path))
        common: dict[str, Any] = dict(rx_mode=RxMode.INTERRUPT, reconnect_min_delay=0.3,
                                      reconnect_max_delay=0.5)
        attacked = sock.new_interface(Arguments(id=0, is_master=ours_master, **common))
        healthy = sock.new_interface(Arguments(id=1, is_master=ours_master, **common))
        tasks = []
        if ours_master:  # the healthy peer: a slave in this process, on the same Socket
            peer = sock.new_interface(Arguments(id=1, is_master=False, **common))
            await asyncio.gather(healthy.wait_connected(10), peer.wait_connected(10))
            tasks.append(asyncio.ensure_future(echo(peer, stop)))
            a = await stack.enter_async_context(
                attacker("race", "--role", "client", "--seconds", str(ATTACK_SECONDS),
                         path=path))
        else:
            await healthy.wait_connected(10)
        pinger = Pinger(healthy)
        tasks += [asyncio.ensure_future(lag_monitor(lags, stop)),
                  asyncio.ensure_future(keep_signalling(attacked, reasons, stop)),
                  asyncio.ensure_future(pinger.run(stop))]
        try:
            t0 = time.monotonic()
            await a.until("done", ATTACK_SECONDS + 20)
            attack_time = time.monotonic() - t0
            a.kill_forks()
            pinger.phase = "after"
            await asyncio.sleep(1.0)
            max_lag = max(raw for raw, _ in lags)
            max_own = max(own for _, own in lags)  # not explained by waiting for a CPU
            # the abandoned threads get through once the attackers are gone (we drain)
            left = await wait_threads(1, 5.0)
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            a.kill_forks()
        downs = [ev for ev in a.events if ev["event"] == "down"]
        print(f"\n{role}: attack {attack_time:.1f} s, {len(downs)} rounds, max loop lag "
              f"{max_lag * 1000:.1f} ms ({max_own * 1000:.1f} ms not waiting for a CPU), "
              f"pings {pinger.ok}, threads left {left}")
        assert attack_time >= ATTACK_SECONDS - 0.5
        # A loop thread blocked in a syscall (or on the GIL) is asleep; one that only
        # waits for a CPU on a loaded machine is runnable: that part is not the peer's doing.
        assert max_own < MAX_LAG, f"the loop stalled for {max_own * 1000:.0f} ms"
        assert downs, f"the attacked link was never disconnected: {a.events}"
        assert all(REASON in ev["reason"] for ev in downs), downs
        # our side saw the same reason for every round the attacker reported down; the
        # only other ending is the attacker closing its last round when its time is up
        assert sum(REASON in r for r in reasons) >= len(downs), (reasons, downs)
        assert all(REASON in r or r == "peer closed the connection" for r in reasons), reasons
        assert not pinger.failures, pinger.failures
        assert pinger.ok["attack"] > 0 and pinger.ok["after"] > 0, pinger.ok
        assert left <= 1, f"{left} signaller threads still alive"
    assert await wait_threads(0, 5.0) == 0  # everything closed: no thread left


@pytest.mark.both_loops
@pytest.mark.parametrize("role", ["master", "slave"])
async def test_blocking_race_never_freezes_the_loop(role: str, sock_dir: str,
                                                    no_leaks: None) -> None:
    """Issue 9 item 1: toggling O_NONBLOCK + a full counter for 10 s, as a hostile
    client against our master and as a hostile master against our slave."""
    await run_race(role, sock_dir)


# ----------------------------------------------------------------------------
# Semaphore eventfds (issue 9, item 2)
# ----------------------------------------------------------------------------
@pytest.mark.both_loops
async def test_semaphore_eventfd_is_refused(sock_dir: str, no_leaks: None) -> None:
    """This kernel shows ``eventfd-semaphore:`` in fdinfo: the ADD_RING is refused and
    the peer receives the reason."""
    assert eventfd.semaphore_visible
    path = os.path.join(sock_dir, "sem.sock")
    async with Socket(path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        async with attacker("semaphore", path=path) as a:
            ev = await a.until("refused", 10)
        assert ev["reason"] == "ring interrupt eventfd is a semaphore (EFD_SEMAPHORE)"
        assert not m.is_connected()


@pytest.mark.both_loops
async def test_semaphore_eventfd_cannot_make_us_spin(sock_dir: str, no_leaks: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Where fdinfo does not tell (forced here: the handshake lets the semaphore through),
    a write of 2**62 must not hold a core: the drain sees a counter that never resets,
    the link goes down with the reason, and process CPU stays small."""
    monkeypatch.setattr(eventfd, "semaphore_visible", False)
    path = os.path.join(sock_dir, "sem.sock")
    async with Socket(path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True, rx_mode=RxMode.INTERRUPT))
        async with attacker("semaphore", path=path) as a:
            reader = asyncio.ensure_future(_read_forever(m))
            try:
                await a.until("written", 10)
                cpu0, wall0 = time.process_time(), time.monotonic()
                await asyncio.sleep(2.0)
                cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
                ev = await a.until("down", 10)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        print(f"\nCPU over the 2 s after the semaphore write: {cpu * 100:.1f}% of one core")
        assert cpu < 0.3, f"{cpu * 100:.0f}% of a core after the write"
        assert ev["reason"] == "the interrupt eventfd never resets (EFD_SEMAPHORE)"
        assert m.get_disconnect_reason() == ev["reason"]


async def _read_forever(itf: Interface) -> None:
    """An interrupt-mode reader waiting on the link (what the semaphore would spin)."""
    while True:
        try:
            await itf.wait_connected()
            await itf.get_rx_queue(0).read_packet()
        except Disconnected:
            await asyncio.sleep(0.01)


def test_drain_detects_a_semaphore_without_fdinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain itself: a counter still set right after a read, interrupt after
    interrupt, is refused; a plain eventfd signalled once per drain is not."""
    monkeypatch.setattr(eventfd, "semaphore_visible", False)
    buf = bytearray(8)
    sem = os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK)
    plain = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        os.eventfd_write(sem, 1 << 62)
        with pytest.raises(eventfd.SpinningEventfd):
            for _ in range(eventfd._SPIN_STRIKES):
                eventfd.drain(sem, buf)
        for _ in range(eventfd._SPIN_STRIKES * 2):
            os.eventfd_write(plain, 1)
            eventfd.drain(plain, buf)
        with pytest.raises(BlockingIOError):
            os.eventfd_read(plain)  # drained
    finally:
        os.close(sem)
        os.close(plain)


def test_check_peer_eventfd() -> None:
    """Not an eventfd, or a semaphore one: refused with the reason the peer receives;
    a good one is made non-blocking."""
    from memif_aio.errors import ProtocolViolation

    r, w = os.pipe()
    sem = os.eventfd(0, os.EFD_SEMAPHORE)
    good = os.eventfd(0)
    try:
        with pytest.raises(ProtocolViolation, match="not an eventfd"):
            eventfd.check_peer_eventfd(r)
        with pytest.raises(ProtocolViolation, match="semaphore"):
            eventfd.check_peer_eventfd(sem)
        eventfd.check_peer_eventfd(good)
        assert not os.get_blocking(good)
    finally:
        for fd in (r, w, sem, good):
            os.close(fd)


# ----------------------------------------------------------------------------
# An idle process makes no wake-ups (issue 14 §2)
# ----------------------------------------------------------------------------
def _switches(native_id: int) -> int:
    """Context switches of one thread of this process, voluntary or not."""
    with open(f"/proc/self/task/{native_id}/status") as f:
        return sum(int(line.split()[1]) for line in f
                   if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))


@pytest.mark.both_loops
async def test_idle_signaller_sleeps_and_goes_away(sock_path: str, no_leaks: None) -> None:
    """After traffic stops the signaller thread sleeps (no context switch at all in
    1 s) and no watchdog timer stays armed; when the links close the thread exits."""
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True, rx_mode=RxMode.INTERRUPT))
        s = sock.new_interface(Arguments(id=0, is_master=False, rx_mode=RxMode.INTERRUPT))
        await asyncio.gather(m.wait_connected(10), s.wait_connected(10))
        for i in range(20):  # interrupts both ways
            await s.get_tx_queue(0).write_packet(bytes([i]) * 60)
            assert await asyncio.wait_for(m.get_rx_queue(0).read_packet(), 5) == bytes([i]) * 60
            await m.get_tx_queue(0).write_packet(bytes([i]) * 60)
            assert await asyncio.wait_for(s.get_rx_queue(0).read_packet(), 5) == bytes([i]) * 60
        assert own_threads() == 1
        (worker,) = eventfd._alive - _before
        for _ in range(100):  # set by the thread as it starts
            if worker.native_id:
                break
            await asyncio.sleep(0.01)
        assert worker.native_id, (worker.seq, worker.alive)
        await asyncio.sleep(eventfd._CHECK * 3)  # the watchdog's last look, then it stops
        sig = eventfd._Signaller.current(asyncio.get_running_loop())
        assert sig is not None
        assert sig.timer is None, "the watchdog timer is still armed on an idle process"
        before = _switches(worker.native_id)
        await asyncio.sleep(1.0)
        assert _switches(worker.native_id) == before, "the idle signaller thread woke up"
    assert await wait_threads(0, 5.0) == 0


@pytest.mark.both_loops
async def test_signals_work_in_a_forked_child(no_leaks: None) -> None:
    """A child forked after a link signalled has no signaller thread of its parent's:
    it starts its own, and its signals get through."""
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    intr = eventfd.Interrupt(fd, lambda exc: None)
    try:
        intr.signal()
        for _ in range(200):
            with contextlib.suppress(BlockingIOError):
                assert os.eventfd_read(fd) == 1
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the parent's signal never arrived")
        sig = eventfd._Signaller.current(asyncio.get_running_loop())
        assert sig is not None

        def mine() -> int:  # this signaller's threads (not other tests' leftovers)
            return sum(1 for w in eventfd._alive if w.lock is sig.lock)

        pid = os.fork()
        if pid == 0:  # child: no event loop of its own is needed to signal
            ok = False
            try:
                intr.signal()
                for _ in range(200):
                    try:
                        ok = os.eventfd_read(fd) == 1
                        break
                    except BlockingIOError:
                        time.sleep(0.01)
                intr.close()
                for _ in range(200):  # and its thread goes away with the last link
                    if mine() == 0:
                        break
                    time.sleep(0.01)
            finally:
                os._exit(0 if ok and mine() == 0 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        intr.close()
        os.close(fd)
    assert await wait_threads(0, 5.0) == 0


# ----------------------------------------------------------------------------
# A loop that ends with a link up leaves no thread, fd or loop behind
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_loop_closed_with_links_up_leaves_nothing(loop_name: str, sock_path: str,
                                                     no_leaks: None) -> None:
    """``asyncio.run()`` returning while interfaces are still connected (nobody
    deleted them) must not keep the loop's signaller thread, the interrupts' fds or
    the loop itself alive: once they are garbage the thread closes the fds and
    exits, without ever waking up to look."""
    import gc
    import warnings
    import weakref

    import uvloop

    runner = asyncio.run if loop_name == "asyncio" else uvloop.run
    refs: list[weakref.ref[Any]] = []

    async def main() -> None:
        refs.append(weakref.ref(asyncio.get_running_loop()))
        sock = Socket(sock_path)
        await sock.start_polling()
        m = sock.new_interface(Arguments(id=0, is_master=True, rx_mode=RxMode.INTERRUPT))
        s = sock.new_interface(Arguments(id=0, is_master=False, rx_mode=RxMode.INTERRUPT))
        await asyncio.gather(m.wait_connected(10), s.wait_connected(10))
        for i in range(10):  # interrupts both ways: both ends hold an Interrupt
            await s.get_tx_queue(0).write_packet(bytes([i]) * 60)
            assert await asyncio.wait_for(m.get_rx_queue(0).read_packet(), 5) == bytes([i]) * 60
            await m.get_tx_queue(0).write_packet(bytes([i]) * 60)
            assert await asyncio.wait_for(s.get_rx_queue(0).read_packet(), 5) == bytes([i]) * 60
        assert own_threads() == 1
        # return with both links up and the socket open

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the abandoned transports
        runner(main())
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            gc.collect()
            if not own_threads() and refs[0]() is None:
                break
            time.sleep(0.05)
    assert own_threads() == 0, "the signaller thread of a closed loop is still alive"
    assert refs[0]() is None, "the closed loop is kept alive"
    with contextlib.suppress(FileNotFoundError):  # nobody closed the listener
        os.unlink(sock_path)
    # no_leaks: the interrupts' duplicate eventfds were closed by the exiting thread
