"""Property tests (hypothesis): hostile input never crashes, leaks or escapes shared memory.

* ``decode_message`` on arbitrary bytes raises only ``WireError``.
* Both handshake machines, fed arbitrary sequences of valid-looking or random
  messages with arbitrary fds (and EOF/timeout/close), return outputs and
  never raise; every fd handed to them ends up closed or in a Session.
* Ring readers and writers over arbitrary indices and descriptors raise only
  ``ProtocolViolation`` (writers also ``PacketTooLarge``), deliver exactly
  what an independent model of the reference says, and touch no byte they
  do not own.

Every test is bounded (``max_examples`` <= 200, no deadline).
"""

from __future__ import annotations

import mmap
import operator
import os
import struct
from dataclasses import dataclass
from functools import reduce
from itertools import pairwise
from typing import Any

from _harness import LeakGuard, Target
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from memif_aio.errors import PacketTooLarge, ProtocolViolation
from memif_aio.memory import ClientLayout, Region
from memif_aio.protocol import (
    ClientConfig,
    ClientHandshake,
    Closed,
    Established,
    InitAccepted,
    SendMessage,
    ServerConfig,
    ServerHandshake,
)
from memif_aio.ring import M2SConsumer, M2SProducer, S2MConsumer, S2MProducer, _Ring
from memif_aio.wire import (
    MSG_SIZE,
    MsgAck,
    MsgAddRegion,
    MsgAddRing,
    MsgConnect,
    MsgConnected,
    MsgDisconnect,
    MsgHello,
    MsgInit,
    RingLayout,
    RingType,
    WireError,
    decode_message,
)

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
S2M, M2S = RingType.S2M, RingType.M2S
DESC = struct.Struct("<HHIII")

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)


def LeakCheck() -> LeakGuard:
    """Per-example strict check of fds and memfd mappings (only reference cycles, which a
    ``gc.collect()`` at the check breaks, may excuse a leak)."""
    return LeakGuard(strict=True, exact_mappings=True, processes=False, dpdk=False,
                     collect=False)


