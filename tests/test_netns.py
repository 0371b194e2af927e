"""Network namespaces (issue 12 §1): VPP's ``abstract:NAME,netns_name=`` /
``netns_pid=`` forms and ``netns=``, memif_aio in two namespaces, testpmd inside one.

The namespaces are made with ``ip netns add`` (unique names) and deleted at teardown, also
when the test fails.  Runs as root (CI does); without root or iproute2 the tests skip, except
under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import _harness
import pytest
import test_tools as tt  # the tools harness (memif-aio commands as processes)

import memif_aio.address as address
from memif_aio import Arguments, Interface, Socket
from memif_aio.cli.status import format_show, interface_status
from memif_aio.testing import testpmd as tpmod
from memif_aio.testing.plugin import in_ci as ci  # not conftest's: see tests/leaks.py
from memif_aio.testing.testpmd import TestPmd

pytestmark = pytest.mark.timeout(90)

tools = tt.tools  # fixture: the memif-aio commands a test starts are stopped and reaped

T = 15.0


def _need(what: str) -> None:
    if ci():
        pytest.fail(f"{what} [CI=true: the namespace tests must run in CI]", pytrace=False)
    pytest.skip(what)


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """``make_netns()`` adds a namespace with a unique name and returns the name; every one
    is deleted at teardown (the test fails if one is left)."""
    if os.geteuid() != 0:
        _need("network namespace tests need root (CAP_SYS_ADMIN)")
    if shutil.which("ip") is None:
        _need("network namespace tests need iproute2 (`ip netns`)")
    made: list[str] = []

    def make() -> str:
        name = f"memif-aio-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=10,
                       capture_output=True)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], timeout=10, capture_output=True)
        left = [n for n in made if os.path.exists(os.path.join(address.NETNS_RUN_DIR, n))]
        assert not left, f"namespaces left behind: {left}"


def netns_id(path: str) -> str:
    return os.readlink(path) if path.startswith("/proc/") else \
        f"net:[{os.stat(path).st_ino}]"


def listening_in(ns: str, name: str) -> bool:
    """Is ``name`` listening in namespace ``ns``?  (Its own /proc/net/unix, read inside.)"""
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/unix"], check=True,
                         timeout=10, capture_output=True, text=True).stdout
    return any(line.split()[7:8] == [name] and line.split()[3] == "00010000"
               for line in out.splitlines()[1:])


def unique() -> str:
    return f"memif-aio-ns-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def args(master: bool, **kw: Any) -> Arguments:
    return Arguments(id=0, is_master=master, name="m" if master else "s",
                     reconnect_min_delay=0.02, reconnect_max_delay=0.2, **kw)


@asynccontextmanager
async def pair(master: tuple[str, dict[str, Any]], slave: tuple[str, dict[str, Any]]
               ) -> AsyncIterator[tuple[Socket, Interface, Socket, Interface]]:
    async with AsyncExitStack() as stack:
        ms = await stack.enter_async_context(Socket(master[0], **master[1]))
        ss = await stack.enter_async_context(Socket(slave[0], **slave[1]))
        m = ms.new_interface(args(True))
        s = ss.new_interface(args(False))
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        yield ms, m, ss, s


async def both_ways(a: Interface, b: Interface, n: int = 32) -> None:
    await _harness.both_ways(a, b, n, T)


def no_netns_thread_left() -> None:
    assert not [t for t in threading.enumerate() if t.name == "memif_aio netns"]
    # the calling (loop) thread never left our namespace
    assert os.readlink("/proc/thread-self/ns/net") == os.readlink("/proc/self/ns/net")


# --- memif_aio in namespaces --------------------------------------------------------------------

@pytest.mark.both_loops
async def test_abstract_socket_in_a_namespace(make_netns: Callable[[], str],
                                              no_leaks: None) -> None:
    """Master ``@NAME`` with ``netns=NS``, slave VPP-style ``abstract:NAME,netns_name=NS``:
    the listener is in NS (not ours), traffic flows both ways, events and stats say NS."""
    ns = make_netns()
    name = unique()
    me = os.readlink("/proc/self/ns/net")
    async with Socket(f"@{name}", netns=ns) as ms, \
            Socket(f"abstract:{name},netns_name={ns}") as ss:
        m = ms.new_interface(args(True))
        s = ss.new_interface(args(False))
        events = s.events()
        await asyncio.wait_for(asyncio.gather(m.wait_connected(), s.wait_connected()), T)
        assert listening_in(ns, "@" + name) and not address.unix_listening("@" + name)
        await both_ways(m, s)
        ev = await asyncio.wait_for(events.__anext__(), T)
        events.close()
        assert (ev.kind, ev.netns) == ("up", ns)
        assert ms.netns == ss.netns == ns and s.stats().netns == ns and m.stats().netns == ns
        assert f"netns={ns!r}" in repr(ss)
        show = format_show([m, s])  # memif-aio show and the status endpoint say it too
        assert show.count(f"netns {ns}") == 2, show
        assert interface_status(s)["netns"] == ns
        assert os.readlink("/proc/self/ns/net") == me
        no_netns_thread_left()
    assert not listening_in(ns, "@" + name)


@pytest.mark.both_loops
@pytest.mark.parametrize("master_first", [True, False], ids=["master-in-A", "master-in-B"])
async def test_master_and_slave_in_two_namespaces(make_netns: Callable[[], str], sock_path: str,
                                                  master_first: bool, no_leaks: None) -> None:
    """A filesystem socket is reachable from any namespace: master's socket in one, slave's
    in the other (each way round), traffic both ways; the listener is listed in the
    master's namespace only."""
    a, b = make_netns(), make_netns()
    mns, sns = (a, b) if master_first else (b, a)
    async with pair((sock_path, {"netns": mns}), (sock_path, {"netns": sns})) as (_ms, m, _ss, s):
        assert listening_in(mns, sock_path) and not listening_in(sns, sock_path)
        assert not address.unix_listening(sock_path)
        await both_ways(m, s)
        assert (m.stats().netns, s.stats().netns) == (mns, sns)


