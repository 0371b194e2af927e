"""Event values and the bounded subscription that delivers them.

:meth:`Interface.events` and :meth:`Socket.errors` hand out a
:class:`Subscription`: it is registered when it is created (so nothing that
happens between the call and the first iteration is lost), holds at most
``maxsize`` undelivered items, and on overflow drops the OLDEST item and counts
it in :attr:`Subscription.dropped`.  ``async for`` over it ends when its source
goes away (the interface or socket is deleted) or after :meth:`Subscription.close`.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import ConnectionRefused

T = TypeVar("T")

#: default bound of a subscription's buffer
DEFAULT_MAXSIZE = 256


@dataclass(frozen=True)
class LinkEvent:
    """A link state change, as delivered by :meth:`Interface.events`."""

    kind: str  #: "up", "down" or "refused" (an attempt failed before the link came up)
    reason: str  #: for "down"/"refused": why (the peer's string when it sent one, or ours)
    by_peer: bool
    time: float  #: ``time.time()`` of the change
    #: for "refused": the :class:`~memif_aio.ConnectionRefused` the attempt ended with
    error: ConnectionRefused | None = None
    #: the network namespace of the interface's socket (``Socket.netns``; None: our own)
    netns: str | None = None


class Subscription(Generic[T]):
    """A bounded, cancellation-safe async iterator over the items of one source."""

    def __init__(self, registry: list[Subscription[T]], maxsize: int = DEFAULT_MAXSIZE) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._registry = registry
        self._items: collections.deque[T] = collections.deque()
        self._maxsize = maxsize
        self._waiters: list[asyncio.Future[None]] = []
        self._ended = False
        #: items dropped because the buffer was full (the oldest go first)
        self.dropped = 0
        registry.append(self)

    # --- called by the source -----------------------------------------------------------
    def _put(self, item: T) -> None:
        if self._ended:
            return
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()

    # --- the consumer ---------------------------------------------------------------------
    @property
    def maxsize(self) -> int:
        return self._maxsize

    def qsize(self) -> int:
        """Items waiting to be read."""
        return len(self._items)

    def close(self) -> None:
        """Unsubscribe; iteration ends once the buffered items are read."""
        self._end()
        if self in self._registry:
            self._registry.remove(self)

    async def aclose(self) -> None:
        self.close()

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        items = self._items
        while not items:  # wait first, take after: a cancelled wait takes nothing
            if self._ended:
                raise StopAsyncIteration
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if not fut.done() or fut.cancelled():
                    if fut in self._waiters:
                        self._waiters.remove(fut)
        return items.popleft()

    async def __aenter__(self) -> Subscription[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def end_all(registry: list[Subscription[T]]) -> None:
    """The source is gone: end every subscription."""
    for sub in list(registry):
        sub._end()
    registry.clear()


def publish(registry: list[Subscription[T]], item: T) -> None:
    for sub in registry:
        sub._put(item)
