"""The sans-I/O handshake machines, run against each other and against a hand-driven peer.

No socket is involved: SCM_RIGHTS is imitated by ``os.dup`` of every fd that
travels with a message (the receiving machine owns the duplicate).  Every
test runs under a strict fd/mapping guard: whatever the sequence, each fd
handed to a machine is either closed or ends up in the Session, and closing
the Session releases everything.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self

import pytest
from _harness import (
    LeakGuard,
    Target,
    decoded,
    established_pair,
    make_server,
    pump,
    session_fds,
)
from leaks import open_fds

from memif_aio.errors import ProtocolViolation
from memif_aio.memory import ClientLayout, Region
from memif_aio.protocol import (
    CLIENT_TRANSITIONS,
    RECEIVED,
    SENT,
    SERVER_TRANSITIONS,
    ClientConfig,
    ClientHandshake,
    ClientState,
    Closed,
    Established,
    InitAccepted,
    SendMessage,
    ServerConfig,
    ServerHandshake,
    ServerState,
    Session,
    Way,
)
from memif_aio.ring import M2SConsumer, M2SProducer, S2MConsumer, S2MProducer
from memif_aio.wire import (
    MAX_USABLE_LOG2_RING_SIZE,
    MsgAck,
    MsgAddRegion,
    MsgAddRing,
    MsgConnect,
    MsgConnected,
    MsgDisconnect,
    MsgHello,
    MsgInit,
    MsgType,
    RingLayout,
    RingType,
    decode_message,
)

# ---------------------------------------------------------------------------
# Leak guard and helpers (pump, Target, the established pair: tests/_harness.py)
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fd_guard() -> Iterator[None]:
    """Strict: any new fd (of any kind) or memfd mapping left at the end fails the test."""
    guard = LeakGuard(strict=True, exact_mappings=True, processes=False, dpdk=False)
    yield
    guard.check()


def assert_refused(outs: Sequence[object], reason: str, *, exact: bool = True) -> None:
    """Outputs of a local refusal: DISCONNECT(reason) then Closed(reason, by_peer=False)."""
    assert len(outs) == 2, outs
    send, closed = outs
    assert isinstance(send, SendMessage) and send.fd is None
    assert len(send.data) == 128
    msg = decode_message(send.data)
    assert isinstance(msg, MsgDisconnect)
    assert msg.code == 0
    assert isinstance(closed, Closed)
    assert closed.by_peer is False
    if exact:
        assert closed.reason == reason
    else:
        assert reason in closed.reason, closed.reason
    assert msg.string == closed.reason.encode()[:95]


def new_efd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


ACK = MsgAck().encode()


class Peer:
    """A hand-driven client: valid memory made with ClientLayout, messages crafted one by one."""

    def __init__(self, ns: int = 1, nm: int = 1, log2: int = 4, bsize: int = 256,
                 cache_line: int = 64, sealed: bool = True) -> None:
        self.layout = ClientLayout(ns, nm, log2, bsize, RingLayout.for_cache_line(cache_line))
        self.log2 = log2
        if sealed:
            self.region = Region.create(self.layout.region_size)
        else:
            fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
            os.ftruncate(fd, self.layout.region_size)
            import mmap

            mm = mmap.mmap(fd, self.layout.region_size)
            self.region = Region(fd, self.layout.region_size, mm)
        self.layout.initialise(self.region)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.region.close()

    def init(self, id: int = 0, **kw: object) -> bytes:
        return MsgInit(id=id, name=b"peer", **kw).encode()  # type: ignore[arg-type]

    def add_region(self, index: int = 0, size: int | None = None) -> bytes:
        return MsgAddRegion(index, self.layout.region_size if size is None else size).encode()

    def region_fd(self) -> list[int]:
        return [os.dup(self.region.fd)]

    def add_ring(self, rtype: RingType, index: int, *, offset: int | None = None,
                 log2: int | None = None, region: int = 0, private_hdr_size: int = 0,
                 flags: int | None = None) -> bytes:
        return MsgAddRing(
            (1 if rtype is RingType.S2M else 0) if flags is None else flags, index, region,
            self.layout.ring_offset(rtype, index) if offset is None else offset,
            self.log2 if log2 is None else log2, private_hdr_size).encode()

    def feed_all_rings(self, srv: ServerHandshake) -> None:
        lay = self.layout
        for rtype, count in ((RingType.S2M, lay.num_s2m), (RingType.M2S, lay.num_m2s)):
            for i in range(count):
                assert decoded(srv.receive(self.add_ring(rtype, i), [new_efd()])) == [MsgAck()]

    def up_to_config(self, srv: ServerHandshake, **init_kw: Any) -> None:
        srv.start()
        outs = srv.receive(self.init(**init_kw))
        assert decoded(outs) == [MsgAck()], outs
        assert decoded(srv.receive(self.add_region(), self.region_fd())) == [MsgAck()]


# ---------------------------------------------------------------------------
# Full handshakes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("pairs", [1, 4])
def test_full_handshake(pairs: int) -> None:
    before = open_fds()
    tr, ss, cs = established_pair(num_queue_pairs=pairs, log2=5, bsize=512)
    try:
        # events
        assert [type(e) for e in tr.server_events] == [InitAccepted, Established]
        assert tr.server_events[0] == InitAccepted(5, b"client-app")
        assert [type(e) for e in tr.client_events] == [Established]
        # server session
        assert ss.is_master and not cs.is_master
        assert len(ss.rx) == len(ss.tx) == len(cs.rx) == len(cs.tx) == pairs
        assert all(isinstance(r, S2MConsumer) for r in ss.rx)
        assert all(isinstance(r, M2SProducer) for r in ss.tx)
        assert all(isinstance(r, M2SConsumer) for r in cs.rx)
        assert all(isinstance(r, S2MProducer) for r in cs.tx)
        assert len(ss.rx_eventfds) == len(ss.tx_eventfds) == pairs
        assert len(cs.rx_eventfds) == len(cs.tx_eventfds) == pairs
        assert ss.peer_name == b"client-app" and ss.peer_if_name == b"cli0"
        assert cs.peer_name == b"memif_aio" and cs.peer_if_name == b"srv0"
        assert ss.log2_ring_size == cs.log2_ring_size == 5
        assert ss.buffer_size == cs.buffer_size == 512
        assert all(r.size == 32 for r in (*ss.rx, *ss.tx, *cs.rx, *cs.tx))
        assert len(ss.regions) == len(cs.regions) == 1
        # the fds handed to the server are those of its session, but for the region fd, closed
        # once mapped; the client's session holds the fds it created; nothing else was opened
        assert all(r.fd == -1 for r in ss.regions)
        assert session_fds(ss) == set(tr.to_server_fds[1:])  # [0]: ADD_REGION's (its number
        # may be reused by an eventfd received after it)
        assert session_fds(cs) == {fd for fd in tr.client_fds if fd is not None}
        # (besides those, before Python 3.13 each mmap object keeps a private dup of its fd)
        extra = open_fds() - before - session_fds(ss) - session_fds(cs)
        region_inodes = {os.fstat(r.fd).st_ino for r in cs.regions}
        assert len(extra) == (0 if sys.version_info >= (3, 13) else 2)
        assert {os.fstat(fd).st_ino for fd in extra} <= region_inodes
        # the eventfds are the same kernel objects: S2M ring q of the client is rx q of the server
        for q in range(pairs):
            os.eventfd_write(cs.tx_eventfds[q], q + 1)
            assert os.eventfd_read(ss.rx_eventfds[q]) == q + 1
            os.eventfd_write(ss.tx_eventfds[q], q + 7)
            assert os.eventfd_read(cs.rx_eventfds[q]) == q + 7
        # and the rings share memory: a packet goes through in each direction on every queue
        for q in range(pairs):
            assert cs.tx[q].write_burst([b"up%d" % q, b"U" * 1500]) == 2
            out: list[bytes] = []
            assert ss.rx[q].read_burst(10, out) == 2
            assert out == [b"up%d" % q, b"U" * 1500]
            assert cs.rx[q].refill() == 0  # type: ignore[union-attr]  # posted when established (§7.9)
            assert ss.tx[q].write_burst([b"down%d" % q, b"D" * 1000]) == 2
            out = []
            assert cs.rx[q].read_burst(10, out) == 2
            assert out == [b"down%d" % q, b"D" * 1000]
    finally:
        ss.close()
        cs.close()
    assert open_fds() == before
    assert ss.closed and cs.closed
    ss.close()  # idempotent
    cs.close()


def test_handshake_cache_line_128() -> None:
    tr, ss, cs = established_pair(num_queue_pairs=2, log2=3, cache_line=128)
    try:
        assert all(r.layout.cache_line == 128 for r in (*ss.rx, *ss.tx, *cs.rx, *cs.tx))
        rings = [m for m in tr.client_msgs if isinstance(m, MsgAddRing)]
        stride = 256 + 16 * 8
        assert [m.offset for m in rings] == [0, stride, 2 * stride, 3 * stride]
        assert cs.tx[1].write_burst([b"x" * 300]) == 1
        out: list[bytes] = []
        assert ss.rx[1].read_burst(4, out) == 1 and out == [b"x" * 300]
    finally:
        ss.close()
        cs.close()


def test_client_message_order_and_ack_pacing() -> None:
    tr, ss, cs = established_pair(num_queue_pairs=4, log2=6, bsize=1024)
    try:
        msgs = tr.client_msgs
        types = [m.TYPE for m in msgs]  # type: ignore[attr-defined]
        assert types == ([MsgType.INIT, MsgType.ADD_REGION] + [MsgType.ADD_RING] * 8
                         + [MsgType.CONNECT])
        init = msgs[0]
        assert init == MsgInit(id=5, mode=0, secret=b"", name=b"client-app")
        layout = ClientLayout(4, 4, 6, 1024, RingLayout.for_cache_line(64))
        assert msgs[1] == MsgAddRegion(0, layout.region_size)
        rings = msgs[2:10]
        assert [(m.ring_type, m.index) for m in rings] == (  # type: ignore[attr-defined]
            [(RingType.S2M, i) for i in range(4)] + [(RingType.M2S, i) for i in range(4)])
        for m in rings:
            assert m.region == 0 and m.log2_ring_size == 6 and m.private_hdr_size == 0  # type: ignore[attr-defined]
            assert m.offset == layout.ring_offset(m.ring_type, m.index)  # type: ignore[attr-defined]
            assert m.flags in (0, 1)  # type: ignore[attr-defined]
        assert msgs[10] == MsgConnect(b"cli0")
        # fds: exactly one with ADD_REGION and each ADD_RING, none otherwise, all distinct
        fds = tr.client_fds
        assert fds[0] is None and fds[10] is None
        assert all(fd is not None for fd in fds[1:10])
        assert len(set(fds[1:10])) == 9
        assert fds[1] == cs.regions[0].fd
        assert fds[2:6] == cs.tx_eventfds and fds[6:10] == cs.rx_eventfds
        # pacing: one message for HELLO and for each ACK, nothing after CONNECTED
        assert tr.client_replies == ([(MsgType.HELLO, 1)] + [(MsgType.ACK, 1)] * 10
                                     + [(MsgType.CONNECTED, 0)])
        # the server answered every message with exactly one (ACK, then CONNECTED)
        assert tr.server_replies == [(t, 1) for t in types]
    finally:
        ss.close()
        cs.close()


def test_client_sends_one_message_per_ack_when_driven_by_hand() -> None:
    cli = ClientHandshake(ClientConfig(id=1, num_queue_pairs=2, log2_ring_size=3))
    outs = cli.receive(MsgHello().encode())
    assert len(outs) == 1 and decoded(outs)[0].TYPE is MsgType.INIT  # type: ignore[attr-defined]
    assert cli.state is ClientState.WAIT_ACK
    seen = []
    for _ in range(6):
        outs = cli.receive(ACK)
        assert len(outs) == 1 and isinstance(outs[0], SendMessage)
        seen.append(decode_message(outs[0].data))
    assert [type(m) for m in seen] == [MsgAddRegion] + [MsgAddRing] * 4 + [MsgConnect]
    assert cli.state is ClientState.WAIT_CONNECTED  # type: ignore[comparison-overlap]
    # an extra ACK now is a protocol error
    assert_refused(cli.receive(ACK), "unexpected message ACK")
    assert cli.state is ClientState.CLOSED


def test_default_client_messages_equal_spec_vectors() -> None:
    """§14.1: a client with the defaults produces the reference bytes."""
    srv = make_server({7: Target(secret=b"s3cret")})
    cli = ClientHandshake(ClientConfig(id=7, secret=b"s3cret", if_name=b"memif0"))
    tr = pump(srv, cli)
    try:
        expected = [
            "03 00 00 02 07 00 00 00 00 73 33 63 72 65 74" + " 00" * 18
            + " 6d 65 6d 69 66 5f 61 69 6f",
            "04 00 00 00 00 81 40 00 00 00 00 00",
            "05 00 01 00 00 00 00 00 00 00 00 00 0a 00 00",
            "05 00 00 00 00 00 00 00 80 40 00 00 0a 00 00",
            "06 00 6d 65 6d 69 66 30",
        ]
        got = [m.encode() for m in tr.client_msgs]  # type: ignore[attr-defined]
        assert got == [bytes.fromhex(e.replace(" ", "")).ljust(128, b"\0") for e in expected]
    finally:
        tr.session("s").close()
        tr.session("c").close()


def test_server_hello_equals_spec_vector() -> None:
    srv = make_server()
    (hello,) = srv.start()
    assert isinstance(hello, SendMessage) and hello.fd is None
    assert hello.data == (bytes.fromhex("02006d656d69665f61696f") + bytes(23)
                          + bytes.fromhex("00020002ff00ff00ff000e")).ljust(128, b"\0")
    assert srv.state is ServerState.WAIT_INIT


@pytest.mark.parametrize("cfg_log2, hello_log2, expected", [(10, 14, 10), (10, 6, 6), (3, 3, 3),
                                                            (14, 15, 14), (2, 1, 1)])
def test_negotiated_log2(cfg_log2: int, hello_log2: int, expected: int) -> None:
    srv = make_server()
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=cfg_log2, buffer_size=128))
    tr = pump(srv, cli, hello=MsgHello(max_log2_ring_size=hello_log2).encode())
    ss, cs = tr.session("s"), tr.session("c")
    try:
        rings = [m for m in tr.client_msgs if isinstance(m, MsgAddRing)]
        assert {m.log2_ring_size for m in rings} == {expected}
        assert cs.log2_ring_size == ss.log2_ring_size == expected
        lay = ClientLayout(1, 1, expected, 128, RingLayout.for_cache_line(64))
        assert tr.client_msgs[1] == MsgAddRegion(0, lay.region_size)
        assert all(r.size == 1 << expected for r in (*ss.rx, *cs.tx))
    finally:
        ss.close()
        cs.close()


@pytest.mark.parametrize("pairs, max_s2m, max_m2s, ns, nm", [
    (4, 255, 255, 4, 4), (4, 0, 0, 1, 1), (4, 1, 2, 2, 3), (2, 5, 0, 2, 1), (3, 2, 2, 3, 3),
])
def test_negotiated_ring_counts(pairs: int, max_s2m: int, max_m2s: int, ns: int, nm: int) -> None:
    srv = make_server()
    cli = ClientHandshake(ClientConfig(id=0, num_queue_pairs=pairs, log2_ring_size=2,
                                       buffer_size=64))
    tr = pump(srv, cli, hello=MsgHello(max_s2m_ring=max_s2m, max_m2s_ring=max_m2s).encode())
    ss, cs = tr.session("s"), tr.session("c")
    try:
        rings = [m for m in tr.client_msgs if isinstance(m, MsgAddRing)]
        assert [(m.ring_type, m.index) for m in rings] == (
            [(RingType.S2M, i) for i in range(ns)] + [(RingType.M2S, i) for i in range(nm)])
        assert (len(cs.tx), len(cs.rx), len(ss.rx), len(ss.tx)) == (ns, nm, ns, nm)
    finally:
        ss.close()
        cs.close()


def test_hello_version_range_containing_0x0200_is_accepted() -> None:
    srv = make_server()
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    tr = pump(srv, cli, hello=MsgHello(min_version=0x0100, max_version=0x0300).encode())
    tr.session("s").close()
    tr.session("c").close()


def test_server_accepts_pipelined_input() -> None:
    """§2.7: a server processes messages strictly in order even if they were not paced."""
    with Peer(ns=2, nm=1) as p:
        srv = make_server()
        srv.start()
        batch: list[tuple[bytes, list[int]]] = [
            (p.init(), []), (p.add_region(), p.region_fd()),
            (p.add_ring(RingType.S2M, 0), [new_efd()]), (p.add_ring(RingType.S2M, 1), [new_efd()]),
            (p.add_ring(RingType.M2S, 0), [new_efd()]), (MsgConnect(b"p").encode(), []),
        ]
        outs: list[object] = []
        for data, fds in batch:
            outs.extend(srv.receive(data, fds))
        assert [type(o) for o in outs] == [InitAccepted] + [SendMessage] * 5 + [Established,
                                                                                SendMessage]
        assert decoded(outs) == [MsgAck()] * 5 + [MsgConnected(b"srv0")]
        session = outs[-2].session  # type: ignore[attr-defined]
        assert (len(session.rx), len(session.tx)) == (2, 1)
        assert srv.state is ServerState.CONNECTED and srv.established
        # ACK after connect is ignored
        assert srv.receive(ACK) == []
        session.close()


# ---------------------------------------------------------------------------
# Server refusals: every reason string
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("target, init_kw, reason", [
    (None, {"id": 9}, "unmatched interface id"),
    (Target(busy=True), {}, "already connected"),
    (Target(mode=1), {}, "mode mismatch"),
    (Target(mode=0), {"mode": 2}, "mode mismatch"),
    (Target(secret=b"pw"), {}, "secret required"),
    (Target(secret=b"pw"), {"secret": b"pX"}, "incorrect secret"),
    (Target(secret=b"pw"), {"secret": b"pw2"}, "incorrect secret"),
    (Target(secret=b"pw"), {"secret": b"p"}, "incorrect secret"),
    (Target(), {"version": 0x0201}, "incompatible version"),
    (Target(), {"version": 0x0100}, "incompatible version"),
])
def test_server_refuses_init(target: Target | None, init_kw: dict[str, object],
                             reason: str) -> None:
    srv = make_server({0: target} if target else {})
    srv.start()
    kw = dict(init_kw)
    outs = srv.receive(MsgInit(id=kw.pop("id", 0), name=b"x", **kw).encode())  # type: ignore[arg-type]
    assert_refused(outs, reason)
    assert srv.closed and srv.state is ServerState.CLOSED
    # nothing is accepted afterwards, and fds given to a closed machine are closed
    assert srv.receive(MsgInit(id=0).encode(), [new_efd()]) == []
    assert srv.eof() == [] and srv.timeout() == [] and srv.close("again") == []


def test_server_accepts_correct_secret_and_any_secret_when_none_configured() -> None:
    for target, secret in ((Target(secret=b"pw"), b"pw"), (Target(), b"whatever"),
                           (Target(secret=b"X" * 23), b"X" * 23)):
        srv = make_server({0: target})
        srv.start()
        outs = srv.receive(MsgInit(id=0, secret=secret, name=b"n").encode())
        assert outs[0] == InitAccepted(0, b"n") and decoded(outs) == [MsgAck()]
        assert srv.state is ServerState.WAIT_CONFIG


def test_server_secret_compared_up_to_nul_with_garbage_after() -> None:
    srv = make_server({0: Target(secret=b"pw")})
    srv.start()
    data = bytearray(MsgInit(id=0, secret=b"pw").encode())
    data[12:33] = b"\xee" * 21  # libmemif-style stale bytes after the NUL at 11
    outs = srv.receive(bytes(data))
    assert decoded(outs) == [MsgAck()]


def test_server_secret_without_nul_uses_whole_field() -> None:
    srv = make_server({0: Target(secret=b"A" * 24)})
    srv.start()
    data = bytearray(MsgInit(id=0).encode())
    data[9:33] = b"A" * 24
    assert decoded(srv.receive(bytes(data))) == [MsgAck()]


def test_lookup_receives_the_interface_id() -> None:
    asked: list[int] = []

    def lookup(i: int) -> Target | None:
        asked.append(i)
        return Target() if i == 0xDEADBEEF else None

    srv = ServerHandshake(ServerConfig(lookup=lookup))
    srv.start()
    outs = srv.receive(MsgInit(id=0xDEADBEEF).encode())
    assert asked == [0xDEADBEEF]
    assert outs[0] == InitAccepted(0xDEADBEEF, b"")
    assert srv.interface_id == 0xDEADBEEF


@pytest.mark.parametrize("first", ["ADD_REGION", "ADD_RING", "CONNECT", "ACK", "HELLO",
                                   "CONNECTED"])
def test_server_refuses_message_before_init(first: str) -> None:
    with Peer() as p:
        cases: dict[str, Callable[[], tuple[bytes, list[int]]]] = {
            # built lazily: only the chosen case may open fds
            "ADD_REGION": lambda: (p.add_region(), p.region_fd()),
            "ADD_RING": lambda: (p.add_ring(RingType.S2M, 0), [new_efd()]),
            "CONNECT": lambda: (MsgConnect(b"x").encode(), []),
            "ACK": lambda: (ACK, []),
            "HELLO": lambda: (MsgHello().encode(), []),
            "CONNECTED": lambda: (MsgConnected().encode(), []),
        }
        data, fds = cases[first]()
        srv = make_server()
        srv.start()
        assert_refused(srv.receive(data, fds), f"unexpected message {first}")


def test_server_refuses_second_init() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        assert_refused(srv.receive(p.init()), "unexpected message INIT")


def test_server_refuses_unexpected_region_index() -> None:
    with Peer() as p:
        srv = make_server()
        srv.start()
        srv.receive(p.init())
        assert_refused(srv.receive(p.add_region(index=1), p.region_fd()), "unexpected region index")


def test_server_refuses_repeated_region_index() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        assert_refused(srv.receive(p.add_region(index=0), p.region_fd()), "unexpected region index")


def test_server_refuses_missing_region_fd() -> None:
    with Peer() as p:
        srv = make_server()
        srv.start()
        srv.receive(p.init())
        assert_refused(srv.receive(p.add_region()), "missing memory region fd")


def test_server_refuses_missing_ring_fd() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        assert_refused(srv.receive(p.add_ring(RingType.S2M, 0)), "missing ring interrupt fd")


def test_server_refuses_private_headers() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        assert_refused(srv.receive(p.add_ring(RingType.S2M, 0, private_hdr_size=64), [new_efd()]),
                       "private headers not supported")


@pytest.mark.parametrize("rtype, index", [(RingType.S2M, 1), (RingType.M2S, 1), (RingType.M2S, 7)])
def test_server_refuses_unexpected_ring_index(rtype: RingType, index: int) -> None:
    with Peer(ns=2, nm=2) as p:
        srv = make_server()
        p.up_to_config(srv)
        assert_refused(srv.receive(p.add_ring(rtype, index), [new_efd()]), "unexpected ring index")


def test_server_refuses_repeated_ring_index() -> None:
    with Peer(ns=2) as p:
        srv = make_server()
        p.up_to_config(srv)
        assert decoded(srv.receive(p.add_ring(RingType.S2M, 0), [new_efd()])) == [MsgAck()]
        assert_refused(srv.receive(p.add_ring(RingType.S2M, 0, offset=p.layout.ring_stride),
                                   [new_efd()]), "unexpected ring index")


def test_ring_indices_count_per_direction() -> None:
    """M2S ring 0 after S2M rings 0 and 1 is fine (index counts per direction)."""
    with Peer(ns=2, nm=1) as p:
        srv = make_server()
        p.up_to_config(srv)
        p.feed_all_rings(srv)
        outs = srv.receive(MsgConnect().encode())
        assert isinstance(outs[0], Established)
        outs[0].session.close()


def test_server_refuses_ring_outside_region() -> None:
    with Peer() as p:
        size = p.layout.region_size
        ring = p.layout.ring_stride
        srv = make_server()
        p.up_to_config(srv)
        outs = srv.receive(p.add_ring(RingType.S2M, 0, offset=size - ring + 8), [new_efd()])
        assert_refused(outs, f"ring at offset {size - ring + 8} ({ring} bytes) exceeds region 0 "
                       f"of {size} bytes")


@pytest.mark.parametrize("offset", [0xFFFFFFF8, 1 << 31])
def test_server_refuses_ring_far_outside_region(offset: int) -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        assert_refused(srv.receive(p.add_ring(RingType.S2M, 0, offset=offset), [new_efd()]),
                       "exceeds region 0", exact=False)


def test_server_refuses_ring_exactly_at_end_plus_one_slot() -> None:
    """A ring whose log2 claims more descriptors than fit (the VPP client bug of §5.2)."""
    with Peer(ns=1, nm=1, log2=4, bsize=64) as p:
        srv = make_server()
        p.up_to_config(srv)
        # a ring at the last ring position announcing log2 12 runs past the 4-descriptor buffers
        outs = srv.receive(p.add_ring(RingType.S2M, 0, offset=p.layout.ring_stride, log2=12),
                           [new_efd()])
        assert_refused(outs, "exceeds region 0", exact=False)


def test_server_accepts_ring_that_ends_exactly_at_region_end() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        end = p.layout.region_size - p.layout.ring_stride
        assert decoded(srv.receive(p.add_ring(RingType.S2M, 0, offset=end), [new_efd()])) == [
            MsgAck()]
        srv.close("done")


def test_server_refuses_ring_in_unknown_region() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        assert_refused(srv.receive(p.add_ring(RingType.S2M, 0, region=1), [new_efd()]),
                       "ring references unknown region 1")


def test_server_refuses_misaligned_ring() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        assert_refused(srv.receive(p.add_ring(RingType.S2M, 0, offset=4), [new_efd()]),
                       "misaligned ring offset 4")


def test_server_refuses_log2_above_14() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        assert_refused(srv.receive(p.add_ring(RingType.S2M, 0, log2=15), [new_efd()]),
                       "log2 ring size 15 above the advertised 14")


@pytest.mark.parametrize("delta", [0, 8, 16, -8, -120])
def test_server_refuses_overlapping_rings(delta: int) -> None:
    with Peer(ns=2) as p:
        srv = make_server()
        p.up_to_config(srv)
        base = p.layout.ring_stride  # S2M ring 0 placed at the second slot
        assert decoded(srv.receive(p.add_ring(RingType.S2M, 0, offset=base), [new_efd()])) == [
            MsgAck()]
        assert_refused(srv.receive(p.add_ring(RingType.S2M, 1, offset=base + delta), [new_efd()]),
                       "ring overlaps another ring")


def test_server_refuses_overlap_across_directions() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        assert decoded(srv.receive(p.add_ring(RingType.S2M, 0), [new_efd()])) == [MsgAck()]
        assert_refused(srv.receive(p.add_ring(RingType.M2S, 0, offset=0), [new_efd()]),
                       "ring overlaps another ring")


def test_adjacent_rings_do_not_overlap() -> None:
    with Peer(ns=2) as p:
        srv = make_server()
        p.up_to_config(srv)
        s = p.layout.ring_stride
        for index, offset in ((0, s), (1, 0)):
            outs = srv.receive(p.add_ring(RingType.S2M, index, offset=offset), [new_efd()])
            assert decoded(outs) == [MsgAck()]
        srv.close("done")


@pytest.mark.parametrize("which, reason", [(RingType.S2M, "wrong cookie on rx ring 0"),
                                           (RingType.M2S, "wrong cookie on tx ring 0")])
def test_server_refuses_wrong_cookie(which: RingType, reason: str) -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        p.feed_all_rings(srv)
        off = p.layout.ring_offset(which, 0)
        struct.pack_into("<I", p.region.mm, off, 0x03E31F21)
        assert_refused(srv.receive(MsgConnect().encode()), reason)


def test_server_refuses_wrong_cookie_on_second_ring() -> None:
    with Peer(ns=1, nm=3) as p:
        srv = make_server()
        p.up_to_config(srv)
        p.feed_all_rings(srv)
        struct.pack_into("<I", p.region.mm, p.layout.ring_offset(RingType.M2S, 2), 0)
        assert_refused(srv.receive(MsgConnect().encode()), "wrong cookie on tx ring 2")


def test_server_refuses_inconsistent_initial_indices() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        p.feed_all_rings(srv)
        lay = RingLayout.for_cache_line(64)
        struct.pack_into("<H", p.region.mm, lay.head, 17)  # R = 16
        assert_refused(srv.receive(MsgConnect().encode()), "ring indices inconsistent at connect")


@pytest.mark.parametrize("ns, nm", [(0, 0), (1, 0), (0, 1)])
def test_server_refuses_connect_without_rings(ns: int, nm: int) -> None:
    with Peer(ns=max(ns, 1), nm=max(nm, 1)) as p:
        srv = make_server()
        p.up_to_config(srv)
        if ns:
            srv.receive(p.add_ring(RingType.S2M, 0), [new_efd()])
        if nm:
            srv.receive(p.add_ring(RingType.M2S, 0), [new_efd()])
        assert_refused(srv.receive(MsgConnect().encode()),
                       "at least one ring per direction is required")


@pytest.mark.parametrize("t", [0, 9, 0x1234, 0xFFFF])
def test_server_refuses_unknown_type(t: int) -> None:
    srv = make_server()
    srv.start()
    assert_refused(srv.receive(struct.pack("<H", t) + bytes(126)),
                   f"unknown message type (0x{t:x})")


@pytest.mark.parametrize("size", [0, 1, 127, 129, 4096])
def test_server_refuses_wrong_size(size: int) -> None:
    srv = make_server()
    srv.start()
    assert_refused(srv.receive(b"\x03" * size),
                   f"invalid message size {size} (a control message is 128 bytes)")


def test_server_refuses_wrong_size_with_fd_and_closes_it() -> None:
    srv = make_server()
    srv.start()
    assert_refused(srv.receive(b"\x04" * 100, [new_efd(), new_efd()]), "invalid message size",
                   exact=False)


def test_server_refuses_truncated() -> None:
    with Peer() as p:
        srv = make_server()
        srv.start()
        srv.receive(p.init())
        assert_refused(srv.receive(p.add_region(), p.region_fd(), truncated=True),
                       "truncated message or control data")


@pytest.mark.parametrize("state", ["init", "region", "ring", "connect"])
def test_server_refuses_extra_fds(state: str) -> None:
    with Peer() as p:
        srv = make_server()
        srv.start()
        if state != "init":
            srv.receive(p.init())
        data, fds = {
            "init": lambda: (p.init(), [new_efd()]),
            "region": lambda: (p.add_region(), p.region_fd() + p.region_fd()),
            "ring": lambda: (p.add_ring(RingType.S2M, 0), [new_efd(), new_efd(), new_efd()]),
            "connect": lambda: (MsgConnect().encode(), [new_efd()]),
        }[state]()
        name = {"init": "INIT", "region": "ADD_REGION", "ring": "ADD_RING",
                "connect": "CONNECT"}[state]
        assert_refused(srv.receive(data, fds),
                       f"{len(fds)} file descriptors attached to a {name} message")


@pytest.mark.parametrize("kind", ["pipe", "memfd", "devnull", "socket"])
def test_server_refuses_non_eventfd_ring_fd(kind: str) -> None:
    import socket

    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        extra: list[int] = []
        if kind == "pipe":
            r, w = os.pipe()
            fd, extra = r, [w]
        elif kind == "memfd":
            fd = os.memfd_create("notefd", os.MFD_CLOEXEC)
        elif kind == "devnull":
            fd = os.open(os.devnull, os.O_RDWR)
        else:
            a, b = socket.socketpair()
            fd = a.detach()
            b.close()
        assert_refused(srv.receive(p.add_ring(RingType.S2M, 0), [fd]),
                       "ring interrupt fd is not an eventfd")
        for e in extra:
            os.close(e)


def test_server_refuses_unsealed_memfd_when_required() -> None:
    with Peer(sealed=False) as p:
        srv = make_server({0: Target(require_seal=True)})
        srv.start()
        srv.receive(p.init())
        assert_refused(srv.receive(p.add_region(), p.region_fd()),
                       "region fd is not sealed against shrinking (F_SEAL_SHRINK)")


def test_server_accepts_unsealed_memfd_when_permissive() -> None:
    with Peer(sealed=False) as p:
        srv = make_server({0: Target(require_seal=False)})
        p.up_to_config(srv)
        p.feed_all_rings(srv)
        outs = srv.receive(MsgConnect().encode())
        assert isinstance(outs[0], Established)
        outs[0].session.close()


@pytest.mark.parametrize("kind, reason", [
    ("small", "exceeds its file"),
    ("zero", "invalid region size 0"),
    ("huge", "invalid region size"),
    ("pipe", "region fd is not a shared-memory file"),
    ("eventfd", "region fd is not a shared-memory file"),
])
def test_server_refuses_bad_region(kind: str, reason: str) -> None:
    with Peer() as p:
        srv = make_server()
        srv.start()
        srv.receive(p.init())
        extra: list[int] = []
        size = p.layout.region_size
        if kind == "small":
            size += 4096
            fds = p.region_fd()
        elif kind == "zero":
            size, fds = 0, p.region_fd()
        elif kind == "huge":
            size, fds = (1 << 32) + 1, p.region_fd()
        elif kind == "pipe":
            r, w = os.pipe()
            fds, extra = [r], [w]
        else:
            fds = [new_efd()]
        assert_refused(srv.receive(p.add_region(size=size), fds), reason, exact=False)
        for e in extra:
            os.close(e)


def test_server_refuses_regions_above_total_limit() -> None:
    with Peer() as p:
        srv = make_server(max_total_region_size=p.layout.region_size - 1)
        srv.start()
        srv.receive(p.init())
        assert_refused(srv.receive(p.add_region(), p.region_fd()), "regions too large")


def test_server_accepts_several_regions_and_rings_in_region_1() -> None:
    """Rings may live in any region the peer announced (libmemif/zero-copy layouts)."""
    with Peer() as p, Peer() as q:
        srv = make_server()
        p.up_to_config(srv)
        assert decoded(srv.receive(q.add_region(index=1), q.region_fd())) == [MsgAck()]
        outs = srv.receive(q.add_ring(RingType.S2M, 0, region=1), [new_efd()])
        assert decoded(outs) == [MsgAck()]
        assert decoded(srv.receive(p.add_ring(RingType.M2S, 0), [new_efd()])) == [MsgAck()]
        outs = srv.receive(MsgConnect().encode())
        session = outs[0].session  # type: ignore[union-attr]
        assert len(session.regions) == 2
        assert session.rx[0].region_index == 1 and session.tx[0].region_index == 0
        session.close()


def test_server_refuses_messages_after_connect() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        p.feed_all_rings(srv)
        outs = srv.receive(MsgConnect().encode())
        session = outs[0].session  # type: ignore[union-attr]
        assert srv.receive(ACK) == []
        assert srv.receive(ACK, [new_efd()])[-1] == Closed(
            "1 file descriptors attached to a ACK message", False)
        session.close()
    for msg, fds in ((MsgInit(id=0).encode(), []), (MsgConnect().encode(), []),
                     (MsgAddRegion(1, 4096).encode(), "region")):
        with Peer() as p:
            srv = make_server()
            p.up_to_config(srv)
            p.feed_all_rings(srv)
            session = srv.receive(MsgConnect().encode())[0].session  # type: ignore[union-attr]
            fdl = p.region_fd() if fds == "region" else []
            name = decode_message(msg).TYPE.name
            assert_refused(srv.receive(msg, fdl), f"unexpected message {name}")
            # the session stays valid (the interface owns it) until closed
            assert not session.closed
            assert session.rx[0].cookie_ok()
            session.close()


# ---------------------------------------------------------------------------
# Client refusals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("lo, hi", [(0x0201, 0x0300), (0x0100, 0x01FF), (0x0300, 0x0100),
                                    (0, 0), (0xFFFF, 0xFFFF)])
def test_client_refuses_incompatible_hello(lo: int, hi: int) -> None:
    cli = ClientHandshake(ClientConfig(id=0))
    assert_refused(cli.receive(MsgHello(min_version=lo, max_version=hi).encode()),
                   "incompatible protocol version")
    assert cli.state is ClientState.CLOSED
    assert cli.layout is None


def test_client_refuses_hello_with_log2_zero() -> None:
    cli = ClientHandshake(ClientConfig(id=0))
    assert_refused(cli.receive(MsgHello(max_log2_ring_size=0).encode()),
                   "peer's maximum ring size (log2 0) is too small")


@pytest.mark.parametrize("msg", [MsgAck(), MsgConnected(b"x"), MsgInit(id=0), MsgConnect(),
                                 MsgAddRegion(0, 10), MsgAddRing(1, 0, 0, 0, 4)])
def test_client_refuses_unexpected_first_message(msg: object) -> None:
    cli = ClientHandshake(ClientConfig(id=0))
    name = msg.TYPE.name  # type: ignore[attr-defined]
    assert_refused(cli.receive(msg.encode()), f"unexpected message {name}")  # type: ignore[attr-defined]


@pytest.mark.parametrize("msg", [MsgHello(), MsgConnected(b"x"), MsgInit(id=0)])
def test_client_refuses_unexpected_while_waiting_for_ack(msg: object) -> None:
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    cli.receive(MsgHello().encode())
    cli.receive(ACK)  # ADD_REGION sent
    name = msg.TYPE.name  # type: ignore[attr-defined]
    assert_refused(cli.receive(msg.encode()), f"unexpected message {name}")  # type: ignore[attr-defined]
    assert cli.state is ClientState.CLOSED


def test_client_refuses_unexpected_after_connected() -> None:
    srv = make_server()
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    tr = pump(srv, cli)
    ss, cs = tr.session("s"), tr.session("c")
    try:
        assert cli.state is ClientState.CONNECTED
        assert cli.receive(ACK) == []
        assert_refused(cli.receive(MsgConnected().encode()), "unexpected message CONNECTED")
        assert not cs.closed  # the session belongs to the interface
    finally:
        ss.close()
        cs.close()


@pytest.mark.parametrize("msg", [MsgAddRegion(0, 4096), MsgAddRing(1, 0, 0, 0, 4)])
def test_client_refuses_fd_carrying_message(msg: object) -> None:
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    cli.receive(MsgHello().encode())
    fd = new_efd()
    outs = cli.receive(msg.encode(), [fd])  # type: ignore[attr-defined]
    assert outs[-1].by_peer is False  # type: ignore[union-attr]
    with pytest.raises(OSError):
        os.fstat(fd)


def test_client_refuses_fd_with_hello() -> None:
    cli = ClientHandshake(ClientConfig(id=0))
    fd = new_efd()
    assert_refused(cli.receive(MsgHello().encode(), [fd]),
                   "1 file descriptors attached to a HELLO message")
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.parametrize("data, reason", [
    (b"\x02\x00" * 10, "invalid message size 20 (a control message is 128 bytes)"),
    (b"\x09" + bytes(127), "unknown message type (0x9)"),
])
def test_client_refuses_malformed(data: bytes, reason: str) -> None:
    cli = ClientHandshake(ClientConfig(id=0))
    assert_refused(cli.receive(data), reason)


def test_client_refuses_truncated() -> None:
    cli = ClientHandshake(ClientConfig(id=0))
    assert_refused(cli.receive(MsgHello().encode(), truncated=True),
                   "truncated message or control data")


def test_client_refused_by_server_secret() -> None:
    srv = make_server({3: Target(secret=b"abc")})
    cli = ClientHandshake(ClientConfig(id=3, secret=b"abd", log2_ring_size=2))
    tr = pump(srv, cli)
    assert tr.closed("s") == Closed("incorrect secret", False)
    assert tr.closed("c") == Closed("incorrect secret", True)
    assert cli.state is ClientState.CLOSED and srv.state is ServerState.CLOSED


# ---------------------------------------------------------------------------
# DISCONNECT, EOF, timeout, close
# ---------------------------------------------------------------------------


def test_disconnect_reason_propagates_to_server() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        srv.receive(p.add_ring(RingType.S2M, 0), [new_efd()])
        outs = srv.receive(MsgDisconnect(3, b"going away").encode())
        assert outs == [Closed("going away", True)]
        assert srv.state is ServerState.CLOSED


def test_disconnect_with_garbage_after_nul_and_fds() -> None:
    srv = make_server()
    srv.start()
    data = bytearray(MsgDisconnect(0, b"bye").encode())
    data[10:100] = b"\xff" * 90
    assert srv.receive(bytes(data), [new_efd(), new_efd()]) == [Closed("bye", True)]


def test_disconnect_with_invalid_utf8() -> None:
    cli = ClientHandshake(ClientConfig(id=0))
    assert cli.receive(MsgDisconnect(0, b"bad \xff\xfe").encode()) == [
        Closed("bad \ufffd\ufffd", True)]


def test_empty_disconnect() -> None:
    cli = ClientHandshake(ClientConfig(id=0))
    assert cli.receive(MsgDisconnect().encode()) == [Closed("peer disconnected", True)]


@pytest.mark.parametrize("stage", range(7))
def test_disconnect_reason_propagates_to_client_at_every_stage(stage: int) -> None:
    cli = ClientHandshake(ClientConfig(id=0, num_queue_pairs=2, log2_ring_size=2))
    if stage:
        cli.receive(MsgHello().encode())
    for _ in range(stage - 1):
        cli.receive(ACK)
    reason = b"x" * 95
    assert cli.receive(MsgDisconnect(0, reason).encode()) == [Closed("x" * 95, True)]
    assert cli.state is ClientState.CLOSED


def test_disconnect_after_established_keeps_session() -> None:
    srv = make_server()
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    tr = pump(srv, cli)
    ss, cs = tr.session("s"), tr.session("c")
    try:
        assert srv.receive(MsgDisconnect(0, b"later").encode()) == [Closed("later", True)]
        assert cli.receive(MsgDisconnect(0, b"bye").encode()) == [Closed("bye", True)]
        # the machines do not free what they handed over
        assert not ss.closed and not cs.closed
        assert not any(r.closed for r in (*ss.regions, *cs.regions))
        assert all(r.fd >= 0 for r in cs.regions)  # the client's own region keeps its fd
        assert ss.rx[0].cookie_ok() and cs.tx[0].cookie_ok()
    finally:
        ss.close()
        cs.close()
    assert all(r.fd == -1 and r.closed for r in (*ss.regions, *cs.regions))


def test_server_eof() -> None:
    srv = make_server()
    srv.start()
    assert srv.eof() == [Closed("peer closed the connection", True)]
    assert srv.eof() == []


def test_server_eof_during_config_releases_everything() -> None:
    with Peer() as p:
        srv = make_server()
        p.up_to_config(srv)
        srv.receive(p.add_ring(RingType.S2M, 0), [new_efd()])
        assert srv.eof() == [Closed("peer closed the connection", True)]


def test_client_eof_before_hello() -> None:
    cli = ClientHandshake(ClientConfig(id=0))
    assert cli.eof() == [Closed("peer closed the connection", True)]


def test_client_eof_before_init_ack() -> None:
    """EOF in answer to INIT (VPP closes without DISCONNECT on a version mismatch)."""
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    cli.receive(MsgHello().encode())
    (closed,) = cli.eof()
    assert isinstance(closed, Closed) and closed.by_peer
    assert closed.reason == "peer closed the connection during the handshake"


def test_client_eof_right_after_init_ack_hints_unknown_id() -> None:
    """§11.11: libmemif answers an unknown id with ACK then EOF."""
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    cli.receive(MsgHello().encode())
    cli.receive(ACK)  # INIT acknowledged, ADD_REGION sent
    (closed,) = cli.eof()
    assert isinstance(closed, Closed) and closed.by_peer
    assert closed.reason == ("peer closed the connection during the handshake "
                             "(unknown interface id?)")


def test_client_eof_later_in_handshake() -> None:
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    cli.receive(MsgHello().encode())
    cli.receive(ACK)
    cli.receive(ACK)  # region acknowledged, first ring sent
    (closed,) = cli.eof()
    assert closed == Closed("peer closed the connection during the handshake", True)


def test_client_eof_while_waiting_for_connected() -> None:
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    cli.receive(MsgHello().encode())
    for _ in range(4):
        cli.receive(ACK)
    assert cli.state is ClientState.WAIT_CONNECTED
    (closed,) = cli.eof()
    assert isinstance(closed, Closed) and closed.by_peer
    assert "closed" in closed.reason


def test_eof_after_established() -> None:
    srv = make_server()
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    tr = pump(srv, cli)
    ss, cs = tr.session("s"), tr.session("c")
    try:
        assert srv.eof() == [Closed("peer closed the connection", True)]
        assert cli.eof() == [Closed("peer closed the connection", True)]
        assert not ss.closed and not cs.closed
    finally:
        ss.close()
        cs.close()


@pytest.mark.parametrize("stage", range(6))
def test_server_timeout_before_established(stage: int) -> None:
    with Peer() as p:
        srv = make_server()
        srv.start()
        steps: list[Callable[[], object]] = [
                 lambda: srv.receive(p.init()),
                 lambda: srv.receive(p.add_region(), p.region_fd()),
                 lambda: srv.receive(p.add_ring(RingType.S2M, 0), [new_efd()]),
                 lambda: srv.receive(p.add_ring(RingType.M2S, 0), [new_efd()])]
        for step in steps[:min(stage, 4)]:
            step()
        assert_refused(srv.timeout(), "handshake timeout")
        assert srv.timeout() == []
        assert srv.state is ServerState.CLOSED


@pytest.mark.parametrize("stage", range(7))
def test_client_timeout_before_established(stage: int) -> None:
    cli = ClientHandshake(ClientConfig(id=0, num_queue_pairs=2, log2_ring_size=2))
    if stage:
        cli.receive(MsgHello().encode())
    for _ in range(stage - 1):
        cli.receive(ACK)
    assert_refused(cli.timeout(), "handshake timeout")
    assert cli.state is ClientState.CLOSED
    assert cli.timeout() == [] and cli.eof() == []


def test_timeout_after_established_is_ignored() -> None:
    srv = make_server()
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    tr = pump(srv, cli)
    ss, cs = tr.session("s"), tr.session("c")
    try:
        assert srv.timeout() == [] and cli.timeout() == []
        assert srv.state is ServerState.CONNECTED and cli.state is ClientState.CONNECTED
        assert not ss.closed and not cs.closed
    finally:
        ss.close()
        cs.close()


def test_local_close() -> None:
    srv = make_server()
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    tr = pump(srv, cli)
    ss, cs = tr.session("s"), tr.session("c")
    try:
        outs = srv.close("interface deleted")
        assert_refused(outs, "interface deleted")
        assert cli.receive(outs[0].data) == [Closed("interface deleted", True)]  # type: ignore[union-attr]
        assert srv.close("twice") == []
    finally:
        ss.close()
        cs.close()


def test_local_close_with_long_reason_is_truncated_on_the_wire() -> None:
    cli = ClientHandshake(ClientConfig(id=0))
    outs = cli.close("r" * 300)
    assert outs[-1] == Closed("r" * 300, False)
    assert decode_message(outs[0].data) == MsgDisconnect(0, b"r" * 95)  # type: ignore[union-attr]


def test_client_close_mid_handshake_releases_memory() -> None:
    cli = ClientHandshake(ClientConfig(id=0, num_queue_pairs=3, log2_ring_size=3))
    cli.receive(MsgHello().encode())
    cli.receive(ACK)
    cli.receive(ACK)
    assert cli._regions and cli._held_fds  # created at HELLO
    fds = [cli._regions[0].fd, *cli._held_fds]
    cli.close("bye")
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


# ---------------------------------------------------------------------------
# fd accounting: each fd handed to a machine is closed exactly once
# ---------------------------------------------------------------------------


@pytest.fixture
def close_log(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    log: list[int] = []
    real = os.close

    def spy(fd: int) -> None:
        log.append(fd)
        real(fd)

    monkeypatch.setattr(os, "close", spy)
    return log


def test_client_closes_unexpected_fd_exactly_once(close_log: list[int]) -> None:
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=2))
    cli.receive(MsgHello().encode())
    fd = new_efd()
    outs = cli.receive(MsgAddRing(1, 0, 0, 0, 2).encode(), [fd])
    assert isinstance(outs[-1], Closed)
    assert close_log.count(fd) == 1, "an fd closed twice may close an unrelated file"


@pytest.mark.parametrize("case", ["bad-region", "non-eventfd", "extra", "before-init"])
def test_server_closes_each_fd_exactly_once(case: str, close_log: list[int]) -> None:
    with Peer() as p:
        srv = make_server()
        srv.start()
        if case != "before-init":
            srv.receive(p.init())
        if case == "bad-region":
            fds = p.region_fd()
            srv.receive(p.add_region(size=p.layout.region_size * 2), fds)
        elif case == "non-eventfd":
            srv.receive(p.add_region(), p.region_fd())
            close_log.clear()  # the region fd, closed once mapped: its number may be reused
            fds = [os.memfd_create("x", os.MFD_CLOEXEC)]
            srv.receive(p.add_ring(RingType.S2M, 0), fds)
        elif case == "extra":
            fds = [new_efd(), new_efd()]
            srv.receive(p.add_ring(RingType.S2M, 0), fds)
        else:
            fds = p.region_fd()
            srv.receive(p.add_region(), fds)
        assert srv.closed
        for fd in fds:
            assert close_log.count(fd) == 1


def test_region_fd_closed_once_on_teardown(close_log: list[int]) -> None:
    with Peer() as p:
        srv = make_server()
        srv.start()
        srv.receive(p.init())
        fds = p.region_fd()
        srv.receive(p.add_region(), fds)
        assert close_log == fds  # closed once mapped: the mapping does not need it
        close_log.clear()
        efd = new_efd()  # (may reuse the region fd's number)
        srv.receive(p.add_ring(RingType.S2M, 0), [efd])
        srv.eof()
        assert close_log == [efd]  # and never again at teardown


def test_violation_raised_by_handlers_is_a_protocol_violation() -> None:
    """Sanity: the machines turn violations into outputs, never raise them."""
    srv = make_server()
    srv.start()
    try:
        srv.receive(b"")
    except ProtocolViolation:  # pragma: no cover - would be the bug
        pytest.fail("receive() raised instead of returning outputs")


# ---------------------------------------------------------------------------
# The transition tables are the machines
# ---------------------------------------------------------------------------

#: one message of every type a peer may send in the handshake (DISCONNECT is rule 4)
SAMPLES: dict[MsgType, bytes] = {
    MsgType.ACK: ACK, MsgType.HELLO: MsgHello().encode(), MsgType.INIT: MsgInit(id=0).encode(),
    MsgType.ADD_REGION: MsgAddRegion(0, 4096).encode(),
    MsgType.ADD_RING: MsgAddRing(1, 0, 0, 0, 4).encode(),
    MsgType.CONNECT: MsgConnect(b"c").encode(), MsgType.CONNECTED: MsgConnected(b"s").encode(),
}


def test_tables_name_every_state_and_closed_is_final() -> None:
    assert set(SERVER_TRANSITIONS) == set(ServerState)
    assert set(CLIENT_TRANSITIONS) == set(ClientState)
    assert SERVER_TRANSITIONS[ServerState.CLOSED] == {}
    assert CLIENT_TRANSITIONS[ClientState.CLOSED] == {}
    for table in (SERVER_TRANSITIONS, CLIENT_TRANSITIONS):
        for row in table.values():
            assert all(isinstance(way, Way) and t is not MsgType.DISCONNECT for way, t in row)


def server_in(state: ServerState, p: Peer) -> tuple[ServerHandshake, list[Session]]:
    srv = make_server()
    sessions: list[Session] = []
    srv.start()
    if state is not ServerState.WAIT_INIT:
        p.up_to_config(srv)
    if state is ServerState.CONNECTED:
        p.feed_all_rings(srv)
        outs = srv.receive(MsgConnect(b"p").encode())
        sessions = [o.session for o in outs if isinstance(o, Established)]
    assert srv.state is state
    return srv, sessions


def client_in(state: ClientState) -> tuple[ClientHandshake, list[Session]]:
    if state is ClientState.CONNECTED:
        srv, cli = make_server(), ClientHandshake(ClientConfig(id=0, log2_ring_size=3))
        tr = pump(srv, cli)
        return cli, [tr.session("s"), tr.session("c")]
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=3))
    if state is not ClientState.WAIT_HELLO:
        cli.receive(MsgHello().encode())  # INIT sent
    if state is ClientState.WAIT_CONNECTED:
        for _ in range(4):  # ADD_REGION, ADD_RING x2, CONNECT
            cli.receive(ACK)
    assert cli.state is state
    return cli, []


@pytest.mark.parametrize("state", list(ServerState)[:-1], ids=lambda s: s.name)
@pytest.mark.parametrize("t", list(SAMPLES), ids=lambda t: t.name)
def test_server_accepts_exactly_what_its_table_lists(state: ServerState, t: MsgType) -> None:
    """Rule 1: a message is refused as unexpected iff its state's row has no entry for it."""
    with Peer() as p:
        srv, sessions = server_in(state, p)
        try:
            outs = srv.receive(SAMPLES[t])
            sessions += [o.session for o in outs if isinstance(o, Established)]
            unexpected = [o for o in outs if isinstance(o, Closed)
                          and o.reason == f"unexpected message {t.name}"]
            listed = (RECEIVED, t) in SERVER_TRANSITIONS[state]
            assert bool(unexpected) is not listed, outs
            if listed and not any(isinstance(o, Closed) for o in outs):
                assert srv.state is SERVER_TRANSITIONS[state][(RECEIVED, t)]
        finally:
            srv.close("end")
            for s in sessions:
                s.close()


