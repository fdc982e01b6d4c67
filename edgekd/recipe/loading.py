"""Loading a recipe: YAML (tags refused) -> nested dict with each key's origin -> `--set`
overrides -> the validated `Recipe`, with errors that name the YAML path and line."""


from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgekd import safe_yaml
from edgekd.errors import RecipeError
from edgekd.recipe.schema import FieldError, Recipe, _unknown


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipes installed as package data, by name (file stem)."""
    out: dict[str, Path] = {}
    root = resources.files("edgekd.recipes")
    for entry in root.iterdir():
        if entry.name.endswith(".yaml"):
            out[entry.name[: -len(".yaml")]] = Path(str(entry))
    return dict(sorted(out.items()))


def resolve_recipe_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A file path as given, else a built-in recipe by name ('smoke', 'cifar10-cpu')."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtins = builtin_recipes()
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if str(name_or_path) in builtins or (stem in builtins and not path.parent.parts):
        return builtins[stem]
    raise RecipeError(
        f"recipe {str(name_or_path)!r}: no such file, and "
        + _unknown("built-in recipe", stem, list(builtins))
    )


def _format_path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _walk_node(node: yaml.Node, loc: tuple[str | int, ...], file: str, origins: dict[str, str]):
    """Record 'file:line' for every key path and reject duplicate keys (YAML keeps the last)."""
    origins[_format_path(loc)] = f"{file}:{node.start_mark.line + 1}"
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise RecipeError(
                    f"{file}:{key_node.start_mark.line + 1}: {_format_path((*loc, key))}: "
                    f"duplicate key (first set on line {seen[key]})"
                )
            seen[key] = key_node.start_mark.line + 1
            origins[_format_path((*loc, key))] = f"{file}:{key_node.start_mark.line + 1}"
            _walk_node(value_node, (*loc, key), file, origins)
            origins[_format_path((*loc, key))] = f"{file}:{key_node.start_mark.line + 1}"
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk_node(item, (*loc, i), file, origins)


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    file = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(safe_yaml.MAX_BYTES + 1)
    except OSError as exc:
        raise RecipeError(f"recipe {file}: cannot read: {exc.strerror or exc}") from None
    try:
        data, node = safe_yaml.compose(raw)
    except safe_yaml.YamlError as exc:
        where = f"{file}:{exc.line}" if exc.line else f"recipe {file}"
        raise RecipeError(f"{where}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            f"{file}:1: a recipe must be a mapping of sections, got {type(data).__name__}"
        )
    origins: dict[str, str] = {}
    if node is not None:
        _walk_node(node, (), file, origins)
    return data, origins


def parse_override(text: str) -> tuple[str, Any]:
    """Split 'a.b.c=value' into the dotted key and a YAML-typed value."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. generalist.epochs=3")
    try:
        value = safe_yaml.load(raw) if raw.strip() else ""
    except safe_yaml.YamlSyntaxError:
        return key, raw  # a plain string that YAML would misread, e.g. 'a: b'
    except safe_yaml.YamlError as exc:
        raise RecipeError(f"--set {key}=...: {exc}") from None
    return key, value


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str], origins: dict[str, str]
) -> dict[str, Any]:
    """Return a copy of `data` with each `--set key.path=value` applied; records origins."""
    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise RecipeError(
                    f"--set {text!r}: {'.'.join(parts[: i + 1])} is a value, not a section"
                )
            node = child
        node[parts[-1]] = value
        origins[key] = f"--set {text}"
    return data


def _fields_at(loc: Sequence[str | int]) -> list[str]:
    """Field names of the schema section at `loc`, for 'did you mean' suggestions."""
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = field.annotation
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def _describe(err: Mapping[str, Any], origins: dict[str, str], default_where: str) -> str:
    loc = tuple(err["loc"])
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):
        loc = (*loc, *cause.subpath)
    path = _format_path(loc)
    where = origins.get(path)
    probe = loc
    while where is None and probe:
        probe = probe[:-1]
        where = origins.get(_format_path(probe))
    where = where or default_where
    kind = err["type"]
    if kind == "extra_forbidden":
        section = _format_path(loc[:-1]) or "the recipe"
        msg = _unknown(f"key in {section}:", str(loc[-1]), _fields_at(loc[:-1]))
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "value_error":
        msg = str(cause) if cause is not None else err["msg"]
    else:
        msg = f"{err['msg']}, got {err.get('input')!r}"
    return f"{where}: {path or '(recipe)'}: {msg}"


def build_recipe(
    data: Mapping[str, Any],
    *,
    origins: dict[str, str] | None = None,
    source: str | None = None,
    default_name: str | None = None,
) -> Recipe:
    """Validate a nested dict into a Recipe; errors become one RecipeError naming each culprit."""
    origins = dict(origins or {})
    data = dict(data)
    if default_name and "name" not in data:
        data["name"] = default_name
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e, origins, source or "recipe") for e in exc.errors()]
        raise RecipeError("\n".join(lines)) from None
    recipe._origins = origins
    recipe._source = source
    return recipe


def load_recipe(name_or_path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> Recipe:
    """Read a recipe file (or a built-in by name), apply `--set` overrides and validate it."""
    path = resolve_recipe_path(name_or_path)
    data, origins = _read_yaml(path)
    data = apply_overrides(data, overrides, origins)
    return build_recipe(data, origins=origins, source=str(path), default_name=path.stem)