@pytest.mark.both_loops
async def test_reconnect_recreates_the_socket_in_the_namespace(
        make_netns: Callable[[], str], no_leaks: None) -> None:
    """Every attempt and every new listener is made in the namespace: the master goes away
    and comes back, the slave gets up again (an attempt from our namespace could not)."""
    ns = make_netns()
    name = unique()
    async with Socket(f"abstract:{name},netns_name={ns}") as ss:
        s = ss.new_interface(args(False))
        async with s.events() as events:
            for _ in range(3):
                async with Socket(f"@{name}", netns=ns) as ms:
                    m = ms.new_interface(args(True))
                    await asyncio.wait_for(asyncio.gather(m.wait_connected(),
                                                          s.wait_connected()), T)
                    await both_ways(m, s, 4)
                kinds: list[str] = []  # the master is gone: the slave's link goes down
                while "down" not in kinds:
                    kinds.append((await asyncio.wait_for(events.__anext__(), T)).kind)
                assert kinds[-2:] == ["up", "down"] and not s.is_connected()
        assert s.stats().connections == 3
    no_netns_thread_left()


@pytest.mark.both_loops
async def test_pid_form_and_other_namespace_handles(make_netns: Callable[[], str],
                                                    no_leaks: None) -> None:
    """``netns_pid=PID`` (a process living in the namespace), ``netns=/proc/PID/ns/net``,
    ``netns=<fd>`` and ``netns=<open file>`` all reach the same namespace."""
    ns = make_netns()
    name = unique()
    proc = await asyncio.create_subprocess_exec("ip", "netns", "exec", ns, "sleep", "60")
    try:
        nspath = f"/proc/{proc.pid}/ns/net"
        deadline = time.monotonic() + T  # until `ip netns exec` has entered and exec'd sleep
        while netns_id(nspath) != netns_id(os.path.join(address.NETNS_RUN_DIR, ns)):
            assert time.monotonic() < deadline, "ip netns exec did not enter the namespace"
            await asyncio.sleep(0.01)
        fd = os.open(os.path.join(address.NETNS_RUN_DIR, ns), os.O_RDONLY)
        try:
            with open(nspath, "rb") as f:
                for slave_name, kw in ((f"@{name}", {"netns": nspath}),
                                       (f"@{name}", {"netns": fd}),
                                       (f"@{name}", {"netns": f})):
                    async with pair((f"abstract:{name},netns_pid={proc.pid}", {}),
                                    (slave_name, kw)) as (ms, m, _ss, s):
                        assert ms.netns == f"pid {proc.pid}"
                        assert listening_in(ns, "@" + name)
                        await both_ways(m, s, 4)
            os.fstat(fd)  # the caller's fd is still the caller's (we used a dup)
        finally:
            os.close(fd)
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.both_loops
async def test_wrong_namespace_is_a_clear_refusal(make_netns: Callable[[], str],
                                                  no_leaks: None) -> None:
    """The master listens in A, the slave looks in B: a refusal naming B and the name."""
    a, b = make_netns(), make_netns()
    name = unique()
    async with Socket(f"@{name}", netns=a) as ms, \
            Socket(f"abstract:{name},netns_name={b}") as ss:
        m = ms.new_interface(args(True))
        s = ss.new_interface(args(False))
        async with s.events() as events:
            ev = await asyncio.wait_for(events.__anext__(), T)
        assert (ev.kind, ev.netns) == ("refused", b)
        assert ev.error is not None and ev.reason == ev.error.reason
        assert "Connection refused" in ev.reason and f"@{name}" in ev.reason
        assert f"network namespace {b!r}" in ev.reason, ev.reason
        assert not m.is_connected() and not s.is_connected()


