"""Hostile peers, faults and leaks (issue 5).

A scripted misbehaving peer (``tests/hostile.py``) attacks a memif_aio master
(as a client) or a memif_aio slave (as a server): malformed and out-of-order
control messages, wrong fds, impossible geometry, and - once connected -
scribbles in the shared memory it can write.  Every case asserts what can be
observed: the DISCONNECT reason the peer receives, the reason on our side,
counters, that a healthy interface pair on the same socket keeps working, that
the attacked interface accepts a well-behaved peer afterwards, that nothing
reached the event loop's exception handler, and (``no_leaks``) that no fd or
mapping is left behind.

Where the issue and the protocol reference disagree the reference wins; the
notes are next to the affected tests and in ``docs/security.md``.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from _harness import child_process, sealed_memfd
from _harness import read_line as line
from hostile import (
    HarnessError,
    HostileClient,
    HostileServer,
    PeerMemory,
    ServerConn,
    ServerSession,
    T,
    check_seq_packet,
    close_fds,
    guard_loop,
    raw,
    raw_type,
    seq_packet,
)

from memif_aio import (
    Arguments,
    ConnectionRefused,
    Disconnected,
    Interface,
    InterfaceMode,
    MemifError,
    MemoryConfig,
    PacketTooLarge,
    ProtocolViolation,
    Socket,
)
from memif_aio.wire import (
    COOKIE,
    DESC_FLAG_NEXT,
    MSG_ADD_RING_FLAG_S2M,
    VERSION,
    MsgAck,
    MsgAddRegion,
    MsgAddRing,
    MsgConnect,
    MsgConnected,
    MsgDisconnect,
    MsgHello,
    MsgInit,
    MsgType,
)

HOSTILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile.py")
FAST: dict[str, Any] = {"reconnect_min_delay": 0.01, "reconnect_max_delay": 0.05}
S2M = MSG_ADD_RING_FLAG_S2M

both_loops = pytest.mark.both_loops


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------
async def connected(*itfs: Interface, timeout: float = T) -> None:
    await asyncio.wait_for(asyncio.gather(*(i.wait_connected() for i in itfs)), timeout)


async def read_n(itf: Interface, n: int, qid: int = 0, timeout: float = T) -> list[bytes]:
    """Exactly ``n`` packets from rx queue ``qid`` (fails on timeout)."""
    q = itf.get_rx_queue(qid)
    got: list[bytes] = []

    async def loop() -> None:
        while len(got) < n:
            got.extend(await q.read_burst(n - len(got)))

    await asyncio.wait_for(loop(), timeout)
    return got


async def exchange(tx: Interface, rx: Interface, n: int = 20, base: int = 0) -> None:
    """``n`` numbered packets (some chained) from tx to rx, checked byte for byte."""
    pkts = [seq_packet(base + i, (60, 1500, 2048, 2049, 5000)[i % 5]) for i in range(n)]
    async def send() -> None:
        q, done = tx.get_tx_queue(0), 0
        while done < len(pkts):  # write_burst publishes what fits, like socket.send
            done += await q.write_burst(pkts[done:])

    _, got = await asyncio.gather(asyncio.wait_for(send(), T), read_n(rx, n))
    assert got == pkts


async def until(cond: Any, timeout: float = T, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@dataclass
class Arena:
    path: str
    sock: Socket
    target: Interface  # the master under attack: id 0
    hm: Interface  # a healthy master (id 1) on the same socket...
    hs: Interface  # ...and its healthy slave


@asynccontextmanager
async def arena(path: str, target: dict[str, Any] | None = None, recover: bool = True,
                **socket_kw: Any) -> AsyncIterator[Arena]:
    """A master socket with the target interface (id 0) and a connected healthy
    pair (id 1).  Afterwards: the healthy pair was never disturbed and still
    exchanges packets; the target accepts a well-behaved slave (``recover``);
    nothing reached the loop's exception handler."""
    targs = target or {}
    async with guard_loop(), Socket(path, **socket_kw) as sock:
        t = sock.new_interface(Arguments(id=0, is_master=True, name="target", **targs))
        hm = sock.new_interface(Arguments(id=1, is_master=True, name="hm"))
        hs = sock.new_interface(Arguments(id=1, is_master=False, name="hs", **FAST))
        await connected(hm, hs)
        yield Arena(path, sock, t, hm, hs)
        assert hm.is_connected() and hs.is_connected()
        assert hm.get_disconnect_reason() == hs.get_disconnect_reason() == ""
        await exchange(hs, hm)
        await exchange(hm, hs)
        if recover:
            legit = sock.new_interface(Arguments(
                id=0, is_master=False, name="legit", secret=targs.get("secret", b""),
                mode=targs.get("mode", InterfaceMode.ETHERNET), **FAST))
            await connected(t, legit)
            await exchange(legit, t)
            await exchange(t, legit)


async def attack(path: str, *script: tuple[Any, Sequence[int]] | Any) -> str:
    """Connect, read HELLO, send each message of ``script`` (``msg`` or ``(msg, fds)``),
    and return the DISCONNECT reason the master answers with (then EOF)."""
    async with await HostileClient.connect(path) as hc:
        for step in script:
            msg, fds = step if isinstance(step, tuple) else (step, ())
            await hc.send(msg, fds)
        return await hc.expect_disconnect()


def init(id: int = 0, **kw: Any) -> MsgInit:
    return MsgInit(id, **kw)


@asynccontextmanager
async def hostile_connected(a: Arena, **mem_kw: Any) -> AsyncIterator[tuple[HostileClient,
                                                                           PeerMemory]]:
    """A hostile client that completed a correct handshake with the target."""
    mem = PeerMemory(**mem_kw)
    try:
        hc = await HostileClient.connect(a.path)
    except BaseException:
        mem.close()
        raise
    async with hc:
        await hc.handshake(mem)
        await connected(a.target)
        yield hc, mem


@asynccontextmanager
async def fds_of_every_kind(tmp: str) -> AsyncIterator[dict[str, int]]:
    r, w = os.pipe()
    d = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ev = os.eventfd(0, os.EFD_NONBLOCK)
    unsealed = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    os.ftruncate(unsealed, 1 << 16)
    f = tempfile.TemporaryFile()
    f.truncate(1 << 16)
    try:
        yield {"pipe": r, "directory": d, "socket": s1.fileno(), "eventfd": ev,
               "memfd": unsealed, "file": f.fileno()}
    finally:
        close_fds([r, w, d, ev, unsealed])
        s1.close()
        s2.close()
        f.close()


def peer_process(*args: str) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """``python tests/hostile.py ARGS``; killed and reaped at the end whatever happens."""
    return child_process(HOSTILE, *args)


