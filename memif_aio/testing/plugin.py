"""memif_aio's pytest plugin: fixtures for tests of code that uses memif.

Registered through the ``pytest11`` entry point ``memif_aio``, so an installed memif_aio
makes these fixtures available to every pytest run (``-p no:memif_aio`` turns it off;
from a checkout that is not installed, ``-p memif_aio.testing.plugin`` turns it on):

``memif_socket_path``
    A socket path (``.../memif.sock``) in a fresh private directory (mode 0700); the
    directory must be empty again at teardown (the test closed its sockets), and is removed.
``memif_pair``
    A connected ``(master, slave)`` pair of :class:`~memif_aio.Interface` in this process,
    on the test's event loop, with the default configuration.
``memif_pair_factory``
    ``await memif_pair_factory(queues=, ring=, buffer=, mode=, secret=, rx_mode=, ...)``:
    more pairs, each on its own socket (see :func:`memif_aio.testing.pair.connected_pair`).
``testpmd``
    ``await testpmd(role="server", forward_mode="macswap", **options)``: a started
    :class:`~memif_aio.testing.testpmd.TestPmd` (DPDK ``dpdk-testpmd`` with a ``net_memif``
    port; ``role`` is testpmd's, ``"server"`` or ``"client"``), by default on a socket of its
    own in the test's private directory (``tp.socket``).  Stopped at teardown, whatever the
    test did; an interrupted run is covered by the driver's own ``atexit`` hook and SIGTERM
    handler.  When ``dpdk-testpmd`` is missing the test skips, or fails under ``CI=true``.
``netns``
    A fresh network namespace (``ip netns add``; needs root and iproute2), as a
    :class:`Namespace` (``.name``, ``.path``); deleted at teardown, and no process may
    still run in it.

Each fixture checks at teardown that the test left nothing behind: fds of the kinds
memif_aio creates, memfd mappings, child processes and DPDK runtime directories
(:class:`memif_aio.testing.leaks.LeakGuard`).

The event loop: the async fixtures (``memif_pair``, ``memif_pair_factory``, ``testpmd``)
are pytest-asyncio fixtures with the function loop scope, so they run on the loop of the
test that uses them, whichever it is.  The plugin does not choose the loop: the choice is
pytest-asyncio's (its ``pytest_asyncio_loop_factories`` hook, for instance in the
project's conftest.py, gives a test the default loop, uvloop or both; see
docs/testing.md).  These fixtures need pytest-asyncio; the others do not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from memif_aio.testing.leaks import LeakGuard

if TYPE_CHECKING:
    from memif_aio import Interface
    from memif_aio.testing.testpmd import TestPmd

try:
    import pytest_asyncio
except ImportError:  # the async fixtures then tell the test what is missing
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = ["Namespace", "in_ci", "memif_pair", "memif_pair_factory", "memif_socket_path",
           "netns", "require_testpmd", "testpmd"]


def in_ci() -> bool:
    """True under CI (``CI=true``, ``1`` or ``yes``): a missing real peer fails the test."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_testpmd() -> str:
    """The path of ``dpdk-testpmd``.  When it is missing the test skips with the Debian
    packages to install, or, under CI (:func:`in_ci`), fails: CI must install DPDK."""
    from memif_aio.testing import testpmd as driver

    path = driver.find_testpmd()
    if path is None:
        msg = ("dpdk-testpmd not found: the DPDK interop tests need it. On Debian/Ubuntu: "
               f"apt-get install {' '.join(driver.DEBIAN_PACKAGES)} "
               "(or set MEMIF_AIO_TESTPMD to its path)")
        if in_ci():
            pytest.fail(msg + " [CI=true: the interop tests must run in CI]", pytrace=False)
        pytest.skip(msg)
    return path


def _async_fixture(func: Callable[..., Any]) -> Any:
    """A pytest-asyncio fixture on the test's loop, or, without pytest-asyncio, a fixture
    that fails the test saying so."""
    if pytest_asyncio is not None:
        return pytest_asyncio.fixture(loop_scope="function")(func)

    def missing() -> None:
        pytest.fail(f"the {func.__name__} fixture needs pytest-asyncio "
                    "(pip install pytest-asyncio)", pytrace=False)

    missing.__name__ = func.__name__
    missing.__doc__ = func.__doc__
    return pytest.fixture(name=func.__name__)(missing)


#: the directories of the ``memif_socket_path`` fixtures that are in use: a SIGTERM handler of
#: the test session removes them (teardown does not run on SIGTERM)
live_socket_dirs: set[str] = set()


