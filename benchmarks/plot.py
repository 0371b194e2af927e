"""Charts of benchmark results (``python -m benchmarks --plot FILE.png``); needs matplotlib.

Four panels: receive and transmit throughput by frame size (one line per peer and loop, the
floors dashed), and the cumulative distribution of ping-pong round-trip times in interrupt and
in busy-poll mode (one curve per peer and loop, the floors dashed).

Input rows are those of the runner's JSON (``results``), or ``memif-aio bench --json``
summaries (one JSON object per line, or a list of them), which become throughput points: a
``tx`` run a transmit point, an ``rx`` run a receive point, at its mean frame size.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

RATE_PANELS = (("rx", "receive"), ("tx", "transmit"))
RTT_PANELS = (("interrupt", "interrupt mode"), ("busy-poll", "busy-poll mode"))


class PlotInputError(ValueError):
    """A file that is neither the runner's JSON nor ``memif-aio bench --json`` output."""


def _bench_row(obj: dict[str, Any], src: str) -> dict[str, Any] | None:
    """A ``memif-aio bench --json`` summary as a throughput row (None: echo, or no packets)."""
    mode = obj.get("mode")
    if mode not in ("rx", "tx") or not obj.get("packets") or not obj.get("seconds"):
        return None
    mpps = float(obj["pps"]) / 1e6
    # an rx summary's "size" is the --size option, not what arrived: use the mean frame size
    size = round(int(obj["bytes"]) / int(obj["packets"])) if obj.get("bytes") else \
        int(obj["size"])
    return {"scenario": f"{mode}-burst-size", "peer": f"memif-aio bench ({obj.get('role')})",
            "loop": "-", "unit": "Mpps", "size": size, "values": [mpps],
            "median": mpps, "min": mpps, "max": mpps, "extra": {"source": src}}


def _rows_of(obj: Any, src: str) -> list[dict[str, Any]]:
    if isinstance(obj, list):
        return [r for o in obj for r in _rows_of(o, src)]
    if not isinstance(obj, dict):
        raise PlotInputError(f"{src}: expected JSON objects, found {type(obj).__name__}")
    if "results" in obj:
        rows = obj["results"]
        if not isinstance(rows, list):
            raise PlotInputError(f"{src}: 'results' is not a list")
        return rows
    if "mode" in obj and "pps" in obj:
        row = _bench_row(obj, src)
        return [row] if row is not None else []
    raise PlotInputError(f"{src}: neither benchmark results nor a memif-aio bench summary")


def load(path: str) -> list[dict[str, Any]]:
    """Rows of one file: the runner's ``--json`` output, or ``memif-aio bench --json`` lines."""
    with open(path) as f:
        text = f.read()
    try:
        return _rows_of(json.loads(text), path)
    except json.JSONDecodeError:
        pass
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            rows += _rows_of(json.loads(line), path)
        except json.JSONDecodeError as exc:
            raise PlotInputError(f"{path}:{n}: not JSON ({exc})") from None
    return rows


def _label(row: dict[str, Any]) -> str:
    peer = "floor" if row["peer"] == "-" else str(row["peer"])
    return peer if row.get("loop", "-") == "-" else f"{peer}, {row['loop']}"


def rate_series(rows: list[dict[str, Any]], direction: str) -> dict[str, list[dict[str, Any]]]:
    """Throughput rows of one direction by line label, sorted by size.

    A size sweep (``rx-burst-size``) gives the line; a peer and loop without a sweep falls
    back to its 64-byte ``rx-burst`` row; the floors give their own (dashed) line.
    """
    sweep = {f"{direction}-burst-size", f"floor-{direction}-size"}
    single = {f"{direction}-burst", f"floor-{direction}"}
    by: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if r.get("scenario") in sweep:
            by[_label(r)][int(r["size"])] = r
    for r in rows:
        if r.get("scenario") in single:
            by[_label(r)].setdefault(int(r.get("size", 64)), r)
    return {k: [v[s] for s in sorted(v)] for k, v in by.items()}


def rtt_series(rows: list[dict[str, Any]], mode: str) -> dict[str, list[float]]:
    """Round-trip samples (µs) of one receive mode by curve label."""
    out: dict[str, list[float]] = {}
    for r in rows:
        if r.get("scenario") in (f"pingpong-{mode}", f"floor-{mode}") and r.get("values"):
            out[_label(r)] = sorted(float(v) for v in r["values"])
    return out


def plot(rows: list[dict[str, Any]], path: str, title: str = "") -> list[tuple[str, str]]:
    """Draw the four panels into ``path`` (PNG); return the ``(panel, label)`` drawn."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'memif_aio[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import (
        FixedLocator,
        FuncFormatter,
        LogLocator,
        NullFormatter,
        NullLocator,
    )

    fig, axes = plt.subplots(2, 2, figsize=(13, 9), constrained_layout=True)
    drawn: list[tuple[str, str]] = []
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours: dict[str, str] = {}

    def colour(label: str) -> str:
        key = label.split(",")[0]
        if key == "floor":
            return "black"
        return colours.setdefault(key, palette[len(colours) % len(palette)])

    def style(label: str) -> str:
        """uvloop solid, asyncio dotted; floors dashed (uvloop) or dash-dotted (asyncio)."""
        if label.startswith("floor"):
            return "-." if label.endswith("asyncio") else "--"
        return ":" if label.endswith("asyncio") else "-"

    for ax, (direction, name) in zip(axes[0], RATE_PANELS):
        series = rate_series(rows, direction)
        sizes: set[int] = set()
        for label, pts in sorted(series.items()):
            xs = [int(p["size"]) for p in pts]
            ys = [float(p["median"]) for p in pts]
            lo = [y - float(p.get("min", y)) for p, y in zip(pts, ys)]
            hi = [float(p.get("max", y)) - y for p, y in zip(pts, ys)]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label,
                        color=colour(label), linestyle=style(label))
            sizes.update(xs)
            drawn.append((f"{direction} throughput", label))
        ax.set_title(f"{name} throughput by frame size (median, min to max)")
        ax.set_xlabel("frame size (bytes)")
        ax.set_ylabel("Mpps")
        if sizes:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(sorted(sizes)))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(s) for s in sorted(sizes)])
            ax.set_ylim(bottom=0)
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.grid(True, alpha=0.3)

    for ax, (mode, name) in zip(axes[1], RTT_PANELS):
        curves = rtt_series(rows, mode)
        for label, vals in sorted(curves.items()):
            n = len(vals)
            ax.step(vals, [(i + 1) / n for i in range(n)], where="post", label=f"{label} "
                    f"(median {vals[n // 2]:.2f} µs)", color=colour(label), linestyle=style(label))
            drawn.append((f"{mode} round trip", label))
        ax.set_title(f"ping-pong round-trip time, {name} (CDF)")
        ax.set_xlabel("round-trip time (µs, log scale; up to the slowest curve's 99.9th "
                      "percentile)")
        ax.set_ylabel("fraction of round trips")
        if curves:
            ax.set_xscale("log")
            x_lo = min(v[0] for v in curves.values())
            x_hi = max(v[min(len(v) - 1, int(len(v) * 0.999))] for v in curves.values())
            ax.set_xlim(x_lo / 1.2, x_hi * 1.2)
            decades = math.log10(x_hi * 1.2) - math.log10(x_lo / 1.2)
            subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(0, 1.01)
            ax.legend(fontsize="small", loc="lower right")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.grid(True, which="both", alpha=0.3)

    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn
