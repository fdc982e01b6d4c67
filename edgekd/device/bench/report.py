"""The bench report as a table with the student-vs-ensemble headline, and as a plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _times(ratio: float, better: str, worse: str) -> str:
    """'3.1x faster' for a ratio >= 1, else '1.3x slower' (never '0.8x faster')."""
    return f"{ratio:.1f}x {better}" if ratio >= 1 else f"{1 / ratio:.1f}x {worse}"


def _headline(report: dict[str, Any]) -> list[str]:
    """The student-vs-ensemble lines: the int8 student (float32 if none) vs each ensemble."""
    rows = [r for r in report["rows"] if "error" not in r]
    students = [r for r in rows if r["model"] == "student"]
    if not students or not any(r["model"] == "ensemble" for r in rows):
        return []
    by_pref = {(r["precision"], r["format"]): r for r in students}
    pick = next(
        (by_pref[k] for k in (("int8", "tflite"), ("int8", "onnx"), ("int8-qat", "tflite"),
                              ("int8-cpu", "onnx"), ("float32", "tflite"), ("float32", "onnx"))
         if k in by_pref),
        students[0],
    )  # fmt: skip
    lines = []
    for e in (r for r in rows if r["model"] == "ensemble" and r["format"] == pick["format"]):
        s_lat, e_lat = pick["latency_ms"]["p50"], e["latency_ms"]["p50"]
        delta = 100 * (pick["accuracy"] - e["accuracy"])
        size = _times(e["size_bytes"] / pick["size_bytes"], "smaller", "larger")
        lines.append(
            f"student {pick['precision']} {pick['format']} vs gated ensemble {e['precision']} "
            f"{e['format']}: {_times(e_lat / s_lat, 'faster', 'slower')} at p50 ({s_lat:.3f} "
            f"vs {e_lat:.3f} ms), {size}, accuracy {delta:+.2f} pp "
            f"({100 * pick['accuracy']:.2f}% vs {100 * e['accuracy']:.2f}%)"
        )
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The terminal report: settings, one row per model and format, the headline ratios."""
    from edgekd.tables import format_table

    headers = ["model", "format", "precision", "runtime", "size MB", "accuracy %", "p50 ms",
               "p90 ms", "p99 ms", "img/s", "peak RSS MB", "members/img"]  # fmt: skip
    rows, notes = [], []
    for r in report["rows"]:
        base = [r["model"], r["format"], r["precision"]]
        size = f"{r['size_bytes'] / 1e6:.2f}"
        if "error" in r:
            rows.append([*base, "-", size, *(["-"] * 7)])
            notes.append(f"{r['model']} {r['precision']} {r['format']}: {r['error']}")
            continue
        lat = r["latency_ms"]
        rows.append([
            *base, r["backend"], size, f"{100 * r['accuracy']:.2f}",
            f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}",
            "-" if r["throughput_ips"] is None else f"{r['throughput_ips']:.0f}",
            f"{r['rss_mb']['peak']:.0f}", f"{r['members_per_image']:.2f}",
        ])  # fmt: skip
        notes += [f"{r['model']} {r['precision']} {r['format']}: {n}" for n in r.get("notes", [])]
    s, d, h = report["settings"], report["data"], report["host"]
    threads = s["threads"] if s["threads"] is not None else "runtime default"
    versions = ", ".join(f"{k} {h[k]}" for k in ("litert", "onnxruntime", "tensorrt") if h.get(k))
    lines = [
        f"edgekd bench {report['export']}  (device profile: {report['device']['name']})",
        f"host: {h['system']} {h['machine']}{_cpu(h.get('cpu'))}, {h['cpus']} CPUs, "
        f"Python {h['python']}; {versions}",
        f"data: {d['images']} images from {d['source']} ({d['selection']})",
        f"latency: batch 1, {s['warmup']} warm-up + {s['runs']} runs; throughput: batch "
        f"{s['batch']}; medians of {s.get('rounds', 1)} interleaved rounds, a fresh process "
        f"per model and round; threads: {threads}",
        "",
        format_table(headers, rows),
    ]
    ens = [r for r in report["rows"] if r["model"] == "ensemble" and "error" not in r]
    for r in ens:
        rate = ", ".join(f"{100 * a:.1f}%" for a in r.get("activation_rate", []))
        lines.append(f"ensemble {r['precision']} {r['format']}: specialist activation rate "
                     f"[{rate}], {r['members_per_image']:.2f} models run per image")  # fmt: skip
    lines += _headline(report)
    lines += [f"note: {n}" for n in [*report["notes"], *notes]]
    return "\n".join(lines)


