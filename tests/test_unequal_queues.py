"""Unequal queue counts (issue 12 §3): S2M and M2S ring counts negotiated separately.

``MemoryConfig(num_rx_queues=, num_tx_queues=)`` is seen from the interface's own
side: a slave transmits on S2M rings and receives on M2S rings, a master receives on
S2M rings.  The slave lays out the memory, so its counts apply to both ends (capped
by the largest ring index the master's HELLO advertises); the master follows them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from memif_aio import Arguments, Interface, MemoryConfig, Socket
from memif_aio.protocol import (
    ClientConfig,
    ClientHandshake,
    Established,
    SendMessage,
    ServerConfig,
    ServerHandshake,
    ServerTarget,
)
from memif_aio.wire import MsgAddRing, MsgHello, RingType, decode_message

T = 5.0  # generous bound for what takes milliseconds
SHAPES = pytest.mark.parametrize("rx,tx", [(1, 2), (2, 1), (1, 3), (3, 2)],
                                 ids=["rx1-tx2", "rx2-tx1", "rx1-tx3", "rx3-tx2"])


# ----------------------------------------------------------------------------
# MemoryConfig
# ----------------------------------------------------------------------------


def test_defaults_follow_num_queue_pairs() -> None:
    mc = MemoryConfig()
    assert (mc.num_queue_pairs, mc.num_rx_queues, mc.num_tx_queues) == (1, 1, 1)
    mc = MemoryConfig(num_queue_pairs=4)  # gomemif's NumQueuePairs sets both directions
    assert (mc.num_queue_pairs, mc.num_rx_queues, mc.num_tx_queues) == (4, 4, 4)
    assert MemoryConfig(4) == MemoryConfig(num_rx_queues=4, num_tx_queues=4)


def test_unequal_counts_and_pairs() -> None:
    mc = MemoryConfig(num_rx_queues=1, num_tx_queues=2)
    assert (mc.num_rx_queues, mc.num_tx_queues) == (1, 2)
    assert mc.num_queue_pairs == 1  # the complete pairs
    mc = MemoryConfig(num_queue_pairs=3, num_tx_queues=5)  # rx follows the pairs
    assert (mc.num_queue_pairs, mc.num_rx_queues, mc.num_tx_queues) == (3, 3, 5)
    mc = MemoryConfig(num_queue_pairs=3, num_rx_queues=2)
    assert (mc.num_queue_pairs, mc.num_rx_queues, mc.num_tx_queues) == (2, 2, 3)


@pytest.mark.parametrize("kw", [{"num_rx_queues": 257}, {"num_tx_queues": 257},
                                {"num_rx_queues": -1}, {"num_tx_queues": True},
                                {"num_rx_queues": 1.5}, {"num_tx_queues": "2"}])
def test_queue_count_bounds(kw: dict[str, Any]) -> None:
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        MemoryConfig(**kw)


def test_num_rx_queues_are_keywords() -> None:
    with pytest.raises(TypeError):
        MemoryConfig(1, 10, 2048, 2)  # type: ignore[call-arg]


def test_region_size_counts_each_direction() -> None:
    # S = 2*C + 16*2^4: 384 (C = 64) or 512 (C = 128) per ring; 3 rings of 16 slots of 256 bytes
    mc = MemoryConfig(log2_ring_size=4, packet_buffer_size=256, num_rx_queues=1,
                      num_tx_queues=2)
    assert mc.region_size(64) == 3 * 384 + 3 * 16 * 256
    assert mc.region_size(128) == 3 * 512 + 3 * 16 * 256


def test_arguments_bound_the_region_with_both_counts() -> None:
    # 252 + 1 rings of 2^14 slots of 1024 bytes (17,039,488 bytes each): above 4 GiB
    big = MemoryConfig(log2_ring_size=14, packet_buffer_size=1024, num_rx_queues=252,
                       num_tx_queues=1)
    with pytest.raises(ValueError, match="4 GiB"):
        Arguments(id=0, is_master=False, memory_config=big)
    ok = MemoryConfig(log2_ring_size=14, packet_buffer_size=1024, num_rx_queues=251,
                      num_tx_queues=1)
    assert Arguments(id=0, is_master=False, memory_config=ok).memory_config == ok


# ----------------------------------------------------------------------------
# The handshake machines
# ----------------------------------------------------------------------------


def run_handshake(cli: ClientHandshake, srv: ServerHandshake) -> tuple[Any, Any, list[Any]]:
    """Pump both machines to the end; returns the two sessions and the client's messages."""
    to_client = srv.start()
    sent: list[Any] = []
    srv_session = cli_session = None
    while to_client:
        to_server: list[Any] = []
        for o in to_client:
            if isinstance(o, SendMessage):
                for out in cli.receive(o.data, [] if o.fd is None else [o.fd]):
                    if isinstance(out, SendMessage):
                        sent.append(decode_message(out.data))
                        to_server.append(out)
                    elif isinstance(out, Established):
                        cli_session = out.session
            elif isinstance(o, Established):
                srv_session = o.session
        to_client = []
        for o in to_server:
            fd = os.dup(o.fd) if o.fd is not None else None  # the server owns what it gets
            for out in srv.receive(o.data, [] if fd is None else [fd]):
                if isinstance(out, Established):
                    srv_session = out.session
                elif isinstance(out, SendMessage):
                    to_client.append(out)
    assert srv_session is not None and cli_session is not None, "handshake did not complete"
    return srv_session, cli_session, sent


