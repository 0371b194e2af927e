"""A peer that changes interrupt masking at run time (issue 12 §6).

NSM and Calico switch VPP's memif rx-mode to adaptive after link-up, so the peer flips
``MASK_INT`` on the rings it receives on while traffic flows.  The peer here does exactly that,
at random (seeded): in a *poll* phase it sets ``MASK_INT`` and polls its ring; in an
*interrupt* phase it clears ``MASK_INT``, re-checks the ring (as VPP does) and then sleeps on
the eventfd alone, with no timeout.  It echoes every frame back.

Our side sends in windows and waits for each window's echoes before the next one, so a single
lost wake-up (our transmit skipping a signal the peer asked for) stalls the exchange for good and
fails the test; nothing is measured in time.  Every receive mode of ours (the echoes) and both
transmit calls (``write_packet`` and ``write_burst``) are covered, in both roles and on both
loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random

import pytest

from memif_aio import Arguments, Interface, MemoryConfig, RxMode, Socket, WouldBlock
from memif_aio.queue import RxQueue, TxQueue

#: frames per run, and per window (the windows alternate write_packet and write_burst)
FRAMES = 3000
WINDOW = 24
#: a window whose echoes have not all come back in this long is a stall (a lost wake-up
#: never ends, so the bound only decides when to give up)
STALL = 20.0
#: small rings, so that windows wrap them many times
RING = MemoryConfig(log2_ring_size=6)


class TogglingPeer:
    """Receives on ``rx`` flipping ``MASK_INT`` at random, echoes on ``tx``."""

    def __init__(self, rx: RxQueue, tx: TxQueue, seed: int) -> None:
        self.rx, self.tx = rx, tx
        self.rng = random.Random(seed)
        self.flips = 0
        self.sleeps = 0  # interrupt phases that found the ring empty and slept on the eventfd
        self.wakeups = 0  # ... and were woken by our signal
        self.echoed = 0

    def _mask(self, masked: bool) -> None:
        self.rx._ring.set_interrupt_mask(masked)
        self.flips += 1

    async def _echo_ready(self) -> int:
        """Echo what is in the ring now; how many frames."""
        n = 0
        while True:
            try:
                frame = self.rx.read_packet_nowait()
            except WouldBlock:
                return n
            await self.tx.write_packet(frame)
            n += 1
            self.echoed += 1

    async def _wait_interrupt(self) -> None:
        loop = asyncio.get_running_loop()
        fd = self.rx.get_event_fd()
        fut: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(fd)
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await fut
        finally:
            loop.remove_reader(fd)

    async def run(self) -> None:
        rng = self.rng
        while True:
            if rng.random() < 0.5:  # poll phase: masked, polling for a few iterations
                self._mask(True)
                for _ in range(rng.randrange(1, 40)):
                    await self._echo_ready()
                    await asyncio.sleep(0)
            else:  # interrupt phase: unmask, re-check, then only an interrupt wakes us
                self._mask(False)
                if await self._echo_ready():
                    continue
                self.sleeps += 1
                await self._wait_interrupt()
                self.wakeups += 1
                await self._echo_ready()


async def _exchange(ours: Interface, peer: Interface, seed: int) -> TogglingPeer:
    toggler = TogglingPeer(peer.get_rx_queue(0), peer.get_tx_queue(0), seed)
    task = asyncio.create_task(toggler.run())
    tx, rx = ours.get_tx_queue(0), ours.get_rx_queue(0)
    rng = random.Random(seed + 1)
    received: list[bytes] = []
    try:
        sent = 0
        window = 0
        while sent < FRAMES:
            n = min(rng.randrange(1, WINDOW + 1), FRAMES - sent)
            frames = [i.to_bytes(4, "big") + bytes(rng.randrange(56, 200))
                      for i in range(sent, sent + n)]
            if window % 2:
                for f in frames:
                    await tx.write_packet(f)
            else:
                done = 0
                while done < n:
                    done += await tx.write_burst(frames[done:])
            window += 1
            want = sent + n
            async with asyncio.timeout(STALL):
                while len(received) < want:
                    received.append(await rx.read_packet())
            sent = want
            if rng.random() < 0.3:  # let the peer go idle: it may sleep on its eventfd
                await asyncio.sleep(0.001)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [int.from_bytes(f[:4], "big") for f in received] == list(range(FRAMES))
    return toggler


@pytest.mark.both_loops
@pytest.mark.parametrize("we_are_master", [False, True], ids=["we-slave", "we-master"])
@pytest.mark.parametrize("rx_mode", list(RxMode), ids=lambda m: m.value)
async def test_peer_toggling_mask_int_loses_and_stalls_nothing(
        sock_path: str, no_leaks: None, rx_mode: RxMode, we_are_master: bool) -> None:
    async with Socket(sock_path) as sock:
        ours = sock.new_interface(Arguments(id=0, is_master=we_are_master, rx_mode=rx_mode,
                                            memory_config=RING))
        peer = sock.new_interface(Arguments(id=0, is_master=not we_are_master,
                                            rx_mode=RxMode.POLLING, memory_config=RING))
        await asyncio.gather(ours.wait_connected(10), peer.wait_connected(10))
        seed = 1000 + list(RxMode).index(rx_mode) * 2 + we_are_master
        toggler = await _exchange(ours, peer, seed)
    assert toggler.echoed == FRAMES
    # the peer really flipped the mask while traffic flowed, and slept on interrupts that
    # our transmit then had to send
    assert toggler.flips >= 100, toggler.flips
    assert toggler.sleeps >= 10 and toggler.wakeups >= 10, (toggler.sleeps, toggler.wakeups)