# ----------------------------------------------------------------------------
# Control channel: a hostile client against a memif_aio master
# ----------------------------------------------------------------------------
@both_loops
class TestControlChannel:
    async def test_hello_is_what_the_reference_says(self, sock_path: str,
                                                    no_leaks: None) -> None:
        async with arena(sock_path, recover=False), await HostileClient.connect(sock_path) as hc:
            h = hc.hello
            assert h is not None
            assert (h.min_version, h.max_version) == (VERSION, VERSION)
            assert (h.max_region, h.max_m2s_ring, h.max_s2m_ring, h.max_log2_ring_size) == \
                (255, 255, 255, 14)

    @pytest.mark.parametrize("data,reason", [
        (MsgInit(0).encode()[:50], "invalid message size 50 (a control message is 128 bytes)"),
        (b"\x03", "invalid message size 1 (a control message is 128 bytes)"),
        (MsgInit(0).encode() + b"\0", "truncated message or control data"),
        (MsgInit(0).encode() * 3, "truncated message or control data"),
    ], ids=["short", "one-byte", "129-bytes", "384-bytes"])
    async def test_wrong_size(self, sock_path: str, no_leaks: None, data: bytes,
                              reason: str) -> None:
        async with arena(sock_path) as a:
            assert await attack(sock_path, data) == reason
            # the same in the middle of a handshake: the interface is freed with that reason
            assert await attack(sock_path, init(), data) == reason
            assert a.target.get_disconnect_reason() == reason

    async def test_zero_length_datagram_is_eof(self, sock_path: str, no_leaks: None) -> None:
        """A 0-byte SOCK_SEQPACKET datagram cannot be told from EOF (§2.1, VPP
        "disconnected"): the master just closes, like for a peer that hung up."""
        async with arena(sock_path) as a, await HostileClient.connect(sock_path) as hc:
            await hc.ok(init())
            await hc.send(b"")
            await hc.expect_eof()
            await until(lambda: a.target.get_disconnect_reason() != "")
            assert a.target.get_disconnect_reason() == "peer closed the connection"

    @pytest.mark.parametrize("t", [0, 9, 0x1234, 0xFFFF])
    async def test_unknown_type(self, sock_path: str, no_leaks: None, t: int) -> None:
        async with arena(sock_path):
            assert await attack(sock_path, raw_type(t, b"junk")) == \
                f"unknown message type (0x{t:x})"

    @pytest.mark.parametrize("first", ["ACK", "HELLO", "CONNECT", "CONNECTED", "ADD_REGION",
                                       "ADD_RING"])
    async def test_anything_but_init_first(self, sock_path: str, no_leaks: None,
                                           first: str) -> None:
        fd = sealed_memfd() if first == "ADD_REGION" else os.eventfd(0, os.EFD_NONBLOCK)
        try:
            msg, fds = {
                "ACK": (MsgAck(), []), "HELLO": (MsgHello(b"x"), []),
                "CONNECT": (MsgConnect(b"x"), []), "CONNECTED": (MsgConnected(b"x"), []),
                "ADD_REGION": (MsgAddRegion(0, 1 << 16), [fd]),
                "ADD_RING": (MsgAddRing(S2M, 0, 0, 0, 4), [fd]),
            }[first]
            async with arena(sock_path):
                assert await attack(sock_path, (msg, fds)) == f"unexpected message {first}"
        finally:
            os.close(fd)

    async def test_out_of_order_after_init(self, sock_path: str, no_leaks: None) -> None:
        async with arena(sock_path) as a:
            assert await attack(sock_path, init(), MsgConnect(b"x")) == \
                "at least one ring per direction is required"
            ev = os.eventfd(0, os.EFD_NONBLOCK)
            try:
                assert await attack(sock_path, init(), (MsgAddRing(S2M, 0, 0, 0, 4), [ev])) == \
                    "ring references unknown region 0"
            finally:
                os.close(ev)
            assert await attack(sock_path, init(), init()) == "unexpected message INIT"
            assert a.target.get_disconnect_reason() == "unexpected message INIT"
            # only S2M rings, then CONNECT
            mem = PeerMemory()
            try:
                (region, rfd), (s2m, efd), _ = mem.setup_messages()
                async with await HostileClient.connect(sock_path) as hc:
                    await hc.ok(init())
                    await hc.ok(region, [rfd])
                    await hc.ok(s2m, [efd])
                    await hc.send(MsgConnect(b"x"))
                    assert await hc.expect_disconnect() == \
                        "at least one ring per direction is required"
            finally:
                mem.close()

    async def test_handshake_messages_after_connect(self, sock_path: str,
                                                    no_leaks: None) -> None:
        async with arena(sock_path) as a, hostile_connected(a) as (hc, _mem):
            await hc.send(MsgAck())  # ACKs are ignored once connected
            await hc.expect_silence(0.05)
            assert a.target.is_connected()
            await hc.send(init())
            assert await hc.expect_disconnect() == "unexpected message INIT"
            assert not a.target.is_connected()
            assert a.target.get_disconnect_reason() == "unexpected message INIT"

    async def test_disconnect_from_the_peer_is_final(self, sock_path: str,
                                                     no_leaks: None) -> None:
        """A DISCONNECT (here with a 96-byte non-UTF-8 reason without NUL) ends the
        connection at once, without an answer (§5.4, §11 item 14)."""
        downs: list[str] = []
        async with arena(sock_path, target={
                "disconnected_func": lambda i: downs.append(i.get_disconnect_reason())}) as a:
            async with hostile_connected(a) as (hc, _mem):
                rx = asyncio.ensure_future(a.target.get_rx_queue(0).read_packet())
                await asyncio.sleep(0)
                reason = b"\xff" + b"r" * 95
                await hc.send(raw(MsgType.DISCONNECT, code=7, string=reason))
                await hc.expect_eof()
                with pytest.raises(Disconnected) as info:
                    await asyncio.wait_for(rx, T)
                text = reason.decode("utf-8", "replace")
                assert info.value.reason == text and info.value.by_peer
                assert a.target.get_disconnect_reason() == text
            assert downs == [text]

    @pytest.mark.parametrize("version", [0x0100, 0x0201, 0x0300, 0xFFFF])
    async def test_incompatible_version(self, sock_path: str, no_leaks: None,
                                        version: int) -> None:
        async with arena(sock_path):
            assert await attack(sock_path, MsgInit(0, version=version)) == "incompatible version"

    async def test_names_without_nul_and_not_utf8(self, sock_path: str, no_leaks: None) -> None:
        """Names fill their whole field without NUL and are not UTF-8 (gomemif sends
        32-byte names, §4.10): accepted, decoded with replacement; bytes after a NUL
        and in the unused tail of a message are ignored (§4.11)."""
        name = b"\xc3\x28\xff" + b"n" * 29  # 32 bytes, invalid UTF-8, no NUL
        if_name = b"\xe2\x82" + b"i" * 30
        async with arena(sock_path) as a:
            mem = PeerMemory()
            async with await HostileClient.connect(sock_path) as hc:
                hc.memory = mem
                msg = raw(MsgType.INIT, version=VERSION, id=0, mode=0, secret=b"",
                          name=name)
                await hc.ok(msg[:65] + b"\xee" * 63)  # garbage in the unused bytes
                for m, fd in mem.setup_messages():
                    await hc.ok(m, [fd])
                await hc.ok(raw(MsgType.CONNECT, if_name=if_name), reply=MsgType.CONNECTED)
                await connected(a.target)
                assert a.target.get_remote_name() == name.decode("utf-8", "replace")
                assert a.target.get_peer_name() == if_name.decode("utf-8", "replace")
            await until(lambda: not a.target.is_connected())
            async with await HostileClient.connect(sock_path) as hc:
                hc.memory = mem = PeerMemory()
                await hc.ok(raw(MsgType.INIT, version=VERSION, id=0, mode=0, secret=b"",
                                name=b"abc\0GARBAGE"))
                for m, fd in mem.setup_messages():
                    await hc.ok(m, [fd])
                await hc.ok(MsgConnect(b"x"), reply=MsgType.CONNECTED)
                await connected(a.target)
                assert a.target.get_remote_name() == "abc"

    @pytest.mark.parametrize("secret,reason", [
        (b"", "secret required"),
        (b"wrong", "incorrect secret"),
        (b"s3cre", "incorrect secret"),
        (b"s3cret!", "incorrect secret"),
        (b"s3cret" + b"x" * 18, "incorrect secret"),  # 24 bytes, no NUL
    ], ids=["missing", "wrong", "prefix", "longer", "24-bytes-no-nul"])
    async def test_secret_refused(self, sock_path: str, no_leaks: None, secret: bytes,
                                  reason: str) -> None:
        async with arena(sock_path, target={"secret": b"s3cret"}) as a:
            msg = raw(MsgType.INIT, version=VERSION, id=0, mode=0, secret=secret, name=b"h")
            assert await attack(sock_path, msg) == reason
            assert a.target.get_disconnect_reason() == ""  # never bound to the interface

    async def test_secret_compared_up_to_its_nul(self, sock_path: str, no_leaks: None) -> None:
        async with arena(sock_path, target={"secret": b"s3cret"}) as a:
            async with await HostileClient.connect(sock_path) as hc:
                await hc.ok(raw(MsgType.INIT, version=VERSION, id=0, mode=0,
                                secret=b"s3cret\0garbage", name=b"h"))
                assert a.target.is_connecting()

    @pytest.mark.parametrize("id", [7, 0xFFFFFFFF])
    async def test_unknown_interface_id(self, sock_path: str, no_leaks: None, id: int) -> None:
        async with arena(sock_path):
            assert await attack(sock_path, init(id)) == "unmatched interface id"

    async def test_id_already_connected_or_in_handshake(self, sock_path: str,
                                                        no_leaks: None) -> None:
        async with arena(sock_path) as a:
            assert await attack(sock_path, init(1)) == "already connected"  # the healthy pair
            async with await HostileClient.connect(sock_path) as first:
                await first.ok(init(0))
                assert a.target.is_connecting()
                assert await attack(sock_path, init(0)) == "already connected"
                await first.expect_silence(0.02)  # the first one is not disturbed
            await until(lambda: not a.target.is_connecting())

    @pytest.mark.parametrize("mode", [InterfaceMode.IP, 2, 3, 255])
    async def test_mode_mismatch(self, sock_path: str, no_leaks: None, mode: int) -> None:
        async with arena(sock_path):
            msg = raw(MsgType.INIT, version=VERSION, id=0, mode=mode, secret=b"", name=b"h")
            assert await attack(sock_path, msg) == "mode mismatch"

    # --- fds -----------------------------------------------------------------------
    async def test_more_fds_than_expected(self, sock_path: str, no_leaks: None) -> None:
        """Every fd that arrives with a refused message is closed (no_leaks): the
        extra ones, and the one a good message would have kept."""
        fds = [sealed_memfd() for _ in range(8)]
        try:
            async with arena(sock_path):
                assert await attack(sock_path, (init(), fds[:1])) == \
                    "1 file descriptors attached to a INIT message"
                assert await attack(sock_path, init(), (MsgAddRegion(0, 1 << 16), fds[:2])) == \
                    "2 file descriptors attached to a ADD_REGION message"
                assert await attack(sock_path, init(), (MsgAddRing(S2M, 0, 0, 0, 4), fds[:3])) \
                    == "3 file descriptors attached to a ADD_RING message"
                assert await attack(sock_path, init(), (MsgConnect(b"x"), fds[:1])) == \
                    "1 file descriptors attached to a CONNECT message"
                # more than our ancillary buffer holds (4): MSG_CTRUNC
                assert await attack(sock_path, init(), (MsgAddRegion(0, 1 << 16), fds)) == \
                    "truncated message or control data"
                # fds on a DISCONNECT are closed too
                async with await HostileClient.connect(sock_path) as hc:
                    await hc.send(MsgDisconnect.reason("bye"), fds[:4])
                    await hc.expect_eof()
        finally:
            close_fds(fds)

    async def test_missing_fds(self, sock_path: str, no_leaks: None) -> None:
        async with arena(sock_path):
            assert await attack(sock_path, init(), MsgAddRegion(0, 1 << 16)) == \
                "missing memory region fd"
            mem = PeerMemory()
            try:
                region, rfd = mem.setup_messages()[0]
                assert await attack(sock_path, init(), (region, [rfd]),
                                    MsgAddRing(S2M, 0, 0, 0, 4)) == "missing ring interrupt fd"
            finally:
                mem.close()

    @pytest.mark.parametrize("kind,reason", [
        ("pipe", "region fd is not a shared-memory file"),
        ("directory", "region fd is not a shared-memory file"),
        ("socket", "region fd is not a shared-memory file"),
        ("eventfd", "region fd is not a shared-memory file"),
        ("memfd", "region fd is not sealed against shrinking (F_SEAL_SHRINK)"),
        ("file", "region fd is not sealed against shrinking (F_SEAL_SHRINK)"),
    ])
    async def test_region_fd_of_the_wrong_kind(self, sock_path: str, sock_dir: str,
                                               no_leaks: None, kind: str, reason: str) -> None:
        async with arena(sock_path), fds_of_every_kind(sock_dir) as fds:
            assert await attack(sock_path, init(), (MsgAddRegion(0, 4096), [fds[kind]])) == reason

    @pytest.mark.parametrize("kind", ["pipe", "directory", "socket", "memfd", "file"])
    async def test_ring_fd_of_the_wrong_kind(self, sock_path: str, sock_dir: str,
                                             no_leaks: None, kind: str) -> None:
        mem = PeerMemory()
        try:
            region, rfd = mem.setup_messages()[0]
            async with arena(sock_path), fds_of_every_kind(sock_dir) as fds:
                assert await attack(sock_path, init(), (region, [rfd]),
                                    (MsgAddRing(S2M, 0, 0, 0, 4), [fds[kind]])) == \
                    "ring interrupt fd is not an eventfd"
        finally:
            mem.close()

    async def test_region_memfd_not_mappable_read_write(self, sock_path: str,
                                                        no_leaks: None) -> None:
        """Sealed, big enough, but opened read-only or sealed against writing:
        mmap(PROT_WRITE, MAP_SHARED) fails, the reason says so."""
        fd = sealed_memfd()
        ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        wsealed = sealed_memfd(extra_seals=fcntl.F_SEAL_WRITE)
        try:
            async with arena(sock_path):
                for bad in (ro, wsealed):
                    reason = await attack(sock_path, init(), (MsgAddRegion(0, 4096), [bad]))
                    assert reason.startswith("mmap: "), reason
        finally:
            close_fds([fd, ro, wsealed])

    async def test_a_closed_fd_cannot_be_sent(self, sock_path: str, no_leaks: None) -> None:
        """'An fd number that was closed' cannot be attacked with: the kernel refuses
        it at the sender (EBADF) and nothing is delivered, so the master sees nothing
        and the same connection can still complete a correct handshake."""
        async with arena(sock_path) as a:
            mem = PeerMemory()
            async with await HostileClient.connect(sock_path) as hc:
                hc.memory = mem
                await hc.ok(init())
                fd = max(int(n) for n in os.listdir("/proc/self/fd")) + 100
                with pytest.raises(OSError):
                    fcntl.fcntl(fd, fcntl.F_GETFD)  # closed (never opened, here)
                with pytest.raises(OSError) as info:
                    await hc.send(MsgAddRegion(0, mem.size), [fd])
                assert info.value.errno == errno.EBADF
                for m, f in mem.setup_messages():
                    await hc.ok(m, [f])
                await hc.ok(MsgConnect(b"x"), reply=MsgType.CONNECTED)
                await connected(a.target)

    # --- regions ---------------------------------------------------------------------
    async def test_region_index_out_of_order(self, sock_path: str, no_leaks: None) -> None:
        fd = sealed_memfd()
        try:
            async with arena(sock_path):
                assert await attack(sock_path, init(), (MsgAddRegion(1, 4096), [fd])) == \
                    "unexpected region index"
                assert await attack(sock_path, init(), (MsgAddRegion(0, 4096), [fd]),
                                    (MsgAddRegion(0, 4096), [fd])) == "unexpected region index"
                assert await attack(sock_path, init(), (MsgAddRegion(0xFFFF, 4096), [fd])) == \
                    "unexpected region index"
        finally:
            os.close(fd)

    @pytest.mark.parametrize("max_regions", [None, 256], ids=["default-16", "wire-limit-256"])
    async def test_more_regions_than_advertised(self, sock_path: str, no_leaks: None,
                                                max_regions: int | None) -> None:
        """Socket(max_regions=16) by default: 16 regions are accepted and mapped, the 17th
        is refused.  At most 256 (indices 0..255 = HELLO max_region): the 257th is refused.
        All mappings and fds are released (tests/test_listener_attacks.py counts them)."""
        n = 16 if max_regions is None else max_regions
        kw: dict[str, Any] = {} if max_regions is None else \
            {"max_regions": max_regions, "max_handshake_fds": 2 * max_regions}
        fd = sealed_memfd(4096)
        try:
            async with arena(sock_path, **kw), await HostileClient.connect(sock_path) as hc:
                await hc.ok(init())
                for i in range(n):
                    await hc.ok(MsgAddRegion(i, 4096), [fd])
                await hc.send(MsgAddRegion(n, 4096), [fd])
                assert await hc.expect_disconnect() == "too many regions"
        finally:
            os.close(fd)

    async def test_regions_beyond_the_size_limit(self, sock_path: str, no_leaks: None) -> None:
        """Socket(max_total_region_size=8 MiB): the healthy 4 MiB pairs fit, a client
        announcing two 5 MiB regions does not (mapping memory is bounded per peer)."""
        fd = sealed_memfd(5 << 20)
        try:
            async with arena(sock_path, max_total_region_size=8 << 20):
                assert await attack(sock_path, init(), (MsgAddRegion(0, 5 << 20), [fd]),
                                    (MsgAddRegion(1, 5 << 20), [fd])) == "regions too large"
        finally:
            os.close(fd)

    @pytest.mark.parametrize("size,file_size,reason", [
        (0, 4096, "invalid region size 0"),
        (1 << 33, 4096, "invalid region size 8589934592"),  # above the 4 GiB u32 offsets reach
        (1 << 40, 4096, "regions too large"),  # above max_total_region_size (16 GiB)
        ((1 << 64) - 1, 4096, "regions too large"),
        (8192, 4096, "region size 8192 exceeds its file (4096 bytes)"),
    ], ids=["zero", "8GiB", "1TiB", "u64-max", "larger-than-memfd"])
    async def test_region_size(self, sock_path: str, no_leaks: None, size: int, file_size: int,
                               reason: str) -> None:
        fd = sealed_memfd(file_size)
        try:
            async with arena(sock_path):
                assert await attack(sock_path, init(), (MsgAddRegion(0, size), [fd])) == reason
        finally:
            os.close(fd)

    async def test_unsealed_region_refused_by_default(self, sock_path: str,
                                                      no_leaks: None) -> None:
        mem = PeerMemory(seal=False)
        try:
            async with arena(sock_path) as a:
                region, rfd = mem.setup_messages()[0]
                assert await attack(sock_path, init(), (region, [rfd])) == \
                    "region fd is not sealed against shrinking (F_SEAL_SHRINK)"
                assert a.target.get_disconnect_reason() == \
                    "region fd is not sealed against shrinking (F_SEAL_SHRINK)"
        finally:
            mem.close()

    async def test_sealable_region_is_sealed_by_the_master(self, sock_path: str,
                                                           no_leaks: None) -> None:
        """A memfd created with MFD_ALLOW_SEALING but not sealed: the master adds
        F_SEAL_SHRINK itself and connects; the peer can no longer shrink it."""
        fd = os.memfd_create("sealable", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, 1 << 16)
            async with arena(sock_path):
                async with await HostileClient.connect(sock_path) as hc:
                    await hc.init()
                    await hc.ok(MsgAddRegion(0, 1 << 16), [fd])
                    assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
                    with pytest.raises(PermissionError):
                        os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    async def test_unsealed_region_accepted_when_allowed(self, sock_path: str,
                                                         no_leaks: None) -> None:
        async with arena(sock_path, target={"require_seal": False}) as a:
            async with hostile_connected(a, seal=False) as (_hc, mem):
                mem.send(0, [b"unsealed but fine"])
                assert await read_n(a.target, 1) == [b"unsealed but fine"]

    # --- rings -------------------------------------------------------------------------
    @pytest.mark.parametrize("ring,reason", [
        (MsgAddRing(S2M, 0, 0, 1 << 20, 4), "ring at offset 1048576 (384 bytes) exceeds "
                                            "region 0 of {size} bytes"),
        (MsgAddRing(S2M, 0, 0, 0xFFFFFFF8, 4), "ring at offset 4294967288 (384 bytes) exceeds "
                                               "region 0 of {size} bytes"),
        (MsgAddRing(S2M, 0, 0, 0, 14), "ring at offset 0 (262272 bytes) exceeds region 0 of "
                                       "{size} bytes"),
        (MsgAddRing(S2M, 0, 0, 4, 4), "misaligned ring offset 4"),
        (MsgAddRing(S2M, 0, 1, 0, 4), "ring references unknown region 1"),
        (MsgAddRing(S2M, 0, 0xFFFF, 0, 4), "ring references unknown region 65535"),
        (MsgAddRing(S2M, 0, 0, 0, 15), "log2 ring size 15 above the advertised 14"),
        (MsgAddRing(S2M, 0, 0, 0, 255), "log2 ring size 255 above the advertised 14"),
        (MsgAddRing(S2M, 1, 0, 0, 4), "unexpected ring index"),
        (MsgAddRing(0, 0xFFFF, 0, 0, 4), "unexpected ring index"),
        (MsgAddRing(S2M, 0, 0, 0, 4, private_hdr_size=8), "private headers not supported"),
    ], ids=["offset-beyond", "offset-u32-max", "too-big-for-region", "misaligned",
            "unknown-region", "region-u16-max", "log2-15", "log2-255", "index-gap",
            "index-u16-max", "private-header"])
    async def test_bad_ring(self, sock_path: str, no_leaks: None, ring: MsgAddRing,
                            reason: str) -> None:
        mem = PeerMemory()
        try:
            region, rfd = mem.setup_messages()[0]
            async with arena(sock_path) as a:
                got = await attack(sock_path, init(), (region, [rfd]), (ring, mem.s2m_efd[:1]))
                assert got == reason.format(size=mem.size)
                assert a.target.get_disconnect_reason() == got
        finally:
            mem.close()

    @pytest.mark.parametrize("offsets", [(0, 0), (0, 64), (256, 0), (0, 376)])
    async def test_overlapping_rings(self, sock_path: str, no_leaks: None,
                                     offsets: tuple[int, int]) -> None:
        """Two rings of 384 bytes (log2 4) whose ranges intersect (§12.4)."""
        mem = PeerMemory(num_s2m=2)
        try:
            region, rfd = mem.setup_messages()[0]
            async with arena(sock_path):
                assert await attack(
                    sock_path, init(), (region, [rfd]),
                    (MsgAddRing(S2M, 0, 0, offsets[0], 4), mem.s2m_efd[:1]),
                    (MsgAddRing(0, 0, 0, offsets[1], 4), mem.s2m_efd[1:])) == \
                    "ring overlaps another ring"
        finally:
            mem.close()

    async def test_adjacent_rings_and_extra_flag_bits_are_fine(self, sock_path: str,
                                                               no_leaks: None) -> None:
        """Rings that touch without overlapping, and ADD_RING flags with undefined bits
        set (only bit 0 means something, §4.6), are accepted."""
        mem = PeerMemory()
        async with arena(sock_path) as a, await HostileClient.connect(sock_path) as hc:
            hc.memory = mem
            await hc.ok(init())
            (region, rfd), (s2m, sfd), (m2s, mfd) = mem.setup_messages()
            assert isinstance(s2m, MsgAddRing) and isinstance(m2s, MsgAddRing)
            await hc.ok(region, [rfd])
            await hc.ok(MsgAddRing(0xFFFF, 0, 0, s2m.offset, 4), [sfd])  # S2M
            await hc.ok(MsgAddRing(0xFFFE, 0, 0, m2s.offset, 4), [mfd])  # M2S, touching it
            await hc.ok(MsgConnect(b"x"), reply=MsgType.CONNECTED)
            await connected(a.target)
            mem.send(0, [b"flags"])
            assert await read_n(a.target, 1) == [b"flags"]

    async def test_one_slot_rings(self, sock_path: str, no_leaks: None) -> None:
        """log2 ring size 0 is legal on the wire (§6.6) and works: one packet at a time
        each way; a packet needing two buffers cannot fit."""
        async with arena(sock_path) as a, hostile_connected(a, log2_ring_size=0) as (_hc, mem):
            assert a.target.get_memory_config().log2_ring_size == 0
            rx, tx = a.target.get_rx_queue(0), a.target.get_tx_queue(0)
            for i in range(20):
                mem.send(0, [seq_packet(i)])
                assert await asyncio.wait_for(rx.read_packet(), T) == seq_packet(i)
                assert mem.post() == 1
                await asyncio.wait_for(tx.write_packet(seq_packet(100 + i)), T)
                assert mem.receive(repost=False) == [seq_packet(100 + i)]
            assert rx.stats().ring_size == 1 and rx.stats().packets == 20
            mem.post()
            with pytest.raises(PacketTooLarge):
                await tx.write_packet(b"x" * 2049)

    @pytest.mark.parametrize("which,reason", [("s2m", "wrong cookie on rx ring 0"),
                                              ("m2s", "wrong cookie on tx ring 0")])
    async def test_wrong_cookie(self, sock_path: str, no_leaks: None, which: str,
                                reason: str) -> None:
        mem = PeerMemory()
        async with arena(sock_path) as a, await HostileClient.connect(sock_path) as hc:
            hc.memory = mem
            await hc.ok(init())
            for m, fd in mem.setup_messages():
                await hc.ok(m, [fd])
            getattr(mem, which)[0].cookie = COOKIE ^ 1
            await hc.send(MsgConnect(b"x"))
            assert await hc.expect_disconnect() == reason
            assert a.target.get_disconnect_reason() == reason

    @pytest.mark.parametrize("head,tail", [(17, 0), (0, 1), (0xFFFF, 0x7FFF)])
    async def test_inconsistent_indices_at_connect(self, sock_path: str, no_leaks: None,
                                                   head: int, tail: int) -> None:
        mem = PeerMemory()
        async with arena(sock_path), await HostileClient.connect(sock_path) as hc:
            hc.memory = mem
            await hc.ok(init())
            for m, fd in mem.setup_messages():
                await hc.ok(m, [fd])
            mem.s2m[0].head, mem.s2m[0].tail = head, tail
            await hc.send(MsgConnect(b"x"))
            assert await hc.expect_disconnect() == "ring indices inconsistent at connect"

    # --- time and volume -----------------------------------------------------------------
    async def test_silent_peer_times_out(self, sock_path: str, no_leaks: None) -> None:
        async with arena(sock_path, handshake_timeout=0.3) as a:
            t0 = time.monotonic()
            async with await HostileClient.connect(sock_path) as hc:  # reads HELLO, then nothing
                assert await hc.expect_disconnect() == "handshake timeout"
            assert 0.25 < time.monotonic() - t0 < 2.0
            # stalled after INIT: the interface is held, then freed by the timer
            async with await HostileClient.connect(sock_path) as hc:
                await hc.ok(init())
                assert await attack(sock_path, init()) == "already connected"
                assert await hc.expect_disconnect() == "handshake timeout"
            assert a.target.get_disconnect_reason() == "handshake timeout"

    async def test_never_even_reads_hello(self, sock_path: str, no_leaks: None) -> None:
        async with arena(sock_path, handshake_timeout=0.2):
            async with await HostileClient.connect(sock_path, hello=False) as hc:
                await asyncio.sleep(0.4)
                assert (await hc.recv()).type == MsgType.HELLO
                assert await hc.expect_disconnect() == "handshake timeout"

    async def test_flood_after_connect(self, sock_path: str, no_leaks: None) -> None:
        """20 000 ACKs (legal and ignored once connected) sent as fast as the socket
        takes them: the loop is not starved - the healthy pair exchanges packets
        meanwhile - and the first message that is not allowed ends the connection."""
        async with arena(sock_path) as a, hostile_connected(a) as (hc, _mem):
            ack = MsgAck().encode()

            async def flood() -> None:
                for _ in range(20_000):
                    while not hc.try_send(ack):
                        await asyncio.sleep(0)

            await asyncio.gather(flood(), exchange(a.hs, a.hm, 200), exchange(a.hm, a.hs, 200))
            assert a.target.is_connected()
            await hc.send(MsgConnect(b"again"))
            for _ in range(100):
                hc.try_send(MsgConnect(b"again").encode())
            assert await hc.expect_disconnect() == "unexpected message CONNECT"
            assert a.target.get_disconnect_reason() == "unexpected message CONNECT"

    async def test_flood_of_connections(self, sock_path: str, no_leaks: None) -> None:
        """More unauthenticated connections than may wait for INIT (max_pending=4, so 2
        per uid): each one is admitted in turn (HELLO), evicting the oldest once that
        one has had its grace period, or times out; none is refused unheard.  Established
        interfaces are not affected, and the socket serves again afterwards.
        (tests/test_listener_attacks.py runs the long version from another process.)"""
        async with arena(sock_path, max_pending=4, handshake_timeout=0.5):
            clients = [await HostileClient.connect(sock_path, hello=False) for _ in range(12)]
            try:
                firsts = await asyncio.gather(*(c.recv() for c in clients))
                assert all(r.type == MsgType.HELLO for r in firsts)
                reasons = await asyncio.gather(*(c.expect_disconnect() for c in clients))
                evicted = reasons.count("evicted: too many connections waiting for INIT")
                assert evicted + reasons.count("handshake timeout") == 12, reasons
                assert evicted >= 1
            finally:
                for c in clients:
                    c.close()