# ---------------------------------------------------------------------------
# Wire
# ---------------------------------------------------------------------------


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=MSG_SIZE, max_size=MSG_SIZE),
    st.tuples(st.integers(0, 12), st.binary(min_size=126, max_size=126)).map(
        lambda t: struct.pack("<H", t[0]) + t[1]),
))
def test_decode_arbitrary_bytes_raises_only_wire_error(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except WireError:
        assert len(data) != MSG_SIZE or struct.unpack_from("<H", data)[0] not in range(1, 9)
        return
    # a 128-byte message of a known type always decodes, and its type matches
    assert len(data) == MSG_SIZE
    assert int(msg.TYPE) == struct.unpack_from("<H", data)[0]


names = st.binary(max_size=31).map(lambda b: b.replace(b"\0", b"_"))
secrets = st.binary(max_size=23).map(lambda b: b.replace(b"\0", b"_"))
reasons = st.binary(max_size=95).map(lambda b: b.replace(b"\0", b"_"))

messages = st.one_of(
    st.just(MsgAck()),
    st.builds(MsgHello, names, u16, u16, u16, u16, u16, u8),
    st.builds(MsgInit, u32, u8, secrets, names, u16),
    st.builds(MsgAddRegion, u16, u64),
    st.builds(MsgAddRing, u16, u16, u16, u32, u8, u16),
    st.builds(MsgConnect, names),
    st.builds(MsgConnected, names),
    st.builds(MsgDisconnect, u32, reasons),
)


@FUZZ
@given(messages, st.binary(max_size=128))
def test_message_round_trip_with_garbage_tail(msg: Any, garbage: bytes) -> None:
    data = msg.encode()
    assert len(data) == MSG_SIZE
    assert decode_message(data) == msg
    used = {MsgAck: 2, MsgHello: 45, MsgInit: 65, MsgAddRegion: 12, MsgAddRing: 15,
            MsgConnect: 34, MsgConnected: 34, MsgDisconnect: 102}[type(msg)]
    dirty = bytearray(data)
    tail = garbage[:MSG_SIZE - used]
    dirty[used:used + len(tail)] = tail
    assert decode_message(bytes(dirty)) == msg


# ---------------------------------------------------------------------------
# Handshake machines
# ---------------------------------------------------------------------------

LOG2 = 2
BSIZE = 64
LAYOUT = ClientLayout(1, 1, LOG2, BSIZE, RingLayout.for_cache_line(64))
REGION_SIZE = LAYOUT.region_size


TARGETS = {0: Target(), 1: Target(secret=b"pw"), 2: Target(require_seal=False, mode=1),
           3: Target(busy=True), 4: Target(cache_line_size=128)}

FD_KINDS = ["eventfd", "region", "memfd", "pipe", "devnull"]


class FdFactory:
    """Creates the fds a hostile peer attaches; keeps the ones that stay ours."""

    def __init__(self, region: Region) -> None:
        self.region = region
        self.ours: list[int] = []

    def make(self, kind: str) -> int:
        if kind == "eventfd":
            return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        if kind == "region":
            return os.dup(self.region.fd)
        if kind == "memfd":
            fd = os.memfd_create("fuzz", os.MFD_CLOEXEC)
            os.ftruncate(fd, REGION_SIZE)
            return fd
        if kind == "pipe":
            r, w = os.pipe()
            self.ours.append(w)
            return r
        return os.open(os.devnull, os.O_RDWR)

    def close(self) -> None:
        for fd in self.ours:
            os.close(fd)


valid_looking = st.one_of(
    st.builds(MsgInit, st.sampled_from(sorted(TARGETS)) | u32, st.sampled_from([0, 1]) | u8,
              st.sampled_from([b"", b"pw", b"px"]), names, st.sampled_from([0x0200]) | u16),
    st.builds(MsgAddRegion, st.sampled_from([0, 1]) | u16,
              st.sampled_from([REGION_SIZE, REGION_SIZE + 1, 0, 4096]) | u64),
    st.builds(MsgAddRing, st.sampled_from([0, 1]) | u16, st.sampled_from([0, 1]) | u16,
              st.sampled_from([0, 1]) | u16,
              st.sampled_from([LAYOUT.ring_offset(S2M, 0), LAYOUT.ring_offset(M2S, 0), 8,
                               REGION_SIZE - 64]) | u32,
              st.sampled_from([LOG2, 0, 14, 15]) | u8, st.sampled_from([0, 0, 8])),
    st.builds(MsgHello, names, st.sampled_from([0x0200, 0x0201]) | u16,
              st.sampled_from([0x0200, 0x01FF]) | u16, u16, st.sampled_from([0, 1, 255]) | u16,
              st.sampled_from([0, 1, 255]) | u16, st.sampled_from([0, 1, 2, 14]) | u8),
    st.just(MsgAck()), st.builds(MsgConnect, names), st.builds(MsgConnected, names),
    st.builds(MsgDisconnect, u32, reasons),
).map(lambda m: m.encode())

raw_bytes = st.one_of(
    st.binary(max_size=200),
    st.tuples(st.integers(0, 10), st.binary(min_size=126, max_size=126)).map(
        lambda t: struct.pack("<H", t[0]) + t[1]),
)

events = st.one_of(
    st.tuples(st.just("msg"), st.one_of(valid_looking, valid_looking, raw_bytes),
              st.lists(st.sampled_from(FD_KINDS), max_size=2),
              st.sampled_from([False, False, False, True])),
    st.tuples(st.just("eof")), st.tuples(st.just("timeout")), st.tuples(st.just("close")),
)


class OutputCheck:
    """Validates a machine's outputs as they come and keeps the sessions to close."""

    def __init__(self, is_server: bool) -> None:
        self.is_server = is_server
        self.sessions: list[Any] = []
        self.closed = False
        self.established = False

    def take(self, outs: list[Any]) -> None:
        assert isinstance(outs, list)
        for o in outs:
            assert not self.closed, f"output after Closed: {o!r}"
            if isinstance(o, SendMessage):
                assert isinstance(o.data, bytes) and len(o.data) == MSG_SIZE
                decode_message(o.data)
                if self.is_server:
                    assert o.fd is None
            elif isinstance(o, Established):
                assert not self.established
                self.established = True
                event("established")
                self.sessions.append(o.session)
            elif isinstance(o, Closed):
                assert isinstance(o.reason, str) and isinstance(o.by_peer, bool)
                self.closed = True
            else:
                assert isinstance(o, InitAccepted) and self.is_server

    def close_sessions(self) -> None:
        for s in self.sessions:
            s.close()


def _valid_server_prefix(peer_region: Region, fds: FdFactory) -> list[tuple[bytes, list[int]]]:
    return [
        (MsgInit(id=0, name=b"peer").encode(), []),
        (MsgAddRegion(0, REGION_SIZE).encode(), [os.dup(peer_region.fd)]),
        (MsgAddRing(1, 0, 0, LAYOUT.ring_offset(S2M, 0), LOG2).encode(), [fds.make("eventfd")]),
        (MsgAddRing(0, 0, 0, LAYOUT.ring_offset(M2S, 0), LOG2).encode(), [fds.make("eventfd")]),
        (MsgConnect(b"peer").encode(), []),
    ]


def _feed(machine: Any, check: OutputCheck, ev: tuple[Any, ...], fds: FdFactory) -> None:
    if ev[0] == "msg":
        _, data, kinds, truncated = ev
        fdl = [fds.make(k) for k in kinds]
        check.take(machine.receive(data, fdl, truncated=truncated))
    elif ev[0] == "eof":
        check.take(machine.eof())
    elif ev[0] == "timeout":
        check.take(machine.timeout())
    else:
        check.take(machine.close("local close"))


@FUZZ
@given(st.integers(0, 5), st.lists(events, max_size=8), st.booleans())
def test_server_machine_survives_anything(prefix: int, evs: list[Any], corrupt: bool) -> None:
    with LeakCheck():
        peer = Region.create(REGION_SIZE)
        LAYOUT.initialise(peer)
        if corrupt:  # a wrong cookie on the M2S ring
            struct.pack_into("<I", peer.mm, LAYOUT.ring_offset(M2S, 0), 0)
        fds = FdFactory(peer)
        srv = ServerHandshake(ServerConfig(lookup=TARGETS.get))
        check = OutputCheck(is_server=True)
        try:
            check.take(srv.start())
            steps = _valid_server_prefix(peer, fds)
            for data, fdl in steps[:prefix]:
                check.take(srv.receive(data, fdl))
            for _data, fdl in steps[prefix:]:  # prepared but unused
                for fd in fdl:
                    os.close(fd)
            for ev in evs:
                _feed(srv, check, ev, fds)
            check.take(srv.close("end of test"))
        finally:
            check.close_sessions()
            fds.close()
            peer.close()


hello_like = st.builds(
    MsgHello, names, st.sampled_from([0x0200, 0x0100]) | u16,
    st.sampled_from([0x0200, 0xFFFF]) | u16, u16, st.sampled_from([0, 1, 255]) | u16,
    st.sampled_from([0, 1, 255]) | u16,
    st.sampled_from([0, 1, 2, 3, 14, 255]),
).map(lambda m: m.encode())
client_events = st.one_of(
    st.tuples(st.just("msg"), st.one_of(hello_like, st.just(MsgAck().encode()),
                                        st.just(MsgAck().encode()), valid_looking, raw_bytes),
              st.lists(st.sampled_from(FD_KINDS), max_size=1),
              st.sampled_from([False, False, False, True])),
    st.tuples(st.just("eof")), st.tuples(st.just("timeout")), st.tuples(st.just("close")),
)


@FUZZ
@given(st.integers(0, 8), st.booleans(), st.lists(client_events, max_size=10), st.integers(1, 3),
       st.sampled_from([64, 128]))
def test_client_machine_survives_anything(acks: int, connected: bool, evs: list[Any], pairs: int,
                                          cache_line: int) -> None:
    with LeakCheck():
        dummy = Region.create(4096)
        fds = FdFactory(dummy)
        cli = ClientHandshake(ClientConfig(id=0, num_queue_pairs=pairs, log2_ring_size=2,
                                           buffer_size=64, cache_line=cache_line))
        check = OutputCheck(is_server=False)
        try:
            check.take(cli.start())
            # a valid HELLO first in most runs, so that later events reach deeper states
            check.take(cli.receive(MsgHello().encode()))
            for _ in range(acks):
                check.take(cli.receive(MsgAck().encode()))
            if connected:
                check.take(cli.receive(MsgConnected(b"srv").encode()))
            for ev in evs:
                _feed(cli, check, ev, fds)
            check.take(cli.close("end of test"))
        finally:
            check.close_sessions()
            fds.close()
            dummy.close()


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 127), st.integers(1, 255)),
    st.tuples(st.just("drop_fd")),
    st.tuples(st.just("extra_fd")),
    st.tuples(st.just("truncate"), st.integers(0, 127)),
    st.tuples(st.just("replace"), valid_looking),
    st.tuples(st.just("eof")),
    st.tuples(st.just("duplicate")),
)


