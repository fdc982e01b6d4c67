"""`train.distribution: mirrored` on JAX: DataParallel over the host's devices gives the
one-device update (2 CPU devices emulated with XLA_FLAGS)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import jax
    import keras
    import numpy as np
    from edgekd.training.accelerator import distribution_scope

    assert len(jax.devices()) == 2, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 32)

    def train(strategy):
        keras.utils.set_random_seed(0)
        with distribution_scope(strategy):
            model = keras.Sequential([
                keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255),
                keras.layers.Conv2D(8, 3, use_bias=False), keras.layers.BatchNormalization(),
                keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3),
            ])  # BatchNormalization: its batch statistics must be the global batch's
            model.compile(
                optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=True,
            )
            model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
            devices = len(model.trainable_variables[0].value.sharding.device_set)
        return [np.asarray(w) for w in model.get_weights()], devices

    one, one_devices = train("none")
    two, two_devices = train("mirrored")
    assert (one_devices, two_devices) == (1, 2), (one_devices, two_devices)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(one, two, strict=True))
    assert worst < 1e-4, worst
    print(f"ok {two_devices} devices, max |w1 - w2| = {worst:.2e}")
    """
)


@pytest.mark.slow
def test_data_parallel_on_two_emulated_devices_matches_one_device():
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok 2 devices" in result.stdout, result.stdout
    print(result.stdout.strip())