# ----------------------------------------------------------------------------
# Control channel: a hostile server against a memif_aio slave
# ----------------------------------------------------------------------------
@dataclass
class SlaveArena:
    srv: HostileServer
    victim: Interface
    hm: Interface
    hs: Interface


@asynccontextmanager
async def slave_arena(sock_dir: str, recover: bool = True,
                      **victim_kw: Any) -> AsyncIterator[SlaveArena]:
    """A memif_aio slave (the victim, id 0) connecting to a hostile server, and a
    healthy pair on another socket of the same loop.  Afterwards the victim,
    which retries by itself, completes a handshake with a well-behaved server
    and exchanges packets with it."""
    path = os.path.join(sock_dir, "hostile.sock")
    kw = {**FAST, "handshake_timeout": 2.0, **victim_kw}
    async with guard_loop(), HostileServer(path) as srv, \
            Socket(os.path.join(sock_dir, "healthy.sock")) as hsock, Socket(path) as vsock:
        hm = hsock.new_interface(Arguments(id=0, is_master=True, name="hm"))
        hs = hsock.new_interface(Arguments(id=0, is_master=False, name="hs", **FAST))
        victim = vsock.new_interface(Arguments(id=0, is_master=False, name="victim", **kw))
        await connected(hm, hs)
        a = SlaveArena(srv, victim, hm, hs)
        yield a
        assert hm.get_disconnect_reason() == hs.get_disconnect_reason() == ""
        await exchange(hs, hm)
        await exchange(hm, hs)
        if recover:
            for c in srv.conns:
                c.close()
            srv.conns.clear()
            session = await serve_next(srv)
            await connected(victim)
            await asyncio.wait_for(victim.get_tx_queue(0).write_packet(b"recovered"), T)
            await until(lambda: session.s2m[0].head != session.s2m[0].tail)
            assert session.receive() == [b"recovered"]
            await until(lambda: session.posted() > 0)
            session.send(0, [b"and back"])
            assert await read_n(victim, 1) == [b"and back"]


