"""The report's figures, drawn with matplotlib and returned as PNG bytes.

Each function takes plain numbers (no run directory, no Keras), so the pictures can be
checked on their own. The accuracy-vs-latency plot is bench's own
(`edgekd.device.bench.report.accuracy_latency_figure`), shared rather than copied.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgekd.device.bench.report import pyplot

DPI = 100
# Confusion cells get their count written in them up to this many classes (CIFAR-10, not 100).
ANNOTATE_UP_TO = 20


def png(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _matrix_size(n: int) -> tuple[float, float]:
    side = min(max(5.0, 0.45 * n + 2.5), 14.0)
    return side + 1.2, side


def _class_ticks(ax: Any, names: Sequence[str]) -> None:
    size = 9 if len(names) <= 20 else max(4, int(200 / len(names)))
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=size)
    ax.set_yticks(range(len(names)), names, fontsize=size)


def confusion_png(confusion: np.ndarray, class_names: Sequence[str], title: str) -> bytes:
    """Heat map of a confusion matrix: colour is the share of each true class (row), the
    number in a cell is the count of images."""
    plt = pyplot()
    cm = np.asarray(confusion, np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=_matrix_size(len(class_names)))
    im = ax.imshow(100 * share, cmap="viridis", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    if len(class_names) <= ANNOTATE_UP_TO:
        for i, j in np.ndindex(cm.shape):
            if cm[i, j]:
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                        color="black" if share[i, j] > 0.6 else "white")  # fmt: skip
    _class_ticks(ax, class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    return png(fig)


def group_order(n: int, groups: Sequence[Sequence[int]]) -> list[int]:
    """Class indices group by group (each class where it first appears), then the rest."""
    order: list[int] = []
    for g in groups:
        order += [c for c in g if c not in order]
    return order + [c for c in range(n) if c not in order]


def affinity_png(
    affinity: np.ndarray, class_names: Sequence[str], groups: Sequence[Sequence[int]], title: str
) -> bytes:
    """The affinity the groups were cut from, classes ordered by group, a box around each
    group that sits in one block of that order."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    a = np.asarray(affinity, np.float64)
    order = group_order(len(class_names), groups)
    shown = a[np.ix_(order, order)].copy()
    np.fill_diagonal(shown, np.nan)  # the diagonal says nothing about confusion
    fig, ax = plt.subplots(figsize=_matrix_size(len(class_names)))
    im = ax.imshow(shown, cmap="magma")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="affinity")
    for m, g in enumerate(groups):
        pos = sorted(order.index(c) for c in g)
        if pos and pos[-1] - pos[0] + 1 == len(pos):
            ax.add_patch(Rectangle((pos[0] - 0.5, pos[0] - 0.5), len(pos), len(pos), fill=False,
                                   edgecolor="tab:cyan", linewidth=2))  # fmt: skip
            ax.text(pos[0] - 0.35, pos[-1] + 0.35, f"S{m}", color="tab:cyan", fontsize=9,
                    ha="left", va="bottom", fontweight="bold")  # fmt: skip
    _class_ticks(ax, [class_names[c] for c in order])
    ax.set_title(title)
    fig.tight_layout()
    return png(fig)


def delta_png(
    class_names: Sequence[str], deltas: Mapping[str, Sequence[float]], baseline: str
) -> bytes:
    """Per-class accuracy change of each model against `baseline`, in points, as bars."""
    plt = pyplot()
    n, k = len(class_names), max(len(deltas), 1)
    fig, ax = plt.subplots(figsize=(min(max(7.0, 0.5 * n * k / 2 + 3), 16.0), 4.5))
    width = 0.8 / k
    x = np.arange(n)
    for i, (name, values) in enumerate(deltas.items()):
        ax.bar(x + (i - (k - 1) / 2) * width, 100 * np.asarray(values, np.float64), width,
               label=name)  # fmt: skip
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, class_names, rotation=60 if n > 10 else 30, ha="right",
                  fontsize=9 if n <= 20 else 6)  # fmt: skip
    ax.set_ylabel(f"accuracy − {baseline} (points)")
    ax.set_title(f"per-class change against the {baseline}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def curves_png(stage: str, histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes:
    """Accuracy and loss per epoch of each model a stage trained (training solid, validation
    dashed). The loss is the cross-entropy on labels (`hard_loss` where the model also had a
    soft term), so a distilled model and its hard-label control share one scale."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, epochs) in enumerate(histories.items()):
        colour = colours[i % len(colours)]
        x = [int(e.get("epoch", n + 1)) for n, e in enumerate(epochs)]
        loss = "hard_loss" if any("hard_loss" in e for e in epochs) else "loss"
        for ax, key in ((acc_ax, "accuracy"), (loss_ax, loss)):
            for prefix, style in (("", "-"), ("val_", "--")):
                y = [e.get(prefix + key) for e in epochs]
                if all(v is None for v in y):
                    continue
                y = [np.nan if v is None else (100 * v if key == "accuracy" else v) for v in y]
                ax.plot(x, y, style, marker="o", markersize=3, color=colour,
                        label=f"{label} ({'validation' if prefix else 'training'})")  # fmt: skip
    acc_ax.set_ylabel("top-1 accuracy (%)")
    loss_ax.set_ylabel("cross-entropy on the labels")
    last = max((len(e) for e in histories.values()), default=1)
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if last <= 1:
            ax.set_xlim(0.5, 1.5)
            ax.set_xticks([1])
    handles, labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(len(labels), 1)), fontsize=8)
    fig.suptitle(f"{stage}: training curves")
    rows = (len(labels) + 3) // 4
    fig.tight_layout(rect=(0, min(0.08 * rows + 0.02, 0.5), 1, 1))
    return png(fig)


def activation_png(names: Sequence[str], rates: Mapping[str, Sequence[float]]) -> bytes:
    """How often each specialist ran, one bar per source of the rate (eval, each bench row)."""
    plt = pyplot()
    n, k = len(names), max(len(rates), 1)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.9 * n * k / 2 + 3), 16.0), 4.2))
    width = 0.8 / k
    x = np.arange(n)
    for i, (source, values) in enumerate(rates.items()):
        ax.bar(x + (i - (k - 1) / 2) * width, 100 * np.asarray(values, np.float64), width,
               label=source)  # fmt: skip
    ax.set_xticks(x, names, fontsize=8, rotation=0 if n <= 6 else 45,
                  ha="center" if n <= 6 else "right")  # fmt: skip
    ax.set_ylim(0, 105)
    ax.set_ylabel("images it ran on (%)")
    ax.set_title("specialist activation rate")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)
