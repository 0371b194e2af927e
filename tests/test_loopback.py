"""Two interfaces in one process over a real socket, on both event loops."""

from __future__ import annotations

import asyncio

import pytest

from memif_aio import Arguments, MemoryConfig, Socket

pytestmark = pytest.mark.both_loops


async def test_smoke(sock_path: str, no_leaks: None) -> None:
    async with Socket(sock_path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True, name="m"))
        s = sock.new_interface(Arguments(id=0, is_master=False, name="s"))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), 5)
        await s.get_tx_queue(0).write_packet(b"hello")
        assert await m.get_rx_queue(0).read_packet() == b"hello"