@SHAPES
def test_machines_negotiate_each_direction(rx: int, tx: int) -> None:
    srv = ServerHandshake(ServerConfig(lookup=lambda _id: ServerTarget()))
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=3, buffer_size=128,
                                       num_rx_queues=rx, num_tx_queues=tx))
    ss, cs, sent = run_handshake(cli, srv)
    try:
        rings = [m for m in sent if isinstance(m, MsgAddRing)]
        assert [m.index for m in rings if m.ring_type is RingType.S2M] == list(range(tx))
        assert [m.index for m in rings if m.ring_type is RingType.M2S] == list(range(rx))
        assert (len(cs.rx), len(cs.tx)) == (rx, tx)  # the slave: rx = M2S, tx = S2M
        assert (len(ss.rx), len(ss.tx)) == (tx, rx)  # the master: rx = S2M, tx = M2S
        assert (cs.memory_config.num_rx_queues, cs.memory_config.num_tx_queues) == (rx, tx)
        assert (ss.memory_config.num_rx_queues, ss.memory_config.num_tx_queues) == (tx, rx)
        assert ss.memory_config.num_queue_pairs == cs.memory_config.num_queue_pairs == min(rx, tx)
        assert len(ss.rx_eventfds) == tx and len(ss.tx_eventfds) == rx
        assert len(cs.rx_eventfds) == rx and len(cs.tx_eventfds) == tx
    finally:
        ss.close()
        cs.close()


def test_client_caps_each_direction_by_hello() -> None:
    """Each count is min(configured, HELLO's largest index + 1), per direction (§5.2)."""
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=3, buffer_size=128,
                                       num_rx_queues=4, num_tx_queues=4))
    hello = MsgHello(b"srv", 0x0200, 0x0200, 255, 1, 0, 14)  # m2s index <= 1, s2m index <= 0
    try:
        out = cli.receive(hello.encode())
        assert cli.layout is not None
        assert (cli.layout.num_s2m, cli.layout.num_m2s) == (1, 2)
        assert len(out) == 1 and isinstance(out[0], SendMessage)
    finally:
        cli.close("test over")


# ----------------------------------------------------------------------------
# memif_aio master and slave over a real socket, both loops
# ----------------------------------------------------------------------------


