"""memif_aio.address: socket names, stale files, /proc/net/unix, SO_PEERCRED, paths longer
than sun_path (issue 12 §2) and padded abstract names (issue 12 §5)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import _harness
import pytest

from memif_aio import Arguments, Interface, Socket
from memif_aio.address import (
    SUN_PATH_MAX,
    Netns,
    PeerCredentials,
    bind_unix,
    connect_unix,
    is_socket,
    listening_names,
    parse_address,
    peer_credentials,
    remove_stale_socket,
    socket_address,
    unix_listening,
    unix_sockets,
)

T = 10.0


def unique(prefix: str = "memif-aio-addr") -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# --- parsing ---------------------------------------------------------------------------------

def test_parse_plain_forms() -> None:
    a = parse_address("@vpp/memif-eth0")
    assert (a.name, a.abstract, a.padded, a.netns) == ("vpp/memif-eth0", True, False, None)
    assert a.sockaddr == b"\0vpp/memif-eth0"
    assert parse_address("abstract:x").sockaddr == b"\0x"
    p = parse_address("/run/vpp/memif.sock")
    assert (p.name, p.abstract, p.sockaddr) == ("/run/vpp/memif.sock", False,
                                                b"/run/vpp/memif.sock")
    # a comma that is no option stays part of the name; paths never take options
    assert parse_address("@a,b").name == "a,b"
    assert parse_address("/tmp/a,padded").name == "/tmp/a,padded"
    assert socket_address("@x") == "\0x" and socket_address("/p") == "/p"


def test_parse_vpp_netns_forms() -> None:
    a = parse_address("abstract:memif1,netns_name=blue")
    assert a.name == "memif1" and a.netns == Netns("blue", "/var/run/netns/blue")
    b = parse_address("abstract:memif1,netns_name=/run/netns/red")
    assert b.netns == Netns("/run/netns/red", "/run/netns/red")
    c = parse_address("abstract:memif1,netns_pid=42")
    assert c.netns == Netns("pid 42", "/proc/42/ns/net")
    d = parse_address("abstract:memif1,netns_pid=42,padded")
    assert d.padded and d.netns is not None and d.netns.path == "/proc/42/ns/net"
    e = parse_address("@memif1", netns="/proc/7/ns/net")
    assert e.netns == Netns("/proc/7/ns/net", "/proc/7/ns/net")
    assert parse_address("/p", netns="blue").netns == Netns("blue", "/var/run/netns/blue")
    assert parse_address("/p", netns=5).netns == Netns("fd 5", fd=5)


def test_parse_padded() -> None:
    a = parse_address("@dpdk,padded")
    assert a.padded and a.name == "dpdk"
    assert len(a.sockaddr) == SUN_PATH_MAX and a.sockaddr == b"\0dpdk".ljust(108, b"\0")
    assert parse_address("@dpdk", padded=True) == a


@pytest.mark.parametrize("name, kwargs, match", [
    ("", {}, "empty"),
    ("@", {}, "empty"),
    ("abstract:,padded", {}, "empty"),
    ("@" + "x" * 108, {}, "too long"),
    ("/tmp/a\0b", {}, "NUL"),
    ("/tmp/x", {"padded": True}, "only an abstract name"),
    ("abstract:x,netns_name=a", {"netns": "b"}, "once"),
    ("abstract:x,netns_name=a,netns_pid=3", {}, "once"),
    ("abstract:x,netns_pid=me", {}, "not a pid"),
    ("abstract:x,netns_pid=0", {}, "positive pid"),
    ("abstract:x,netns_name=", {}, "needs a value"),
    ("@x", {"netns": ".."}, "not a namespace name"),
])
def test_parse_refuses(name: str, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_address(name, **kwargs)  # type: ignore[arg-type]


def test_parse_type_errors() -> None:
    with pytest.raises(TypeError):
        parse_address("@x", netns=True)
    with pytest.raises(TypeError):
        parse_address("@x", netns=1.5)  # type: ignore[arg-type]


# --- socket files, /proc/net/unix, credentials -------------------------------------------------

def test_remove_stale_socket(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    assert remove_stale_socket(path) is False  # nothing there
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: stale
    assert is_socket(path)
    assert remove_stale_socket(path) is True and not os.path.exists(path)

    live = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        live.bind(path)
        live.listen(1)
        with pytest.raises(OSError, match="in use by a live listener") as ei:
            remove_stale_socket(path)
        assert ei.value.errno == errno.EADDRINUSE and is_socket(path)
        # a live socket of another type (the probe is SOCK_STREAM) is live too
        with pytest.raises(OSError) as ei:
            remove_stale_socket(path, socket.SOCK_STREAM)
        assert ei.value.errno == errno.EADDRINUSE
    finally:
        live.close()
        os.unlink(path)

    with open(path, "w"):
        pass
    try:
        with pytest.raises(FileExistsError, match="exists and is not a socket"):
            remove_stale_socket(path)
        assert not is_socket(path) and os.path.exists(path)
    finally:
        os.unlink(path)


def test_proc_net_unix_and_peer_credentials(sock_dir: str) -> None:
    name = unique()
    path = os.path.join(sock_dir, "l")
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    seq = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        stream.bind("\0" + name)
        assert not unix_listening("@" + name)  # bound, not listening
        stream.listen(1)
        seq.bind(path)
        seq.listen(1)
        assert unix_listening("@" + name) and unix_listening(path)
        assert unix_listening("@" + name, pid=os.getpid())
        assert "@" + name in listening_names(socket.SOCK_STREAM, abstract_only=True)
        assert "@" + name not in listening_names(socket.SOCK_SEQPACKET)
        assert path in listening_names(socket.SOCK_SEQPACKET)
        assert path not in listening_names(abstract_only=True)
        entry = next(e for e in unix_sockets() if e.name == path)
        assert entry.listening and entry.type == socket.SOCK_SEQPACKET
        assert entry.inode == os.fstat(seq.fileno()).st_ino

        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            client.connect("\0" + name)
            conn, _ = stream.accept()
            with conn:
                assert peer_credentials(conn) == PeerCredentials(os.getpid(), os.getuid(),
                                                                 os.getgid())
        finally:
            client.close()
        closed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        closed.close()
        assert peer_credentials(closed) is None  # the kernel will not tell
    finally:
        stream.close()
        seq.close()
        os.unlink(path)
    assert not unix_listening("@" + name)


# --- long paths (issue 12 §2) ------------------------------------------------------------------

def long_path(sock_dir: str, total: int = 200) -> str:
    """A socket path of exactly ``total`` bytes under ``sock_dir`` (directories made)."""
    d = sock_dir
    while len(d) < total - 60:
        d = os.path.join(d, "d" * min(40, total - 60 - len(d)))
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "s" * (total - len(d) - 1))
    assert len(path.encode()) == total
    return path


def remove_dirs(sock_dir: str, path: str) -> None:
    d = os.path.dirname(path)
    while d != sock_dir:
        os.rmdir(d)
        d = os.path.dirname(d)


def test_bind_and_connect_long_path_raw(sock_dir: str, no_leaks: None) -> None:
    path = long_path(sock_dir)
    with pytest.raises(OSError):  # what the plain call says about it
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).bind(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cli = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        bind_unix(srv, path)
        srv.listen(1)
        assert is_socket(path)  # the file is at the long path itself
        connect_unix(cli, path)
        conn, _ = srv.accept()
        with conn:
            cli.send(b"x")
            assert conn.recv(10) == b"x"
        # a stale file at a long path is recognized and removed too
        cli.close()
        srv.close()
        assert remove_stale_socket(path) is True
    finally:
        cli.close()
        srv.close()
        if os.path.exists(path):
            os.unlink(path)
        remove_dirs(sock_dir, path)


def test_long_path_last_component_too_long(sock_dir: str, no_leaks: None) -> None:
    path = os.path.join(sock_dir, "n" * 120)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sock, pytest.raises(ValueError, match="last component is too long"):
        bind_unix(sock, path)


@asynccontextmanager
async def memif_pair(master_name: str, slave_name: str, *, master_kw: dict[str, Any] | None
                     = None, slave_kw: dict[str, Any] | None = None,
                     ) -> AsyncIterator[tuple[Socket, Interface, Socket, Interface]]:
    async with Socket(master_name, **(master_kw or {})) as ms, \
            Socket(slave_name, **(slave_kw or {})) as ss:
        m = ms.new_interface(Arguments(id=0, is_master=True, name="m"))
        s = ss.new_interface(Arguments(id=0, is_master=False, name="s",
                                       reconnect_min_delay=0.02, reconnect_max_delay=0.1))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        yield ms, m, ss, s


async def both_ways(a: Interface, b: Interface, n: int = 16) -> None:
    await _harness.both_ways(a, b, n, T)


@pytest.mark.both_loops
async def test_memif_over_200_byte_path(sock_dir: str, no_leaks: None) -> None:
    """Master binds and slave connects at a 200-byte path; the listener watches its file
    there (deleting it makes a new one), and delete removes it."""
    path = long_path(sock_dir)
    try:
        async with memif_pair(path, path) as (ms, m, _ss, s):
            assert is_socket(path)
            await both_ways(m, s)
            errors = ms.errors()
            os.unlink(path)  # the listener notices and binds again at the long path
            exc = await asyncio.wait_for(errors.__anext__(), T)
            assert "listening again" in str(exc) and is_socket(path)
            await s.disconnect()
            await s.request_connection()  # a new connect through the new file
            await asyncio.wait_for(s.wait_connected(), T)
            await both_ways(m, s)
        assert not os.path.exists(path)
    finally:
        remove_dirs(sock_dir, path)


# --- padded abstract names (issue 12 §5) ------------------------------------------------------

def padded_sockaddr(name: str) -> bytes:
    return (b"\0" + name.encode()).ljust(SUN_PATH_MAX, b"\0")


@pytest.mark.both_loops
async def test_padded_master_and_slave(no_leaks: None) -> None:
    """``,padded`` and ``padded=True`` meet; /proc/net/unix shows the padded name."""
    name = unique()
    async with memif_pair(f"@{name},padded", f"abstract:{name}",
                          slave_kw={"padded": True}) as (ms, m, ss, s):
        assert ms.address.padded and ss.address.padded
        shown = "@" + name + "@" * (SUN_PATH_MAX - 1 - len(name))  # each NUL shown as @
        assert unix_listening(shown) and not unix_listening("@" + name)
        await both_ways(m, s)


@pytest.mark.both_loops
async def test_padded_listener_and_client_raw(no_leaks: None) -> None:
    """Byte-exact peers: a raw listener bound to the padded address accepts memif_aio's
    padded slave (and a raw padded client gets memif_aio's padded master's HELLO); an
    unpadded slave is refused with an error that says to try ',padded'."""
    name = unique()
    loop = asyncio.get_running_loop()
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lst.setblocking(False)
    try:
        lst.bind(padded_sockaddr(name))  # as DPDK 20.11-21.05 / CNDP bind it
        lst.listen(4)
        async with Socket(f"@{name}") as plain:  # exact length: what Python/VPP send
            s = plain.new_interface(Arguments(id=0, is_master=False,
                                              reconnect_min_delay=0.02))
            async with s.events() as events:  # registered before the first attempt runs
                ev = await asyncio.wait_for(events.__anext__(), T)
            assert ev.kind == "refused" and not s.is_connected()
            assert "Connection refused" in ev.reason and "',padded'" in ev.reason, ev.reason
            assert s.get_connect_error() == ev.reason
        async with Socket(f"@{name},padded") as padded:
            s = padded.new_interface(Arguments(id=0, is_master=False))
            conn, _ = await asyncio.wait_for(loop.sock_accept(lst), T)
            with conn:  # the padded slave reached the padded listener
                assert peer_credentials(conn) == PeerCredentials(os.getpid(), os.getuid(),
                                                                 os.getgid())
    finally:
        lst.close()

    async with Socket(f"@{name}", padded=True) as ms:
        ms.new_interface(Arguments(id=0, is_master=True))
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        raw.setblocking(False)
        with raw:
            with pytest.raises(ConnectionRefusedError):
                raw.connect("\0" + name)  # exact length: nobody there
            await loop.sock_connect(raw, padded_sockaddr(name))
            hello = await asyncio.wait_for(loop.sock_recv(raw, 256), T)
            assert hello[:2] == b"\x02\x00"  # msg_type HELLO (2, little-endian u16)
