"""The benchmark's records as a text table, a latency and throughput plot, and BENCHMARKS.md rendered
from the JSON records of benchmarks/results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from raft_engine.errors import MissingDependency

if TYPE_CHECKING:
    pass


def _cell(record: dict, key: str, fmt: str) -> str:
    value = record.get(key)
    return fmt.format(value) if record["status"] == "ok" and value is not None else "-"


def table(records: list[dict]) -> str:
    header = [
        "backend",
        "variant",
        "dtype",
        "corr",
        "batch",
        "size",
        "iters",
        "p50 ms",
        "p90 ms",
        "pairs/s",
        "peak MB",
        "GFLOP",
        "TFLOP/s",
        "% bf16",
        "EPE drift",
        "status",
    ]
    rows = []
    for r in records:
        rows.append(
            [
                r["backend"],
                r["variant"],
                r["dtype"],
                r["corr"],
                str(r["batch"]),
                f"{r['height']}x{r['width']}",
                str(r["iters"]),
                _cell(r, "latency_ms_p50", "{:.2f}"),
                _cell(r, "latency_ms_p90", "{:.2f}"),
                _cell(r, "pairs_per_s", "{:.2f}"),
                _cell(r, "peak_mem_mb", "{:.0f}"),
                _cell(r, "gflop_per_pair", "{:.0f}"),
                _cell(r, "tflops", "{:.2f}"),
                _cell({**r, "percent": 100 * (r.get("fraction_of_bf16_peak") or 0)}, "percent", "{:.1f}"),
                _cell(r, "epe_vs_fp32", "{:.4f}"),
                r["status"] + (f" (no drift: {r['reference_error']})" if r.get("reference_error") else ""),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def plot(records: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MissingDependency("--plot needs matplotlib: pip install -e '.[plot]'", name="matplotlib") from error
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[tuple, list[tuple[int, float, float]]] = {}
    for r in records:
        if r["status"] == "ok":
            key = (r["backend"], r["variant"], r["dtype"], r["corr"], r["height"], r["width"], r["iters"])
            series.setdefault(key, []).append((r["batch"], r["latency_ms_p50"], r["pairs_per_s"]))
    for key, points in sorted(series.items()):
        points.sort()
        label = f"{key[0]} {key[1]} {key[2]} {key[4]}x{key[5]} {key[6]}it"
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        right.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=label)
    for axis, title in ((left, "latency (ms, median)"), (right, "throughput (pairs/s)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    right.legend(fontsize=6, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# Keys of a measurement file that describe where and how it was measured, shown before its figures.
_CONTEXT_KEYS = ("device", "command", "raft_engine", "torch", "ray", "python", "cpus", "note")


def _leaves(value: object, path: str = "") -> list[tuple[str, str]]:
    """(dotted path, text) of every scalar in a JSON value; lists of scalars on one line."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _leaves(item, f"{path}.{key}" if path else str(key))]
    if isinstance(value, list):
        if all(not isinstance(item, (dict, list)) for item in value):
            return [(path, ", ".join(_text(item) for item in value))]
        return [leaf for k, item in enumerate(value) for leaf in _leaves(item, f"{path}[{k}]")]
    return [(path, _text(value))]


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def _benchmark_section(records: list[dict]) -> list[str]:
    """A file of `raft-engine bench` records: its device, versions and command, then the table."""
    first = records[0]
    versions_text = ", ".join(f"{k} {v}" for k, v in first["versions"].items())
    return [
        f"- device: {first['device']}",
        f"- versions: {versions_text}",
        f"- weights: {first['weights']}",
        f"- bf16 matrix-product peak measured: {first['bf16_matmul_tflops']} TFLOP/s",
        f"- date: {first['date']}",
        f"- command: `{first['command']}`",
        "",
        "```",
        table(records),
        "```",
    ]


def _measurement_section(data: object) -> list[str]:
    """Any other results file (a script of benchmarks/): where and how, then every figure by its path."""
    lines = []
    rest = data
    if isinstance(data, dict):
        for key in _CONTEXT_KEYS:
            if key in data:
                text = f"`{data[key]}`" if key == "command" else _text(data[key])
                lines.append(f"- {key}: {text}")
        rest = {key: value for key, value in data.items() if key not in _CONTEXT_KEYS}
    lines += ["", "| measure | value |", "|---|---|"]
    lines += [f"| {path or '-'} | {text.replace('|', '/')} |" for path, text in _leaves(rest)]
    return lines


def render_markdown(results_dir: Path, level: int = 1) -> str:
    """Every results file of `results_dir`, with its device, versions and command: the benchmark's records
    as a table, other measurements as a table of their figures. `level`: the title's heading level."""
    heading = "#" * level
    parts = [
        f"{heading} Benchmarks",
        "",
        "Rendered by `python bench.py --render benchmarks/results` from the JSON records there.",
        "Every number was measured by the command shown with it; reproduce a table by running that command.",
        "",
    ]
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text())
        if not data:
            continue
        is_bench = isinstance(data, list) and all(
            isinstance(r, dict) and "backend" in r and "versions" in r for r in data
        )
        parts += [f"{heading}# {path.stem}", ""]
        parts += _benchmark_section(data) if is_bench else _measurement_section(data)
        parts.append("")
    return "\n".join(parts)