@asynccontextmanager
async def pair(path: str, slave_mc: MemoryConfig,
               master_mc: MemoryConfig | None = None) -> AsyncIterator[tuple[Interface,
                                                                              Interface]]:
    async with Socket(path) as sock:
        m = sock.new_interface(Arguments(id=0, is_master=True, name="m",
                                         memory_config=master_mc or MemoryConfig()))
        s = sock.new_interface(Arguments(id=0, is_master=False, name="s",
                                         memory_config=slave_mc, reconnect_min_delay=0.02,
                                         reconnect_max_delay=0.1))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        yield m, s


async def exchange(tx_itf: Interface, rx_itf: Interface, qid: int, n: int) -> None:
    """``n`` distinct packets on tx queue ``qid``, all received intact, in order, on rx
    queue ``qid`` of the other end, and nothing on its other rx queues."""
    packets = [bytes([qid, i & 0xFF, i >> 8]) * (20 + i % 300) for i in range(n)]

    async def send() -> None:
        q = tx_itf.get_tx_queue(qid)
        done = 0
        while done < n:
            done += await q.write_burst(packets[done:])

    async def recv() -> list[bytes]:
        q = rx_itf.get_rx_queue(qid)
        got: list[bytes] = []
        while len(got) < n:
            got.extend(await q.read_burst(n - len(got)))
        return got

    _, got = await asyncio.wait_for(asyncio.gather(send(), recv()), T * 4)
    assert got == packets


@pytest.mark.both_loops
@pytest.mark.parametrize("rx,tx", [(1, 2), (2, 1)], ids=["slave-rx1-tx2", "slave-rx2-tx1"])
async def test_traffic_on_every_queue_both_directions(rx: int, tx: int, sock_path: str,
                                                      no_leaks: None) -> None:
    """The slave asks for rx/tx, the master (configured with the mirror image) gets the
    mirror image; every queue of both ends carries traffic, all at once."""
    slave_mc = MemoryConfig(num_rx_queues=rx, num_tx_queues=tx)
    master_mc = MemoryConfig(num_rx_queues=tx, num_tx_queues=rx)
    async with pair(sock_path, slave_mc, master_mc) as (m, s):
        assert (len(s.rx_queues), len(s.tx_queues)) == (rx, tx)
        assert (len(m.rx_queues), len(m.tx_queues)) == (tx, rx)
        assert s.get_memory_config() == slave_mc
        assert m.get_memory_config() == master_mc
        jobs = [exchange(s, m, q, 500) for q in range(tx)]  # slave tx q = S2M q = master rx q
        jobs += [exchange(m, s, q, 500) for q in range(rx)]  # master tx q = M2S q = slave rx q
        await asyncio.gather(*jobs)
        for q in range(tx):
            assert m.get_rx_queue(q).stats().packets == 500
            assert s.get_tx_queue(q).stats().packets == 500
        for q in range(rx):
            assert s.get_rx_queue(q).stats().packets == 500
            assert m.get_tx_queue(q).stats().packets == 500
        for itf in (m, s):
            for st in (*itf.stats().rx, *itf.stats().tx):
                assert st.drops == 0 and st.bad_descriptors == 0
        with pytest.raises(IndexError):
            s.get_rx_queue(rx)
        with pytest.raises(IndexError):
            m.get_tx_queue(rx)


@pytest.mark.both_loops
async def test_master_follows_the_slave(sock_path: str, no_leaks: None) -> None:
    """A master's own counts do not limit the slave (its HELLO advertises 255 rings per
    direction, as VPP's; see docs/interop.md): it gets what the slave lays out."""
    slave_mc = MemoryConfig(num_rx_queues=3, num_tx_queues=1)
    async with pair(sock_path, slave_mc, MemoryConfig()) as (m, s):
        mc = m.get_memory_config()
        assert (mc.num_rx_queues, mc.num_tx_queues, mc.num_queue_pairs) == (1, 3, 1)
        assert (len(m.rx_queues), len(m.tx_queues)) == (1, 3)
        await asyncio.gather(exchange(s, m, 0, 200),
                             *(exchange(m, s, q, 200) for q in range(3)))
    assert m.get_memory_config() == MemoryConfig()  # back to its configured one
