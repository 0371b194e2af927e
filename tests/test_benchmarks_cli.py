"""``python -m benchmarks``: scenario names, floors and ratios, charts (no real benchmark run).

The runs here are tiny (one window of a few tens of milliseconds, a few dozen round trips):
they check what the runner prints and writes, never a speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from benchmarks.__main__ import main, parse
from benchmarks.plot import load, plot
from benchmarks.runner import ALIASES, FLOORS, SCENARIOS, floors_needed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ROOT}


def _run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` in a session of its own; afterwards none of its processes is left."""
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        pass
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"python -m {' '.join(args)} left processes behind")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# --- --only ---------------------------------------------------------------------------------
def test_only_accepts_the_printed_names_and_the_old_ones() -> None:
    printed = parse(["--only", "rx-burst-size,tx-burst-size"]).only_names
    old = parse(["--only", "rx-sizes,tx-sizes"]).only_names
    assert printed == old == {"rx-burst-size", "tx-burst-size"}
    assert ALIASES == {"rx-sizes": "rx-burst-size", "tx-sizes": "tx-burst-size"}
    assert parse(["--only", ",".join(SCENARIOS)]).only_names == set(SCENARIOS)
    assert parse([]).only_names is None
    # a size sweep is compared with the floors at each size, its 64-byte point with floor-rx
    assert floors_needed(printed) == {"floor-rx", "floor-tx", "floor-rx-size", "floor-tx-size"}
    assert floors_needed({"pingpong-busy-poll"}) == {"floor-busy-poll"}
    assert floors_needed(None) == set(FLOORS)


@pytest.mark.parametrize("only", ["bogus", "rx-burst,rx_sizes", ","])
def test_only_refuses_unknown_names_listing_the_valid_ones(only: str) -> None:
    r = _run("benchmarks", "--only", only, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""  # nothing ran: no table
    assert "--only:" in r.stderr
    for bad in (n for n in only.split(",") if n and n not in SCENARIOS):
        assert bad in r.stderr
    listed = r.stderr.split("valid names:", 1)[1]
    for name in (*SCENARIOS, *ALIASES):
        assert name in listed


# --- floors and ratios (a tiny real run) ----------------------------------------------------
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_floors_run_and_every_row_gets_its_ratio(loop: str) -> None:
    r = _run("benchmarks", "--peer", "python", "--loop", loop, "--only",
             "rx-burst,pingpong-interrupt,floor-busy-poll", "--repeats", "1", "--window",
             "0.05", "--warmup", "0", "--pingpongs", "30", "--json", "-")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout[r.stdout.index("\n{") + 1:])
    rows = {row["scenario"]: row for row in doc["results"]}
    # the floors of the selected rows ran even though --only did not name them
    assert set(rows) == {"floor-rx", "floor-interrupt", "floor-busy-poll", "rx-burst",
                         "pingpong-interrupt"}
    assert {row["loop"] for row in rows.values()} == {loop}
    for name in ("floor-rx", "floor-interrupt", "floor-busy-poll"):
        assert rows[name]["peer"] == "-" and rows[name]["ratio"] is None
        assert rows[name]["median"] > 0
    # every ping-pong keeps its per-round-trip samples (the CDF of --plot)
    for name in ("floor-interrupt", "floor-busy-poll", "pingpong-interrupt"):
        assert len(rows[name]["values"]) == 30
    for name, floor in (("rx-burst", "floor-rx"), ("pingpong-interrupt", "floor-interrupt")):
        row = rows[name]
        assert row["floor"] == floor
        assert row["ratio"] == pytest.approx(row["median"] / rows[floor]["median"])
    table = r.stdout[:r.stdout.index("\n{")]
    assert " ratio " in table.splitlines()[1]
    line = next(ln for ln in table.splitlines() if ln.startswith("rx-burst "))
    assert f"{rows['rx-burst']['ratio']:6.2f}" in line


# --- benchmarks.micro (tiny real runs) --------------------------------------------------------
@pytest.mark.parametrize("scenario", ["signal-cost", "signal-overhead", "signal-latency",
                                      "eventfd-latency", "busy-poll"])
