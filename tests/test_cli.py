"""The ``memif-aio`` command line: ``python -m memif_aio ...`` in a subprocess.

Each run gets ``TMPDIR`` pointed at the ``sock_dir`` fixture, so the fixture's
"directory is empty at the end" check proves the demo removed its socket
directory, whatever way it ended.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

# no fd, mapping, child process or DPDK runtime directory may outlive a test
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(
    r"^  (?P<dir>master -> slave|slave -> master): (?P<packets>\d+) packets, "
    r"(?P<pps>[\d.]+) (?P<pps_unit>[kMG]?)pkt/s, (?P<bps>[\d.]+) (?P<bps_unit>[kMG]?)bit/s "
    r"\((?P<bytes>\d+) bytes in (?P<secs>[\d.]+) s\) (?P<status>verified|FAILED)$", re.M)
SCALE = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}


def env_for(sock_dir: str) -> dict[str, str]:
    env = dict(os.environ, TMPDIR=sock_dir)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def memif_aio(sock_dir: str, *args: str, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memif_aio", *args], capture_output=True,
                          text=True, timeout=timeout, env=env_for(sock_dir), cwd=sock_dir)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def figures(out: str) -> dict[str, dict[str, float]]:
    res = {}
    for m in LINE.finditer(out):
        res[m["dir"]] = {
            "packets": int(m["packets"]), "bytes": int(m["bytes"]), "secs": float(m["secs"]),
            "pps": float(m["pps"]) * SCALE[m["pps_unit"]],
            "bps": float(m["bps"]) * SCALE[m["bps_unit"]], "ok": m["status"] == "verified"}
    return res


def check_verified(out: str, min_size: int, max_size: int) -> None:
    figs = figures(out)
    assert set(figs) == {"master -> slave", "slave -> master"}, out
    for name, f in figs.items():
        assert f["ok"], out
        assert f["packets"] > 100, f"{name}: {f}"
        assert min_size * f["packets"] <= f["bytes"] <= max_size * f["packets"], f
        assert 0.1 < f["secs"] < 10, f
        # the printed rates are the counts over the time (3 significant digits)
        assert f["pps"] == pytest.approx(f["packets"] / f["secs"], rel=0.05), f
        assert f["bps"] == pytest.approx(8 * f["bytes"] / f["secs"], rel=0.05), f
    total = sum(int(f["packets"]) for f in figs.values())
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"OK: {total} packets"), out


def socket_dir_of(out: str) -> str:
    m = re.search(r" on (\S+)/memif\.sock", out)
    assert m, out
    return m[1]


def slave_pid_of(out: str) -> int:
    m = re.search(r"slave: pid (\d+)", out)
    assert m, out
    return int(m[1])


# --- the demo ----------------------------------------------------------------------------


def test_demo_default_run_is_verified(sock_dir: str) -> None:
    t0 = time.monotonic()
    r = memif_aio(sock_dir, "demo", "--duration", "1")
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert "uvloop, 1 queue pair(s)" in r.stdout
    assert "ring 1024 slots x 2048 bytes" in r.stdout
    check_verified(r.stdout, 64, 9000)
    assert elapsed < 15
    assert not os.path.exists(socket_dir_of(r.stdout))
    assert wait_gone(slave_pid_of(r.stdout), 1)


def test_demo_options_asyncio_queues_sizes(sock_dir: str) -> None:
    r = memif_aio(sock_dir, "demo", "--duration", "0.5", "--no-uvloop", "--queues", "3",
                  "--sizes", "100,9000")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "asyncio, 3 queue pair(s)" in r.stdout
    assert "connected: 3 queue pair(s)" in r.stdout
    check_verified(r.stdout, 100, 9000)
    # both sizes were used: the average is strictly between them
    for f in figures(r.stdout).values():
        assert 100 < f["bytes"] / f["packets"] < 9000


# --- failures: the verifier notices, the exit status says so --------------------------------


@pytest.mark.parametrize("fault, message", [
    ("corrupt", "queue 0: packet 100: content differs"),
    ("drop", "queue 0: packets 100..100 lost"),
    ("dup", "queue 0: packet 100 arrived again"),
    ("crash", "the slave process exited (status 3)"),
])
def test_demo_detects_faults(sock_dir: str, fault: str, message: str) -> None:
    r = memif_aio(sock_dir, "demo", "--duration", "0.5", "--fault", fault)
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stdout, r.stdout
    figs = figures(r.stdout)
    assert not figs["slave -> master"]["ok"], r.stdout  # the faulty direction
    if fault != "crash":
        assert figs["master -> slave"]["ok"], r.stdout  # the healthy one still verifies
    assert r.stdout.strip().splitlines()[-1].startswith("FAILED"), r.stdout
    assert not os.path.exists(socket_dir_of(r.stdout))
    assert wait_gone(slave_pid_of(r.stdout), 1)


def test_demo_stalled_peer_times_out(sock_dir: str) -> None:
    t0 = time.monotonic()
    r = memif_aio(sock_dir, "demo", "--duration", "0.5", "--fault", "hang", "--timeout", "2")
    assert r.returncode == 1, r.stdout + r.stderr
    assert time.monotonic() - t0 < 12
    assert "timed out after 2 s" in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("FAILED")
    assert wait_gone(slave_pid_of(r.stdout), 1)


def test_demo_rejects_bad_sizes(sock_dir: str) -> None:
    r = memif_aio(sock_dir, "demo", "--sizes", "8,64")
    assert r.returncode == 2
    assert "sizes must be in 16..65535" in r.stderr
    r = memif_aio(sock_dir, "demo", "--queues", "0")
    assert r.returncode == 2
    assert os.listdir(sock_dir) == []


# --- signals: the child and the socket directory always go ------------------------------------


class Running:
    """A demo started in the background, read line by line until it is connected."""

    def __init__(self, sock_dir: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memif_aio", "demo", "--duration", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for(sock_dir),
            cwd=sock_dir, start_new_session=True)
        self.out = ""
        self.child: int | None = None

    def read_until(self, text: str, timeout: float = 15) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while text not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} in {self.out!r}"
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.out += chunk.decode()
        assert text in self.out, self.out
        m = re.search(r"slave: pid (\d+)", self.out)
        if m:
            self.child = int(m[1])

    def finish(self, timeout: float = 15) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, self.out + out.decode() + err.decode()

    def close(self) -> None:
        for pid in (self.proc.pid, self.child):
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.communicate(timeout=10)


@pytest.fixture
def running(sock_dir: str) -> Iterator[Running]:
    r = Running(sock_dir)
    try:
        r.read_until("connected:")
        yield r
    finally:
        r.close()


@pytest.mark.parametrize("sig, status, text", [(signal.SIGINT, 130, "FAILED: interrupted"),
                                               (signal.SIGTERM, 143, "FAILED: terminated")])
def test_demo_interrupted_cleans_up(running: Running, sig: int, status: int, text: str) -> None:
    d = socket_dir_of(running.out)
    assert os.path.exists(os.path.join(d, "memif.sock"))
    assert running.child is not None and alive(running.child)
    time.sleep(0.3)  # mid-traffic
    os.kill(running.proc.pid, sig)
    rc, out = running.finish()
    assert rc == status, out
    assert text in out
    assert "Traceback" not in out, out
    assert not alive(running.child)
    assert not os.path.exists(d)


def test_ctrl_c_to_the_whole_process_group(running: Running) -> None:
    """A terminal's Ctrl-C reaches the parent and the child at once."""
    time.sleep(0.3)
    os.killpg(running.proc.pid, signal.SIGINT)
    rc, out = running.finish()
    assert rc == 130, out
    assert "Traceback" not in out, out
    assert running.child is not None and wait_gone(running.child, 1)
    assert not os.path.exists(socket_dir_of(running.out))


