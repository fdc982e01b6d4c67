"""The device side (runtime, bench, predict, the contract) imports no TensorFlow, Keras or JAX:
on a Jetson or a Pi only the runtime wheels are installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

DEVICE_MODULES = (
    "edgekd.contract", "edgekd.runtime", "edgekd.runtime.base", "edgekd.runtime.tflite",
    "edgekd.runtime.onnx", "edgekd.runtime.tensorrt", "edgekd.runtime.ensemble",
    "edgekd.runtime.fusion", "edgekd.bench", "edgekd.predict",
)  # fmt: skip
FORBIDDEN = ("tensorflow", "keras", "tf_keras", "jax")


@pytest.mark.parametrize("module", DEVICE_MODULES)
def test_device_module_imports_no_training_framework(module):
    code = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], f"{module} pulled them in"