def test_micro_runs_every_scenario_and_prints_its_summary(scenario: str) -> None:
    r = _run("benchmarks.micro", scenario, "--rounds", "2", "--reps", "3", "--cpu", "-1",
             timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"# {scenario} on uvloop, 3 repetitions per round")
    assert [ln.split()[:2] for ln in lines[1:3]] == [["round", "1"], ["round", "2"]]
    summary = lines[3].split()
    assert summary[:4] == ["this", "median", "over", "rounds:"]
    assert ROOT in lines[3]


def test_micro_against_alternates_with_another_tree() -> None:
    """``--against TREE``: every round runs once in each tree (in fresh processes), the
    order alternating, and the summary names both trees."""
    r = _run("benchmarks.micro", "eventfd-latency", "--rounds", "2", "--reps", "3",
             "--against", ROOT, "--loop", "asyncio", timeout=120)
    assert r.returncode == 0, r.stderr
    rounds = [ln for ln in r.stdout.splitlines() if ln.startswith("round")]
    assert len(rounds) == 2 and all("this:" in ln and "against:" in ln for ln in rounds)
    assert [ln.split()[0] for ln in r.stdout.splitlines()[-2:]] == ["this", "against"]


def test_micro_refuses_bad_arguments() -> None:
    r = _run("benchmarks.micro", "signal-cost", "--rounds", "0")
    assert r.returncode == 2 and "--rounds and --reps must be at least 1" in r.stderr
    r = _run("benchmarks.micro", "no-such-scenario")
    assert r.returncode == 2 and "invalid choice" in r.stderr


