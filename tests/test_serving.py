"""memif_aio.serve: a handler kept running on an interface's queues across links.

Master and slave share one socket in one process (as in test_loopback.py); the handler is an
echo, so every link is proven to be served by a packet that comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from memif_aio import (
    Arguments,
    ConnectionRefused,
    Interface,
    LinkEvent,
    MemoryConfig,
    RxQueue,
    Socket,
    TxQueue,
    serve,
)

pytestmark = [pytest.mark.both_loops, pytest.mark.usefixtures("no_leaks"),
              pytest.mark.timeout(60)]
T = 10.0  # bound for anything that should take milliseconds


@asynccontextmanager
async def pair(path: str, queues: int = 1, slave_secret: bytes = b"", master_secret: bytes = b"",
               connect: bool = True) -> AsyncIterator[tuple[Socket, Interface, Interface]]:
    async with Socket(path) as sock:
        mc = MemoryConfig(num_queue_pairs=queues)
        m = sock.new_interface(Arguments(id=0, is_master=True, name="m", memory_config=mc,
                                         secret=master_secret))
        s = sock.new_interface(Arguments(id=0, is_master=False, name="s", memory_config=mc,
                                         secret=slave_secret, reconnect_min_delay=0.02,
                                         reconnect_max_delay=0.1))
        if connect:
            await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        yield sock, m, s


class Echo:
    """An echo handler that records every start (queue id, the rx queue object) and end."""

    def __init__(self) -> None:
        self.starts: list[tuple[int, RxQueue]] = []
        self.ended: list[tuple[int, str]] = []
        self.started = asyncio.Event()

    async def __call__(self, rx: RxQueue, tx: TxQueue) -> None:
        self.starts.append((rx.qid, rx))
        self.started.set()
        how = "returned"
        try:
            async for pkt in rx:
                await tx.write_packet(pkt)
        except asyncio.CancelledError:
            how = "cancelled"
            raise
        finally:
            self.ended.append((rx.qid, how))

    async def wait_starts(self, n: int) -> None:
        async with asyncio.timeout(T):
            while len(self.starts) < n:
                self.started.clear()
                await self.started.wait()


async def roundtrip(itf: Interface, qid: int, data: bytes) -> None:
    """``data`` sent on ``itf``'s queue ``qid`` comes back on it, from the serving peer."""
    async with asyncio.timeout(T):
        rx = itf.get_rx_queue(qid)
        await itf.get_tx_queue(qid).write_packet(data)
        assert await rx.read_packet() == data


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("served", ["master", "slave"])
async def test_handler_restarts_after_the_peer_disconnects_and_reconnects(
        sock_path: str, served: str) -> None:
    async with pair(sock_path, queues=2) as (_sock, m, s):
        itf, peer = (m, s) if served == "master" else (s, m)
        echo = Echo()
        events: list[LinkEvent] = []
        task = asyncio.ensure_future(serve(itf, echo, on_event=events.append))
        try:
            await echo.wait_starts(2)
            assert sorted(q for q, _ in echo.starts) == [0, 1]
            for q in (0, 1):
                await roundtrip(peer, q, b"first link %d" % q)
            first = {rx for _, rx in echo.starts}

            # the peer goes away and comes back (a master waits; a slave reconnects)
            await peer.disconnect()
            if peer is s:
                await s.request_connection()
            else:
                await asyncio.wait_for(s.wait_connected(), T)  # the slave reconnects
            await echo.wait_starts(4)
            assert sorted(q for q, _ in echo.starts[2:]) == [0, 1]
            assert not first & {rx for _, rx in echo.starts[2:]}  # the new link's queues
            # the first link's handlers ended (on Disconnected, or cancelled) before these
            assert sorted(q for q, _ in echo.ended) == [0, 1]
            for q in (0, 1):
                await roundtrip(peer, q, b"second link %d" % q)
            assert [e.kind for e in events if e.kind != "refused"] == ["down", "up"]
        finally:
            await stop(task)
        assert len(echo.ended) == 4  # every handler of both links has ended


async def test_a_refusal_surfaces(sock_path: str) -> None:
    async with pair(sock_path, master_secret=b"right", slave_secret=b"wrong",
                    connect=False) as (_sock, _m, s):
        echo = Echo()
        with pytest.raises(ConnectionRefused) as info:
            await asyncio.wait_for(serve(s, echo, raise_refused=True), T)
        assert info.value.by_peer and info.value.reason == "incorrect secret"

        seen: list[LinkEvent] = []

        class Fatal(Exception):
            pass

        def on_event(ev: LinkEvent) -> None:
            seen.append(ev)
            if ev.kind == "refused":
                raise Fatal(ev.reason)

        with pytest.raises(Fatal, match="incorrect secret"):
            await asyncio.wait_for(serve(s, echo, on_event=on_event), T)
        assert seen[-1].kind == "refused" and seen[-1].error is not None
        assert echo.starts == []  # no link, no handler