async def serve_next(srv: HostileServer) -> ServerSession:
    """Serve the slave's current attempt, skipping attempts it already gave up
    (closed connections still queued in the listener's backlog)."""
    deadline = time.monotonic() + T
    while True:
        conn = await srv.accept()
        try:
            return await conn.serve()
        except (HarnessError, OSError):
            if time.monotonic() > deadline:
                raise
            conn.close()
            srv.conns.remove(conn)


async def victim_reason(a: SlaveArena, conn: ServerConn, reason: str) -> None:
    """The victim sends DISCONNECT(reason), closes, and reports the same reason."""
    assert await conn.expect_disconnect() == reason
    await until(lambda: a.victim.get_disconnect_reason() == reason,
                what=f"victim reason {reason!r} (got {a.victim.get_disconnect_reason()!r})")


@both_loops
class TestSlaveSide:
    @pytest.mark.parametrize("minv,maxv", [(0x0100, 0x0100), (0x0201, 0x0300), (0x0300, 0x0100)])
    async def test_incompatible_hello(self, sock_dir: str, no_leaks: None, minv: int,
                                      maxv: int) -> None:
        async with slave_arena(sock_dir) as a:
            conn = await a.srv.accept()
            await conn.send(MsgHello(b"h", minv, maxv))
            await victim_reason(a, conn, "incompatible protocol version")

    async def test_version_range_containing_2_0_is_fine(self, sock_dir: str,
                                                        no_leaks: None) -> None:
        async with slave_arena(sock_dir) as a:
            conn = await a.srv.accept()
            await conn.serve(MsgHello(b"h", 0x0100, 0x0FFF))
            await connected(a.victim)

    async def test_hello_ring_limits(self, sock_dir: str, no_leaks: None) -> None:
        """max_log2 0 is refused (§12.6: below a sane minimum); max ring index 0 means
        one ring per direction; max_log2 3 caps the slave's ring size."""
        async with slave_arena(sock_dir) as a:
            conn = await a.srv.accept()
            await conn.send(MsgHello(b"h", max_log2_ring_size=0))
            await victim_reason(a, conn, "peer's maximum ring size (log2 0) is too small")
            conn = await a.srv.accept()
            s = await conn.serve(MsgHello(b"h", max_m2s_ring=0, max_s2m_ring=0,
                                          max_log2_ring_size=3))
            await connected(a.victim)
            assert len(s.s2m) == len(s.m2s) == 1 and s.s2m[0].size == 8
            assert a.victim.get_memory_config().log2_ring_size == 3

    @pytest.mark.parametrize("data,reason", [
        (MsgHello(b"h").encode()[:60], "invalid message size 60 (a control message is 128 bytes)"),
        (MsgHello(b"h").encode() + b"x", "truncated message or control data"),
        (raw_type(0x42), "unknown message type (0x42)"),
        (MsgAck().encode(), "unexpected message ACK"),
        (MsgConnected(b"x").encode(), "unexpected message CONNECTED"),
        (MsgInit(0).encode(), "unexpected message INIT"),
    ], ids=["short", "long", "unknown", "ack-first", "connected-first", "init"])
    async def test_bad_first_message(self, sock_dir: str, no_leaks: None, data: bytes,
                                     reason: str) -> None:
        async with slave_arena(sock_dir) as a:
            conn = await a.srv.accept()
            await conn.send(data)
            await victim_reason(a, conn, reason)

    async def test_fd_with_hello(self, sock_dir: str, no_leaks: None) -> None:
        fd = sealed_memfd()
        try:
            async with slave_arena(sock_dir) as a:
                conn = await a.srv.accept()
                await conn.send(MsgHello(b"h"), [fd, fd])
                await victim_reason(a, conn, "2 file descriptors attached to a HELLO message")
                conn = await a.srv.accept()
                await conn.send(MsgHello(b"h"), [fd])
                await victim_reason(a, conn, "1 file descriptors attached to a HELLO message")
        finally:
            os.close(fd)

    async def test_hello_name_without_nul_and_not_utf8(self, sock_dir: str,
                                                       no_leaks: None) -> None:
        name = b"\xff\xfe" + b"m" * 30
        async with slave_arena(sock_dir) as a:
            conn = await a.srv.accept()
            await conn.serve(raw(MsgType.HELLO, name=name, min_version=VERSION,
                                 max_version=VERSION, max_region=255, max_m2s_ring=255,
                                 max_s2m_ring=255, max_log2_ring_size=14),
                             if_name=b"m" * 31)
            await connected(a.victim)
            assert a.victim.get_remote_name() == name.decode("utf-8", "replace")
            assert a.victim.get_peer_name() == "m" * 31

    async def test_out_of_order_during_handshake(self, sock_dir: str, no_leaks: None) -> None:
        async with slave_arena(sock_dir) as a:
            for wrong, reason in ((MsgHello(b"again"), "unexpected message HELLO"),
                                  (MsgConnected(b"early"), "unexpected message CONNECTED")):
                conn = await a.srv.accept()
                await conn.send(MsgHello(b"h"))
                assert isinstance(await conn.expect(MsgType.INIT), MsgInit)
                await conn.send(wrong)
                await victim_reason(a, conn, reason)

    async def test_unexpected_after_connect(self, sock_dir: str, no_leaks: None) -> None:
        async with slave_arena(sock_dir) as a:
            conn = await a.srv.accept()
            await conn.serve()
            await connected(a.victim)
            await conn.send(MsgAck())  # ignored
            await conn.expect_silence(0.05)
            await conn.send(MsgConnected(b"twice"))
            await victim_reason(a, conn, "unexpected message CONNECTED")

    async def test_server_never_answers(self, sock_dir: str, no_leaks: None) -> None:
        async with slave_arena(sock_dir, handshake_timeout=0.3) as a:
            conn = await a.srv.accept()
            await victim_reason(a, conn, "handshake timeout")  # no HELLO at all
            conn = await a.srv.accept()
            await conn.send(MsgHello(b"h"))
            await conn.expect(MsgType.INIT)
            await victim_reason(a, conn, "handshake timeout")  # no ACK

    @pytest.mark.parametrize("acks,reason", [
        (0, "peer closed the connection during the handshake"),
        (1, "peer closed the connection during the handshake (unknown interface id?)"),
        (2, "peer closed the connection during the handshake"),
    ])
    async def test_server_hangs_up_during_handshake(self, sock_dir: str, no_leaks: None,
                                                    acks: int, reason: str) -> None:
        """EOF is a rejection (§5.5); after exactly the ACK of INIT it is what libmemif
        does with an unknown id (§11 item 11), and the reason hints at that."""
        async with slave_arena(sock_dir) as a:
            conn = await a.srv.accept()
            await conn.send(MsgHello(b"h"))
            for _ in range(acks):
                r = await conn.recv()
                close_fds(r.fds)
                await conn.send(MsgAck())
            r = await conn.recv()
            close_fds(r.fds)
            conn.close()
            a.srv.conns.remove(conn)
            await until(lambda: a.victim.get_disconnect_reason() == reason,
                        what=repr(a.victim.get_disconnect_reason()))

    async def test_disconnect_reason_not_terminated(self, sock_dir: str, no_leaks: None) -> None:
        reason = b"\xe2\x28\xa1" + b"z" * 93
        async with slave_arena(sock_dir) as a:
            conn = await a.srv.accept()
            await conn.send(MsgHello(b"h"))
            await conn.expect(MsgType.INIT)
            await conn.send(raw(MsgType.DISCONNECT, code=0xFFFFFFFF, string=reason))
            text = reason.decode("utf-8", "replace")
            await until(lambda: a.victim.get_disconnect_reason() == text)