# --- --plot ---------------------------------------------------------------------------------
def _row(scenario: str, peer: str, loop: str, values: list[float], size: int = 64,
         unit: str = "Mpps") -> dict[str, Any]:
    s = sorted(values)
    return {"scenario": scenario, "peer": peer, "loop": loop, "unit": unit, "values": values,
            "size": size, "extra": {}, "median": s[len(s) // 2], "min": s[0], "max": s[-1],
            "floor": None, "ratio": None}


FIXTURE = [
    _row("floor-rx", "-", "uvloop", [10.0, 10.5, 11.0]),
    _row("floor-rx-size", "-", "uvloop", [9.0, 9.2, 9.4], size=1500),
    _row("floor-tx", "-", "uvloop", [8.0, 8.1, 8.2]),
    _row("rx-burst-size", "dpdk", "uvloop", [6.0, 6.1, 6.3]),
    _row("rx-burst-size", "dpdk", "uvloop", [4.0, 4.2, 4.3], size=1500),
    _row("tx-burst", "python", "asyncio", [1.0, 1.5, 2.0]),
    _row("floor-interrupt", "-", "uvloop", [30.0 + i % 7 for i in range(50)], unit="us RTT"),
    _row("pingpong-interrupt", "python", "uvloop", [60.0 + i % 11 for i in range(50)],
         unit="us RTT"),
    _row("pingpong-busy-poll", "dpdk", "uvloop", [2.0 + i % 3 / 10 for i in range(50)],
         unit="us RTT"),
]


def _png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_plot_from_runner_json(tmp_path: Any) -> None:
    src = tmp_path / "results.json"
    src.write_text(json.dumps({"machine": {}, "settings": {}, "results": FIXTURE}))
    png = tmp_path / "chart.png"
    assert main(["--plot", str(png), "--from", str(src)]) == 0
    width, height = _png_size(str(png))
    assert width >= 800 and height >= 600
    drawn = plot(load(str(src)), str(tmp_path / "again.png"))
    assert sorted(drawn) == sorted([
        ("rx throughput", "dpdk, uvloop"), ("rx throughput", "floor, uvloop"),
        ("tx throughput", "floor, uvloop"), ("tx throughput", "python, asyncio"),
        ("interrupt round trip", "floor, uvloop"), ("interrupt round trip", "python, uvloop"),
        ("busy-poll round trip", "dpdk, uvloop"),
    ])


def test_plot_from_memif_aio_bench_json(sock_dir: str, tmp_path: Any) -> None:
    """Real ``memif-aio bench rx|tx --json`` output, plotted as throughput points."""
    path = os.path.join(sock_dir, "b.sock")
    tool = [sys.executable, "-m", "memif_aio", "bench"]
    rx = subprocess.Popen([*tool, "rx", "--socket", path, "--role", "master", "--json",
                           "--timeout", "30", "--progress", "0"], cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        tx = subprocess.run([*tool, "tx", "--socket", path, "--role", "slave", "--json",
                             "--count", "3000", "--size", "256", "--timeout", "30",
                             "--progress", "0"], cwd=ROOT, env=_env(), capture_output=True,
                            text=True, timeout=60)
        rx_out, rx_err = rx.communicate(timeout=30)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.communicate()
    assert tx.returncode == 0, tx.stderr
    assert rx.returncode == 0, rx_err
    src = tmp_path / "bench.jsonl"
    src.write_text(tx.stdout + rx_out)
    rows = load(str(src))
    assert sorted((r["scenario"], r["size"]) for r in rows) == [
        ("rx-burst-size", 256), ("tx-burst-size", 256)]
    png = tmp_path / "bench.png"
    assert main(["--plot", str(png), "--from", str(src)]) == 0
    assert _png_size(str(png))[0] >= 800
    assert sorted(plot(rows, str(tmp_path / "again.png"))) == [
        ("rx throughput", "memif-aio bench (master)"),
        ("tx throughput", "memif-aio bench (slave)")]


def test_plot_refuses_what_is_not_results(tmp_path: Any, capsys: Any) -> None:
    src = tmp_path / "x.json"
    src.write_text('{"hello": 1}\n')
    assert main(["--plot", str(tmp_path / "x.png"), "--from", str(src)]) == 2
    assert "neither benchmark results nor a memif-aio bench summary" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_micro_prints_every_case_and_compares_two_checkouts() -> None:
    """``python -m benchmarks.rxmicro``: every case gets a row with numbers; ``--compare`` runs
    both checkouts (here the same one twice) and refuses a child that imported the wrong
    memif_aio (checked inside the runner)."""
    cases = ["floor-rx", "ring-s2m-chain1", "ring-s2m-2regions", "q-into-pingpong"]
    r = _run("benchmarks.rxmicro", "--reps", "3", "--rounds", "1", "--cases", ",".join(cases),
             "--compare", ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()
            if line and not line.startswith(("#", "case"))}
    assert sorted(rows) == sorted(cases)
    for values in rows.values():
        assert len(values) == 6 and all(float(v) > 0 for v in values)
    bad = _run("benchmarks.rxmicro", "--cases", "no-such-case", timeout=60)
    assert bad.returncode != 0 and "unknown case" in bad.stderr


# --- benchmarks.binding (memif_aio beside the libmemif C-extension binding) -----------------
def test_binding_ratio_says_memif_aio_ahead_above_one_for_rates_and_round_trips() -> None:
    from benchmarks.binding import summarize

    rate = summarize([4.0, 6.0, 5.0], [2.0, 3.0, 2.5], "Mpps")
    assert rate["ratio"] == 2.0
    assert rate["memif_aio"]["median"] == 5.0 and rate["binding"]["median"] == 2.5
    assert (rate["memif_aio"]["min"], rate["memif_aio"]["max"]) == (4.0, 6.0)
    # a round trip: shorter is better, so binding / memif_aio
    rtt = summarize([2.0, 2.0, 3.0], [4.0, 5.0, 6.0], "us RTT")
    assert rtt["ratio"] == 2.5
    with pytest.raises(ValueError):
        summarize([], [1.0], "Mpps")


def test_binding_runner_refuses_unknown_rows_and_names_the_missing_binding() -> None:
    r = _run("benchmarks.binding", "--only", "rx,bogus", timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert "bogus" in r.stderr and "pingpong-busy-poll" in r.stderr
    r = _run("benchmarks.binding", "--rounds", "0", timeout=60)
    assert r.returncode == 2 and "--rounds" in r.stderr
    # a module that is not there: exit 2 and say how to get the binding, before any testpmd
    r = _run("benchmarks.binding", "--module", "memif_aio_no_such_binding", timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert "memif_aio_no_such_binding" in r.stderr and "python-memif" in r.stderr
    # a module that is there but is not python-memif
    r = _run("benchmarks.binding", "--module", "json", timeout=60)
    assert r.returncode == 2 and "has no NativeMemif" in r.stderr
