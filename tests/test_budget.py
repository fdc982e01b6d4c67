"""The budget-matched control's budget: seconds or images the method spent, to epochs."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.errors import RecipeError
from edgekd.recipe import build_recipe
from edgekd.training.evaluate import SeedSummary, comparison_table, paired_comparisons
from edgekd.training.run import RunDir, StageRecord
from edgekd.training.stages.budget import budget_epochs, budget_images, budget_seconds


@pytest.fixture
def run(tmp_path) -> RunDir:
    """A manifest as a finished method leaves it: stage wall times and the student's metrics."""
    run = RunDir(tmp_path)
    walls = {"generalist": 600.0, "groups": 0.5, "specialists": 300.0, "ensemble": 10.0}
    for stage, wall in walls.items():
        metrics = {"specialists": [{}, {}]} if stage == "specialists" else {}
        run.set_stage(stage, StageRecord(status="done", wall_s=wall, metrics=metrics))
    student = {"epochs": 4, "images_per_s": 896.0, "control_images_per_s": 900.0,
               "temperature_search": [{"temperature": 4}, {"temperature": 8}],
               "search_train_s": 100.0}  # fmt: skip
    run.set_stage("student", StageRecord(status="done", wall_s=1000.0, metrics=student))
    return run


def test_budget_seconds_counted_and_amortised(run):
    # amortised: the distilled student's 4 epochs of 89,600 images at 896 images/s, its
    # temperature search included.
    assert budget_seconds(run, "amortised", 89_600) == 400.0 + 100.0
    # counted: plus every upstream stage's wall time (not the control's: it is a diagnostic).
    assert budget_seconds(run, "counted", 89_600) == 500.0 + 600.0 + 0.5 + 300.0 + 10.0


def test_stored_targets_count_with_the_teacher(run):
    # Labelling stored targets is teacher work: in the counted budget, not the amortised one.
    rec = run.stage("student")
    rec.metrics["teacher_targets_s"] = 250.0
    run.set_stage("student", rec)
    assert budget_seconds(run, "amortised", 89_600) == 500.0
    assert budget_seconds(run, "counted", 89_600) == 500.0 + 250.0 + 600.0 + 0.5 + 300.0 + 10.0


def test_a_generalist_teacher_counts_the_generalist_alone(run):
    # A student taught by the generalist needs no groups, specialists or ensemble: the
    # counted budget holds what its teacher cost, not the stages run beside it.
    rec = run.stage("student")
    rec.metrics.update(teacher="generalist", teacher_targets_s=250.0)
    run.set_stage("student", rec)
    assert budget_seconds(run, "counted", 89_600) == 500.0 + 250.0 + 600.0
    assert budget_seconds(run, "amortised", 89_600) == 500.0
    recipe = build_recipe({
        "data": {"path": "x"},
        "generalist": {"epochs": 9, "batch_size": 128},
        "student": {"epochs": 6, "batch_size": 128, "teacher": "generalist"},
    })  # fmt: skip
    # The fixture's student searched two temperatures for one epoch each.
    assert budget_images(run, recipe, 1000, "counted") == (6 + 2) * 896 + 9 * 896


def test_budget_images_counts_whole_batches(run):
    recipe = build_recipe({
        "data": {"path": "x"},
        "generalist": {"epochs": 9, "batch_size": 128},
        "specialists": {"epochs": 2, "batch_size": 100},
        "student": {"epochs": 6, "batch_size": 128, "search_epochs": 1,
                    "temperature_search": [4, 8]},
    })  # fmt: skip
    n = 1000  # 7 batches of 128 = 896 images; 10 batches of 100 = 1000
    student = 6 * 896 + 2 * 1 * 896
    assert budget_images(run, recipe, n, "amortised") == student
    assert budget_images(run, recipe, n, "counted") == student + 9 * 896 + 2 * 2 * 1000


@pytest.mark.parametrize(
    "budget, per_epoch, epochs", [(1000.0, 100.0, 10), (1049.0, 100.0, 10), (1051.0, 100.0, 11),
                                  (10.0, 100.0, 1), (0.0, 5.0, 1)],
)  # fmt: skip
def test_budget_epochs_rounds_to_whole_epochs(budget, per_epoch, epochs):
    assert budget_epochs(budget, per_epoch) == epochs


def test_budget_epochs_rejects_zero_cost():
    with pytest.raises(ValueError, match="> 0"):
        budget_epochs(10.0, 0.0)


def test_budget_recipe_checks():
    with pytest.raises(RecipeError, match="budget.teacher_cost"):
        build_recipe({"data": {"path": "x"}, "budget": {"teacher_cost": ["counted", "counted"]}})
    with pytest.raises(RecipeError, match="budget.match"):
        build_recipe({"data": {"path": "x"}, "budget": {"match": "flops"}})
    r = build_recipe({"data": {"path": "x"}})
    assert "budget" not in r.train.stages  # opt-in: it costs as much as the method
    assert r.budget.teacher_cost == ("counted", "amortised")


def test_paired_comparisons_only_for_models_present():
    rng = np.random.default_rng(0)
    correct = {n: rng.random(200) < 0.8 for n in ("generalist", "ensemble", "distilled")}
    got = paired_comparisons(correct)
    assert [(c.a, c.b) for c in got] == [("generalist", "ensemble")]
    correct["hard-label"] = rng.random(200) < 0.8
    got = paired_comparisons(correct)
    assert [(c.a, c.b) for c in got] == [("generalist", "ensemble"), ("hard-label", "distilled")]
    table = comparison_table(got)
    assert "distilled vs hard-label" in table and "McNemar p" in table


def test_seed_summary_mean_and_std():
    from edgekd.maths.stats import compare_paired

    a = np.array([1, 0, 1, 1], bool)
    comps = [compare_paired("hard-label", a, "distilled", b)
             for b in (np.array([1, 1, 1, 1], bool), np.array([1, 0, 1, 1], bool))]  # fmt: skip
    s = SeedSummary([0, 1], [1.0, 0.75], [0.75, 0.75], comps).to_dict()
    assert s["distilled_mean"] == pytest.approx(0.875)
    assert s["distilled_std"] == pytest.approx(np.std([1.0, 0.75], ddof=1))
    assert s["control_std"] == 0.0
    assert s["difference_mean"] == pytest.approx(0.125)
    assert "mean ± std" in SeedSummary([0, 1], [1.0, 0.75], [0.75, 0.75], comps).table()


@pytest.mark.parametrize(
    ("teacher", "student_needs", "budget_needs"),
    [
        ("generalist", ("generalist",), ("generalist", "student")),
        ("ensemble", ("generalist", "groups", "specialists"),
         ("generalist", "groups", "specialists", "ensemble", "student")),
    ],
)  # fmt: skip
def test_stages_need_only_what_the_teacher_is_made_of(teacher, student_needs, budget_needs):
    # A student taught by the generalist alone runs without groups or specialists: the
    # pipeline's pre-flight asks only for the stages a stage loads.
    from edgekd.training.stages.budget import BudgetStage
    from edgekd.training.stages.student import StudentStage

    r = build_recipe({"data": {"path": "x"}, "student": {"teacher": teacher}})
    assert StudentStage().needs(r) == student_needs
    assert BudgetStage().needs(r) == budget_needs
