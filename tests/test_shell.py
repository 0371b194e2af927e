"""The asyncio shell's typed surface: refusals, events, deletion, the error stream,
and the split queues (issue 10)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest

from memif_aio import (
    Arguments,
    ConnectionRefused,
    InterfaceDeleted,
    LinkEvent,
    MemifError,
    Socket,
    Subscription,
)

pytestmark = pytest.mark.both_loops
T = 5.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST: dict[str, Any] = {"reconnect_min_delay": 0.02, "reconnect_max_delay": 0.05}


async def test_a_refusal_surfaces_three_ways(sock_path: str, no_leaks: None) -> None:
    """A refused handshake is a ConnectionRefused with the peer's reason: raised to
    request_connection(), in get_connect_exception(), as a "refused" event; and
    wait_connected() times out with it as __cause__.  Neither callback runs."""
    calls: list[str] = []
    async with Socket(sock_path) as sock:
        sock.new_interface(Arguments(id=0, is_master=True, secret=b"right"))
        s = sock.new_interface(Arguments(
            id=0, is_master=False, secret=b"wrong", connected_func=lambda i: calls.append("up"),
            disconnected_func=lambda i: calls.append("down"), **FAST))
        events = s.events()  # subscribed now, before anything is awaited
        await s.disconnect()  # stop the automatic retries: ask explicitly
        with pytest.raises(ConnectionRefused) as info:
            await asyncio.wait_for(s.request_connection(), T)
        assert info.value.reason == "incorrect secret" and info.value.by_peer
        exc = s.get_connect_exception()
        assert isinstance(exc, ConnectionRefused) and exc.reason == "incorrect secret"
        assert s.get_connect_error() == "incorrect secret"
        ev = await asyncio.wait_for(events.__anext__(), T)
        assert (ev.kind, ev.reason, ev.by_peer) == ("refused", "incorrect secret", True)
        assert isinstance(ev.error, ConnectionRefused)
        with pytest.raises(TimeoutError, match="incorrect secret") as tinfo:
            await s.wait_connected(0.2)  # it keeps retrying and keeps being refused
        assert isinstance(tinfo.value.__cause__, ConnectionRefused)
        assert tinfo.value.__cause__.reason == "incorrect secret"
        events.close()
    assert calls == []


async def test_request_connection_waits_for_the_link(sock_path: str, no_leaks: None) -> None:
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
        await s.disconnect()
        await asyncio.wait_for(s.request_connection(), T)
        assert s.is_connected()
        await asyncio.wait_for(m.wait_connected(), T)
        assert s.get_connect_exception() is None and s.get_connect_error() == ""


async def test_events_subscribe_at_call_time_and_are_bounded(sock_path: str,
                                                             no_leaks: None) -> None:
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        evs = m.events()
        small = m.events(maxsize=2)
        s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        for _ in range(2):  # down, up, down, up: 4 events
            await s.disconnect()
            await asyncio.sleep(0)
            await asyncio.wait_for(s.request_connection(), T)
            await asyncio.wait_for(m.wait_connected(), T)
        # the up that happened before any iteration is there
        kinds = [(await asyncio.wait_for(evs.__anext__(), T)).kind for _ in range(5)]
        assert kinds == ["up", "down", "up", "down", "up"]
        # the small one kept the newest two and counted the rest
        assert small.dropped == 3 and small.qsize() == 2
        assert [e.kind async for e in _take(small, 2)] == ["down", "up"]
        await m.delete()  # the link goes down, then the subscription ends
        last = await asyncio.wait_for(evs.__anext__(), T)
        assert (last.kind, last.reason) == ("down", "interface deleted")
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(evs.__anext__(), T)


async def _take(sub: Subscription[LinkEvent], n: int) -> AsyncIterator[LinkEvent]:
    it = sub.__aiter__()
    for _ in range(n):
        yield await asyncio.wait_for(it.__anext__(), T)


async def test_a_cancelled_events_wait_takes_nothing(sock_path: str, no_leaks: None) -> None:
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True))
        evs = m.events()
        for _ in range(1000):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0):
                    await evs.__anext__()
        s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
        ev: LinkEvent = await asyncio.wait_for(evs.__anext__(), T)
        assert ev.kind == "up" and s is not None


async def test_interface_as_context_manager_and_deleted(sock_path: str,
                                                        no_leaks: None) -> None:
    async with Socket(sock_path) as sock:
        async with sock.new_interface(Arguments(id=0, is_master=True)) as m, \
                sock.new_interface(Arguments(id=0, is_master=False, **FAST)) as s:
            await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        assert m.is_deleted() and s.is_deleted() and sock.interfaces == []
        for call in (m.wait_connected(), s.request_connection()):
            with pytest.raises(InterfaceDeleted):
                await call
        with pytest.raises(InterfaceDeleted):
            s.get_rx_queue(0)
        # the id is free again
        async with sock.new_interface(Arguments(id=0, is_master=True)):
            pass


async def test_background_errors_reach_the_callback_and_the_stream(sock_path: str,
                                                                   no_leaks: None) -> None:
    """Socket._background_error is the one entry point of every background error
    (the listener and the data path call it); the error reaches error_func and
    every errors() subscription, and the stream ends with the socket."""
    seen: list[MemifError] = []
    sock = Socket(sock_path, error_func=seen.append)
    await sock.start_polling()
    errs = sock.errors()
    err = MemifError("accept failed: EMFILE")
    sock._background_error(err)
    assert seen == [err]
    assert await asyncio.wait_for(errs.__anext__(), T) is err
    await sock.delete()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(errs.__anext__(), T)


@pytest.mark.parametrize("call", ["rx.write_packet(b'x')", "tx.read_packet()",
                                  "tx.lease(4)", "rx.reserve(1, 64)"])
def test_wrong_direction_fails_under_mypy(call: str) -> None:
    src = ("from memif_aio import Interface\n"
           "async def f(itf: Interface) -> None:\n"
           "    rx, tx = itf.get_rx_queue(0), itf.get_tx_queue(0)\n"
           "    rx.read_packet_nowait()\n"
           "    tx.write_packet_nowait(b'')\n"
           f"    {call}\n")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "wrong.py")
        with open(path, "w") as f:
            f.write(src)
        r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                            "--config-file", os.devnull, path], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "has no attribute" in r.stdout and r.stdout.count("error:") == 1, r.stdout


async def test_a_teardown_step_that_raises_still_releases_everything(
        sock_path: str, no_leaks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in one queue's release (here the first one released raises) does not cut the
    link's teardown short: every other queue is still woken and released, and the rings'
    fds and memory are still closed (``no_leaks``).  The error is not swallowed: it
    reaches the event loop's exception handler, once."""
    from memif_aio.queue import RxQueue
    from memif_aio.testing.pair import connected_pair

    real = RxQueue._release
    victims: list[RxQueue] = []  # the slave's receive queues
    calls: list[RxQueue] = []

    def first_one_raises(self: RxQueue) -> None:
        if self in victims:
            calls.append(self)
            if len(calls) == 1:
                raise RuntimeError("a bug in a release")
        real(self)

    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        async with connected_pair(sock_path, queues=2) as (master, slave):
            queues = [*slave.rx_queues, *slave.tx_queues]
            victims += slave.rx_queues
            waiting = asyncio.ensure_future(slave.get_rx_queue(1).read_packet())
            await asyncio.sleep(0)
            monkeypatch.setattr(RxQueue, "_release", first_one_raises)
            await master.disconnect()  # the slave's teardown runs on its channel's callback
            async with asyncio.timeout(T):
                while slave.is_connected() or not errors:
                    await asyncio.sleep(0.01)
            assert not any(q.is_connected() for q in queues)
            with pytest.raises(Exception) as woken:
                await asyncio.wait_for(waiting, T)
            assert type(woken.value).__name__ == "Disconnected"
            assert calls == victims  # the second was released after the first raised
            monkeypatch.undo()
    finally:
        loop.set_exception_handler(old)
    slave_errors = [ctx for ctx in errors if isinstance(ctx.get("exception"), RuntimeError)]
    assert len(slave_errors) == 1, errors
    assert str(slave_errors[0]["exception"]) == "a bug in a release"