def test_missing_namespace_and_not_a_namespace(no_leaks: None) -> None:
    """Never created, named in the error; a namespace of another kind, or a plain file, is
    refused when a socket is made in it."""
    missing = f"memif-aio-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(FileNotFoundError, match=f"network namespace '{missing}' not found at "
                       f"/var/run/netns/{missing}"):
        Socket(f"abstract:x,netns_name={missing}")
    assert not os.path.exists(os.path.join(address.NETNS_RUN_DIR, missing))
    with pytest.raises(FileNotFoundError, match="/proc/999999999/ns/net"):
        Socket("abstract:x,netns_pid=999999999")
    with pytest.raises(FileNotFoundError, match="/nonexistent/ns"):
        Socket("/tmp/x.sock", netns="/nonexistent/ns")
    for path in ("/proc/self/ns/uts", "/etc/hostname"):
        fd = address.open_netns(address.Netns(path, path))
        try:
            with pytest.raises(ValueError, match="not a network namespace"):
                address.socket_in_netns(fd, label=path)
        finally:
            os.close(fd)
    with pytest.raises(ValueError, match="not a network namespace"):
        Socket("@x", netns="/proc")


async def test_async_slave_refusal_when_the_namespace_cannot_be_entered(
        monkeypatch: pytest.MonkeyPatch, no_leaks: None) -> None:
    """Without CAP_SYS_ADMIN setns says EPERM: a PermissionError with the hint (directly) and
    a refusal with the same text (a slave keeps retrying)."""
    def eperm(fd: int) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(address, "_setns", eperm)
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        with pytest.raises(PermissionError, match="CAP_SYS_ADMIN"):
            address.socket_in_netns(fd, label="blue")
    finally:
        os.close(fd)
    async with Socket("@memif-aio-eperm", netns="/proc/self/ns/net") as ss:
        s = ss.new_interface(args(False))
        async with s.events() as events:
            ev = await asyncio.wait_for(events.__anext__(), T)
        assert ev.kind == "refused" and "CAP_SYS_ADMIN" in ev.reason, ev.reason


def test_netns_fd_held_until_delete(no_leaks: None) -> None:
    """The namespace is opened once, held, and closed by delete."""
    async def run() -> None:
        sock = Socket("@memif-aio-held", netns="/proc/self/ns/net")
        fd = sock._netns_fd
        assert fd is not None and os.readlink(f"/proc/self/fd/{fd}") == \
            os.readlink("/proc/self/ns/net")
        await sock.delete()
        assert sock._netns_fd is None
        with pytest.raises(OSError):
            os.fstat(fd)
    asyncio.run(run())


# --- DPDK testpmd inside a namespace ------------------------------------------------------------

DST = bytes.fromhex("020000000002")
SRC = bytes.fromhex("020000000001")


