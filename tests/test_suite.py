"""The test suite's own promises (issue 13 §5, issue 9 item 11): a default run names
the real-peer tests it skipped, CI fails them instead, fuzzing is replayable."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: two real-peer tests, one from the interop suite and one from the tools' tests
PEER_TESTS = ["tests/interop/test_dpdk.py::test_secret_py_slave",
              "tests/test_tools.py::test_ping_testpmd_icmpecho"]


def pytest_run(*args: str, ci: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": ROOT,
           "MEMIF_AIO_TESTPMD": ""}  # empty: act as if testpmd were not installed
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("CI", None)
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_default_run_names_skipped_real_peer_tests() -> None:
    r = pytest_run(*PEER_TESTS)  # no -rs
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "3 real-peer (interop) tests SKIPPED: they did not run" in out, out
    assert "dpdk-testpmd not found" in out, out
    for nodeid in ("tests/interop/test_dpdk.py::test_secret_py_slave",
                   "tests/test_tools.py::test_ping_testpmd_icmpecho[py-master]",
                   "tests/test_tools.py::test_ping_testpmd_icmpecho[py-slave]"):
        assert f"    {nodeid}\n" in out, out


def test_under_ci_a_missing_peer_fails() -> None:
    r = pytest_run(*PEER_TESTS, ci=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "3 errors" in r.stdout and "CI=true" in r.stdout, r.stdout
    assert "SKIPPED" not in r.stdout, r.stdout


def test_no_summary_when_no_real_peer_test_was_skipped() -> None:
    r = pytest_run("tests/test_config.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "real-peer" not in r.stdout, r.stdout


def test_fuzzing_is_derandomized_under_ci_and_seeded_otherwise() -> None:
    code = ("import sys; sys.path.insert(0, 'tests'); import conftest, test_fuzz; "
            "print(test_fuzz.FUZZ.derandomize, test_fuzz.FUZZ.print_blob)")
    for ci, expected in ((True, "True True"), (False, "False True")):
        env = {**os.environ, "PYTHONPATH": ROOT}
        env.pop("CI", None)
        if ci:
            env["CI"] = "true"
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
        assert p.stdout.strip() == expected, p.stdout + p.stderr
    # outside CI, the header gives the session's seed, and --hypothesis-seed sets it
    r = pytest_run("--collect-only", "tests/test_config.py")
    assert "hypothesis: seed " in r.stdout and "--hypothesis-seed=" in r.stdout, r.stdout
    r = pytest_run("--collect-only", "--hypothesis-seed=4242", "tests/test_config.py")
    assert "hypothesis: seed 4242 " in r.stdout, r.stdout
    r = pytest_run("--collect-only", "tests/test_config.py", ci=True)
    assert "hypothesis: derandomized" in r.stdout, r.stdout


def readme_commands() -> list[str]:
    """The one-line ``sh`` blocks of the README's quick start, in order."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index("## Quick start")
    section = text[start:text.index("\n## ", start + 1)]
    blocks = section.split("```sh\n")[1:]
    return [b.split("\n```", 1)[0].strip() for b in blocks]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    install, test = readme_commands()
    assert "memif-aio demo" in install and "pytest" in test
    for cmd in (install, test):  # a virtual environment: PEP 668 systems refuse pip otherwise
        assert cmd.startswith("python3 -m venv .venv && .venv/bin/python -m pip install "), cmd
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    assert lines[-1] == test, (lines[-1], test)


LEAKY_TEST = '''
import os, shutil, subprocess
import pytest
from memif_aio.testing.testpmd import runtime_dir

@pytest.fixture
def reaper():  # set up before no_leaks, so torn down after its checks
    made = {"procs": [], "dirs": []}
    yield made
    for p in made["procs"]:
        p.kill()
        p.wait()
    for d in made["dirs"]:
        shutil.rmtree(d, ignore_errors=True)

def test_leaves_a_child(reaper, no_leaks):
    reaper["procs"].append(subprocess.Popen(["sleep", "30"]))

def test_leaves_a_dpdk_dir(reaper, no_leaks):
    d = runtime_dir(f"memif_aio_{os.getpid()}_leak")
    os.makedirs(d)
    reaper["dirs"].append(d)
'''


def test_no_leaks_catches_child_processes_and_dpdk_directories(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "test_leaky.py")
    with open(path, "w") as f:
        f.write(LEAKY_TEST)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    env.pop("PYTEST_ADDOPTS", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p",
                        "no:cacheprovider", "-c", os.devnull, "--rootdir", str(tmp_path), path],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 passed, 2 errors" in r.stdout, r.stdout
    assert "child processes left behind" in r.stdout and "(sleep 30)" in r.stdout, r.stdout
    assert "DPDK runtime directories left behind" in r.stdout, r.stdout