# ----------------------------------------------------------------------------
# Data path: the peer scribbles in shared memory after connecting
# ----------------------------------------------------------------------------
@both_loops
class TestMasterDataPath:
    """A hostile client writes its own memory; the master is the victim."""

    @pytest.mark.parametrize("head", [17, 0x8000, 0xFFFF])
    async def test_s2m_head_too_far_or_backwards(self, sock_path: str, no_leaks: None,
                                                 head: int) -> None:
        reason = "S2M head ran more than a ring ahead of tail"
        async with arena(sock_path) as a, hostile_connected(a) as (hc, mem):
            errors = a.target.get_socket().errors()
            mem.send(0, [b"a", b"b"])
            assert await read_n(a.target, 2) == [b"a", b"b"]
            rx = asyncio.ensure_future(a.target.get_rx_queue(0).read_packet())
            await asyncio.sleep(0)
            mem.s2m[0].head = (2 + head) & 0xFFFF  # 17 ahead of a 16-slot ring, or behind
            mem.signal_s2m()
            with pytest.raises(Disconnected) as info:
                await asyncio.wait_for(rx, T)
            assert info.value.reason == reason and not info.value.by_peer
            assert await hc.expect_disconnect() == reason
            assert a.target.get_disconnect_reason() == reason
            # and the socket's background error stream heard of it
            exc = await asyncio.wait_for(errors.__anext__(), T)
            assert isinstance(exc, ProtocolViolation) and reason in str(exc)
            errors.close()

    async def test_scribbled_tails_are_ignored(self, sock_path: str, no_leaks: None) -> None:
        """The master keeps private cursors: tails the client overwrites (they are the
        master's to write) change nothing, and the traffic stays exact."""
        async with arena(sock_path) as a, hostile_connected(a) as (_hc, mem):
            for rnd in range(5):
                mem.s2m[0].tail = random.randrange(0x10000)
                mem.m2s[0].tail = random.randrange(0x10000)
                pkts = [seq_packet(rnd * 10 + i) for i in range(10)]
                mem.send(0, pkts)
                assert await read_n(a.target, 10) == pkts
                mem.post()
            mem.m2s[0].tail = 0  # undo, so that the client's own consumer can read
            mem.m2s_cons[0] = 0
            tx = a.target.get_tx_queue(0)
            assert await asyncio.wait_for(tx.write_burst([b"m1", b"m2"]), T) == 2
            assert mem.receive() == [b"m1", b"m2"]

    @pytest.mark.parametrize("head", [17, 0xFFFF])
    async def test_m2s_head_too_far_or_backwards(self, sock_path: str, no_leaks: None,
                                                 head: int) -> None:
        reason = "M2S head ran more than a ring ahead of tail"
        async with arena(sock_path) as a, hostile_connected(a) as (hc, mem):
            mem.m2s[0].head = head
            with pytest.raises(Disconnected) as info:
                await a.target.get_tx_queue(0).write_packet(b"x")
            assert info.value.reason == reason
            assert await hc.expect_disconnect() == reason

    @pytest.mark.parametrize("bad,delivered", [
        ({"region": 1}, False),
        ({"region": 0xFFFF}, False),
        ({"offset": 1 << 20}, False),
        ({"offset": 0xFFFFFF00, "length": 0x200}, False),  # offset + length overflows u32
        ({"offset": 0xFFFFFFFF, "length": 0xFFFFFFFF}, False),
        ({"length": 0}, False),
        ({"length": 3000}, True),  # above the buffer size, inside the region: legal (§12.7)
        ({"flags": 0xFFFE}, True),  # undefined flag bits are ignored
    ], ids=["region-1", "region-u16-max", "offset-past-region", "offset+length-overflow",
            "u32-max-both", "zero-length", "longer-than-buffer", "unknown-flags"])
    async def test_bad_s2m_descriptor(self, sock_path: str, no_leaks: None, bad: dict[str, int],
                                      delivered: bool) -> None:
        """A descriptor the master cannot use is dropped and counted; the packets
        around it arrive; the link stays up."""
        async with arena(sock_path) as a, hostile_connected(a) as (_hc, mem):
            pkts = [b"before", b"X" * 100, b"after"]
            mem.send(0, pkts, signal=False)
            mem.s2m[0].set_desc(1, **bad)
            mem.signal_s2m()
            d = mem.s2m[0].desc(1)
            expected = [b"before", mem.mm[d.offset:d.offset + d.length], b"after"] \
                if delivered else [b"before", b"after"]
            assert await read_n(a.target, len(expected)) == expected
            st = a.target.get_rx_queue(0).stats()
            assert (st.bad_descriptors, st.drops) == ((0, 0) if delivered else (1, 1))
            assert a.target.is_connected()
            mem.send(0, [b"still fine"])
            assert await read_n(a.target, 1) == [b"still fine"]

    async def test_descriptor_longer_than_64k(self, sock_path: str, no_leaks: None) -> None:
        """§12.7: the server checks ``length <= 65535`` on S2M descriptors (buffer sizes
        are u16 in every C peer; VPP reads lengths through a u16).  A descriptor of
        65536 bytes that lies inside the region must be dropped and counted (before
        the fix the master delivered it, and with chains a client could make it copy
        up to R x region size bytes)."""
        async with arena(sock_path) as a, hostile_connected(a) as (_hc, mem):
            assert mem.size >= 65536
            mem.send(0, [b"before", b"x", b"after"], signal=False)
            mem.s2m[0].set_desc(1, offset=0, length=65536)
            mem.signal_s2m()
            got = await read_n(a.target, 2)
            assert got == [b"before", b"after"], [len(p) for p in got]
            assert a.target.get_rx_queue(0).stats().bad_descriptors == 1

    async def test_bad_segment_drops_the_whole_chain(self, sock_path: str,
                                                     no_leaks: None) -> None:
        async with arena(sock_path) as a, hostile_connected(a) as (_hc, mem):
            mem.send(0, [b"a" * 5000, b"ok"], signal=False)  # a 3-slot chain, then one
            mem.s2m[0].set_desc(1, length=0)
            mem.signal_s2m()
            assert await read_n(a.target, 1) == [b"ok"]
            assert a.target.get_rx_queue(0).stats().bad_descriptors == 1

    async def test_chain_that_never_ends(self, sock_path: str, no_leaks: None) -> None:
        reason = "S2M chain longer than the ring"
        async with arena(sock_path) as a, hostile_connected(a) as (hc, mem):
            ring = mem.s2m[0]
            rx = asyncio.ensure_future(a.target.get_rx_queue(0).read_packet())
            await asyncio.sleep(0)
            # an incomplete chain is only not-yet-published: it waits
            mem.send(0, [b"c" * 2048 * 3], signal=False)
            ring.set_desc(2, flags=DESC_FLAG_NEXT)
            mem.signal_s2m()
            await asyncio.sleep(0.05)
            assert not rx.done() and a.target.is_connected()
            # ...but once every slot of the ring is in it, it can never end
            for s in range(3, ring.size):
                ring.set_desc(s, flags=DESC_FLAG_NEXT, length=1, offset=mem.buffer(0, s))
            ring.head = ring.size
            mem.signal_s2m()
            with pytest.raises(Disconnected) as info:
                await asyncio.wait_for(rx, T)
            assert info.value.reason == reason
            assert await hc.expect_disconnect() == reason

    async def test_incomplete_chain_completed_later(self, sock_path: str,
                                                    no_leaks: None) -> None:
        async with arena(sock_path) as a, hostile_connected(a) as (_hc, mem):
            ring = mem.s2m[0]
            mem.send(0, [b"1" * 2048, b"2" * 2048], signal=False)
            ring.set_desc(0, flags=DESC_FLAG_NEXT)  # slot 0 continues in slot 1: published
            ring.set_desc(1, flags=DESC_FLAG_NEXT)  # ...and slot 1 in slot 2: not yet
            mem.signal_s2m()
            rx = a.target.get_rx_queue(0)
            await asyncio.sleep(0.02)
            assert rx.read_burst_nowait(8) == []
            mem.send(0, [b"3" * 10])
            assert await read_n(a.target, 1) == [b"1" * 2048 + b"2" * 2048 + b"3" * 10]

    @pytest.mark.parametrize("bad,reason", [
        ({"region": 9}, "posted M2S buffer in unknown region 9"),
        ({"offset": 1 << 24}, "posted M2S buffer outside its region or empty"),
        ({"length": 0}, "posted M2S buffer outside its region or empty"),
    ])
    async def test_bad_posted_buffer(self, sock_path: str, no_leaks: None, bad: dict[str, int],
                                     reason: str) -> None:
        async with arena(sock_path) as a, hostile_connected(a) as (hc, mem):
            mem.post()
            mem.m2s[0].set_desc(0, **bad)
            with pytest.raises(Disconnected) as info:
                await a.target.get_tx_queue(0).write_packet(b"p" * 100)
            assert info.value.reason == reason
            assert await hc.expect_disconnect() == reason

    async def test_posted_capacity_clipped_to_the_region(self, sock_path: str,
                                                         no_leaks: None) -> None:
        """A posted buffer whose offset + capacity runs past the region (or past 2^32)
        is only filled up to the end of the region; the rest of the packet is
        chained into the next buffer, and nothing is written outside."""
        async with arena(sock_path) as a, hostile_connected(a) as (_hc, mem):
            mem.post()
            mem.m2s[0].set_desc(0, offset=mem.size - 100, length=0xFFFFFFFF)
            before = bytes(mem.mm)
            pkt = bytes(range(256))
            await asyncio.wait_for(a.target.get_tx_queue(0).write_packet(pkt), T)
            d0, d1 = mem.m2s[0].desc(0), mem.m2s[0].desc(1)
            assert (d0.flags, d0.length, d1.flags, d1.length) == (DESC_FLAG_NEXT, 100, 0, 156)
            assert mem.receive() == [pkt]
            after = bytes(mem.mm)
            b1 = mem.buffer(1, 1)  # the buffer of M2S slot 1 got the other 156 bytes
            for lo, hi in ((mem.buffers_at, b1), (b1 + 156, mem.size - 100)):
                assert after[lo:hi] == before[lo:hi], f"written outside at {lo}..{hi}"

    async def test_tiny_posted_buffers(self, sock_path: str, no_leaks: None) -> None:
        """Posted capacities of 1 byte: a 10-byte packet takes 10 slots; one longer
        than the whole ring can hold is refused to the caller (PacketTooLarge)."""
        async with arena(sock_path) as a, hostile_connected(a) as (_hc, mem):
            mem.post()
            for s in range(mem.R):
                mem.m2s[0].set_desc(s, length=1)
            tx = a.target.get_tx_queue(0)
            await asyncio.wait_for(tx.write_packet(b"0123456789"), T)
            assert mem.receive(repost=False) == [b"0123456789"]
            mem.post()
            for s in range(mem.R):
                mem.m2s[0].set_desc(s, length=1)
            with pytest.raises(PacketTooLarge):
                await tx.write_packet(b"x" * 17)
            assert a.target.is_connected()


