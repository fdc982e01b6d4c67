"""What hardware this process trains on, and the settings that follow from it.

Choices per device, not hard-wired: XLA helps on GPUs and is how JAX runs at all, but made
a width-16 ResNet-18 2.5x slower on a 2-core CPU with TensorFlow (measured: ~200 vs ~500 img/s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras


@dataclass(frozen=True)
class Accelerator:
    """The backend and device kind, plus the resolved precision and XLA settings."""

    backend: str
    gpus: int
    precision: str
    jit_compile: bool
    distribution: str = "none"

    def describe(self) -> str:
        device = f"{self.gpus} GPU(s)" if self.gpus else "CPU"
        text = (
            f"backend {self.backend} on {device}, precision {self.precision}, "
            f"XLA {'on' if self.jit_compile else 'off'}"
        )
        if self.distribution != "none":
            from edgekd.training import cluster

            joined = cluster.current()
            text += f", {self.distribution}" + (f" as {joined.describe()}" if joined else "")
        return text


def count_gpus() -> int:
    """Visible GPUs for the active Keras backend (imports only that backend)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return sum(1 for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm"))
    if backend == "torch":
        import torch

        return torch.cuda.device_count()
    return 0


def resolve(
    precision: str = "auto", jit_compile: str | bool = "auto", distribution: str = "none"
) -> Accelerator:
    """Resolve a recipe's `auto` settings for this machine."""
    backend = keras.backend.backend()
    gpus = count_gpus()
    if precision == "auto":
        precision = "mixed_float16" if gpus else "float32"
    if jit_compile == "auto":
        jit_compile = backend == "jax" or gpus > 0
    return Accelerator(backend, gpus, precision, bool(jit_compile), distribution)


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Set Keras' global dtype policy for the duration of a block."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


_MIRRORED: Any = None  # one MirroredStrategy per process, reused by every stage


def distribution_scope(distribution: str) -> contextlib.AbstractContextManager[Any]:
    """The distribution a recipe's `train.distribution` names, as a context; `none` is none.

    `mirrored` is data parallelism over this host's devices: `tf.distribute.MirroredStrategy`
    on TensorFlow, `keras.distribution.DataParallel` over `keras.distribution.list_devices()`
    on JAX (the path for a GPU machine without TensorFlow). `multi_worker` spans the processes
    `edgekd.training.cluster.connect` joined: MultiWorkerMirroredStrategy, or DataParallel
    over every process's devices. Either way every step computes the gradient of the mean
    loss over the global batch, sharded across the devices.
    """
    global _MIRRORED
    if distribution == "none":
        return contextlib.nullcontext()
    if distribution not in ("mirrored", "multi_worker"):
        raise ValueError(f"unknown distribution {distribution!r}")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        if distribution == "multi_worker":
            from edgekd.training import cluster

            if cluster.strategy() is None:
                raise RuntimeError("multi_worker training before cluster.connect()")
            return cluster.strategy().scope()
        import tensorflow as tf

        if _MIRRORED is None:
            _MIRRORED = tf.distribute.MirroredStrategy()
        return _MIRRORED.scope()
    if backend == "jax":
        from keras import distribution as kd

        # Each worker's batches are its own share already (`ImageBatches.shard`).
        return kd.DataParallel(
            devices=kd.list_devices(), auto_shard_dataset=distribution != "multi_worker"
        ).scope()
    raise ValueError(
        f"train.distribution={distribution!r} needs the TensorFlow or JAX backend "
        f"(KERAS_BACKEND is {backend!r})"
    )