async def test_a_timeout_without_a_link_is_timeout_error(sock_path: str) -> None:
    async with Socket(sock_path) as sock:
        s = sock.new_interface(Arguments(id=0, is_master=False, name="s",
                                         reconnect_min_delay=0.02, reconnect_max_delay=0.1))
        await sock.start_polling()  # nobody listens: every attempt is refused
        with pytest.raises(TimeoutError) as info:
            await serve(s, Echo(), timeout=0.3)
        assert isinstance(info.value.__cause__, ConnectionRefused)


@pytest.mark.parametrize("when", ["linked", "waiting"])
async def test_deleting_the_interface_ends_serve_cleanly(sock_path: str, when: str) -> None:
    async with pair(sock_path, connect=when == "linked") as (_sock, m, s):
        if when == "waiting":
            await s.delete()  # the master never gets a slave
        echo = Echo()
        before = asyncio.all_tasks()
        task = asyncio.ensure_future(serve(m, echo))
        if when == "linked":
            await echo.wait_starts(1)
            await roundtrip(s, 0, b"x")
        else:
            await asyncio.sleep(0.05)
            assert not task.done()
        await m.delete()
        await asyncio.wait_for(task, T)  # returns: no exception
        assert task.result() is None
        # a handler of the deleted link ended (on Disconnected, or cancelled)
        assert [q for q, _ in echo.ended] == ([0] if when == "linked" else [])
        assert not m._subscribers  # serve unsubscribed
        assert asyncio.all_tasks() <= before | {asyncio.current_task()}


async def test_cancelling_serve_leaves_nothing_running(sock_path: str) -> None:
    async with pair(sock_path, queues=3) as (_sock, m, s):
        echo = Echo()
        before = asyncio.all_tasks()
        task = asyncio.ensure_future(serve(m, echo))
        await echo.wait_starts(3)
        await roundtrip(s, 2, b"y")
        await stop(task)
        assert sorted(echo.ended) == [(0, "cancelled"), (1, "cancelled"), (2, "cancelled")]
        assert asyncio.all_tasks() <= before | {asyncio.current_task()}
        assert not m._subscribers  # serve unsubscribed
        assert m.is_connected()  # and left the link alone
        # a new serve on the same interface serves the next link
        await s.disconnect()
        echo2 = Echo()
        task = asyncio.ensure_future(serve(m, echo2))
        await s.request_connection()
        await echo2.wait_starts(3)
        await roundtrip(s, 1, b"z")
        await stop(task)


async def test_a_handler_error_stops_the_others_and_is_raised(sock_path: str) -> None:
    async with pair(sock_path, queues=2) as (_sock, m, s):
        ended: list[int] = []

        class Boom(Exception):
            pass

        async def handler(rx: RxQueue, tx: TxQueue) -> None:
            try:
                pkt = await rx.read_packet()
                if rx.qid == 1:
                    raise Boom(pkt)
                await asyncio.sleep(3600)
            finally:
                ended.append(rx.qid)

        task = asyncio.ensure_future(serve(m, handler))
        await s.get_tx_queue(0).write_packet(b"a")
        await s.get_tx_queue(1).write_packet(b"b")
        with pytest.raises(Boom, match="b"):
            await asyncio.wait_for(task, T)
        assert sorted(ended) == [0, 1]
        assert m.is_connected()  # serve does not touch the link


async def test_handlers_that_return_are_not_restarted_on_the_same_link(sock_path: str) -> None:
    async with pair(sock_path) as (_sock, m, s):
        runs: list[RxQueue] = []
        again = asyncio.Event()

        async def once(rx: RxQueue, tx: TxQueue) -> None:
            runs.append(rx)
            await tx.write_packet(await rx.read_packet())
            if len(runs) == 2:
                again.set()

        task = asyncio.ensure_future(serve(m, once))
        try:
            await roundtrip(s, 0, b"one")
            await asyncio.sleep(0.05)  # returned; serve waits for the link to change
            assert len(runs) == 1
            await s.disconnect()
            await s.request_connection()
            await roundtrip(s, 0, b"two")
            await asyncio.wait_for(again.wait(), T)
            assert len(runs) == 2 and runs[0] is not runs[1]
        finally:
            await stop(task)
