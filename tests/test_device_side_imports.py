"""The device side (runtime, bench, predict, the contract) imports no TensorFlow, Keras or JAX:
on a Jetson or a Pi only the runtime wheels are installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVICE_MODULES = tuple(
    ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for folder in ("edgekd/device", "edgekd/maths")
    for path in sorted((REPO / folder).rglob("*.py"))
) + ("edgekd.contract", "edgekd.recipe", "edgekd.data.images")
FORBIDDEN = ("tensorflow", "keras", "tf_keras", "jax")


@pytest.mark.parametrize("module", DEVICE_MODULES)
def test_device_module_imports_no_training_framework(module):
    code = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], f"{module} pulled them in"