@both_loops
class TestSlaveDataPath:
    """A hostile server writes the slave's memory; the slave is the victim."""

    @asynccontextmanager
    async def up(self, sock_dir: str, **kw: Any) -> AsyncIterator[tuple[SlaveArena, ServerConn,
                                                                        ServerSession]]:
        kw.setdefault("memory_config", MemoryConfig(log2_ring_size=4))
        async with slave_arena(sock_dir, **kw) as a:
            conn = await a.srv.accept()
            s = await conn.serve()
            await connected(a.victim)
            await until(lambda: s.posted() > 0, what="M2S buffers posted")
            yield a, conn, s

    @pytest.mark.parametrize("delta", [17, -1, 0x8000])
    async def test_s2m_tail_outside_the_ring(self, sock_dir: str, no_leaks: None,
                                             delta: int) -> None:
        reason = "S2M tail moved outside [head - ring size, head]"
        async with self.up(sock_dir) as (a, conn, s):
            tx = a.victim.get_tx_queue(0)
            await tx.write_burst([b"1", b"2"])
            assert s.receive() == [b"1", b"2"]
            s.s2m[0].tail = (s.s2m[0].head - delta) & 0xFFFF
            with pytest.raises(Disconnected) as info:
                await tx.write_packet(b"3")
            assert info.value.reason == reason
            await victim_reason(a, conn, reason)

    async def test_s2m_tail_moved_back_within_the_ring(self, sock_dir: str,
                                                       no_leaks: None) -> None:
        """A tail moved back by less than the ring only makes the slave think slots
        are still in use (fewer free slots); nothing breaks once it is put right."""
        async with self.up(sock_dir) as (a, _conn, s):
            tx = a.victim.get_tx_queue(0)
            ring = s.s2m[0]
            assert tx.write_burst_nowait([b"x"] * 10) == 10
            assert len(s.receive()) == 10
            ring.tail = (ring.head - 16) & 0xFFFF  # a 16-slot ring: all in use
            assert tx.write_burst_nowait([b"y"]) == 0
            ring.tail = ring.head
            assert tx.write_burst_nowait([b"z"]) == 1
            assert s.receive() == [b"z"]

    @pytest.mark.parametrize("how", ["backwards", "past-posted"])
    async def test_m2s_tail_outside_what_was_posted(self, sock_dir: str, no_leaks: None,
                                                    how: str) -> None:
        reason = "M2S tail moved past the buffers we posted"
        async with self.up(sock_dir) as (a, conn, s):
            assert s.send(0, [b"one"]) == 1
            assert await read_n(a.victim, 1) == [b"one"]
            ring = s.m2s[0]
            ring.tail = (ring.tail - 1) & 0xFFFF if how == "backwards" else \
                (ring.head + 1) & 0xFFFF
            s.signal_m2s()
            with pytest.raises(Disconnected) as info:
                await asyncio.wait_for(a.victim.get_rx_queue(0).read_packet(), T)
            assert info.value.reason == reason
            await victim_reason(a, conn, reason)

    @pytest.mark.parametrize("length", [0, 2049, 0xFFFFFFFF])
    async def test_m2s_length_out_of_range(self, sock_dir: str, no_leaks: None,
                                           length: int) -> None:
        async with self.up(sock_dir) as (a, _conn, s):
            s.send(0, [b"before", b"bad", b"after"], signal=False)
            s.m2s[0].set_desc((s.m2s[0].tail - 2) & 0xFFFF, length=length)
            s.signal_m2s()
            assert await read_n(a.victim, 2) == [b"before", b"after"]
            st = a.victim.get_rx_queue(0).stats()
            assert (st.bad_descriptors, st.drops) == (1, 1)
            assert a.victim.is_connected()

    async def test_m2s_region_and_offset_are_not_trusted(self, sock_dir: str,
                                                         no_leaks: None) -> None:
        """The slave reads a filled slot from its own record of what it posted
        (§12.7), whatever region/offset the server writes into the descriptor."""
        async with self.up(sock_dir) as (a, _conn, s):
            ring = s.m2s[0]
            slot = ring.tail
            s.send(0, [b"the real data"], signal=False)
            ring.set_desc(slot, region=7, offset=0xFFFFFFF0)
            s.signal_m2s()
            assert await read_n(a.victim, 1) == [b"the real data"]
            assert a.victim.get_rx_queue(0).stats().bad_descriptors == 0

    async def test_m2s_chain_that_never_ends(self, sock_dir: str, no_leaks: None) -> None:
        reason = "M2S chain longer than the ring"
        async with self.up(sock_dir) as (a, conn, s):
            ring = s.m2s[0]
            n = s.posted()
            assert n == ring.size
            s.send(0, [b"c"] * n, signal=False)
            for k in range(n):
                ring.set_desc(k, flags=DESC_FLAG_NEXT)
            s.signal_m2s()
            with pytest.raises(Disconnected) as info:
                await asyncio.wait_for(a.victim.get_rx_queue(0).read_packet(), T)
            assert info.value.reason == reason
            await victim_reason(a, conn, reason)


# ----------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------
async def _cancel_storm(tx: Any, rx: Any, seed: int) -> None:
    """150 writes of numbered packets, each writer cancelled after a random short
    time, while a reader is cancelled at random (wait_for timeouts); then the rest
    left alone.  The cancellation contract: the reader sees exactly, in order, the
    packets of the writes that returned (``write_burst``'s count honoured); a
    cancelled write published nothing and is offered again.

    The reader and the writer draw from generators of their own, so each side's
    choices repeat with the seed.  How many cancellations land depends on timing,
    so none is counted: one read and one write are cancelled deterministically
    first (an empty ring; a full ring with nobody reading)."""
    wrnd, rrnd = random.Random(seed), random.Random(seed + 1)
    got: list[int] = []
    published: list[int] = []

    # deterministic cancellations: nothing is pending, so this read must time out
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(rx.read_burst(4), 0.01)
    # fill the ring; nobody reads yet, so the next write must still be waiting
    # when it is cancelled, and must have published nothing
    seq = 0
    while (n := tx.write_burst_nowait([seq_packet(seq, 5000)])):
        published.append(seq)
        seq += n
    w = asyncio.ensure_future(tx.write_burst([seq_packet(seq, 5000)]))
    await asyncio.sleep(0.01)
    w.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w
    total = seq + 1500

    async def reader() -> None:
        while len(got) < total:
            try:
                pkts = await asyncio.wait_for(rx.read_burst(rrnd.randint(1, 9)),
                                              rrnd.choice((0.0005, 0.001, 0.01)))
            except TimeoutError:
                continue
            for pkt in pkts:
                n = check_seq_packet(pkt)
                assert n == len(got), f"expected packet {len(got)}, received {n}"
                got.append(n)

    rtask = asyncio.ensure_future(reader())
    try:
        for i in range(150):
            burst = range(seq, min(total, seq + wrnd.randint(1, 25)))
            w = asyncio.ensure_future(tx.write_burst(
                [seq_packet(k, wrnd.choice((60, 2048, 3000, 5000))) for k in burst]))
            await asyncio.sleep(wrnd.choice((0, 0, 0.0002, 0.001)))
            if i % 2:
                w.cancel()
            try:
                n = await w
            except asyncio.CancelledError:
                continue
            published.extend(burst[:n])
            seq += n
        while seq < total:  # the rest, left alone
            n = await asyncio.wait_for(tx.write_burst(
                [seq_packet(k) for k in range(seq, min(total, seq + 100))]), T)
            published.extend(range(seq, seq + n))
            seq += n
        await asyncio.wait_for(rtask, T)
    finally:
        rtask.cancel()
    assert got == published == list(range(total))
    assert rx.stats().bad_descriptors == 0