class NetnsTestPmd(TestPmd):
    """testpmd run as ``ip netns exec NS dpdk-testpmd ...`` (its command line as
    :class:`TestPmd` builds it).  Its listening socket is in NS, so readiness is read from
    its own ``/proc/PID/net/unix``."""

    __test__ = False
    live: weakref.WeakSet[NetnsTestPmd] = weakref.WeakSet()

    def __init__(self, netns: str, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.netns = netns
        self.argv = ["ip", "netns", "exec", netns, *self.argv]
        NetnsTestPmd.live.add(self)


@pytest.fixture
def testpmd_in_netns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """TestPmd's listening check reads the namespace of the testpmd being started."""
    if tpmod.find_testpmd() is None:
        _need("dpdk-testpmd not found (apt-get install " + " ".join(tpmod.DEBIAN_PACKAGES)
              + ")")
    plain = address.unix_listening

    def listening(name: str) -> bool:  # in our namespace or in that of a NetnsTestPmd
        pids = [tp.pid for tp in NetnsTestPmd.live if tp.pid is not None]
        return plain(name) or any(plain(name, pid=pid) for pid in pids)

    monkeypatch.setattr(tpmod, "unix_listening", listening)
    before = os.sched_getaffinity(0)
    if tpmod.default_cpu() != 0 and 0 in before:
        os.sched_setaffinity(0, {0})  # off the CPU testpmd polls on
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
        killed = tpmod.kill_all()
        assert not killed, f"testpmd left running (killed now): {killed}"


async def echo(itf: Interface, n: int = 200) -> None:
    """testpmd macswap: warm up (early frames are dropped), then ``n`` frames come back
    with their MACs swapped, in order."""
    tx, rx = itf.get_tx_queue(0), itf.get_rx_queue(0)
    deadline = time.monotonic() + T
    while True:  # probes until one returns
        await tx.write_packet(DST + SRC + b"\x88\xb6" + bytes(46))
        try:
            got = await asyncio.wait_for(rx.read_burst(64), 0.05)
        except TimeoutError:
            got = []
        if got:
            break
        assert time.monotonic() < deadline, "no probe came back from testpmd"
    await asyncio.sleep(0.1)
    rx.read_burst_nowait(1024)  # late probes
    frames = [DST + SRC + b"\x88\xb5" + i.to_bytes(4, "big") + bytes(50 + i % 300)
              for i in range(n)]
    received: list[bytes] = []
    for k in range(0, n, 32):  # windowed: testpmd drops what does not fit its TX ring
        window = frames[k:k + 32]
        done = 0
        while done < len(window):
            done += await tx.write_burst(window[done:])
        want = len(received) + len(window)
        while len(received) < want:
            got = await asyncio.wait_for(rx.read_burst(64), T)
            received += [p for p in got if p[12:14] == b"\x88\xb5"]
    assert received == [f[6:12] + f[0:6] + f[12:] for f in frames]


@pytest.mark.interop
@pytest.mark.both_loops
@pytest.mark.parametrize("role", ["master", "slave"], ids=["py-master", "py-slave"])
async def test_testpmd_inside_a_namespace(role: str, make_netns: Callable[[], str],
                                          testpmd_in_netns: None, no_leaks: None) -> None:
    """``ip netns exec NS dpdk-testpmd`` on the abstract socket @NAME of NS; memif_aio
    reaches it from our namespace with ``abstract:NAME,netns_name=NS`` (py-slave) or
    listens there with ``netns=NS`` (py-master); echo verified."""
    ns = make_netns()
    name = unique()
    async with AsyncExitStack() as stack:
        if role == "master":
            sock = await stack.enter_async_context(Socket(f"@{name}", netns=ns))
            itf = sock.new_interface(args(True))
            tp = await stack.enter_async_context(NetnsTestPmd(ns, "client", "@" + name))
        else:
            tp = await stack.enter_async_context(NetnsTestPmd(ns, "server", "@" + name))
            assert listening_in(ns, "@" + name) and not address.unix_listening("@" + name)
            sock = await stack.enter_async_context(
                Socket(f"abstract:{name},netns_name={ns}"))
            itf = sock.new_interface(args(False))
        await itf.wait_connected(T)
        await tp.wait_connected(T)
        await echo(itf)
        assert itf.stats().netns == ns


# --- the command line: --socket takes the same strings -------------------------------------------

@pytest.mark.parametrize("form", ["name", "pid"])
def test_cli_socket_strings_reach_a_namespace(make_netns: Callable[[], str], sock_dir: str,
                                              tools: list[Any], no_leaks: None,
                                              form: str) -> None:
    """``memif-aio responder --socket abstract:NAME,netns_name=NS`` listens inside NS, and
    ``memif-aio ping`` reaches it with the same string (or the ``netns_pid=`` form naming a
    process in NS); nothing listens in our own namespace."""
    ns = make_netns()
    name = unique()
    sock = f"abstract:{name},netns_name={ns}"
    resp = tt.start(tools, sock_dir, "responder", "--socket", sock, "--role", "master",
                    "--timeout", "0")
    resp.wait_for("answering for")
    deadline = time.monotonic() + T
    while not listening_in(ns, "@" + name):
        assert time.monotonic() < deadline, "the responder never listened in the namespace"
        time.sleep(0.05)
    assert not address.unix_listening("@" + name)
    holder = None
    if form == "pid":  # a process that lives in NS names it
        holder = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"])
        try:
            deadline = time.monotonic() + T
            while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
                assert time.monotonic() < deadline, "the holder never entered the namespace"
                time.sleep(0.02)
        except BaseException:
            holder.kill()
            holder.wait(10)
            raise
        sock = f"abstract:{name},netns_pid={holder.pid}"
    try:
        r = tt.run(sock_dir, "ping", "--socket", sock, "-c", "3", "-i", "0.05")
        assert r.returncode == 0, r.stdout + r.stderr
        tt.check_ping_output(r.stdout, 3)
        # the wrong namespace: a clear refusal, naming it
        other = make_netns()
        r = tt.run(sock_dir, "ping", "--socket", f"abstract:{name},netns_name={other}", "-c",
                   "1", "--timeout", "1")
        assert r.returncode == 2, r.stdout + r.stderr
        assert other in r.stderr, r.stderr
    finally:
        if holder is not None:
            holder.kill()
            holder.wait(10)
        resp.signal(signal.SIGINT)
        rc, _out, _err = resp.finish()
    assert rc == 0