def test_child_exits_when_parent_is_killed(running: Running) -> None:
    d = socket_dir_of(running.out)
    assert running.child is not None
    time.sleep(0.3)
    os.kill(running.proc.pid, signal.SIGKILL)
    running.proc.wait(10)
    assert wait_gone(running.child, 5), "the slave process outlived its parent"
    # the orphaned child removes the socket directory its parent could not
    deadline = time.monotonic() + 5
    while os.path.exists(d) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(d)


# --- help and the rest of the command line ----------------------------------------------------


@pytest.mark.parametrize("args, expect", [
    ([], ["usage: memif-aio", "demo", "version"]),
    (["demo"], ["usage: memif-aio demo", "--duration", "--queues", "--uvloop", "--no-uvloop",
                "--sizes"]),
    (["version"], ["usage: memif-aio version"]),
    (["demo-peer"], ["usage: memif-aio demo-peer", "--socket"]),
])
def test_help(sock_dir: str, args: list[str], expect: list[str]) -> None:
    r = memif_aio(sock_dir, *args, "--help", timeout=20)
    assert r.returncode == 0, r.stderr
    for text in expect:
        assert text in r.stdout
    if not args:
        assert "demo-peer" not in r.stdout  # hidden: it is the demo's child side


def test_no_subcommand_is_a_usage_error(sock_dir: str) -> None:
    r = memif_aio(sock_dir, timeout=20)
    assert r.returncode == 2
    assert "usage: memif-aio" in r.stderr


