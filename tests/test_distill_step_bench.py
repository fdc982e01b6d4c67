"""benchmarks/distill_step.py: what it times really trains, its verdict is the arithmetic it
states, and its command line writes the numbers it prints.

No speed is asserted (timings on a shared CPU are not a test); the overhead verdict is
checked on hand-made timings, where the right answer is known.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys

import numpy as np
import pytest

from edgekd.training.schedules import Ramp
from tests.conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "distill_step_bench", REPO / "benchmarks" / "distill_step.py"
    )
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, spec.name, module)  # dataclasses look the module up
        spec.loader.exec_module(module)
        yield module


def _hand_setup(bench):
    """A Setup for `summarise`/`report` only: nothing in it is run."""
    return bench.Setup(
        source="hand", build_student=lambda: None, student_desc="s", teacher=None,
        teacher_desc="t", num_classes=2, input_shape=(8, 8, 3), batch=8,
        temperature=Ramp(4.0), soft_weight=Ramp(0.8), target="fused",
    )  # fmt: skip


def test_timed_steps_train_both_students(bench):
    """The student step and the distillation step it times are real train steps: both
    students' weights move (a benchmark of steps that do nothing would look fast)."""
    setup = bench.synthetic_setup(3, 8)
    built = []
    build = setup.build_student

    def spy():
        model = build()
        built.append((model, [np.array(w) for w in model.trainable_weights]))
        return model

    setup.build_student = spy
    samples = bench.measure(setup, steps=1, rounds=2, warmup=1)
    assert len(built) == 2  # the plain student and the distilling one
    for model, start in built:
        pairs = zip(model.trainable_weights, start, strict=True)
        moved = [not np.array_equal(np.array(w), w0) for w, w0 in pairs]
        assert sum(moved) >= 0.9 * len(moved), f"{sum(moved)}/{len(moved)} weights moved"
    assert set(samples) == set(bench.ITEMS)
    assert all(len(v) == 2 and all(t > 0 for t in v) for v in samples.values())
    # summarise reports the medians of exactly these samples
    result = bench.summarise(setup, samples, 1, 2)
    ms = result["ms_per_step"]
    keys = ("student_step", "teacher_forward", "distill_step")
    for key, item in zip(keys, bench.ITEMS, strict=True):
        assert ms[key] == statistics.median(samples[item])


def test_overhead_verdict_on_hand_timings(bench):
    items = bench.ITEMS
    slow = {items[0]: [10.0, 12.0], items[1]: [5.0, 5.0], items[2]: [30.0, 14.0]}
    result = bench.summarise(_hand_setup(bench), slow, steps=1, rounds=2)
    ms = result["ms_per_step"]
    assert (ms["student_step"], ms["teacher_forward"], ms["distill_step"]) == (11.0, 5.0, 22.0)
    assert ms["student_plus_teacher"] == 16.0
    assert result["overhead"] == pytest.approx(22 / 16 - 1)  # +37.5%
    assert result["overhead_per_round_median"] == pytest.approx(((30 / 15 - 1) + (14 / 17 - 1)) / 2)
    assert result["limit"] == 0.15 and result["pass"] is False
    text = bench.report(result)
    assert "+37.5%" in text and "+41.2%" in text and "FAIL (limit 15%)" in text
    assert "727" in text  # img/s of the student step: 8 images / 11 ms

    quick = {**slow, items[2]: [15.5, 17.0]}  # median 16.25 ms: +1.6%
    result = bench.summarise(_hand_setup(bench), quick, steps=1, rounds=2)
    assert result["overhead"] == pytest.approx(16.25 / 16 - 1) and result["pass"] is True
    assert "PASS (limit 15%)" in bench.report(result)


@pytest.mark.slow
def test_command_line_writes_what_it_prints(bench, tmp_path, capsys):
    out = tmp_path / "result.json"
    args = ["--synthetic", "--batch", "8", "--steps", "1", "--rounds", "2", "--warmup", "1"]
    try:
        result = bench.main([*args, "--json", str(out), "--check"])
        exit_code = 0
    except SystemExit as exc:  # --check: exit 1 when the overhead is over the limit
        exit_code = exc.code
    saved = json.loads(out.read_text())
    assert exit_code == (0 if saved["pass"] else 1)
    if exit_code == 0:
        assert result == saved
    printed = capsys.readouterr().out
    assert saved["pass"] == (saved["overhead"] <= saved["limit"])
    verdict = "PASS" if saved["pass"] else "FAIL"
    assert f"{100 * saved['overhead']:+.1f}%" in printed and f": {verdict} (limit 15%)" in printed
    assert saved["batch"] == 8 and (saved["steps"], saved["rounds"]) == (1, 2)
    assert saved["source"] == "synthetic (4 classes)" and saved["target"] == "fused"
    ms = saved["ms_per_step"]
    assert all(len(v) == 2 for v in saved["samples_ms"].values())
    assert ms["student_plus_teacher"] == ms["student_step"] + ms["teacher_forward"]
    for item, key in zip(bench.ITEMS, ("student_step", "teacher_forward", "distill_step"),
                         strict=True):  # fmt: skip
        assert ms[key] == statistics.median(saved["samples_ms"][item])
    with pytest.raises(SystemExit):  # a run directory and --synthetic: one or the other
        bench.main(["some-run", "--synthetic"])
