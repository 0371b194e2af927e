"""``python -m benchmarks.micro_tx``: the in-process transmit microbenchmarks run (no speed is
asserted; docs/performance.md has the figures)."""

from __future__ import annotations

import pytest

from benchmarks import micro_tx as micro


@pytest.mark.both_loops
async def test_micro_benchmark_runs_every_scenario(capsys: pytest.CaptureFixture[str],
                                                   no_leaks: None) -> None:
    ns = micro.parser().parse_args(["--rounds", "2", "--calls", "1"])
    rows = await micro.measure(ns, set(micro.SCENARIOS))
    assert set(rows) == {"floor-tx", *micro.SCENARIOS}
    assert all(len(v) == 2 and min(v) > 0 for v in rows.values())
    micro.report(ns, "test", rows)
    lines = capsys.readouterr().out.splitlines()
    cols = {ln.split()[0]: ln.split()[1:] for ln in lines[2:]}
    assert set(cols) == set(rows)
    # a ratio to floor-tx (and its spread) for every scenario but the chains
    assert {k for k, v in cols.items() if len(v) == 4} == \
        {k for k in micro.SCENARIOS if not k.endswith("chain")}


def test_micro_refuses_an_unknown_scenario() -> None:
    with pytest.raises(SystemExit):
        micro.main(["--only", "no-such-row"])
