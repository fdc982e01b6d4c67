"""One row per run: the ablation table of issue #11, paired against a baseline run.

Every run must share the baseline's data and seed, so their validation splits hold the same
images; each model is then compared image by image with the baseline run's model of the same
role (95% bootstrap interval, exact McNemar p), and each run's distilled student with its own
hard-label control. A lever run may skip its control (`student.control: false`) when only the
teacher changed: the control does not depend on the teacher, so the baseline's control (same
start, batches and schedule) stands in, marked "(baseline's)". Stage wall times come from the
manifests.

    python benchmarks/ablation.py runs/base runs/lever-a runs/lever-b [--json out.json]
"""

from __future__ import annotations

import argparse
import json

from edgekd.maths.stats import compare_paired
from edgekd.tables import format_table
from edgekd.training.evaluate import evaluate_run
from edgekd.training.run import RunDir

STAGES = ("generalist", "specialists", "ensemble", "student", "budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="baseline run first")
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()

    evals = {r: evaluate_run(r) for r in args.runs}
    base = evals[args.runs[0]]
    n = len(next(iter(base.correct.values())))
    rows, payload = [], []
    for run_path, ev in evals.items():
        if len(next(iter(ev.correct.values()))) != n:
            raise SystemExit(f"{run_path}: a different validation split from {args.runs[0]}")
        walls = {s: RunDir(run_path).stage(s).wall_s for s in STAGES}
        entry: dict = {"run": run_path, "wall_s": walls, "models": {}}
        cells = [run_path]
        for role in ("ensemble", "distilled", "hard-label"):
            if role not in ev.correct:
                cells.append("-")
                continue
            acc = float(ev.correct[role].mean())
            text = f"{100 * acc:.2f}"
            entry["models"][role] = {"accuracy": acc}
            if run_path != args.runs[0] and role in base.correct:
                c = compare_paired("baseline", base.correct[role], run_path, ev.correct[role])
                text += f" ({c.describe()})"
                entry["models"][role]["vs_baseline"] = c.to_dict()
            cells.append(text)
        control, whose = ev.correct.get("hard-label"), ""
        if control is None and "hard-label" in base.correct:
            control, whose = base.correct["hard-label"], " (baseline's)"
        if "distilled" in ev.correct and control is not None:
            c = compare_paired("hard-label", control, "distilled", ev.correct["distilled"])
            cells.append(c.describe() + whose)
            entry["distilled_vs_control"] = {**c.to_dict(), "control_of": whose or "own"}
        else:
            cells.append("-")
        total = sum(w or 0.0 for w in walls.values())
        cells.append(" / ".join(f"{w or 0:.0f}" for w in walls.values()) + f" = {total:.0f}")
        rows.append(cells)
        payload.append(entry)
    headers = ["run", "ensemble % (vs baseline)", "distilled % (vs baseline)",
               "hard-label % (vs baseline)", "distilled − hard-label",
               "wall s: " + " / ".join(STAGES)]  # fmt: skip
    print(f"{n} validation images; differences in pp with 95% bootstrap CI and McNemar p")
    print(format_table(headers, rows))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    main()