@FUZZ
@given(st.integers(0, 14), mutations, st.integers(1, 2))
def test_machines_against_each_other_with_one_corrupted_message(at: int, mutation: Any,
                                                                 pairs: int) -> None:
    """A real client and a real server; one message in flight is corrupted."""
    with LeakCheck():
        srv = ServerHandshake(ServerConfig(lookup=TARGETS.get))
        cli = ClientHandshake(ClientConfig(id=0, num_queue_pairs=pairs, log2_ring_size=2,
                                           buffer_size=64))
        sc, cc = OutputCheck(True), OutputCheck(False)
        # in flight: (destination, data, fds). The fd is duplicated when the message is
        # produced, as sendmsg(SCM_RIGHTS) does, so it outlives a sender that closes.
        queue: list[tuple[str, bytes, list[int]]] = []

        def post(dest: str, outs: list[Any]) -> None:
            for o in outs:
                if isinstance(o, SendMessage):
                    queue.append((dest, o.data, [os.dup(o.fd)] if o.fd is not None else []))

        try:
            outs = srv.start()
            sc.take(outs)
            post("c", outs)
            step = 0
            mutated = False
            while queue and step < 40:
                dest, data, fdl = queue.pop(0)
                machine, check, other = (cli, cc, "s") if dest == "c" else (srv, sc, "c")
                truncated = False
                if step == at:
                    mutated = True
                    kind = mutation[0]
                    if kind == "flip":
                        b = bytearray(data)
                        b[mutation[1]] ^= mutation[2]
                        data = bytes(b)
                    elif kind == "drop_fd":
                        for fd in fdl:
                            os.close(fd)
                        fdl = []
                    elif kind == "extra_fd":
                        fdl.append(os.eventfd(0))
                    elif kind == "truncate":
                        data = data[:mutation[1]]
                        truncated = True
                    elif kind == "replace":
                        data = mutation[1]
                    elif kind == "eof":
                        for fd in fdl:
                            os.close(fd)
                        check.take(machine.eof())
                        step += 1
                        continue
                    else:  # duplicate
                        queue.insert(0, (dest, data, [os.dup(fd) for fd in fdl]))
                outs = machine.receive(data, fdl, truncated=truncated)
                check.take(outs)
                post(other, outs)
                step += 1
            if not mutated:
                # the exchange was shorter than `at`: an honest handshake, both ends up
                assert sc.established and cc.established and not (sc.closed or cc.closed)
                ss, cs = sc.sessions[0], cc.sessions[0]
                assert cs.tx[0].write_burst([b"ping"]) == 1
                out: list[bytes] = []
                assert ss.rx[0].read_burst(4, out) == 1 and bytes(out[0]) == b"ping"
            sc.take(srv.close("end"))
            cc.take(cli.close("end"))
        finally:
            for _d, _data, fdl in queue:  # never delivered
                for fd in fdl:
                    os.close(fd)
            sc.close_sessions()
            cc.close_sessions()