def _cpu(cpu: dict[str, Any] | None) -> str:
    """" (MODEL, int8 dot product: NAME|none)" for the host line, or "" where unknown."""
    if not cpu or not cpu.get("flags_read"):
        return ""
    model = f"{cpu['model']}, " if cpu.get("model") else ""
    return f" ({model}int8 dot product: {cpu.get('int8_dot') or 'none'})"


# Where a point's label may go, in points from it: right, above, below, left.
_LABEL_OFFSETS = ((5, 4), (5, -11), (-5, 7), (-5, -14), (5, 14), (5, -21), (-5, 17), (-5, -24))


def _place_labels(fig: Any, ax: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Label each point with its precision at the first offset whose text overlaps no label
    placed before it (points in latency order), so close points stay readable."""
    fig.canvas.draw()  # settles the axis limits, so display positions are final
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    for r in sorted(rows, key=lambda r: r["latency_ms"]["p50"]):
        xy = (r["latency_ms"]["p50"], 100 * r["accuracy"])
        for dx, dy in _LABEL_OFFSETS:
            label = ax.annotate(
                r["precision"], xy, textcoords="offset points", xytext=(dx, dy), fontsize=8,
                ha="left" if dx > 0 else "right",
            )  # fmt: skip
            label.update_positions(renderer)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            label.remove()
        else:  # nowhere free: keep the first choice
            label = ax.annotate(r["precision"], xy, textcoords="offset points",
                                xytext=_LABEL_OFFSETS[0], fontsize=8)  # fmt: skip
            label.update_positions(renderer)
            box = label.get_window_extent(renderer)
        placed.append(box)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files, no display); ImportError without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Colour and marker of each bench row kind; `extra` points bring their own.
_STYLES = {
    ("student", "tflite"): ("tab:blue", "o"),
    ("student", "onnx"): ("tab:blue", "^"),
    ("student", "tensorrt"): ("tab:blue", "v"),
    ("ensemble", "tflite"): ("tab:orange", "s"),
    ("ensemble", "onnx"): ("tab:orange", "D"),
}


def accuracy_latency_figure(
    report: dict[str, Any], extra: Sequence[dict[str, Any]] = (), title: str | None = None
) -> Any | None:
    """Accuracy vs p50 latency, one point per successful bench row, plus `extra` points; the
    matplotlib figure, or None when there is nothing to draw. Needs matplotlib.

    `extra`: points the caller places itself (`edgekd report` adds the generalist and the
    hard-label control), each a dict with `legend`, `precision` (its label), `latency_ms`
    {`p50`}, `accuracy`, `color`, `marker` and optionally `hollow` (an estimated latency).
    """
    plt = pyplot()
    import matplotlib.ticker

    rows = [r for r in report["rows"] if "error" not in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for (model, fmt), (colour, marker) in _STYLES.items():
        pts = [r for r in rows if (r["model"], r["format"]) == (model, fmt)]
        if pts:
            ax.scatter([r["latency_ms"]["p50"] for r in pts], [100 * r["accuracy"] for r in pts],
                       color=colour, marker=marker, s=55, label=f"{model} {fmt}")  # fmt: skip
    legends: dict[str, Any] = {}
    for p in extra:
        hollow = bool(p.get("hollow"))
        ax.scatter([p["latency_ms"]["p50"]], [100 * p["accuracy"]], s=70, marker=p["marker"],
                   facecolors="none" if hollow else p["color"], edgecolors=p["color"],
                   label=None if p["legend"] in legends else p["legend"])  # fmt: skip
        legends[p["legend"]] = True
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("p50 latency, batch 1 (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    if title is None:
        title = (f"{Path(report['export']).resolve().parent.name}: accuracy vs latency "
                 f"({report['data']['images']} images)")  # fmt: skip
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _place_labels(fig, ax, [*rows, *extra])
    return fig


def save_plot(report: dict[str, Any], path: str | Path) -> str:
    """Accuracy vs p50 latency, one point per row; a message saying what happened.

    matplotlib is optional (a device rarely needs it): without it the plot is skipped.
    """
    try:
        plt = pyplot()
    except ImportError:
        return "plot skipped: matplotlib not installed (pip install matplotlib)"
    fig = accuracy_latency_figure(report)
    if fig is None:
        return "plot skipped: no successful rows"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"
