"""The pytest plugin (memif_aio.testing.plugin, issue 13 §1), tested with pytester.

Each test writes a small test project (the samples of docs/testing.md, or a test of its
own) and runs pytest on it in a child process with the plugin, on both event loops (the
project's conftest.py is the one docs/testing.md shows: pytest-asyncio's
``pytest_asyncio_loop_factories`` hook).  The outer test then checks the inner outcome and
what the inner run left behind (testpmd processes, DPDK runtime directories, namespaces).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import textwrap

import pytest
from test_docs import python_blocks

from memif_aio.testing.plugin import in_ci

pytest_plugins = ["pytester"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = ("memif_socket_path", "memif_pair", "memif_pair_factory", "testpmd", "netns")
SAMPLES = [b for b in python_blocks("docs/testing.md") if b.no_run and
           "tests/test_plugin.py runs it" in b.no_run]
CONFTEST = next(b.code for b in SAMPLES if "a conftest.py" in (b.no_run or ""))
BOTH_LOOPS_CONFTEST = CONFTEST.replace('item.get_closest_marker("both_loops") is not None',
                                       "True")
INI = """[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
timeout = 90
markers =
    both_loops: run on both loops
"""


def samples(kind: str) -> list[str]:
    """The test-file samples of docs/testing.md: "plain" (no peer), "testpmd", "netns"."""
    def kind_of(reason: str) -> str:
        if "dpdk-testpmd" in reason:
            return "testpmd"
        if "needs root" in reason:
            return "netns"
        return "conftest" if "a conftest.py" in reason else "plain"
    return [b.code for b in SAMPLES if kind_of(b.no_run or "") == kind]


def plugin_args() -> list[str]:
    """``-p memif_aio.testing.plugin``, unless the installed distribution's ``pytest11``
    entry point loads it already (registering it twice is an error)."""
    eps = importlib.metadata.entry_points(group="pytest11")
    if any(ep.value == "memif_aio.testing.plugin" for ep in eps):
        return []
    return ["-p", "memif_aio.testing.plugin"]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An inner project: this checkout importable, both loops for every test."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    pytester.makeini(INI.format(mode="auto"))
    pytester.makeconftest(BOTH_LOOPS_CONFTEST)
    return pytester


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider", "-v",
                                        *args, timeout=240)


def test_the_docs_have_the_samples() -> None:
    assert len(samples("plain")) >= 3 and samples("testpmd") and samples("netns")
    for code in samples("plain") + samples("testpmd") + samples("netns"):
        compile(code, "sample", "exec")


def test_the_docs_samples_pass_on_both_loops(project: pytest.Pytester) -> None:
    plain = samples("plain")
    for i, code in enumerate(plain):
        project.makepyfile(**{f"test_sample{i}": code})
    result = run(project)
    result.assert_outcomes(passed=2 * len(plain))
    result.stdout.fnmatch_lines(["*test_ping_pong?asyncio? PASSED*",
                                 "*test_ping_pong?uvloop? PASSED*"])


def test_the_async_fixtures_run_on_the_tests_loop(project: pytest.Pytester) -> None:
    out = project.path / "loops.jsonl"
    project.makepyfile(test_loop=f"""
        import asyncio, json

        async def test_loop(memif_pair, memif_pair_factory):
            loop = asyncio.get_running_loop()
            master, slave = memif_pair
            other, _ = await memif_pair_factory(id=3)
            await slave.get_tx_queue(0).write_packet(b"x")
            assert await master.get_rx_queue(0).read_packet() == b"x"
            assert master.get_socket()._loop is loop  # private: the loop the socket runs on
            assert other.get_socket()._loop is loop
            with open({str(out)!r}, "a") as f:
                f.write(json.dumps(type(loop).__module__) + "\\n")
        """)
    run(project).assert_outcomes(passed=2)
    kinds = sorted(json.loads(line) for line in out.read_text().splitlines())
    assert kinds == ["asyncio.unix_events", "uvloop"], kinds


def test_strict_mode(project: pytest.Pytester) -> None:
    project.makeini(INI.format(mode="strict"))
    project.makepyfile(test_strict="""
        import pytest

        @pytest.mark.asyncio
        async def test_pair(memif_pair):
            master, slave = memif_pair
            assert master.is_connected() and slave.is_connected()
        """)
    run(project).assert_outcomes(passed=2)


def test_the_fixtures_fail_a_test_that_leaks(project: pytest.Pytester) -> None:
    project.makepyfile(test_leaky="""
        import os, subprocess
        import pytest

        @pytest.fixture
        def reaper():  # set up first, so torn down after the plugin's checks
            procs = []
            yield procs
            for p in procs:
                p.kill()
                p.wait()

        def test_leaves_a_file(memif_socket_path):
            open(memif_socket_path, "w").close()

        def test_leaves_a_child(reaper, memif_socket_path):
            reaper.append(subprocess.Popen(["sleep", "30"]))

        async def test_leaves_an_eventfd(memif_pair):
            os.eventfd(0)

        def test_clean(memif_socket_path):
            pass
        """)
    result = run(project)
    result.assert_outcomes(passed=5, errors=4)  # the async test runs on both loops
    out = result.stdout.str()
    assert "files left behind in the socket directory" in out and "memif.sock" in out, out
    assert "child processes left behind" in out and "(sleep 30)" in out, out
    assert "leaked fds" in out and "anon_inode:[eventfd]" in out, out
    # every private directory went, leaks or not
    assert not list(project.path.glob("memif-aio-*"))


def test_no_fixture_clashes_with_the_suites_own() -> None:
    """The plugin must not change how the project's own suite runs: no conftest.py of the
    suite defines a fixture of the plugin's names."""
    for conftest in ("tests/conftest.py", "tests/interop/conftest.py"):
        with open(os.path.join(ROOT, conftest)) as f:
            tree = ast.parse(f.read())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        assert not names & set(FIXTURES), (conftest, names & set(FIXTURES))
    from memif_aio.testing import plugin

    assert set(FIXTURES) <= set(plugin.__all__)


@pytest.mark.interop
def test_the_testpmd_sample_passes_on_both_loops(project: pytest.Pytester, dpdk: str) -> None:
    for i, code in enumerate(samples("testpmd")):
        project.makepyfile(**{f"test_dpdk{i}": code})
    run(project).assert_outcomes(passed=2 * len(samples("testpmd")))


@pytest.mark.interop
def test_a_failing_test_still_stops_its_testpmd(project: pytest.Pytester, dpdk: str) -> None:
    from memif_aio.testing.testpmd import runtime_dir

    out = project.path / "testpmd.json"
    project.makepyfile(test_fails=f"""
        import json

        async def test_fails(testpmd):
            server = await testpmd("server", forward_mode="icmpecho")
            client = await testpmd("client", forward_mode="txonly", socket=server.socket)
            await client.wait_connected(15)  # a DPDK client talks to the DPDK server
            with open({str(out)!r}, "a") as f:
                made = [[t.pid, t.prefix, t.workdir] for t in (server, client)]
                f.write(json.dumps(made) + "\\n")
            assert False, "this test fails with two testpmds running"

        def test_after():  # in the same process: the fixture stopped them, not atexit
            import os
            from memif_aio.testing import testpmd as driver
            with open({str(out)!r}) as f:
                runs = [json.loads(line) for line in f]
            assert len(runs) == 2 and not driver._live
            for pid, prefix, workdir in (t for r in runs for t in r):
                assert not os.path.exists(f"/proc/{{pid}}"), pid
                assert not os.path.exists(driver.runtime_dir(prefix)), prefix
                assert not os.path.exists(workdir), workdir
        """)
    result = run(project)
    # failures, not errors (the teardown was clean), then the check in the same process
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(["*this test fails with two testpmds running*"])
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(runs) == 2
    for pid, prefix, workdir in (t for r in runs for t in r):
        assert not os.path.exists(f"/proc/{pid}"), f"testpmd {pid} still runs"
        assert not os.path.exists(runtime_dir(prefix)), prefix
        assert not os.path.exists(workdir), workdir


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          timeout=10).stdout


def test_the_netns_sample_and_its_teardown(project: pytest.Pytester) -> None:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("network namespaces need root [CI=true: this test must run in CI]",
                        pytrace=False)
        pytest.skip("network namespaces need root")
    out = project.path / "ns.txt"
    for i, code in enumerate(samples("netns")):
        project.makepyfile(**{f"test_netns{i}": code})
    project.makepyfile(test_left=textwrap.dedent(f"""
        import subprocess

        def test_names(netns):
            with open({str(out)!r}, "a") as f:
                f.write(netns.name + "\\n")

        def test_leaves_a_process(netns):
            with open({str(out)!r}, "a") as f:
                f.write(netns.name + "\\n")
            subprocess.Popen(["ip", "netns", "exec", netns.name, "sleep", "30"],
                             start_new_session=True)
        """))
    result = run(project)
    result.assert_outcomes(passed=len(samples("netns")) + 2, errors=1)
    result.stdout.fnmatch_lines(["*processes still running in network namespace*"])
    names = out.read_text().split()
    assert len(names) == 2 and names[0] != names[1]
    listed = _namespaces()
    for name in names:
        assert name not in listed, listed