# ---------------------------------------------------------------------------
# Rings: an independent model of the reference's consumer rules (§7.3, §7.4, §12.7)
# ---------------------------------------------------------------------------

R = 8
RBSIZE = 64
RLAYOUT = ClientLayout(1, 1, 3, RBSIZE, RingLayout.for_cache_line(64))
RL = RLAYOUT.ring
S2M_OFF = RLAYOUT.ring_offset(S2M, 0)
M2S_OFF = RLAYOUT.ring_offset(M2S, 0)
S2M_BUFS = [RLAYOUT.buffer_offset(S2M, 0, j) for j in range(R)]
M2S_BUFS = [RLAYOUT.buffer_offset(M2S, 0, j) for j in range(R)]
MAIN_SIZE = RLAYOUT.region_size
EXTRA_SIZE = 300


def pattern(n: int, salt: int) -> bytes:
    return bytes(((p * 31) + (p >> 8) * 17 + salt) & 0xFF for p in range(n))


def new_regions(salt: int) -> list[Region]:
    main = Region.create(MAIN_SIZE)
    main.mm[:] = pattern(MAIN_SIZE, salt)
    extra = Region.create(EXTRA_SIZE)
    extra.mm[:] = pattern(EXTRA_SIZE, salt + 101)
    # rings: cookie and header, descriptors as the client initialises them
    for off in (S2M_OFF, M2S_OFF):
        main.mm[off:off + RL.desc] = bytes(RL.desc)
    RLAYOUT.initialise(main)
    return [main, extra]


def set_u16(region: Region, off: int, v: int) -> None:
    struct.pack_into("<H", region.mm, off, v & 0xFFFF)


def get_u16(region: Region, off: int) -> int:
    return int(struct.unpack_from("<H", region.mm, off)[0])