@pytest.mark.parametrize("state", list(ClientState)[:-1], ids=lambda s: s.name)
@pytest.mark.parametrize("t", list(SAMPLES), ids=lambda t: t.name)
def test_client_accepts_exactly_what_its_table_lists(state: ClientState, t: MsgType) -> None:
    cli, sessions = client_in(state)
    try:
        outs = cli.receive(SAMPLES[t])
        sessions += [o.session for o in outs if isinstance(o, Established)]
        unexpected = [o for o in outs if isinstance(o, Closed)
                      and o.reason == f"unexpected message {t.name}"]
        listed = (RECEIVED, t) in CLIENT_TRANSITIONS[state]
        assert bool(unexpected) is not listed, outs
        if listed:
            assert not any(isinstance(o, Closed) for o in outs), outs
    finally:
        cli.close("end")
        for s in sessions:
            s.close()


def test_client_moves_to_wait_connected_when_it_sends_connect() -> None:
    """Rule 3: the one transition a send makes, taken when CONNECT goes out."""
    assert CLIENT_TRANSITIONS[ClientState.WAIT_ACK][(SENT, MsgType.CONNECT)] \
        is ClientState.WAIT_CONNECTED
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=3))
    cli.receive(MsgHello().encode())
    sent = [decode_message(cli.receive(ACK)[0].data).TYPE  # type: ignore[union-attr]
            for _ in range(4)]
    assert sent == [MsgType.ADD_REGION, MsgType.ADD_RING, MsgType.ADD_RING, MsgType.CONNECT]
    assert cli.state is ClientState.WAIT_CONNECTED
    cli.close("end")


def test_client_clamps_log2_to_the_counters_limit() -> None:
    """A server advertising more than the u16 counters allow gets rings of log2 15 at most."""
    cli = ClientHandshake(ClientConfig(id=0, log2_ring_size=16, buffer_size=64))
    cli.receive(MsgHello(max_log2_ring_size=255).encode())
    assert cli.layout is not None and cli.layout.log2_ring_size == MAX_USABLE_LOG2_RING_SIZE
    cli.close("end")
