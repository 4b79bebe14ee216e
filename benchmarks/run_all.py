"""Run every benchmark in this folder and write ``docs/benchmarks.md``.

Each benchmark is a script that prints a human table and, as its last line,
``RESULT {json}``. This runner keeps both, adds the machine it ran on, and fails (exit 1)
when a benchmark fails or prints no RESULT line. A benchmark that cannot run on this
machine (``multihost.py`` needs root, ``ip``, ``nft`` and ``redis-server``) says why in one
line and exits 77: its section says so instead, and the others run.

Then it draws the results as charts (SVG, into ``docs/benchmarks/``, shown at the top of
the page): every ratio that has a target against its target, and how cost grows with
load wherever a RESULT holds a curve (see :func:`curves`). ``--charts`` draws them again
from the RESULT blocks already in ``docs/benchmarks.md``, without running anything.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "benchmarks.md"
#: where the charts go, beside the page that shows them
CHARTS = DOCS.parent / "benchmarks"
#: the exit status of a benchmark that cannot run on this machine
CANNOT_RUN = 77

#: The target of each ratio, per benchmark: key in its RESULT -> (comparison, target).
#: The benchmarks state them in prose and in their tables' notes, so they are copied here;
#: change both together. connections.py's (<= 8 KB per connection at 10,000, none lost)
#: and messaging.py's embedded_msgs_per_s (>= 50,000) are not ratios.
TARGETS: dict[str, dict[str, tuple[str, float]]] = {
    # benchmarks/README.md, rpc.py: "The targets (from the issue)", and the
    # tracing_on_overhead row of its figures
    "rpc": {
        "p50_ratio": ("<=", 1.15),
        "throughput_ratio": (">=", 0.85),
        "tracing_on_overhead": ("<=", 0.25),
    },
    # benchmarks/README.md, links.py: the target column of its figures
    "links": {
        "call_p50_ratio": ("<=", 0.7),
        "call_throughput_ratio": (">=", 3.0),
        "publish_ratio": (">=", 20.0),
        "call_p50_vs_raw_ping": ("<=", 1.25),
        "multicast_vs_gather_unary": ("<=", 0.5),
        "multicast_vs_raw_fanout": ("<=", 1.5),
        "stream_ratio": (">=", 10.0),
        "bulk_transfer_ratio": (">=", 0.8),
    },
    # gateway.py and http.py: the notes of their tables (against the fast peers)
    "gateway": {"p50_ratio": ("<=", 2.5), "throughput_ratio": (">=", 0.6)},
    "http": {"p50_ratio": ("<=", 2.5), "throughput_ratio": (">=", 0.8)},
    # messaging.py: the target column of its ratio table
    "messaging": {"amqp_vs_aiopika": (">=", 1.0), "amqp_vs_faststream": (">=", 1.5)},
    # benchmarks/README.md, channels.py: the target column of its figures (the second is
    # a time, not a ratio: publish -> delivery at 10,000 subscribers, paced)
    "channels": {"fanout_throughput_ratio": (">=", 0.5), "delivery_p99_ms": ("<=", 200.0)},
    # benchmarks/README.md, multihost.py: the target column of its figures
    "multihost": {
        "cross_host_call_p50_ratio": ("<=", 0.7),
        "cross_host_call_throughput_ratio": (">=", 3.0),
    },
}

#: matplotlib's settings for the charts: the same results give the same bytes (ids from a
#: fixed salt, no date), and text stays text (searchable, and small)
CHART_STYLE = {
    "svg.hashsalt": "wiremesh-benchmarks",
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
MET, MISSED = "#2e7d32", "#c62828"

#: a curve's points, (x, y) in the order of x
Points = list[tuple[float, float]]


def benchmarks() -> list[Path]:
    return sorted(
        p for p in HERE.glob("*.py") if not p.name.startswith("_") and p != Path(__file__).resolve()
    )


def run(script: Path) -> tuple[str, dict[str, object]] | str:
    """The table and the result of ``script``, or why it cannot run here."""
    print(f"== {script.name}", flush=True)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=1800, check=False
    )
    sys.stdout.write(done.stdout)
    if done.returncode == CANNOT_RUN:
        why = done.stderr.strip().splitlines()[-1]
        print(why, flush=True)
        return why
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{script.name} failed with exit status {done.returncode}")
    lines = done.stdout.rstrip().splitlines()
    if not lines or not lines[-1].startswith("RESULT "):
        raise SystemExit(f"{script.name} printed no RESULT line last")
    return "\n".join(lines[:-1]), json.loads(lines[-1][len("RESULT ") :])


def number(value: object) -> bool:
    """Whether ``value`` is a figure to draw (a bool is not, nor NaN)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def ratios(results: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, float, str, float]]:
    """(benchmark, key, value, comparison, target) of every ratio in ``results`` that has a
    target in :data:`TARGETS`, in the order of the targets."""
    return [
        (bench, key, float(result[key]), op, target)
        for bench, result in results.items()
        for key, (op, target) in TARGETS.get(bench, {}).items()
        if number(result.get(key))
    ]