def desc_off(ring_off: int, slot: int) -> int:
    return ring_off + RL.desc + 16 * (slot & (R - 1))


def drop(rings: list[_Ring], regions: list[Region]) -> None:
    for r in rings:
        _Ring.release(r)
    for reg in regions:
        reg.close()


@dataclass
class Model:
    consumed: int  # slots consumed by complete packets
    incomplete: int  # trailing slots of a chain that does not end
    packets: list[Any]  # the concatenated segments, None = dropped


def parse(n: int, start: int, descs: list[tuple[int, int, int, int]], seg: Any) -> Model:
    """Group slots [start, start+n) into chains; ``seg(slot, desc)`` gives data or None."""
    pos = 0
    packets: list[bytes | None] = []
    while pos < n:
        j = pos
        parts: list[Any] = []
        ended = False
        while j < n:
            s = (start + j) & (R - 1)
            d = descs[s]
            parts.append(seg(s, d))
            j += 1
            if not d[0] & 1:
                ended = True
                break
        if not ended:
            return Model(pos, n - pos, packets)
        packets.append(None if any(p is None for p in parts) else reduce(operator.add, parts))
        pos = j
    return Model(n, 0, packets)


desc_strategy = st.tuples(
    st.sampled_from([0, 0, 0, 1, 1, 2, 0xFFFF, 0xFFFE]),
    st.sampled_from([0, 0, 0, 0, 1, 2, 0xFFFF]),
    st.one_of(st.integers(1, RBSIZE), st.sampled_from([0, RBSIZE + 1, 0xFFFF, 0x80000000,
                                                       0xFFFFFFFF]), st.integers(0, MAIN_SIZE)),
    st.one_of(st.sampled_from(S2M_BUFS + M2S_BUFS), st.integers(0, MAIN_SIZE + 16),
              st.sampled_from([0, MAIN_SIZE - 1, MAIN_SIZE, EXTRA_SIZE - 10, 0xFFFFFFF0,
                               0xFFFFFFFF]), u32),
)


def read_all(rx: Any, max_seq: list[int], out: list[Any]) -> None:
    """Call read_burst until nothing moves (bounded)."""
    i = 0
    for _ in range(40):
        before = rx.stats.packets + rx.stats.drops
        got = rx.read_burst(max_seq[i % len(max_seq)], out)
        i += 1
        if not got and rx.stats.packets + rx.stats.drops == before:
            return
    raise AssertionError("read_burst never settled")


@FUZZ
@given(u16, st.one_of(st.integers(0, R), st.integers(0, 0xFFFF)),
       st.lists(desc_strategy, min_size=R, max_size=R),
       st.lists(st.integers(1, 12), min_size=1, max_size=4), st.integers(0, 255))
def test_s2m_consumer_against_model(cur: int, delta: int, descs: list[Any], max_seq: list[int],
                                    salt: int) -> None:
    with LeakCheck():
        regions = new_regions(salt)
        main = regions[0]
        rings: list[_Ring] = []
        try:
            set_u16(main, S2M_OFF + RL.tail, cur)
            head = (cur + delta) & 0xFFFF
            set_u16(main, S2M_OFF + RL.head, head)
            for s, d in enumerate(descs):
                DESC.pack_into(main.mm, desc_off(S2M_OFF, s), *d, 0xA5A5A5A5)
            snap = [bytes(r.mm) for r in regions]
            rx = S2MConsumer(regions, 0, S2M_OFF, 3, RL)
            rings.append(rx)
            n = (head - cur) & 0xFFFF

            t = S2M_OFF + RL.tail
            # bytes the consumer itself may write: tail, and descriptor flags (see below)
            moving = set(range(t, t + 2))
            for slot in range(R):
                moving.update(range(desc_off(S2M_OFF, slot), desc_off(S2M_OFF, slot) + 2))

            def seg(_s: int, d: tuple[int, int, int, int]) -> tuple[int, ...] | None:
                _f, region, length, offset = d
                if region >= len(regions) or length == 0:
                    return None
                if offset + length > regions[region].size:
                    return None
                # a descriptor may point into our own ring, which we write while reading:
                # those bytes are wildcards
                return tuple(-1 if region == 0 and p in moving else snap[region][p]
                             for p in range(offset, offset + length))

            def same(got: list[bytes], want: list[tuple[int, ...]]) -> bool:
                return len(got) == len(want) and all(
                    len(g) == len(w) and all(x == -1 or x == y for x, y in zip(w, g))
                    for g, w in zip(got, want))

            out: list[Any] = []
            try:
                read_all(rx, max_seq, out)
                raised = False
            except ProtocolViolation:
                raised = True
            delivered = [bytes(p) for p in out]
            if n > R:
                assert raised and not delivered
                assert get_u16(main, S2M_OFF + RL.tail) == cur
                return
            model = parse(n, cur, [d[:4] for d in descs], seg)
            good = [p for p in model.packets if p is not None]
            if raised:
                # only a chain that cannot end in a full ring is an error
                assert n == R and model.incomplete > 0
                assert same(delivered, good[:len(delivered)])
            else:
                assert same(delivered, good)
                assert get_u16(main, S2M_OFF + RL.tail) == (cur + model.consumed) & 0xFFFF
                assert rx.stats.packets == len(good)
                assert rx.stats.bytes == sum(map(len, good))
                assert rx.stats.bad_descriptors == rx.stats.drops == len(model.packets) - len(good)
                assert rx.available() == model.incomplete
            # the server wrote nothing but tail, and (a deliberate deviation from §7.3, see
            # ring.py: DPDK leaves a stale NEXT bit) cleared the flags of slots it consumed
            after = bytearray(main.mm)
            after[t:t + 2] = snap[0][t:t + 2]
            for slot in range(R):
                f = desc_off(S2M_OFF, slot)
                if after[f:f + 2] != snap[0][f:f + 2]:
                    assert after[f:f + 2] == b"\0\0", f"flags of slot {slot} rewritten"
                    after[f:f + 2] = snap[0][f:f + 2]
            assert bytes(after) == snap[0]
            assert bytes(regions[1].mm) == snap[1]
        finally:
            drop(rings, regions)


