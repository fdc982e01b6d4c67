"""Recipes that attack the parser or carry non-numbers: exit 2, one message, nothing written.

The CLI cases run the real `edgekd train`; the property-based cases drive the same reader and
schema in-process, where anything but a Recipe or a RecipeError would be a traceback.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekd import safe_yaml
from edgekd.errors import RecipeError
from edgekd.recipe import build_recipe, load_recipe
from tests.conftest import REPO, run_cli
from tests.test_cli_errors import assert_user_error

SMOKE = REPO / "recipes" / "smoke.yaml"


def alias_bomb(levels: int = 9, fan: int = 9) -> str:
    """The classic 'billion laughs': `fan ** levels` values from a few hundred bytes."""
    names = [f"l{i}" for i in range(levels + 1)]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * fan)}]"]
    for prev, name in zip(names, names[1:], strict=False):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * fan)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_small_and_would_explode():
    text = alias_bomb()
    assert len(text) < 600  # 9 ** 10 = 3.5 billion values
    with pytest.raises(safe_yaml.YamlError, match="nested aliases"):
        safe_yaml.load(text)
    # what it expands to without the bound, measured on a small one
    small = yaml.safe_load(alias_bomb(levels=3, fan=3))
    assert len(small["l3"]) == 3 and small["l3"][0][0][0] == ["lol"] * 3


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("bomb.yaml", alias_bomb().encode(), "nested aliases"),
        ("deep.yaml", b"a: " + b"[" * 20_000 + b"]" * 20_000 + b"\n", "levels deep"),
        ("deepmap.yaml", "".join("  " * i + f"k{i}:\n" for i in range(200)).encode(), "levels"),
        ("binary.yaml", bytes(range(256)) * 4, "not UTF-8"),
        ("latin1.yaml", "name: caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("nul.yaml", b"name: a\x00b\n", "binary data"),
        ("big.yaml", b"# " + b"x" * (safe_yaml.MAX_BYTES + 10) + b"\n", "more than"),
        ("self.yaml", b"data: &a {path: *a}\n", "refers to itself"),
    ],
)
def test_hostile_recipe_file(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    run_dir = tmp_path / "run"
    proc = run_cli("train", str(path), "--run-dir", str(run_dir), timeout=60)
    assert_user_error(proc, name, needle)
    assert not run_dir.exists()


def test_alias_bomb_through_set(tmp_path):
    run_dir = tmp_path / "run"
    bomb = "{" + alias_bomb().replace("\n", ", ").rstrip(", ") + "}"
    proc = run_cli(
        "train", str(SMOKE), "--set", f"generalist.epochs={bomb}", "--run-dir", str(run_dir),
        timeout=60,
    )  # fmt: skip
    assert_user_error(proc, "--set generalist.epochs", "nested aliases")
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "override, path",
    [
        ("student.temperature=.nan", "student.temperature"),
        ("student.temperature=.inf", "student.temperature"),
        ("student.temperature={start: 1, end: .nan}", "student.temperature.RampConfig.end"),
        ("student.soft_weight={start: -.inf, end: 0.5}", "student.soft_weight.RampConfig.start"),
        ("student.temperature_search=[2, .nan]", "student.temperature_search[1]"),
        ("generalist.optimizer.lr=.nan", "generalist.optimizer.lr"),
        ("generalist.optimizer.weight_decay=-.inf", "generalist.optimizer.weight_decay"),
        ("data.val_fraction=.nan", "data.val_fraction"),
        ("ensemble.confidence=.nan", "ensemble.confidence"),
    ],
)
def test_non_finite_numbers_refused(tmp_path, override, path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", str(SMOKE), "--set", override, "--run-dir", str(run_dir), timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert path in proc.stderr
    assert not run_dir.exists()


def _smoke_data() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def _all_floats(model) -> list[tuple[str, ...]]:
    """Dotted paths of every float-typed leaf of the smoke recipe once validated."""
    out = []

    def walk(obj, loc):
        if hasattr(obj, "model_fields"):
            for name in type(obj).model_fields:
                walk(getattr(obj, name), (*loc, name))
        elif isinstance(obj, float):
            out.append(loc)

    walk(model, ())
    return out


def test_every_float_in_the_schema_refuses_nan_and_inf():
    recipe = build_recipe(_smoke_data(), default_name="smoke")
    paths = _all_floats(recipe)
    assert len(paths) >= 15, paths
    for loc in paths:
        for bad in (math.nan, math.inf, -math.inf):
            data = _smoke_data()
            node = data
            for part in loc[:-1]:
                node = node.setdefault(part, {})
            node[loc[-1]] = bad
            with pytest.raises(RecipeError, match="finite"):
                build_recipe(data, default_name="smoke")


# Arbitrary YAML-able values, for replacing any key of a valid recipe.
_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
    st.text(max_size=20),
)  # fmt: skip
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _keys(data: dict, loc=()) -> list[tuple]:
    out = []
    for k, v in data.items():
        out.append((*loc, k))
        if isinstance(v, dict):
            out.extend(_keys(v, (*loc, k)))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_schema_only_recipe_errors(data):
    """Replace, delete or add keys anywhere in a valid recipe: a Recipe or a RecipeError."""
    recipe = _smoke_data()
    keys = _keys(recipe)
    for _ in range(data.draw(st.integers(1, 3))):
        loc = data.draw(st.sampled_from(keys))
        node = recipe
        for part in loc[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                break
        else:
            action = data.draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "delete":
                node.pop(loc[-1], None)
            elif action == "add":
                node[data.draw(st.text(min_size=1, max_size=8))] = data.draw(_values)
            else:
                node[loc[-1]] = data.draw(_values)
    try:
        build_recipe(recipe, default_name="smoke")
    except RecipeError as exc:
        assert str(exc).strip()


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_fuzz_recipe_bytes_only_recipe_errors(tmp_path_factory, blob):
    """Any bytes as a recipe file: a Recipe or a RecipeError, never another exception."""
    path: Path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_bytes(blob)
    try:
        load_recipe(path, ["data.path=folder:/nowhere"])
    except RecipeError as exc:
        assert str(exc).strip()


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=200))
def test_fuzz_set_values_only_recipe_errors(value):
    """Any text after `--set key=`: a Recipe or a RecipeError."""
    for key in ("generalist.epochs", "student.temperature", "data", "groups.groups"):
        try:
            load_recipe(SMOKE, [f"{key}={value}"])
        except RecipeError as exc:
            assert str(exc).strip()
