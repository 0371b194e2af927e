"""Many interfaces on one socket in one process (issue 14 §3), behaviour only.

* 64 masters and 64 slaves on one socket path pass traffic both ways, every packet on
  its own interface, with one task per queue; both loops, leak-free.
* Links that are up and idle make no wake-up at all: no thread of the process (loop,
  signaller) is switched in over a second, and the loop has no timer due (asyncio).  A
  listening master watches its socket file with inotify instead of checking it every
  second (memif_aio/socket.py, _PathWatch).
* Connect/disconnect churn of many links leaves no fd, mapping or thread behind, and the
  links still pass traffic.
* The inotify watch still notices what the once-a-second check did: the socket's
  directory renamed away and a new one made at the same path.

The figures (rates, CPU per packet, idle cost, churn per second) come from
``python3 -m benchmarks.scale`` (docs/scale.md); no test here asserts a speed.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
import threading
import time
from typing import Any

import pytest
from _harness import until

from benchmarks.scale import thread_switches
from memif_aio import Arguments, Interface, MemoryConfig, RxMode, Socket, eventfd
from memif_aio import socket as memif_socket

N = 64
SMALL = MemoryConfig(log2_ring_size=8)
FAST: dict[str, Any] = {"reconnect_min_delay": 0.01, "reconnect_max_delay": 0.05}


async def idle_switches(seconds: float) -> dict[int, int]:
    """Context switches of every thread (the measuring thread excepted) while the loop
    waits for ``seconds`` on a future that the measuring thread resolves: the wait itself
    arms no timer that would fire within the measurement."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[dict[int, int]] = loop.create_future()

    def measure() -> None:
        me = threading.get_native_id()
        time.sleep(0.1)  # the loop settles into its wait
        before = thread_switches(me)
        time.sleep(seconds)
        after = thread_switches(me)
        loop.call_soon_threadsafe(done.set_result, {
            tid: after[tid] - before[tid] for tid in after if tid in before})

    threading.Thread(target=measure, daemon=True).start()
    return await asyncio.wait_for(done, seconds + 30)


def memfd_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:" in line)


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def pairs(sock_path: str, n: int, rx_mode: RxMode = RxMode.INTERRUPT
                ) -> tuple[Socket, Socket, list[Interface], list[Interface]]:
    """A socket of ``n`` masters (ids 0..n-1) and a socket of ``n`` slaves on the same path,
    all connected (the caller deletes both sockets)."""
    msock = Socket(sock_path, app_name="masters")
    ssock = Socket(sock_path, app_name="slaves")
    await msock.start_polling()
    await ssock.start_polling()
    masters = [msock.new_interface(Arguments(id=i, is_master=True, name=f"m{i}",
                                             rx_mode=rx_mode)) for i in range(n)]
    slaves = [ssock.new_interface(Arguments(id=i, is_master=False, name=f"s{i}",
                                            rx_mode=rx_mode, memory_config=SMALL, **FAST))
              for i in range(n)]
    await asyncio.gather(*(i.wait_connected(30) for i in (*masters, *slaves)))
    return msock, ssock, masters, slaves


def packets(itf: Interface, count: int) -> list[bytes]:
    """Packets that name their interface (id and role) and their place."""
    tag = b"M" if itf.is_master() else b"S"
    return [tag + itf.get_id().to_bytes(2, "big") + k.to_bytes(2, "big") + bytes(50 + k % 9)
            for k in range(count)]


async def send_all(src: Interface, count: int) -> None:
    pkts = packets(src, count)
    tx = src.get_tx_queue(0)
    done = 0
    while done < count:
        done += await tx.write_burst(pkts[done:])


async def receive_all(dst: Interface, src: Interface, count: int) -> None:
    rx = dst.get_rx_queue(0)
    got: list[bytes] = []
    while len(got) < count:
        got += await rx.read_burst(count)
    assert got == packets(src, count), f"interface {dst.get_id()} got another's packets"


async def traffic(masters: list[Interface], slaves: list[Interface], count: int) -> None:
    """``count`` packets each way on every pair, one task per queue, all at once."""
    async with asyncio.timeout(60):
        await asyncio.gather(
            *(send_all(s, count) for s in slaves), *(send_all(m, count) for m in masters),
            *(receive_all(m, s, count) for m, s in zip(masters, slaves)),
            *(receive_all(s, m, count) for m, s in zip(masters, slaves)))


@pytest.mark.both_loops
@pytest.mark.parametrize("rx_mode", [RxMode.INTERRUPT, RxMode.POLLING])
async def test_64_interfaces_on_one_socket_pass_traffic_both_ways(
        sock_path: str, no_leaks: None, rx_mode: RxMode) -> None:
    """64 master/slave pairs on one socket path: each pair passes 300 packets each way (more
    than a ring of 256), concurrently, and every packet arrives on its own interface, in
    order; the counters agree; everything is gone once the sockets are deleted."""
    msock, ssock, masters, slaves = await pairs(sock_path, N, rx_mode)
    try:
        assert len(msock.interfaces) == len(ssock.interfaces) == N
        await traffic(masters, slaves, 300)
        for itf in (*masters, *slaves):
            st = itf.stats()
            assert st.state == "connected" and st.connections == 1
            assert st.rx[0].packets == st.tx[0].packets == 300
            assert st.rx[0].drops == st.tx[0].drops == st.rx[0].bad_descriptors == 0
        assert {m.get_peer_name() for m in masters} == {f"s{i}" for i in range(N)}
    finally:
        await ssock.delete()
        await msock.delete()
    assert not os.path.exists(sock_path)


