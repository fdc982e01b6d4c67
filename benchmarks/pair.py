"""Pair models of different runs image by image: each `RUN:MODEL` against the first one.

`edgekd eval` pairs the models inside one run; a lever that lives in another run (a student
distilled from another teacher, a from-scratch model trained for a given budget) needs the
same comparison across runs. The runs must hold the same validation images: the same data
fingerprint, seed and `val_fraction`, which this checks before comparing. MODEL is a name
from `edgekd eval RUN` (generalist, ensemble, distilled, hard-label, budget-matched
(amortised), ...). Each row is B − A in points with a 95% bootstrap interval over images
and an exact McNemar p.

    python benchmarks/pair.py runs/w8:hard-label runs/w8:distilled runs/w8-gen:distilled
"""

from __future__ import annotations

import argparse
import json

from edgekd.maths.stats import compare_paired
from edgekd.tables import format_table
from edgekd.training.evaluate import evaluate_run
from edgekd.training.run import RunDir


def split_key(run_path: str) -> tuple:
    """What fixes a run's validation images: data fingerprint, seed and validation share."""
    manifest = RunDir(run_path).manifest
    recipe = manifest.get("recipe", {})
    return (
        manifest.get("data", {}).get("fingerprint"),
        recipe.get("seed"),
        recipe.get("data", {}).get("val_fraction"),
    )


def parse_spec(spec: str) -> tuple[str, str]:
    run_path, sep, model = spec.rpartition(":")
    if not sep or not run_path or not model:
        raise SystemExit(f"{spec!r}: give RUN:MODEL, e.g. runs/w8:distilled")
    return run_path, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="RUN:MODEL", help="baseline first")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the rows here")
    args = parser.parse_args()
    if len(args.models) < 2:
        parser.error("give a baseline and at least one model to pair with it")

    specs = [parse_spec(s) for s in args.models]
    runs = sorted({run for run, _ in specs})
    keys = {run: split_key(run) for run in runs}
    if len(set(keys.values())) != 1:
        detail = "; ".join(f"{r}: fingerprint {k[0]}, seed {k[1]}, val_fraction {k[2]}"
                           for r, k in keys.items())  # fmt: skip
        raise SystemExit(f"the runs hold different validation images ({detail})")
    evals = {run: evaluate_run(run) for run in runs}
    correct = {}
    for run, model in specs:
        if model not in evals[run].correct:
            known = ", ".join(evals[run].correct)
            raise SystemExit(f"{run} has no model {model!r}. It has: {known}")
        correct[f"{run}:{model}"] = evals[run].correct[model]

    (base, *others) = [f"{r}:{m}" for r, m in specs]
    rows, payload = [], []
    for name in others:
        c = compare_paired(base, correct[base], name, correct[name])
        rows.append([name, base, f"{100 * c.accuracy_b:.2f}", f"{100 * c.accuracy_a:.2f}",
                     f"{100 * c.difference:+.2f}",
                     f"[{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]",
                     f"{c.p_value:.3g}", f"{c.only_b} / {c.only_a}"])  # fmt: skip
        payload.append(c.to_dict())
    n = len(correct[base])
    print(f"Paired on the same {n} validation images (95% bootstrap interval, exact McNemar p):")
    print(format_table(["B", "A", "B (%)", "A (%)", "B − A (pp)", "95% CI (pp)", "McNemar p",
                        "only B / only A right"], rows))  # fmt: skip
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    main()