def curves(result: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Points]]]:
    """How cost grows with load, as ``result`` holds it: curve name -> (what x is, series
    name -> points). Three shapes are read:

    * ``<what>_by_<x>``: a list of points, each a dict that holds ``<x>`` and one figure per
      series: ``"multicast_p50_us_by_nodes": [{"nodes": 1, "wiremesh": 210,
      "gather_unary": 250}, {"nodes": 2, ...}, ...]``;
    * a list of ``[x, y]`` pairs, one series named after the key (``_by_<x>`` names x);
    * figures measured at several loads, the load ending the key: ``redis_cpu_50`` and
      ``redis_cpu_200`` make the curve ``redis_cpu`` at 50 and 200.

    (The page keeps each RESULT with its keys sorted, so x is named, never the first key.)
    """
    found: dict[str, tuple[str, dict[str, Points]]] = {}
    by_load: dict[str, Points] = {}
    for key, value in result.items():
        x = key.rpartition("_by_")[2] if "_by_" in key else "load"
        if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
            points = sorted((p for p in value if number(p.get(x))), key=lambda p: p[x])
            names = dict.fromkeys(name for p in points for name in p if name != x)
            series = {
                name: [(float(p[x]), float(p[name])) for p in points if number(p.get(name))]
                for name in names
            }
            if series := {name: line for name, line in series.items() if len(line) >= 2}:
                found[key] = (x, series)
        elif isinstance(value, list) and all(
            isinstance(p, list) and len(p) == 2 and all(number(v) for v in p) for p in value
        ):
            if len(value) >= 2:
                found[key] = (x, {key: sorted((float(a), float(b)) for a, b in value)})
        elif (load := re.fullmatch(r"(.+)_(\d+)", key)) and number(value):
            by_load.setdefault(load[1], []).append((float(load[2]), float(value)))
    for stem, points in by_load.items():
        if len(points) >= 2:
            found[stem] = (f"the load ending the key ({stem}_N)", {stem: sorted(points)})
    return found


def charts(results: Mapping[str, Mapping[str, Any]], folder: Path = CHARTS) -> dict[str, str]:
    """Draw ``results`` (benchmark name -> its RESULT) as SVG files in ``folder``: one chart
    of every ratio against its target (``ratios.svg``), and one per curve of
    :func:`curves` (``<benchmark>-<curve>.svg``). Returns each file's name -> its caption.
    """
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figures
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    folder.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, str] = {}

    def save(figure: Figure, name: str, caption: str) -> None:
        out = io.StringIO()
        figure.savefig(out, format="svg", metadata={"Date": None}, bbox_inches="tight")
        (folder / name).write_text(out.getvalue())
        drawn[name] = caption

    with matplotlib.rc_context(CHART_STYLE):
        if rows := ratios(results):
            figure = Figure(figsize=(8, 0.9 + 0.32 * len(rows)))
            axes = figure.subplots()
            # how far each ratio is on the good side of its target (> 1: met), so that
            # ratios of different sizes and directions share one axis
            margins = [
                min(max(target / value if op == "<=" else value / target, 0.05), 20.0)
                if value > 0
                else (20.0 if op == "<=" else 0.05)
                for _, _, value, op, target in rows
            ]
            at = list(range(len(rows)))[::-1]
            # each bar goes from the target (1) to the ratio: right of it met, left missed
            axes.barh(
                at,
                [m - 1 for m in margins],
                left=1,
                color=[MET if m >= 1 else MISSED for m in margins],
                height=0.6,
            )
            axes.set_xscale("log")
            axes.axvline(1.0, color="black", linewidth=1)
            axes.set_yticks(at, [f"{bench}: {key}" for bench, key, *_ in rows])
            for y, m, (_, _, value, op, target) in zip(at, margins, rows, strict=True):
                axes.annotate(
                    f"{value:.3g}  (target {op.replace('<=', '≤').replace('>=', '≥')} {target:g})",
                    (m, y),
                    xytext=(4 if m >= 1 else -4, 0),
                    textcoords="offset points",
                    va="center",
                    ha="left" if m >= 1 else "right",
                )
            low, high = min([*margins, 0.5]), max([*margins, 2.0])
            axes.set_xlim(low / 4, high * 4)
            ticks = [2.0**k for k in range(-6, 6) if low / 4 <= 2.0**k <= high * 4]
            axes.set_xticks(ticks, [f"{t:g}\N{MULTIPLICATION SIGN}" for t in ticks])
            axes.minorticks_off()
            axes.set_xlabel("times better than its target (log scale; left of the line: missed)")
            axes.set_title("Each ratio against its target", loc="left")
            save(figure, "ratios.svg", "Each ratio against its target")
        for bench, result in results.items():
            for name, (x, series) in curves(result).items():
                figure = Figure(figsize=(6, 3.6))
                axes = figure.subplots()
                for label, points in series.items():
                    axes.plot(*zip(*points, strict=True), marker="o", label=label)
                xs = [px for points in series.values() for px, _ in points]
                ys = [py for points in series.values() for _, py in points]
                # a log scale where the figures span ten times or more, with plain numbers
                for which, values in (("x", xs), ("y", ys)):
                    if min(values) > 0 and max(values) >= 10 * min(values):
                        getattr(axes, f"set_{which}scale")("log")
                        axis = getattr(axes, f"{which}axis")
                        axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
                        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                        axis.set_minor_formatter(NullFormatter())
                what = name.partition("_by_")[0]
                axes.set_xlabel(x)
                axes.set_ylabel(what)
                axes.legend(frameon=False)
                axes.set_title(f"{bench}: {what}", loc="left")
                save(figure, f"{bench}-{name}.svg", f"{bench}: {what} as the load grows")
    return drawn