@pytest.mark.both_loops
async def test_idle_links_make_no_wake_ups(sock_path: str, no_leaks: None) -> None:
    """64 links up (a listening master socket on a path, interrupt mode, after traffic
    both ways so that the signaller thread runs): in a second of silence no thread of the
    process is switched in, and no timer is due on the loop."""
    msock, ssock, masters, slaves = await pairs(sock_path, N)
    try:
        await traffic(masters, slaves, 20)
        # the signaller's watchdog takes its last look after the last write
        await asyncio.sleep(eventfd._CHECK * 3)
        loop = asyncio.get_running_loop()
        scheduled = getattr(loop, "_scheduled", None)  # asyncio shows its timers
        if scheduled is not None:
            due = [h for h in scheduled if not h.cancelled()]
            assert not due, f"timers on an idle loop: {due}"
        woke = {tid: n for tid, n in (await idle_switches(1.0)).items() if n}
        assert not woke, f"threads woken on an idle process (tid: switches): {woke}"
        await traffic(masters, slaves, 5)  # and the links still work
    finally:
        await ssock.delete()
        await msock.delete()


@pytest.mark.both_loops
async def test_churn_of_many_links_leaves_nothing_behind(sock_path: str,
                                                         no_leaks: None) -> None:
    """16 slaves disconnect and reconnect together 15 times: afterwards the process holds
    exactly the fds and shared-memory mappings it held with the links first up, no more
    signaller threads, and every link passes traffic on its new connection."""
    msock, ssock, masters, slaves = await pairs(sock_path, 16)
    try:
        await traffic(masters, slaves, 10)
        fds0, maps0, threads0 = fds(), memfd_mappings(), eventfd.threads()
        for _ in range(15):
            await asyncio.gather(*(s.disconnect() for s in slaves))
            await until(lambda: not any(m.is_connected() for m in masters), 10,
                        "every master down")
            await asyncio.wait_for(asyncio.gather(*(s.request_connection() for s in slaves)),
                                   30)
            await asyncio.gather(*(m.wait_connected(10) for m in masters))
        await traffic(masters, slaves, 10)
        for s in slaves:
            assert s.stats().connections == 16
        for m in masters:
            assert m.stats().connections == 16 and m.stats().rx[0].packets == 10
        await asyncio.sleep(eventfd._CHECK * 3)
        assert (fds(), memfd_mappings()) == (fds0, maps0)
        assert eventfd.threads() <= threads0
    finally:
        await ssock.delete()
        await msock.delete()


def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


@pytest.mark.both_loops
async def test_directory_renamed_away_is_noticed(sock_dir: str, no_leaks: None) -> None:
    """The directory of a listening master's socket file is renamed and a new one made at
    its path: the master binds a new listener at the same path (its inotify watch on the
    old directory reports the move; it then watches the new one), a new slave connects,
    and the established link is not disturbed.  Then the socket file alone is deleted."""
    inner = os.path.join(sock_dir, "run")
    moved = os.path.join(sock_dir, "moved")
    os.mkdir(inner)
    path = os.path.join(inner, "memif.sock")
    try:
        async with Socket(path) as sock:
            m = sock.new_interface(Arguments(id=0, is_master=True))
            s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
            await asyncio.gather(m.wait_connected(10), s.wait_connected(10))
            first = os.stat(path).st_ino
            os.rename(inner, moved)
            os.mkdir(inner)
            await until(lambda: is_socket(path), 5.0, "the listener re-created")
            assert os.stat(path).st_ino != first
            late_m = sock.new_interface(Arguments(id=1, is_master=True))
            late_s = sock.new_interface(Arguments(id=1, is_master=False, **FAST))
            await asyncio.gather(late_m.wait_connected(10), late_s.wait_connected(10))
            await traffic([m, late_m], [s, late_s], 5)
            # the new directory is watched: deleting the file there is noticed too
            second = os.stat(path).st_ino
            os.unlink(path)
            await until(lambda: is_socket(path), 5.0, "the listener re-created again")
            assert os.stat(path).st_ino != second
            assert m.stats().connections == 1 and m.is_connected()
        assert not os.path.exists(path)
    finally:
        shutil.rmtree(moved, ignore_errors=True)
        shutil.rmtree(inner, ignore_errors=True)


@pytest.mark.both_loops
async def test_without_inotify_the_socket_file_is_checked_every_second(
        sock_path: str, no_leaks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no inotify watch can be made (out of instances, say), the listener falls back
    to checking its file once a second: a deleted socket file is still re-created."""
    def no_watch(path: str) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(memif_socket, "_PathWatch", no_watch)
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
        await asyncio.gather(m.wait_connected(10), s.wait_connected(10))
        first = os.stat(sock_path).st_ino
        os.unlink(sock_path)
        await until(lambda: is_socket(sock_path), 5.0, "the listener re-created")
        assert os.stat(sock_path).st_ino != first
        await traffic([m], [s], 5)
    assert not os.path.exists(sock_path)