def test_version(sock_dir: str) -> None:
    import memif_aio as pkg

    r = memif_aio(sock_dir, "version", timeout=20)
    assert r.returncode == 0
    assert r.stdout.strip() == f"memif-aio {pkg.__version__}, memif protocol 2.0"
    r = memif_aio(sock_dir, "--version", timeout=20)
    assert r.returncode == 0 and pkg.__version__ in r.stdout


def test_console_script_points_at_main() -> None:
    """pyproject.toml names memif_aio.cli.main:main; ``python -m memif_aio`` (the shim) and
    the installed script (even one installed before the move) run that same function."""
    import tomllib

    from memif_aio.__main__ import main as shim_main
    from memif_aio.cli.main import main

    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {"memif-aio": "memif_aio.cli.main:main"}
    assert shim_main is main
    eps = [ep for ep in importlib.metadata.entry_points(group="console_scripts")
           if ep.name == "memif-aio"]
    assert len(eps) == 1
    assert eps[0].load() is main


def test_watchdog_ends_a_stuck_run(sock_dir: str) -> None:
    """The master's event loop is blocked: only the watchdog thread can end the run."""
    t0 = time.monotonic()
    r = memif_aio(sock_dir, "demo", "--duration", "0.5", "--timeout", "1", "--fault", "freeze")
    assert r.returncode == 3, r.stdout + r.stderr
    assert 5 < time.monotonic() - t0 < 15
    assert "FAILED: watchdog: the demo did not finish within 6 s" in r.stdout
    assert wait_gone(slave_pid_of(r.stdout), 2)
    assert not os.path.exists(socket_dir_of(r.stdout))


# --- issue 11 §1: the package boundary -----------------------------------------------------