def results_in(page: str) -> dict[str, dict[str, Any]]:
    """The RESULT of each benchmark in ``page`` (a ``docs/benchmarks.md``)."""
    found = {}
    for section in re.split(r"^## ", page, flags=re.M)[1:]:
        name, _, body = section.partition("\n")
        if result := re.search(r"^```json\n(.*?)^```$", body, re.M | re.S):
            found[name.strip()] = json.loads(result[1])
    return found


def charts_section(drawn: Mapping[str, str]) -> str:
    images = "".join(f"![{caption}]({CHARTS.name}/{name})\n\n" for name, caption in drawn.items())
    if drawn.keys() <= {"ratios.svg"}:
        images += (
            "No RESULT holds figures at several loads yet: how cost grows is drawn here once "
            "one does (`curves` in `benchmarks/run_all.py` says what it reads).\n\n"
        )
    return f"## Charts\n\n{images}"


def redraw() -> int:
    """Draw the charts again from the results in ``docs/benchmarks.md``, and show them."""
    page = DOCS.read_text()
    head, sep, rest = page.partition("\n## ")
    if rest.startswith("Charts\n"):  # the charts of an earlier run: drawn again below
        rest = rest.partition("\n## ")[2]
    for old in CHARTS.glob("*.svg"):
        old.unlink()
    drawn = charts(results_in(page))
    DOCS.write_text(f"{head}\n{charts_section(drawn)}## {rest}" if sep else page)
    print(f"drew {len(drawn)} charts in {CHARTS.relative_to(HERE.parent)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--charts", action="store_true", help="only draw the charts of docs/benchmarks.md again"
    )
    if parser.parse_args().charts:
        return redraw()
    sections = []
    results: dict[str, dict[str, Any]] = {}
    for script in benchmarks():
        outcome = run(script)
        if isinstance(outcome, str):
            sections.append(
                f"## {script.stem}\n\n`python benchmarks/{script.name}`\n\nNot run: {outcome}\n"
            )
            continue
        table, result = outcome
        results[script.stem] = result
        sections.append(
            f"## {script.stem}\n\n`python benchmarks/{script.name}`\n\n```text\n{table}\n```\n\n"
            f"```json\n{json.dumps(result, indent=2, sort_keys=True)}\n```\n"
        )
    machine = (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )
    for old in CHARTS.glob("*.svg"):
        old.unlink()
    drawn = charts(results)
    DOCS.write_text(
        "# Benchmarks\n\n"
        "Written by `make bench` (`benchmarks/run_all.py`); do not edit by hand. Each benchmark "
        "runs wiremesh and the peer it is compared with in the same run on the same machine; "
        "figures are medians over several interleaved rounds, ratios are wiremesh / peer.\n\n"
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine}.\n\n"
        + charts_section(drawn)
        + "\n".join(sections)
    )
    print(f"wrote {DOCS.relative_to(HERE.parent)} and {len(drawn)} charts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