async def read_until_killed(rx: Any, proc: asyncio.subprocess.Process) -> tuple[
        list[int], Disconnected]:
    """Read the peer process's numbered packets from ``rx``, SIGKILL it after 2000, and
    read on until the link goes: the sequence numbers read, and the Disconnected."""
    killed = False
    got: list[int] = []
    with pytest.raises(Disconnected) as info:
        while True:
            for pkt in await asyncio.wait_for(rx.read_burst(64), T):
                got.append(check_seq_packet(pkt))
            if len(got) > 2000 and not killed:
                proc.send_signal(signal.SIGKILL)
                killed = True
    assert await proc.wait() == -signal.SIGKILL
    return got, info.value


class TestFaults:
    @both_loops
    async def test_peer_slave_killed_mid_burst(self, sock_path: str, no_leaks: None) -> None:
        """A slave process bursting numbered packets is SIGKILLed: everything
        received before is intact and in order (the S2M ring is lossless); the
        master reports EOF, frees the peer's memory, and serves the next slave."""
        async with guard_loop(), Socket(sock_path) as sock:
            m = sock.new_interface(Arguments(id=0, is_master=True))
            async with peer_process("serve", "--role", "slave", "--path", sock_path,
                                    "--burst") as proc:
                await connected(m, timeout=10)
                got, info = await read_until_killed(m.get_rx_queue(0), proc)
            assert got == list(range(len(got)))
            assert info.reason == "peer closed the connection" and info.by_peer
            assert m.get_disconnect_reason() == "peer closed the connection"
            s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
            await connected(m, s)
            await exchange(s, m)

    @both_loops
    async def test_peer_master_killed_mid_burst(self, sock_path: str, no_leaks: None) -> None:
        """A master process bursting into our slave is SIGKILLed: our slave reports
        EOF, keeps retrying (ECONNREFUSED on the dead socket file), and connects to
        the next master, which replaces the stale socket file."""
        async with guard_loop(), Socket(sock_path) as sock:
            s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
            async with peer_process("serve", "--role", "master", "--path", sock_path,
                                    "--burst") as proc:
                await connected(s, timeout=10)
                got, info = await read_until_killed(s.get_rx_queue(0), proc)
            assert got == list(range(len(got)))
            assert info.reason == "peer closed the connection"
            assert s.get_disconnect_reason() == "peer closed the connection"
            await until(lambda: "Connection refused" in s.get_connect_error())
            assert os.path.exists(sock_path)  # stale, left by the dead process
            async with Socket(sock_path) as msock:
                m = msock.new_interface(Arguments(id=0, is_master=True))
                await connected(m, s)
                await exchange(s, m)
                await exchange(m, s)

    @both_loops
    async def test_master_writer_with_a_peer_that_stops_consuming(
            self, sock_path: str, no_leaks: None) -> None:
        """The client posts 4 buffers and never posts more: a writer with tx_timeout
        raises TimeoutError, and waiting does not spin the CPU."""
        async with arena(sock_path, target={"tx_timeout": 0.6}) as a, \
                hostile_connected(a, log2_ring_size=2) as (_hc, mem):
            mem.post()
            tx = a.target.get_tx_queue(0)
            assert await tx.write_burst([b"a"] * 4) == 4
            wall, cpu = time.monotonic(), time.process_time()
            with pytest.raises(TimeoutError):
                await tx.write_packet(b"b")
            wall, cpu = time.monotonic() - wall, time.process_time() - cpu
            assert 0.55 < wall < 2.0
            assert cpu < 0.35 * wall, f"{cpu:.3f} s of CPU in {wall:.3f} s"
            assert mem.receive() == [b"a"] * 4  # still connected, nothing lost
            await asyncio.wait_for(tx.write_packet(b"b"), T)
            assert mem.receive() == [b"b"]

    @both_loops
    async def test_slave_writer_with_a_peer_that_stops_consuming(
            self, sock_dir: str, no_leaks: None) -> None:
        async with slave_arena(sock_dir, tx_timeout=0.6,
                               memory_config=MemoryConfig(log2_ring_size=2)) as a:
            conn = await a.srv.accept()
            s = await conn.serve()
            await connected(a.victim)
            tx = a.victim.get_tx_queue(0)
            assert await tx.write_burst([b"a"] * 4) == 4
            wall, cpu = time.monotonic(), time.process_time()
            with pytest.raises(TimeoutError):
                await tx.write_burst([b"b"])
            wall, cpu = time.monotonic() - wall, time.process_time() - cpu
            assert 0.55 < wall < 2.0
            assert cpu < 0.35 * wall, f"{cpu:.3f} s of CPU in {wall:.3f} s"
            assert s.receive() == [b"a"] * 4

    @both_loops
    async def test_cancelled_in_the_middle_of_bursts(self, sock_path: str,
                                                     no_leaks: None) -> None:
        """Writers and readers cancelled at random points (while waiting for room
        or for packets): every packet published arrives once, intact, in order;
        every burst that completed arrives whole; traffic afterwards is exact."""
        mc = MemoryConfig(log2_ring_size=3)
        async with guard_loop(), Socket(sock_path) as sock:
            m = sock.new_interface(Arguments(id=0, is_master=True))
            s = sock.new_interface(Arguments(id=0, is_master=False, memory_config=mc, **FAST))
            await connected(m, s)
            for tx_itf, rx_itf in ((s, m), (m, s)):
                await _cancel_storm(tx_itf.get_tx_queue(0), rx_itf.get_rx_queue(0), seed=5)

    async def test_socket_file_deleted_or_replaced(self, sock_dir: str, no_leaks: None) -> None:
        """Deleting the socket file of a running master does not disturb established
        links, and the master binds a new listener at the path (checked every second):
        new slaves connect again.  A replacement bound there by someone else is theirs:
        the master leaves it alone, and closing our socket does not remove it.
        (tests/test_listener_attacks.py covers the reports and more cases.)"""
        path = os.path.join(sock_dir, "m.sock")
        async with guard_loop():
            async with Socket(path) as sock:
                m = sock.new_interface(Arguments(id=0, is_master=True))
                s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
                await connected(m, s)
                os.unlink(path)
                await exchange(s, m)
                late_m = sock.new_interface(Arguments(id=1, is_master=True))
                late = sock.new_interface(Arguments(id=1, is_master=False, **FAST))
                await connected(late_m, late, timeout=5.0)  # once the listener is back
                await exchange(late, late_m)
                await exchange(s, m)
                assert m.get_disconnect_reason() == s.get_disconnect_reason() == ""
                os.unlink(path)
                async with HostileServer(path) as replacement:  # before our next check
                    replaced = os.stat(path).st_ino
                    await asyncio.sleep(1.5)  # a check or two: it stays theirs
                    assert os.stat(path).st_ino == replaced
                    await sock.delete()
                    assert os.stat(path).st_ino == replaced, "someone else's file was removed"
                    assert not m.is_connected() and not s.is_connected()
                    # a slave on another socket reaches the replacement
                    async with Socket(path) as other:
                        victim = other.new_interface(Arguments(id=3, is_master=False, **FAST))
                        conn = await replacement.accept()
                        await conn.serve()
                        await connected(victim)
                        assert conn.init is not None and conn.init.id == 3

    async def test_stale_and_live_socket_files(self, sock_dir: str, no_leaks: None) -> None:
        path = os.path.join(sock_dir, "s.sock")
        async with guard_loop():
            # live: another process listens there -> refused, with a clear error
            async with peer_process("listen", "--path", path) as proc:
                assert await line(proc) == "ready"
                sock = Socket(path)
                sock.new_interface(Arguments(id=0, is_master=True))
                with pytest.raises(MemifError, match="in use by a live listener"):
                    await sock.start_polling()
                await sock.delete()
                assert os.path.exists(path)
                proc.kill()
                assert await proc.wait() == -signal.SIGKILL
            # stale: that process is dead, its file remains -> replaced
            assert os.path.exists(path)
            async with Socket(path) as sock:
                m = sock.new_interface(Arguments(id=0, is_master=True))
                s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
                await connected(m, s)
                await exchange(s, m)
            assert not os.path.exists(path)
            # not a socket at all
            with open(path, "w"):
                pass
            try:
                sock = Socket(path)
                sock.new_interface(Arguments(id=0, is_master=True))
                with pytest.raises(MemifError, match="exists and is not a socket"):
                    await sock.start_polling()
                await sock.delete()
            finally:
                os.unlink(path)

    async def test_socket_directory_missing_or_read_only(self, sock_dir: str,
                                                         no_leaks: None) -> None:
        async with guard_loop():
            await self._directory_missing_or_read_only(sock_dir)

    async def _directory_missing_or_read_only(self, sock_dir: str) -> None:
        missing = os.path.join(sock_dir, "nope", "m.sock")
        sock = Socket(missing)
        sock.new_interface(Arguments(id=0, is_master=True))
        with pytest.raises(MemifError, match=r"directory .*nope.* does not exist"):
            await sock.start_polling()
        await sock.delete()
        sock = Socket(missing)
        s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
        await sock.start_polling()
        await s.disconnect()
        with pytest.raises(ConnectionRefused, match="No such file or directory"):
            await s.request_connection()
        await sock.delete()
        # read-only: as root, in a child without CAP_DAC_OVERRIDE (root ignores modes)
        ro = os.path.join(sock_dir, "ro")
        os.mkdir(ro, 0o500)
        try:
            if os.geteuid() == 0:
                out = await asyncio.to_thread(_run_without_dac_override, os.path.join(ro, "m.sock"))
            else:
                sock = Socket(os.path.join(ro, "m.sock"))
                sock.new_interface(Arguments(id=0, is_master=True))
                try:
                    await sock.start_polling()
                    out = "listening"
                except MemifError as exc:
                    out = f"MemifError {exc}"
                await sock.delete()
            assert out.startswith("MemifError cannot listen on") and "permission denied" in out, out
            assert os.listdir(ro) == []
        finally:
            os.rmdir(ro)


