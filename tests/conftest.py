"""Shared fixtures: both event loops, temporary socket paths, and leak checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import pytest
import uvloop
from hypothesis import settings as hypothesis_settings
from leaks import LeakGuard, child_processes, dpdk_runtime_dirs  # a plain module: see leaks.py

from memif_aio.testing import plugin as _plugin
from memif_aio.testing.plugin import in_ci, require_testpmd

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def ci() -> bool:
    """True under CI (``CI=true``): missing real peers fail, fuzzing is derandomized."""
    return in_ci()


# --- hypothesis: every fuzz run can be replayed ---------------------------------------------
# "ci": derandomized, so that CI runs the same examples every time (a failure in CI fails
# again on any machine with CI=true).  "dev": random, but with one seed for the whole session
# that the header prints (replay: --hypothesis-seed=N).  Both print the @reproduce_failure blob
# of a failing example.  Registered here, before tests/test_fuzz.py builds its settings from the
# current profile; --hypothesis-profile still wins.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("dev", print_blob=True)
hypothesis_settings.load_profile("ci" if ci() else "dev")
_hypothesis_seed: int | None = None


@pytest.hookimpl(trylast=True)  # after hypothesis' own plugin has read --hypothesis-seed
def pytest_configure(config: pytest.Config) -> None:
    global _hypothesis_seed
    from hypothesis import core

    current = hypothesis_settings.default
    if current is not None and current.derandomize:
        return
    forced = getattr(core, "global_force_seed", None)
    if forced is None:
        forced = int.from_bytes(os.urandom(4), "big")
        core.global_force_seed = forced  # type: ignore[assignment]
    _hypothesis_seed = forced


# --- SIGTERM: leave nothing behind (atexit does not run on SIGTERM) ----------------------------
#: socket directories of the tests that are running (sock_dir; the plugin's memif_socket_path
#: fixture keeps its own, plugin.live_socket_dirs)
_live_dirs: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    with contextlib.suppress(ValueError):  # not the main thread: nothing to do
        signal.signal(signal.SIGTERM, _on_sigterm)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # a test that ran a tool in this process may have reset SIGTERM to the default
    # (asyncio's remove_signal_handler does): put the session's handler back
    with contextlib.suppress(ValueError, TypeError):
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)


def pytest_sessionfinish(session: pytest.Session) -> None:
    with contextlib.suppress(ValueError, TypeError):
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _on_sigterm(signum: int, frame: object) -> None:
    """Stop every testpmd (its working directory, socket and DPDK runtime directory go
    with it), kill and reap the other child processes, remove the socket directories
    and DPDK runtime directories of this run, then let SIGTERM end the run."""
    from memif_aio.testing import testpmd

    testpmd.kill_all()
    kids = child_processes()
    for pid in kids:
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:  # a group leader (a new session): its group too
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while kids and time.monotonic() < deadline:
        for pid in list(kids):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                kids.discard(pid)
        time.sleep(0.01)
    dirs = sorted(_live_dirs | _plugin.live_socket_dirs | dpdk_runtime_dirs())
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    print(f"\nSIGTERM: stopped the testpmds and child processes, removed {dirs}",
          file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


# --- skipped real-peer tests are visible without -rs ----------------------------------------
#: (node id, reason) of every skipped test marked ``interop`` (a real peer such as testpmd)
_skipped_peer_tests: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "interop" in report.keywords:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _skipped_peer_tests.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    """A default run (no ``-rs``) shows skips only as ``s``: name every skipped real-peer
    test, grouped by reason, so that nobody takes a green run for an interop-tested one."""
    if not _skipped_peer_tests:
        return
    tr = terminalreporter
    tr.section(f"{len(_skipped_peer_tests)} real-peer (interop) tests SKIPPED: they did not run",
               sep="!", yellow=True, bold=True)
    by_reason: dict[str, list[str]] = {}
    for nodeid, reason in _skipped_peer_tests:
        by_reason.setdefault(reason, []).append(nodeid)
    for reason, nodeids in by_reason.items():
        tr.write_line(f"{len(nodeids)} skipped because: {reason}", yellow=True)
        for nodeid in nodeids:
            tr.write_line(f"    {nodeid}")
    tr.write_line("(with CI=true a missing peer fails these tests instead)")


def pytest_report_header(config: pytest.Config) -> str:
    if _hypothesis_seed is None:
        return ("hypothesis: derandomized (profile "
                f"{hypothesis_settings.get_current_profile_name()!r})")
    return (f"hypothesis: seed {_hypothesis_seed} (replay this run's examples with "
            f"--hypothesis-seed={_hypothesis_seed})")


def pytest_asyncio_loop_factories(config: Any, item: pytest.Item) -> Mapping[str, Any] | None:
    """Tests marked ``both_loops`` run once on the default loop and once on uvloop."""
    if item.get_closest_marker("both_loops") is not None:
        return LOOPS
    return {"asyncio": asyncio.new_event_loop}




@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A temporary directory for socket files; it must be empty again at the end."""
    with tempfile.TemporaryDirectory(prefix="memif-aio-") as d:
        _live_dirs.add(d)
        try:
            yield d
            leftovers = os.listdir(d)
            assert not leftovers, f"files left behind in the socket directory: {leftovers}"
        finally:
            _live_dirs.discard(d)


@pytest.fixture
def sock_path(sock_dir: str) -> str:
    return os.path.join(sock_dir, "memif.sock")


@pytest.fixture
def dpdk() -> Iterator[str]:
    """The path of dpdk-testpmd (skips when it is missing, fails under CI=true:
    :func:`memif_aio.testing.plugin.require_testpmd`); this thread (the event loop) and the
    processes it starts run on CPU 0, away from testpmd's polling CPU; no testpmd may
    still run at the end."""
    from memif_aio.testing import testpmd as driver

    path = require_testpmd()
    before = os.sched_getaffinity(0)
    if driver.default_cpu() != 0 and 0 in before:
        os.sched_setaffinity(0, {0})
    try:
        yield path
    finally:
        os.sched_setaffinity(0, before)
        assert not driver.kill_all(), "testpmd left running (killed now)"


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves fds, memfd mappings, child processes (running or
    unreaped) or DPDK runtime directories (``/var/run/dpdk/memif_aio_<pid>_*``) behind.
    Only the kinds of fd memif_aio creates count: the event loop's own (epoll, pipes)
    close with the loop, after this fixture (:class:`memif_aio.testing.leaks.LeakGuard`)."""
    guard = LeakGuard()
    yield
    guard.check()