@pytest.fixture
def memif_socket_path() -> Iterator[str]:
    """A socket path in a fresh private directory, checked empty and removed at teardown."""
    guard = LeakGuard()
    directory = tempfile.mkdtemp(prefix="memif-aio-")  # mode 0700
    live_socket_dirs.add(directory)
    try:
        yield os.path.join(directory, "memif.sock")
        left = sorted(os.listdir(directory))
        assert not left, f"files left behind in the socket directory {directory}: {left}"
        guard.check()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        live_socket_dirs.discard(directory)


PairFactory = Callable[..., Awaitable[tuple["Interface", "Interface"]]]


@_async_fixture
async def memif_pair_factory(memif_socket_path: str) -> AsyncIterator[PairFactory]:
    """``await memif_pair_factory(**options)``: a connected ``(master, slave)`` pair on a
    socket of its own (``queues``, ``ring``, ``buffer``, ``mode``, ``secret``, ``rx_mode``,
    ``id``, ``timeout`` and any other :class:`~memif_aio.Arguments` field); every pair is
    closed at teardown."""
    from memif_aio.testing.pair import connected_pair

    guard = LeakGuard()
    directory = os.path.dirname(memif_socket_path)
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def make(**options: Any) -> tuple[Interface, Interface]:
            nonlocal count
            count += 1
            path = os.path.join(directory, f"pair{count}.sock")
            return await stack.enter_async_context(connected_pair(path, **options))

        yield make
    guard.check()


@_async_fixture
async def memif_pair(memif_pair_factory: PairFactory) -> tuple[Interface, Interface]:
    """A connected ``(master, slave)`` pair of interfaces in this process, on the test's
    loop, with the default configuration (one queue pair, 1024 slots, 2048-byte buffers)."""
    return await memif_pair_factory()


TestPmdFactory = Callable[..., Awaitable["TestPmd"]]


@_async_fixture
async def testpmd(memif_socket_path: str) -> AsyncIterator[TestPmdFactory]:
    """``await testpmd(role="server", forward_mode="macswap", socket=None, **options)``: a
    started DPDK ``dpdk-testpmd`` peer (``options`` as
    :class:`~memif_aio.testing.testpmd.TestPmd`), on ``socket`` or, by default, a socket
    of its own in the test's private directory (``tp.socket``); stopped at teardown even
    when the test failed."""
    from memif_aio.testing import testpmd as driver

    executable = require_testpmd()
    guard = LeakGuard()
    directory = os.path.dirname(memif_socket_path)
    started: list[TestPmd] = []

    async def make(role: str = "server", forward_mode: str = "macswap",
                   socket: str | None = None, **options: Any) -> TestPmd:
        if socket is None:
            socket = os.path.join(directory, f"testpmd{len(started) + 1}.sock")
        options.setdefault("executable", executable)
        tp = driver.TestPmd(role, socket, forward_mode=forward_mode, **options)
        started.append(tp)
        await tp.start()
        return tp

    try:
        yield make
    finally:
        try:
            for tp in reversed(started):
                await tp.stop()
        finally:
            driver.kill_all()  # synchronous last resort (a stop that was itself cancelled)
    guard.check()


@dataclass(frozen=True)
class Namespace:
    """A network namespace made by the ``netns`` fixture: ``ip netns exec NAME ...``, or
    ``setns(open(path))``."""

    name: str
    path: str

    def __str__(self) -> str:
        return self.name


def _netns_pids(name: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                       timeout=10)
    return [int(p) for p in r.stdout.split()]


@pytest.fixture
def netns() -> Iterator[Namespace]:
    """A fresh network namespace (``ip netns add``), deleted at teardown; no process may
    still run in it then (those that do are killed, and the test fails)."""
    if shutil.which("ip") is None:
        pytest.skip("the netns fixture needs iproute2's ip command")
    guard = LeakGuard()
    name = f"memif-aio-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                       timeout=10)
    if r.returncode != 0:
        pytest.fail(f"ip netns add {name} failed (root needed?): {r.stderr.strip()}",
                    pytrace=False)
    ns = Namespace(name, f"/run/netns/{name}")
    left: list[int] = []
    try:
        yield ns
        left = _netns_pids(name)
    finally:
        for pid in _netns_pids(name):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _netns_pids(name) and time.monotonic() < deadline:
            time.sleep(0.01)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)
    assert not left, f"processes still running in network namespace {name}: {left}"
    assert not os.path.exists(ns.path), f"network namespace {name} not removed"
    guard.check()
