"""Keep a handler running on an interface's queues across disconnects and reconnects.

Every service on memif does the same thing: wait for the link, run one task per queue
pair, notice when the link goes down, wait for the next link, run again.  :func:`serve`
does it from the interface's own signals (:meth:`Interface.events` and
:meth:`Interface.wait_connected`), without polling::

    async def echo(rx: RxQueue, tx: TxQueue) -> None:
        async for pkt in rx:
            await tx.write_packet(pkt)

    async with Socket(path) as sock:
        itf = sock.new_interface(Arguments(is_master=True))
        await sock.start_polling()
        await serve(itf, echo)          # until the interface is deleted, or cancelled

Rules:

* While a link is up, ``handler(rx, tx)`` runs once for each queue pair
  (``min(len(rx_queues), len(tx_queues))`` pairs), each in its own task.
* A handler ends that pair's work by returning, or by letting :class:`Disconnected`
  (also :class:`NotConnected`, :class:`InterfaceDeleted`) out.  Handlers that end while
  the link stays up are not restarted before the next link.
* When the link goes down, the handlers still running are cancelled and awaited; with the
  next link they start again on its queues (a slave reconnects by itself, a master waits
  for a slave).
* Any other exception of a handler cancels the others and is raised by :func:`serve`.
* ``on_event(event)`` sees every :class:`LinkEvent` ("up", "down", "refused") in order.
  An exception it raises ends :func:`serve` (everything stopped first) and is raised:
  ``raise event.error`` on a "refused" event makes a refusal fatal.
  ``raise_refused=True`` does that for every refusal.
* ``timeout`` bounds every wait for a link (None: wait forever); past it, the
  ``TimeoutError`` of :meth:`Interface.wait_connected` is raised (its ``__cause__`` is
  the last :class:`ConnectionRefused`).
* :func:`serve` returns when the interface is deleted (handlers stopped first).
* Cancelling :func:`serve` cancels and awaits the handlers and unsubscribes: nothing of it
  keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import Disconnected, InterfaceDeleted
from .events import LinkEvent, Subscription
from .interface import Interface
from .queue import RxQueue, TxQueue

Handler = Callable[[RxQueue, TxQueue], Awaitable[None]]

__all__ = ["Handler", "serve"]


async def serve(interface: Interface, handler: Handler, *, timeout: float | None = None,
                on_event: Callable[[LinkEvent], object] | None = None,
                raise_refused: bool = False) -> None:
    """Run ``handler(rx, tx)`` on every queue pair of every link of ``interface`` until
    the interface is deleted (see the module's rules)."""
    events = interface.events()
    server = _Server(interface, handler, events, on_event, raise_refused)
    try:
        await server.run(timeout)
    finally:
        events.close()
        await server.stop_all()


class _Server:
    def __init__(self, itf: Interface, handler: Handler, events: Subscription[LinkEvent],
                 on_event: Callable[[LinkEvent], object] | None, raise_refused: bool) -> None:
        self.itf = itf
        self.handler = handler
        self.events = events
        self.on_event = on_event
        self.raise_refused = raise_refused
        self.next_event: asyncio.Future[LinkEvent] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.queues: list[RxQueue | TxQueue] = []

    async def run(self, timeout: float | None) -> None:
        itf = self.itf
        while True:
            if itf.is_deleted():
                return
            if not itf.is_connected() and not await self.wait_link(timeout):
                return
            self.start()
            if not await self.watch():
                return
            await self.stop_all()

    # --- waiting for an event, or for a link -----------------------------------------------
    def _event_future(self) -> asyncio.Future[LinkEvent]:
        if self.next_event is None:
            self.next_event = asyncio.ensure_future(anext(self.events))
        return self.next_event

    def _take_event(self) -> bool:
        """Deliver the finished next-event; False when the stream ended (deleted)."""
        fut = self.next_event
        assert fut is not None and fut.done()
        self.next_event = None
        try:
            ev = fut.result()
        except StopAsyncIteration:
            return False
        if self.on_event is not None:
            self.on_event(ev)
        if self.raise_refused and ev.kind == "refused" and ev.error is not None:
            raise ev.error
        return True

    async def wait_link(self, timeout: float | None) -> bool:
        """Until the link is up (True) or the interface is deleted (False)."""
        waiter = asyncio.ensure_future(self.itf.wait_connected(timeout))
        try:
            while True:
                ev = self._event_future()
                both: set[asyncio.Future[Any]] = {waiter, ev}
                await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
                if ev.done() and not self._take_event():
                    return False
                if waiter.done():
                    try:
                        waiter.result()
                    except InterfaceDeleted:
                        return False
                    if self.itf.is_connected():
                        return True
                    waiter = asyncio.ensure_future(self.itf.wait_connected(timeout))
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await waiter
            elif not waiter.cancelled():
                waiter.exception()  # retrieved: raised above or irrelevant

    # --- running the handlers on one link ----------------------------------------------------
    def start(self) -> None:
        itf = self.itf
        rxs, txs = itf.rx_queues, itf.tx_queues
        pairs = list(zip(rxs, txs))
        self.queues = [*rxs, *txs]  # this link's: all of them die with it
        self.tasks = [asyncio.ensure_future(self._pair(rx, tx)) for rx, tx in pairs]

    async def _pair(self, rx: RxQueue, tx: TxQueue) -> None:
        try:
            await self.handler(rx, tx)
        except (Disconnected, InterfaceDeleted):
            pass

    def _link_alive(self) -> bool:
        if not self.queues:  # a link without queues: only its state tells
            return self.itf.is_connected()
        return all(q.is_connected() for q in self.queues)

    async def watch(self) -> bool:
        """Until the link of the running handlers goes down (True) or the interface is
        deleted (False).  A handler's exception is raised."""
        while True:
            ev = self._event_future()
            waits: set[asyncio.Future[Any]] = {ev, *(t for t in self.tasks if not t.done())}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for t in self.tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            if ev.done() and not self._take_event():
                return False
            if self.itf.is_deleted():
                return False
            if not self._link_alive():
                return True

    async def stop_all(self) -> None:
        tasks, self.tasks, self.queues = self.tasks, [], []
        for t in tasks:
            t.cancel()
        fut, self.next_event = self.next_event, None
        if fut is not None:
            fut.cancel()
        results = await asyncio.gather(*tasks, *([fut] if fut is not None else []),
                                       return_exceptions=True)
        del results