def test_import_memif_aio_loads_the_library_only(sock_dir: str) -> None:
    """``import memif_aio`` imports neither capture, the status endpoint, the applications
    (memif_aio.cli) nor the test drivers (memif_aio.testing); the names the docs show from
    memif_aio (Capture, PcapWriter, format_show) still import, on first use."""
    code = ("import sys, memif_aio\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('memif_aio'))))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=30, env=env_for(sock_dir), cwd=sock_dir)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert {"memif_aio", "memif_aio.interface", "memif_aio.socket", "memif_aio.serving"} <= \
        loaded, loaded
    forbidden = ("memif_aio.capture", "memif_aio.status", "memif_aio.cli", "memif_aio.testing",
                 "memif_aio.testpmd", "memif_aio.workers")
    bad = sorted(m for m in loaded for f in forbidden if m == f or m.startswith(f + "."))
    assert not bad, f"import memif_aio loaded {bad}"

    code = ("import sys, memif_aio\n"
            "from memif_aio import Capture, PcapWriter, format_show, WorkerPool\n"
            "import memif_aio.capture as c, memif_aio.cli.status as s, memif_aio.workers as w\n"
            "assert (Capture, PcapWriter, format_show) == (c.Capture, c.PcapWriter, "
            "s.format_show)\n"
            "assert WorkerPool is w.WorkerPool\n"
            "assert {'Capture', 'PcapWriter', 'format_show', 'serve'} <= set(dir(memif_aio))\n"
            "assert set(memif_aio.__all__) <= set(dir(memif_aio))\n"
            "try:\n"
            "    memif_aio.no_such_name\n"
            "except AttributeError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=30, env=env_for(sock_dir), cwd=sock_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "module 'memif_aio' has no attribute 'no_such_name'"


# --- issue 12 §7: MEMIF_SOCKET and MEMIF_SECRET -------------------------------------------


def test_environment_fills_socket_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --socket / --secret the CLI takes $MEMIF_SOCKET / $MEMIF_SECRET (the Contiv
    convention), else the defaults; the flags win; an empty variable counts as unset."""
    from memif_aio.cli.common import apply_environment, build_arguments
    from memif_aio.cli.main import build_parser

    def parse(*argv: str) -> argparse.Namespace:
        ns = build_parser().parse_args(argv)
        apply_environment(ns)
        return ns

    commands = (["responder"], ["ping"], ["bench", "tx"], ["capture", "-w", "x.pcap"],
                ["replay", "x.pcap"], ["gen"])
    monkeypatch.delenv("MEMIF_SOCKET", raising=False)
    monkeypatch.delenv("MEMIF_SECRET", raising=False)
    for argv in commands:
        ns = parse(*argv)
        assert (ns.socket, ns.secret) == ("/run/vpp/memif.sock", ""), argv
    assert parse("show").socket == "/run/vpp/memif.sock"

    monkeypatch.setenv("MEMIF_SOCKET", "@vpp/memif-eth0")
    monkeypatch.setenv("MEMIF_SECRET", "s3cret")
    for argv in commands:
        ns = parse(*argv)
        assert (ns.socket, ns.secret) == ("@vpp/memif-eth0", "s3cret"), argv
        assert build_arguments(ns).secret == b"s3cret"
        ns = parse(*argv, "--socket", "/tmp/flag.sock", "--secret", "flag")
        assert (ns.socket, ns.secret) == ("/tmp/flag.sock", "flag"), argv
        ns = parse(*argv, "--secret", "")  # an explicit empty secret is no secret
        assert ns.secret == "", argv
    assert parse("show").socket == "@vpp/memif-eth0"
    assert parse("show", "--socket", "/tmp/flag.sock").socket == "/tmp/flag.sock"

    monkeypatch.setenv("MEMIF_SOCKET", "")
    monkeypatch.setenv("MEMIF_SECRET", "")
    ns = parse("ping")
    assert (ns.socket, ns.secret) == ("/run/vpp/memif.sock", "")


def test_help_names_the_environment_and_never_shows_the_secret(sock_dir: str) -> None:
    env = dict(env_for(sock_dir), MEMIF_SOCKET="/tmp/from-env.sock", MEMIF_SECRET="topsecret")
    for command in ("responder", "ping", "bench", "capture", "replay", "gen", "show"):
        r = subprocess.run([sys.executable, "-m", "memif_aio", command, "--help"],
                           capture_output=True, text=True, timeout=30, env=env, cwd=sock_dir)
        assert r.returncode == 0, r.stderr
        text = " ".join(r.stdout.split())
        assert "default: $MEMIF_SOCKET if set, else /run/vpp/memif.sock" in text, command
        if command != "show":
            assert "default: $MEMIF_SECRET if set, else none" in text, command
        assert "topsecret" not in r.stdout, command