@FUZZ
@given(st.lists(st.integers(1, 3 * RBSIZE), max_size=12),
       st.one_of(st.integers(0, R), st.integers(0, 0xFFFF)),
       st.lists(st.tuples(st.sampled_from([0, 0, 1, 1, 2, 0xFFFF]),
                          st.one_of(st.integers(0, RBSIZE + 1), u32),
                          u16, u32), min_size=R, max_size=R),
       st.lists(st.integers(1, 12), min_size=1, max_size=4), st.integers(0, 255))
def test_m2s_consumer_against_model(warmup: list[int], delta: int, filled: list[Any],
                                    max_seq: list[int], salt: int) -> None:
    with LeakCheck():
        regions = new_regions(salt)
        main = regions[0]
        rings: list[_Ring] = []
        try:
            crx = M2SConsumer(regions, 0, M2S_OFF, 3, RL, M2S_BUFS, RBSIZE)
            stx = M2SProducer(regions, 0, M2S_OFF, 3, RL)
            rings += [crx, stx]
            crx.refill()
            for size in warmup:  # move the indices with honest traffic
                assert stx.write_burst([pattern(size, salt + size)]) == 1
                got: list[Any] = []
                read_all(crx, [64], got)
                assert [bytes(p) for p in got] == [pattern(size, salt + size)]
            cons = get_u16(main, M2S_OFF + RL.tail)
            assert get_u16(main, M2S_OFF + RL.head) == (cons + R) & 0xFFFF
            base = (crx.stats.packets, crx.stats.bytes, crx.stats.drops)
            # a hostile server: arbitrary flags/length/region/offset, arbitrary tail
            for s, (flags, length, region, offset) in enumerate(filled):
                DESC.pack_into(main.mm, desc_off(M2S_OFF, s), flags, region, length, offset, 7)
            tail = (cons + delta) & 0xFFFF
            set_u16(main, M2S_OFF + RL.tail, tail)
            snap = bytes(main.mm)
            n = (tail - cons) & 0xFFFF

            def seg(s: int, d: tuple[int, int, int, int]) -> bytes | None:
                length = d[2]
                if not 0 < length <= RBSIZE:
                    return None
                return snap[M2S_BUFS[s]:M2S_BUFS[s] + length]  # our shadow, not d's offset

            out: list[Any] = []
            try:
                read_all(crx, max_seq, out)
                raised = False
            except ProtocolViolation:
                raised = True
            delivered = [bytes(p) for p in out]
            if n > R:
                assert raised and not delivered
                return
            descs = [(f, r, ln, o) for (f, ln, r, o) in filled]
            model = parse(n, cons, descs, seg)
            good = [p for p in model.packets if p is not None]
            if raised:
                assert n == R and model.incomplete > 0
                assert delivered == good[:len(delivered)]
            else:
                assert delivered == good
                assert crx.stats.packets - base[0] == len(good)
                assert crx.stats.bytes - base[1] == sum(map(len, good))
                assert crx.stats.drops - base[2] == len(model.packets) - len(good)
                assert crx.available() == model.incomplete
                new_cons = (cons + model.consumed) & 0xFFFF
                old_head = (cons + R) & 0xFFFF
                head = get_u16(main, M2S_OFF + RL.head)
                reposted = (head - old_head) & 0xFFFF
                assert reposted <= model.consumed
                if not model.incomplete:  # drained: every consumed slot is posted again
                    assert head == (new_cons + R) & 0xFFFF
                # reposted slots point at our own buffers again, with full capacity
                for k in range(reposted):
                    s = (old_head + k) & (R - 1)
                    f, r, ln, o, _m = DESC.unpack_from(main.mm, desc_off(M2S_OFF, s))
                    assert (f & 1, r, ln, o) == (0, 0, RBSIZE, M2S_BUFS[s])
            # the client wrote only inside its M2S ring (descriptors, head)
            ring_end = M2S_OFF + RL.ring_size(3)
            after = bytes(main.mm)
            assert after[:M2S_OFF] == snap[:M2S_OFF]
            assert after[ring_end:] == snap[ring_end:]
            assert after[M2S_OFF:M2S_OFF + RL.head] == snap[M2S_OFF:M2S_OFF + RL.head]
            assert after[M2S_OFF + RL.tail:M2S_OFF + RL.desc] == snap[
                M2S_OFF + RL.tail:M2S_OFF + RL.desc]
        finally:
            drop(rings, regions)


