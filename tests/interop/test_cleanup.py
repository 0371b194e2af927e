"""SIGTERM leaves nothing behind (issue 9, item 11): no testpmd, no testpmd working
directory, no socket directory, no ``/var/run/dpdk/memif_aio_<pid>_*``.

``atexit`` does not run on SIGTERM.  Two handlers cover it: the test session's
(tests/conftest.py) and the driver's own (:mod:`memif_aio.testing.testpmd`, installed while a
testpmd runs, for scripts and benchmarks).  Each is tested in a child process that
starts testpmd through the driver and reports what it made; the child is then sent
SIGTERM and everything it reported must be gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
from leaks import dpdk_runtime_dirs

from memif_aio.testing import testpmd as tpmod

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")

#: what the child reports once testpmd is up (one JSON line on stdout)
REPORT = """
def report(tp, sock_dir):
    import json, os, sys
    from memif_aio.testing.testpmd import runtime_dir
    print("READY " + json.dumps({"testpmd": tp.pid, "workdir": tp.workdir,
                                 "runtime": runtime_dir(tp.prefix), "sock_dir": sock_dir,
                                 "socket": tp.socket, "pid": os.getpid()}), flush=True)
"""

#: run by pytest in the child: the session's handler (and the driver's) are in place
VICTIM_TEST = REPORT + """
import asyncio, os
from memif_aio.testing.testpmd import TestPmd

async def test_victim(FIXTURE):
    path = FIXTURE if FIXTURE.endswith(".sock") else os.path.join(FIXTURE, "memif.sock")
    async with TestPmd("server", path, forward_mode="rxonly") as tp:
        report(tp, os.path.dirname(path))
        await asyncio.sleep(100)
"""

#: a plain script: only the driver's handler
VICTIM_SCRIPT = REPORT + """
import asyncio, os, sys, tempfile
from memif_aio.testing.testpmd import TestPmd

async def main():
    sock_dir = sys.argv[1]
    async with TestPmd("server", os.path.join(sock_dir, "memif.sock"),
                       forward_mode="rxonly") as tp:
        report(tp, sock_dir)
        await asyncio.sleep(100)

asyncio.run(main())
"""


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie does not count: it is the reaper's job)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


async def sigterm_victim(argv: list[str], cwd: str) -> tuple[dict[str, object], int, str]:
    """Start ``argv``, wait for its READY report, SIGTERM it, reap it.  Returns
    (report, exit status, its output)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS])}
    env.pop("PYTEST_ADDOPTS", None)
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    output: list[str] = []
    try:
        assert proc.stdout is not None
        info: dict[str, object] | None = None
        deadline = time.monotonic() + 60
        while info is None:
            line = await asyncio.wait_for(proc.stdout.readline(),
                                          max(0.1, deadline - time.monotonic()))
            assert line, "the child ended before testpmd was up:\n" + "".join(output)
            text = line.decode(errors="replace")
            output.append(text)
            if text.startswith("READY "):
                info = json.loads(text[len("READY "):])
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
        output.append(rest.decode(errors="replace"))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return info, proc.returncode, "".join(output)


def assert_nothing_left(info: dict[str, object], output: str,
                        paths: tuple[str, ...] = ("workdir", "runtime", "sock_dir", "socket"),
                        ) -> None:
    pid = info["testpmd"]
    assert isinstance(pid, int)
    deadline = time.monotonic() + 5  # testpmd was killed: only its reaping may lag
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(pid), f"testpmd {pid} still runs\n{output}"
    for key in paths:
        path = info[key]
        assert isinstance(path, str)
        assert not os.path.exists(path), f"{key} {path} left behind\n{output}"
    child = info["pid"]
    assert isinstance(child, int)
    assert not dpdk_runtime_dirs(child), output
    assert not tpmod.unix_listening(str(info["socket"]))


@pytest.mark.parametrize("fixture", ["sock_dir", "memif_socket_path"])
async def test_sigterm_to_the_test_session_cleans_up(dpdk: str, no_leaks: None,
                                                      fixture: str) -> None:
    """The socket directory goes too, the suite's own (``sock_dir``) as the plugin's
    (``memif_socket_path``, which a killed run left behind before)."""
    with tempfile.TemporaryDirectory(prefix="memif-aio-victim-") as tmp:
        with open(os.path.join(tmp, "test_victim.py"), "w") as f:
            f.write(textwrap.dedent(VICTIM_TEST).replace("FIXTURE", fixture))
        # tests/conftest.py as a plugin (-p conftest): its fixtures and its SIGTERM handler
        info, status, output = await sigterm_victim(
            [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
             "-o", "asyncio_mode=auto", "-s", "-q", "--rootdir", tmp, "-c", os.devnull,
             "test_victim.py"], tmp)
        assert status == -signal.SIGTERM, output  # the run ends as SIGTERM says
        assert "SIGTERM: stopped the testpmds" in output, output
        assert_nothing_left(info, output)


async def test_sigterm_to_a_driver_script_cleans_up(dpdk: str, no_leaks: None) -> None:
    with tempfile.TemporaryDirectory(prefix="memif-aio-victim-") as tmp:
        script = os.path.join(tmp, "victim.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(VICTIM_SCRIPT))
        sock_dir = os.path.join(tmp, "sockets")
        os.mkdir(sock_dir)
        info, status, output = await sigterm_victim([sys.executable, script, sock_dir], tmp)
        assert status == -signal.SIGTERM, output
        # the socket directory is the script's, not the driver's: it stays, empty
        assert_nothing_left(info, output, ("workdir", "runtime", "socket"))
        assert os.listdir(sock_dir) == []


def test_importing_the_driver_changes_nothing() -> None:
    """No atexit hook and no signal handler at import (issue 11); both exist only while
    a testpmd runs (the SIGTERM tests above show that they work)."""
    code = textwrap.dedent("""
        import atexit, signal, sys
        before = signal.getsignal(signal.SIGTERM)
        calls = []
        real = atexit.register
        atexit.register = lambda f, *a, **k: (calls.append(f), real(f, *a, **k))[1]
        import memif_aio.testing.testpmd as t
        assert signal.getsignal(signal.SIGTERM) is before, "SIGTERM handler at import"
        assert t.kill_all not in calls, calls
        assert not t._guarded
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
