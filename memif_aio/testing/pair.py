"""A connected ``(master, slave)`` pair of interfaces in this process, for tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from memif_aio import Arguments, Interface, InterfaceMode, MemoryConfig, RxMode, Socket
from memif_aio.config import (
    DEFAULT_LOG2_RING_SIZE,
    DEFAULT_NUM_QUEUE_PAIRS,
    DEFAULT_PACKET_BUFFER_SIZE,
)

__all__ = ["connected_pair"]


@contextlib.asynccontextmanager
async def connected_pair(path: str, *, id: int = 0, queues: int = DEFAULT_NUM_QUEUE_PAIRS,
                         ring: int = DEFAULT_LOG2_RING_SIZE,
                         buffer: int = DEFAULT_PACKET_BUFFER_SIZE,
                         mode: InterfaceMode | int = InterfaceMode.ETHERNET,
                         secret: bytes | str = b"", rx_mode: RxMode | str = RxMode.INTERRUPT,
                         timeout: float = 10.0,
                         **arguments: Any) -> AsyncIterator[tuple[Interface, Interface]]:
    """One :class:`~memif_aio.Socket` at ``path`` with a master and a slave interface of
    the same ``id``, both connected (within ``timeout`` seconds) when this yields; the
    socket (and with it both interfaces, their memory and the socket file) is closed at
    the end.

    ``queues``, ``ring`` (log2 of the ring size), ``buffer`` (packet buffer size) make the
    :class:`~memif_aio.MemoryConfig`; ``mode``, ``secret``, ``rx_mode`` and any other
    ``arguments`` go to both :class:`~memif_aio.Arguments` (``rx_mode`` as an
    :class:`~memif_aio.RxMode` or its value, ``"polling"``...).
    """
    memory = MemoryConfig(num_queue_pairs=queues, log2_ring_size=ring,
                          packet_buffer_size=buffer)
    common: dict[str, Any] = {"mode": mode, "secret": secret, "memory_config": memory,
                              "rx_mode": RxMode(rx_mode), **arguments}
    common.setdefault("reconnect_min_delay", 0.02)
    common.setdefault("reconnect_max_delay", 0.1)
    async with Socket(path) as sock:
        master = sock.new_interface(Arguments(id=id, is_master=True, name="master", **common))
        slave = sock.new_interface(Arguments(id=id, is_master=False, name="slave", **common))
        await asyncio.wait_for(asyncio.gather(master.wait_connected(), slave.wait_connected()),
                               timeout)
        yield master, slave