@both_loops
class TestAccessControl:
    async def test_socket_mode_and_owner(self, sock_dir: str, no_leaks: None) -> None:
        """Socket(socket_mode=..., socket_owner=(uid, gid)) set the listener file's
        permissions and ownership (the kernel checks write permission on connect)."""
        path = os.path.join(sock_dir, "acl.sock")
        owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
        async with guard_loop(), Socket(path, socket_mode=0o660, socket_owner=owner) as sock:
            m = sock.new_interface(Arguments(id=0, is_master=True))
            st = os.stat(path)
            assert oct(st.st_mode & 0o7777) == oct(0o660)
            assert (st.st_uid, st.st_gid) == owner
            s = sock.new_interface(Arguments(id=0, is_master=False, **FAST))
            await connected(m, s)
        assert not os.path.exists(path)

    async def test_peer_credentials(self, sock_path: str, no_leaks: None) -> None:
        """SO_PEERCRED of an accepted control channel names the peer process
        (pid, uid, gid), whatever the peer sends (§2.6, §13)."""
        async with arena(sock_path) as a, await HostileClient.connect(sock_path) as hc:
            await hc.ok(init())
            ch = a.target._channel
            assert ch is not None and ch.transport is not None
            cred = ch.transport.get_extra_info("peercred")
            assert isinstance(cred, bytes)
            assert struct.unpack("3i", cred) == (os.getpid(), os.getuid(), os.getgid())


def _run_without_dac_override(path: str) -> str:
    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, from the bounding set
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    r = subprocess.run([sys.executable, HOSTILE, "bind", "--path", path], preexec_fn=drop,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


class TestSharedMemoryFaults:
    async def test_unsealed_region_truncated_under_the_master(self, sock_dir: str,
                                                              no_leaks: None) -> None:
        """With Arguments(require_seal=False) a client may shrink its memfd under the
        master's mapping: the next access kills the master with SIGBUS, which Python
        cannot catch (§6.1, §12.3).  Run in a child process: it dies with SIGBUS, and
        the client sees EOF.  This is why the seal is required by default."""
        path = os.path.join(sock_dir, "sigbus.sock")
        async with guard_loop(), peer_process("serve", "--role", "master", "--path", path,
                                              "--no-seal") as proc:
            mem = PeerMemory(seal=False)
            for _ in range(200):
                if os.path.exists(path):
                    break
                await asyncio.sleep(0.02)
            async with await HostileClient.connect(path) as hc:
                await hc.handshake(mem)
                assert await line(proc) == "up"
                mem.send(0, [seq_packet(1)])
                assert await line(proc) == "rx 1"  # mapped and working
                mem.send(0, [seq_packet(2)], signal=False)
                os.ftruncate(mem.fd, 0)  # allowed: nothing sealed it
                os.eventfd_write(mem.s2m_efd[0], 1)  # (our own mapping is now poison too)
                assert await asyncio.wait_for(proc.wait(), T) == -signal.SIGBUS
                await hc.expect_eof()
            os.unlink(path)  # the dead master left its socket file

    @pytest.mark.parametrize("late", [False, True], ids=["blocking-from-the-start",
                                                         "made-blocking-after-connect"])
    async def test_blocking_saturated_eventfd(self, sock_dir: str, no_leaks: None,
                                              late: bool) -> None:
        """The client's M2S interrupt eventfd is (or is made) blocking, and its
        counter is saturated: a master that writes it must not hang.

        From the start: fixed (the master sets O_NONBLOCK on every ring eventfd it
        receives).  Made blocking after CONNECT (O_NONBLOCK belongs to the open file
        description both processes share, so the peer can clear it at any time):
        fixed too, since the loop thread never writes a peer's eventfd (a signaller
        thread does; tests/test_eventfd_attacks.py races it for 10 s).  Run in a
        child with a deadline."""
        path = os.path.join(sock_dir, "efd.sock")
        args = ["eventfd-attack", "--path", path] + (["--late"] if late else [])
        async with peer_process(*args) as proc:
            assert await line(proc) == "armed"
            try:
                assert await line(proc, timeout=3.0) == "survived True"
            except TimeoutError:
                raise AssertionError("the master's event loop hung in an eventfd write") from None
            finally:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                if os.path.exists(path):
                    os.unlink(path)


# ----------------------------------------------------------------------------
# Endurance (bounded for CI)
# ----------------------------------------------------------------------------
class TestEndurance:
    async def test_a_thousand_connect_disconnect_cycles(self, sock_path: str,
                                                        no_leaks: None) -> None:
        """1 000 handshakes and teardowns (either side ending them): fds and memfd
        mappings end where they started (no_leaks, and checked half-way too)."""
        from leaks import memfd_mappings, open_fds

        ups = {"m": 0, "s": 0}
        changed = asyncio.Event()

        def counter(key: str) -> Any:
            def up(_itf: Interface) -> None:
                ups[key] += 1
                changed.set()
            return up

        async def both_up_again(before: dict[str, int]) -> None:
            while not (ups["m"] > before["m"] and ups["s"] > before["s"] and
                       m.is_connected() and s.is_connected()):
                changed.clear()
                await asyncio.wait_for(changed.wait(), T)

        async with guard_loop(), Socket(sock_path) as sock:
            m = sock.new_interface(Arguments(id=0, is_master=True, connected_func=counter("m")))
            s = sock.new_interface(Arguments(id=0, is_master=False, reconnect_min_delay=0.001,
                                             reconnect_max_delay=0.002,
                                             connected_func=counter("s"),
                                             memory_config=MemoryConfig(log2_ring_size=4)))
            await connected(m, s)
            fds, maps = len(open_fds()), memfd_mappings()
            for i in range(1000):
                before = dict(ups)
                if i % 2:
                    await s.disconnect()
                    await s.request_connection()
                else:
                    await m.disconnect()
                await both_up_again(before)
                if i == 500:  # a fresh link that has not signalled yet, like the baseline
                    assert (len(open_fds()), memfd_mappings()) == (fds, maps)
                if i % 100 == 0:
                    await exchange(s, m, 3, base=i)
            assert (len(open_fds()), memfd_mappings()) == (fds, maps)

    async def test_traffic_with_random_disconnects(self, sock_path: str, no_leaks: None) -> None:
        """Numbered packets both ways while either side disconnects at random times,
        for MEMIF_AIO_ENDURANCE_SECONDS (default 10; 60 for the long run).  Packets
        in flight when a link drops may be lost (§5.7); none may arrive twice, out
        of order, or corrupted."""
        duration = float(os.environ.get("MEMIF_AIO_ENDURANCE_SECONDS", "10"))
        rnd = random.Random(11)
        sizes = (60, 64, 1500, 2048, 2049, 9000)
        async with guard_loop(), Socket(sock_path) as sock:
            m = sock.new_interface(Arguments(id=0, is_master=True))
            s = sock.new_interface(Arguments(id=0, is_master=False, reconnect_min_delay=0.005,
                                             reconnect_max_delay=0.02,
                                             memory_config=MemoryConfig(log2_ring_size=7)))
            await connected(m, s)
            stop = asyncio.Event()
            sent = {"s2m": 0, "m2s": 0}
            received = {"s2m": 0, "m2s": 0}
            drops = 0

            async def sender(itf: Interface, key: str) -> None:
                seq = 0
                while not stop.is_set():
                    try:
                        n = rnd.randint(1, 48)
                        seq += await itf.get_tx_queue(0).write_burst(
                            [seq_packet(seq + k, sizes[(seq + k) % 6]) for k in range(n)])
                        sent[key] = seq
                    except Disconnected:
                        seq += 48  # whatever was published of that burst is gone or arrives
                        try:
                            await asyncio.wait_for(itf.wait_connected(), 1.0)
                        except TimeoutError:
                            pass

            async def receiver(itf: Interface, key: str) -> None:
                nonlocal drops
                last = -1
                while not stop.is_set():
                    try:
                        q = itf.get_rx_queue(0)
                        pkts = await asyncio.wait_for(q.read_burst(64), 0.2)
                    except TimeoutError:
                        continue
                    except Disconnected:
                        try:
                            await asyncio.wait_for(itf.wait_connected(), 1.0)
                        except TimeoutError:
                            pass
                        continue
                    for pkt in pkts:
                        seq = check_seq_packet(pkt)
                        assert seq > last, f"{key}: packet {seq} after {last}"
                        last = seq
                    received[key] += len(pkts)
                    drops += q.stats().drops

            async def chaos() -> int:
                n = 0
                while not stop.is_set():
                    await asyncio.sleep(rnd.uniform(0.02, 0.3))
                    if rnd.random() < 0.5:
                        await m.disconnect()
                    else:
                        await s.disconnect()
                        await asyncio.sleep(rnd.uniform(0, 0.02))
                        await s.request_connection()
                    n += 1
                return n

            tasks = [asyncio.ensure_future(c) for c in (
                sender(s, "s2m"), sender(m, "m2s"), receiver(m, "s2m"), receiver(s, "m2s"))]
            chaos_task = asyncio.ensure_future(chaos())
            try:
                done, _ = await asyncio.wait([*tasks, chaos_task], timeout=duration,
                                             return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    t.result()  # an assertion inside a task fails the test here
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks, chaos_task,
                                                      return_exceptions=True), 5)
            disconnects = chaos_task.result()
            assert disconnects >= duration / 0.3
            assert min(received.values()) > 100 * duration, (received, sent)
            assert drops == 0


async def test_guard_loop_names_the_callback_that_raised_with_its_traceback() -> None:
    """A rare failure must be diagnosable from the CI log alone: the guard's message carries
    the traceback of every exception that reached the loop, not only its repr."""
    def failing_callback() -> None:
        raise OSError(9, "Bad file descriptor")

    with pytest.raises(AssertionError) as info:
        async with guard_loop():
            asyncio.get_running_loop().call_soon(failing_callback)
            await asyncio.sleep(0)
    msg = str(info.value)
    assert msg.startswith("exceptions reached the event loop")
    assert "Traceback (most recent call last)" in msg and "in failing_callback" in msg
    assert "OSError: [Errno 9] Bad file descriptor" in msg
