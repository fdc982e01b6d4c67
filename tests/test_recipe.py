"""The recipe schema: defaults, overrides, round trips and errors that name their culprit."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgekd.errors import RecipeError
from edgekd.recipe import Recipe, build_recipe, builtin_recipes, load_recipe, parse_override


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


BASE = """
name: t
data:
  path: folder:/tmp
generalist:
  arch: resnet18
  epochs: 3
"""


def error_of(tmp_path: Path, text: str, overrides=()) -> str:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return str(info.value)


def test_defaults_fill_unset_keys(tmp_path):
    r = load_recipe(write(tmp_path, BASE))
    assert r.generalist.epochs == 3
    assert r.generalist.batch_size == 128  # schema default
    assert r.data.val_fraction == 0.1
    assert r.train.stages == ("generalist", "groups", "specialists", "ensemble", "student")


def test_name_defaults_to_file_stem(tmp_path):
    path = write(tmp_path, "data: {path: folder:/x}\n", name="my-exp.yaml")
    assert load_recipe(path).name == "my-exp"


def test_round_trip_through_dict_and_yaml(tmp_path):
    import yaml

    r = load_recipe(write(tmp_path, BASE))
    again = build_recipe(r.to_dict())
    assert again.to_dict() == r.to_dict()
    assert build_recipe(yaml.safe_load(r.to_yaml())).to_dict() == r.to_dict()


def test_set_overrides_win_over_file(tmp_path):
    r = load_recipe(
        write(tmp_path, BASE),
        ["generalist.epochs=7", "data.path=cifar:/data", "generalist.optimizer.lr=0.01"],
    )
    assert r.generalist.epochs == 7
    assert r.data.path == "cifar:/data"
    assert r.generalist.optimizer.lr == 0.01
    assert r.where("generalist.epochs").startswith("--set generalist.epochs=7")


def test_unknown_key_did_you_mean_with_line(tmp_path):
    msg = error_of(tmp_path, BASE + "  epoch: 4\n")
    assert "r.yaml:7" in msg
    assert "generalist.epoch" in msg
    assert "did you mean 'epochs'" in msg


def test_unknown_top_level_section(tmp_path):
    msg = error_of(tmp_path, BASE + "generalst: {}\n")
    assert "r.yaml:7" in msg and "did you mean 'generalist'" in msg


def test_unknown_key_from_set_names_the_option(tmp_path):
    msg = error_of(tmp_path, BASE, ["generalist.epoch=3"])
    assert "--set generalist.epoch=3" in msg and "did you mean 'epochs'" in msg


def test_wrong_type(tmp_path):
    msg = error_of(tmp_path, BASE.replace("epochs: 3", "epochs: three"))
    assert "r.yaml:6: generalist.epochs" in msg and "'three'" in msg


def test_out_of_range(tmp_path):
    msg = error_of(tmp_path, BASE.replace("epochs: 3", "epochs: 0"))
    assert "r.yaml:6: generalist.epochs" in msg and "greater than or equal to 1" in msg


def test_out_of_range_nested(tmp_path):
    msg = error_of(tmp_path, BASE + "  optimizer:\n    momentum: 1.5\n")
    assert "r.yaml:8: generalist.optimizer.momentum" in msg


def test_unknown_architecture(tmp_path):
    msg = error_of(tmp_path, BASE.replace("resnet18", "resnet19"))
    assert "r.yaml:5: generalist.arch" in msg and "did you mean 'resnet18'" in msg


def test_duplicate_class_names_point_at_the_second(tmp_path):
    text = """
    data:
      path: folder:/tmp
      classes:
        - cat
        - dog
        - cat
    """
    msg = error_of(tmp_path, text)
    assert "r.yaml:6: data.classes[2]" in msg and "listed twice" in msg


def test_duplicate_yaml_key(tmp_path):
    msg = error_of(tmp_path, BASE + "  epochs: 5\n")
    assert "r.yaml:7" in msg and "duplicate key" in msg and "line 6" in msg


def test_missing_required_key(tmp_path):
    msg = error_of(tmp_path, "name: t\ndata: {val_fraction: 0.2}\n")
    assert "r.yaml:2: data.path" in msg and "missing" in msg


def test_cross_check_warmup_longer_than_run(tmp_path):
    msg = error_of(tmp_path, BASE + "  schedule: {warmup_epochs: 5}\n")
    assert "generalist.schedule.warmup_epochs" in msg


def test_unknown_stage(tmp_path):
    msg = error_of(tmp_path, BASE + "train:\n  stages: [generalst]\n")
    assert "r.yaml:8: train.stages[0]" in msg and "did you mean 'generalist'" in msg


def test_invalid_yaml_reports_line(tmp_path):
    msg = error_of(tmp_path, "data:\n  path: [unclosed\n")
    assert "r.yaml:" in msg and "not valid YAML" in msg


def test_bad_override_syntax():
    with pytest.raises(RecipeError, match="KEY.PATH=VALUE"):
        parse_override("generalist.epochs")
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=[x, y]") == ("a.b", ["x", "y"])


def test_override_into_a_value_is_an_error(tmp_path):
    msg = error_of(tmp_path, BASE, ["generalist.epochs.x=1"])
    assert "generalist.epochs is a value" in msg


def test_missing_recipe_file_suggests_builtin():
    with pytest.raises(RecipeError, match="did you mean 'smoke'"):
        load_recipe("smok")


def test_builtin_recipes_load_by_name_and_path():
    names = builtin_recipes()
    assert {"smoke", "cifar10-cpu", "cifar10-paper", "cifar10-gpu"} <= set(names)
    for name in names:
        by_name = load_recipe(name)
        assert isinstance(by_name, Recipe) and by_name.name == name
        # every built-in recipe is the whole method, student and export included
        assert by_name.train.stages[-1] == "student", name
    assert load_recipe("recipes/smoke.yaml").to_dict() == load_recipe("smoke").to_dict()


def test_w16_recipe_shares_the_cpu_recipes_teachers():
    """cifar10-cpu-w16 says a finished cifar10-cpu run can be reused: every section but the
    student (and the name) is the same, so the first four stages hash the same."""
    cpu, w16 = load_recipe("cifar10-cpu").to_dict(), load_recipe("cifar10-cpu-w16").to_dict()
    assert [k for k in cpu if cpu[k] != w16[k]] == ["name", "student"]
    # cifar10-cpu's student is the configuration where distillation won (recipes/README.md)
    assert (cpu["student"]["width"], cpu["student"]["init"]) == (8, "scratch")
    assert (cpu["student"]["teacher"], cpu["student"]["targets"]) == ("generalist", "stored")
    assert (w16["student"]["width"], w16["student"]["teacher"]) == (16, "ensemble")


def _sections(r: Recipe) -> list[str]:
    """Every section of the recipe (what stage hashes are built from)."""
    return [k for k, v in r.to_dict().items() if isinstance(v, dict)]


# Keys that say where things are or what to run now, not what a stage computes: changing
# one alone leaves every section's digest as it was.
NOT_HASHED = [
    ("data.path=folder:/elsewhere", "data.path"),
    ("data.cache_dir=/tmp/other-cache", "data.cache_dir"),
    ("data.tfds_dir=/tmp/tfds", "data.tfds_dir"),
    ("train.stages=[generalist]", "train.stages"),
    ("train.tensorboard=false", "train.tensorboard"),
]


@pytest.mark.parametrize("override, key", NOT_HASHED, ids=[k for _, k in NOT_HASHED])
def test_digest_ignores_one_location_or_run_key(tmp_path, override, key):
    a = load_recipe(write(tmp_path, BASE))
    b = load_recipe(write(tmp_path, BASE), [override])
    section, name = key.split(".")
    assert getattr(getattr(a, section), name) != getattr(getattr(b, section), name)
    # Only that key differs between the two recipes...
    da, db = a.to_dict(), b.to_dict()
    da[section].pop(name), db[section].pop(name)
    assert da == db
    # ... and no digest sees it.
    for s in _sections(a):
        assert a.digest(s) == b.digest(s), s
    assert a.digest(*_sections(a)) == b.digest(*_sections(a))


@pytest.mark.parametrize(
    "override, key",
    [
        ("generalist.epochs=4", "generalist"),
        ("data.val_fraction=0.2", "data"),
        ("train.precision=float32", "train"),
    ],  # fmt: skip
)
def test_digest_sees_content(tmp_path, override, key):
    a = load_recipe(write(tmp_path, BASE))
    b = load_recipe(write(tmp_path, BASE), [override])
    assert a.digest(key) != b.digest(key)
    others = [s for s in _sections(a) if s != key]
    assert a.digest(*others) == b.digest(*others)  # and only the section it is in


def test_init_generalist_needs_a_model_that_inherits(tmp_path):
    msg = error_of(tmp_path, BASE + "student:\n  arch: resnet34\n  init: generalist\n")
    assert "student.init" in msg and "resnet34 width" in msg
    msg = error_of(tmp_path, BASE + "specialists:\n  width: 8\n  init: generalist\n")
    assert "specialists.init" in msg and "width (64)" in msg
    r = load_recipe(write(tmp_path, BASE + "student:\n  arch: resnet10\n  init: generalist\n"))
    assert r.student.init == "generalist"


def test_student_section_ranges_and_ramps(tmp_path):
    msg = error_of(tmp_path, BASE + "student:\n  temperature: 0\n")
    assert "r.yaml:8: student.temperature" in msg and "> 0" in msg
    msg = error_of(tmp_path, BASE + "student:\n  soft_weight:\n    start: 1.0\n    end: 1.5\n")
    assert "student.soft_weight.end" in msg and "[0, 1]" in msg
    msg = error_of(tmp_path, BASE + "student:\n  target: logits\n")
    assert "student.target" in msg
    r = load_recipe(
        write(tmp_path, BASE + "student:\n  temperature: {start: 8, end: 2, shape: cosine}\n")
    )
    assert r.student.temperature.start == 8.0 and r.student.temperature.shape == "cosine"
    assert build_recipe(r.to_dict()).to_dict() == r.to_dict()
    assert load_recipe(write(tmp_path, BASE)).student.control is True


def test_option_added_later_keeps_old_hashes_at_its_default():
    """ensemble.flip_average came after runs existed: at its default it leaves the hashes
    of the ensemble and student stages as they were; switched on, it changes them."""
    from edgekd.recipe import build_recipe

    base = {"data": {"path": "x"}}
    plain = build_recipe(base).digest("ensemble", "student")
    off = build_recipe({**base, "ensemble": {"flip_average": False}}).digest("ensemble", "student")
    on = build_recipe({**base, "ensemble": {"flip_average": True}}).digest("ensemble", "student")
    assert plain == off != on


def test_unset_width_is_the_published_networks(tmp_path):
    """ResNets default to 64 channels, MobileNets and EfficientNet-Lite to 100%; a width
    given stays; the resolved width is what the stage hash sees."""
    r = load_recipe(write(tmp_path, BASE + "student:\n  arch: mobilenetv3small_minimalistic\n"))
    assert (r.generalist.width, r.student.width) == (64, 100)
    r = load_recipe(write(tmp_path, BASE + "student:\n  arch: mobilenetv2\n  width: 35\n"))
    assert r.student.width == 35
    explicit = load_recipe(write(tmp_path, BASE), ["generalist.width=64"])
    implicit = load_recipe(write(tmp_path, BASE))
    assert explicit.digest("generalist") == implicit.digest("generalist")