@FUZZ
@given(u16, st.one_of(st.integers(0, R), st.integers(0, 0xFFFF)),
       st.lists(st.tuples(st.sampled_from([0, 0, 0, 1, 2]),
                          st.one_of(st.sampled_from([RBSIZE, RBSIZE, 1, 10, 0]), u32),
                          st.one_of(st.sampled_from(M2S_BUFS + S2M_BUFS + [MAIN_SIZE - 5, 0,
                                                                           EXTRA_SIZE - 3]),
                                    u32)),
                min_size=R, max_size=R),
       st.lists(st.integers(1, 200), min_size=1, max_size=6), st.integers(0, 255))
def test_m2s_producer_touches_only_posted_buffers(tail: int, delta: int, posted: list[Any],
                                                  sizes: list[int], salt: int) -> None:
    with LeakCheck():
        regions = new_regions(salt)
        main = regions[0]
        rings: list[_Ring] = []
        try:
            head = (tail + delta) & 0xFFFF
            set_u16(main, M2S_OFF + RL.tail, tail)
            set_u16(main, M2S_OFF + RL.head, head)
            for s, (region, cap, offset) in enumerate(posted):
                DESC.pack_into(main.mm, desc_off(M2S_OFF, s), 0, region, cap, offset, 0x5A5A5A5A)
            snap = [bytes(r.mm) for r in regions]
            stx = M2SProducer(regions, 0, M2S_OFF, 3, RL)
            rings.append(stx)
            pkts = [pattern(n, salt + 3 * i) for i, n in enumerate(sizes)]
            free = (head - tail) & 0xFFFF
            written = 0
            try:
                for _ in range(len(pkts)):
                    n = stx.write_burst(pkts, written)
                    if not n:
                        break
                    written += n
                error: BaseException | None = None
            except (ProtocolViolation, PacketTooLarge) as exc:
                error = exc
                if isinstance(exc, PacketTooLarge):  # refused before anything is published
                    assert stx.stats.packets == written
                # a violation may come after part of the burst was published (the session
                # is torn down anyway): count what the ring says
                written = stx.stats.packets
            if free > R:
                assert isinstance(error, ProtocolViolation) and written == 0
            # the posted buffers (all of them count: a chain that did not fit was written,
            # then rolled back); a hostile client may post them over each other or over the
            # ring itself, which then only corrupts what it reads
            spans = sorted((posted[(tail + k) & (R - 1)][0], posted[(tail + k) & (R - 1)][2],
                            posted[(tail + k) & (R - 1)][1]) for k in range(min(free, R)))
            ring_end = M2S_OFF + RL.ring_size(3)
            over_ring = any(r == 0 and o < ring_end and o + c > M2S_OFF for r, o, c in spans)
            disjoint = not over_ring and all(
                a[0] != b[0] or a[1] + a[2] <= b[1] for a, b in pairwise(spans))
            # allowed changes: tail; flags/length of slots in [tail, tail+free);
            # bytes of the posted buffers of those slots, clamped to their region
            allowed = [set(), set()]  # type: ignore[var-annotated]
            allowed[0].update(range(M2S_OFF + RL.tail, M2S_OFF + RL.tail + 2))
            for k in range(min(free, R)):
                s = (tail + k) & (R - 1)
                d = desc_off(M2S_OFF, s)
                allowed[0].update(range(d, d + 2))  # flags
                allowed[0].update(range(d + 4, d + 8))  # length
                region, cap, offset = posted[s]
                if region < 2 and cap:
                    size = regions[region].size
                    allowed[region].update(range(offset, min(offset + cap, size)))
            for ri, reg in enumerate(regions):
                now = bytes(reg.mm)
                changed = [i for i in range(len(now)) if now[i] != snap[ri][i]]
                bad = [i for i in changed if i not in allowed[ri]]
                assert not bad, f"region {ri}: wrote outside what it owns at {bad[:8]}"
            if over_ring:
                return
            new_tail = get_u16(main, M2S_OFF + RL.tail)
            used = (new_tail - tail) & 0xFFFF
            assert used <= min(free, R)
            # read back what was published, as the client would: everything written is there
            # (with overlapping buffers only the lengths must add up)
            out: list[bytes] = []
            k = 0
            while k < used:
                parts = []
                while True:
                    s = (tail + k) & (R - 1)
                    f, _r, ln, _o, meta = DESC.unpack_from(main.mm, desc_off(M2S_OFF, s))
                    region, cap, offset = posted[s]
                    assert meta == 0x5A5A5A5A  # region/offset/metadata untouched
                    assert (_r, _o) == (region, offset)
                    assert 0 < ln <= cap
                    parts.append(bytes(regions[region].mm[offset:offset + ln]))
                    k += 1
                    assert k <= used, "a published chain runs past the new tail"
                    if not f & 1:
                        break
                out.append(b"".join(parts))
            assert [len(p) for p in out] == [len(p) for p in pkts[:written]]
            if disjoint:
                assert out == pkts[:written]
            assert stx.stats.packets == written
        finally:
            drop(rings, regions)


