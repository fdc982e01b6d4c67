"""Teacher levers that need no training: gating width, member calibration, flip averaging.

For one trained run (generalist, groups and specialists done), scores every member once on
the validation images and on their mirror images, then fuses them in numpy under each
variant and prints one table: accuracy, the fused teacher's NLL, and the paired difference
against the recipe's own gated ensemble (95% bootstrap interval, exact McNemar p).

Calibration fits one temperature per member by NLL on a grid, cross-fitted over two seeded
halves of the validation split, so no image is scored by a temperature fitted on it.

    python benchmarks/teacher_levers.py runs/cifar10-cpu [--limit 5000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgekd.data.dataset import prepare_data
from edgekd.maths.fusion import fuse, gate, scatter_specialist, softmax
from edgekd.maths.specialist import specialist_labels
from edgekd.maths.stats import compare_paired, format_p
from edgekd.recipe import build_recipe
from edgekd.tables import format_table
from edgekd.training.ensemble.gated import load_gated_ensemble
from edgekd.training.run import RunDir
from edgekd.training.trainer import predict_logits

GRID = np.exp(np.linspace(np.log(0.5), np.log(4.0), 57))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The grid temperature with the lowest mean NLL of softmax(logits / T)."""
    rows = np.arange(len(labels))
    nll = [-np.log(softmax(logits / t)[rows, labels] + 1e-12).mean() for t in GRID]
    return float(GRID[int(np.argmin(nll))])


def cross_fit(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Per-image temperature: fitted on the other fold."""
    t = np.ones(len(labels))
    for f in (0, 1):
        t[folds == f] = fit_temperature(logits[folds != f], labels[folds != f])
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--limit", type=int, default=None, help="validation images to use")
    args = parser.parse_args()

    t0 = time.perf_counter()
    run = RunDir.open_existing(args.run)
    recipe = build_recipe(run.manifest["recipe"])
    val = prepare_data(recipe, progress=False).val
    images, labels = val.images[: args.limit], val.labels[: args.limit]
    ens = load_gated_ensemble(run.path)
    k, groups = ens.num_classes, ens.groups
    mirror = images[:, :, ::-1, :]
    members = [ens.generalist, *ens.specialists]
    logits = [predict_logits(m, images) for m in members]
    logits_flip = [predict_logits(m, mirror) for m in members]
    member_labels = [labels] + [specialist_labels(labels, g, k) for g in groups]
    folds = np.random.default_rng(0).permutation(len(labels)) % 2
    temps = [cross_fit(z, y, folds) for z, y in zip(logits, member_labels, strict=True)]

    def probs_of(flip: bool, calibrate: bool) -> list[np.ndarray]:
        out = []
        for i, z in enumerate(logits):
            t = temps[i][:, None] if calibrate else 1.0
            p = softmax(z / t)
            if flip:
                p = 0.5 * (p + softmax(logits_flip[i] / t))
            out.append(p)
        return out

    def ensemble(probs: list[np.ndarray], top_n: int) -> np.ndarray:
        general, specs = probs[0], probs[1:]
        active = gate(general, ens.membership, top_n=top_n, confidence=ens.confidence)
        p_in = np.zeros((len(labels), len(groups), k), np.float32)
        p_dust = np.zeros((len(labels), len(groups)), np.float32)
        for s, (p, g) in enumerate(zip(specs, groups, strict=True)):
            p_in[:, s], p_dust[:, s] = scatter_specialist(p, g, k, dustbin=ens.dustbin)
        return fuse(general, p_in, p_dust, active, ens.membership, dustbin=ens.dustbin,
                    iterations=ens.iterations)  # fmt: skip

    variants: dict[str, np.ndarray] = {
        "generalist": probs_of(False, False)[0],
        "generalist + flip": probs_of(True, False)[0],
        "generalist, calibrated": probs_of(False, True)[0],
    }
    for flip in (False, True):
        for calibrate in (False, True):
            probs = probs_of(flip, calibrate)
            tag = (" + flip" if flip else "") + (", calibrated" if calibrate else "")
            variants[f"ensemble top-{ens.top_n}{tag}"] = ensemble(probs, ens.top_n)
            if not flip and not calibrate:
                for n in sorted({1, 2} - {ens.top_n}):
                    variants[f"ensemble top-{n}"] = ensemble(probs, n)
                variants["ensemble, all specialists"] = ensemble(probs, k)
    base_name = f"ensemble top-{ens.top_n}"
    correct = {n: p.argmax(1) == labels for n, p in variants.items()}
    rows = []
    for name, p in variants.items():
        nll = -np.log(p[np.arange(len(labels)), labels] + 1e-12).mean()
        c = compare_paired(base_name, correct[base_name], name, correct[name])
        rows.append([
            name, f"{100 * c.accuracy_b:.2f}", f"{nll:.4f}",
            f"{100 * c.difference:+.2f}", f"[{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]",
            format_p(c.p_value),
        ])  # fmt: skip
    print(f"{args.run}: {len(labels)} validation images; member temperatures (fold 0 / 1): "
          + "; ".join(f"{np.unique(t)[0]:.2f}/{np.unique(t)[-1]:.2f}" for t in temps))  # fmt: skip
    headers = ["teacher", "accuracy (%)", "NLL", f"vs {base_name} (pp)", "95% CI", "McNemar p"]
    print(format_table(headers, rows))
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