@FUZZ
@given(st.one_of(st.integers(0, R), st.integers(0, 0xFFFF)),
       st.lists(st.integers(1, 9 * RBSIZE), min_size=1, max_size=8), st.integers(0, 255))
def test_s2m_producer_with_hostile_tail(back: int, sizes: list[int], salt: int) -> None:
    """The server may write any tail: the client raises ProtocolViolation or stays in bounds."""
    with LeakCheck():
        regions = new_regions(salt)
        main = regions[0]
        rings: list[_Ring] = []
        try:
            tx = S2MProducer(regions, 0, S2M_OFF, 3, RL, S2M_BUFS, RBSIZE)
            rings.append(tx)
            set_u16(main, S2M_OFF + RL.tail, (-back) & 0xFFFF)  # head is 0
            snap = bytes(main.mm)
            pkts = [pattern(n, salt + i) for i, n in enumerate(sizes)]
            try:
                n = tx.write_burst(pkts)
            except ProtocolViolation:
                assert back > R
                assert bytes(main.mm) == snap
                return
            except PacketTooLarge:
                assert any(len(p) > R * RBSIZE for p in pkts)
                return
            assert back <= R
            head = get_u16(main, S2M_OFF + RL.head)
            assert head <= R - back
            # everything outside our S2M ring and S2M buffers is untouched
            after = bytes(main.mm)
            ring_end = S2M_OFF + RL.ring_size(3)
            assert after[ring_end:S2M_BUFS[0]] == snap[ring_end:S2M_BUFS[0]]
            assert after[S2M_BUFS[-1] + RBSIZE:] == snap[S2M_BUFS[-1] + RBSIZE:]
            # the server side reads back exactly the published packets
            set_u16(main, S2M_OFF + RL.tail, 0)
            rx = S2MConsumer(regions, 0, S2M_OFF, 3, RL)
            rings.append(rx)
            out: list[Any] = []
            read_all(rx, [64], out)
            assert [bytes(p) for p in out] == pkts[:n]
        finally:
            drop(rings, regions)


def test_fuzz_module_helpers_are_consistent() -> None:
    """The model's layout constants agree with the code's layout."""
    assert RL.desc == 128 and RL.tail == 64 and RL.head == 6
    assert S2M_BUFS[0] == RLAYOUT.rings_size
    assert len(set(S2M_BUFS + M2S_BUFS)) == 2 * R
    assert mmap.PAGESIZE > 0
