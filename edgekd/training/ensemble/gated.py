"""The gated ensemble: the generalist's top-n classes wake the specialists that cover them,
and their outputs are fused by the KL solver.

Batched inference gathers, for each specialist, only the images that activate it, runs it
on those, and scatters the results back, so the cost follows the activation rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from edgekd.contract import FUSION_EPS, FUSION_ITERATIONS, FUSION_TOL, EnsembleSpec
from edgekd.data.store import DiskImages
from edgekd.device.runtime.ensemble import EnsembleResult
from edgekd.training.ensemble.fusion import fuse, membership_matrix, scatter_specialist
from edgekd.training.ensemble.gating import activation_plan, gate
from edgekd.training.trainer import predict_probs

PREDICT_ROWS = 4096  # images of an on-disk set read and run at a time


@dataclass
class GatedEnsemble:
    """A generalist plus specialists over `groups` (class indices), gated and fused.

    Args:
        generalist: keras.Model. Logits over all K classes.
        specialists: list of keras.Model. Logits over each group (+ dustbin).
        groups: list of list of int. Class indices each specialist covers.
        num_classes: int. K.
        top_n: int. How many of the generalist's top classes gate (keyword).
        confidence: float | None. Above this generalist confidence no specialist runs.
        dustbin: bool. Specialists have a dustbin output (keyword).
        iterations: int. Fusion iterations. Defaults to `edgekd.contract.FUSION_ITERATIONS`
            (a run's ensemble takes the recipe's `ensemble.fusion_iterations`).
        batch_size: int. Inference batch size (keyword).
        flip: bool. Average each member's probabilities over the image and its mirror
            (keyword). `load_gated_ensemble` takes these four from the run's recipe.
    """

    generalist: keras.Model
    specialists: list[keras.Model]
    groups: list[list[int]]
    num_classes: int
    top_n: int = field(kw_only=True)
    dustbin: bool = field(kw_only=True)
    batch_size: int = field(kw_only=True)
    flip: bool = field(kw_only=True)
    confidence: float | None = None
    iterations: int = FUSION_ITERATIONS
    membership: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if len(self.specialists) != len(self.groups):
            raise ValueError(f"{len(self.specialists)} specialists for {len(self.groups)} groups")
        self.membership = membership_matrix(self.groups, self.num_classes)

    def predict(self, images: np.ndarray, general: np.ndarray | None = None) -> EnsembleResult:
        """Fused class probabilities for uint8/float pixel images (N, H, W, 3).

        `general` may carry the generalist's probabilities for these images (not mirrored)
        when the caller already has them; the generalist is then not run on them again.
        Images on disk (the streaming pipeline) are read and run `PREDICT_ROWS` at a time.
        """
        if isinstance(images, DiskImages) and len(images) > PREDICT_ROWS:
            parts = [
                self.predict(
                    images[start : start + PREDICT_ROWS],
                    None if general is None else general[start : start + PREDICT_ROWS],
                )
                for start in range(0, len(images), PREDICT_ROWS)
            ]
            return EnsembleResult(
                *(
                    np.concatenate([getattr(r, f) for r in parts])
                    for f in ("probs", "general", "active")
                ),
                parts[0].views,
            )
        if general is None:
            general = predict_probs(self.generalist, images, self.batch_size)
        if self.flip:
            general = 0.5 * (general + self._probs(self.generalist, images[:, :, ::-1]))
        n, m, k = len(images), len(self.groups), self.num_classes
        if m == 0 or n == 0:
            return EnsembleResult(general, general, np.zeros((n, m), np.float32))
        active = np.asarray(
            gate(general, self.membership, top_n=self.top_n, confidence=self.confidence),
            np.float32,
        )
        p_in = np.zeros((n, m, k), np.float32)
        p_dust = np.zeros((n, m), np.float32)
        for s, idx in enumerate(activation_plan(active)):
            if len(idx) == 0:
                continue
            probs = self._probs(self.specialists[s], images[idx], mirror=self.flip)
            scattered, dust = scatter_specialist(probs, self.groups[s], k, dustbin=self.dustbin)
            p_in[idx, s] = np.asarray(scattered)
            p_dust[idx, s] = np.asarray(dust)
        fused = fuse(
            general, p_in, p_dust, active, self.membership,
            dustbin=self.dustbin, iterations=self.iterations,
        )  # fmt: skip
        return EnsembleResult(np.asarray(fused, np.float32), general, active, 2 if self.flip else 1)

    def _probs(self, model: keras.Model, images: np.ndarray, mirror: bool = False) -> np.ndarray:
        """A member's probabilities; with `mirror`, averaged with those of the mirror images."""
        probs = predict_probs(model, images, self.batch_size)
        if mirror:
            probs = 0.5 * (probs + predict_probs(model, images[:, :, ::-1], self.batch_size))
        return probs

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Fused probabilities: the ensemble as a teacher callable."""
        return self.predict(images).probs

    def teacher(self, gather: bool | None = None) -> GatedTeacher:
        """The ensemble as a traceable teacher for the Distiller (see `GatedTeacher`)."""
        return GatedTeacher(self, gather=gather)

    def macs_per_image(self, general_macs: int, specialist_macs: list[int], rates) -> float:
        """Average MACs actually spent per image at the given activation rates."""
        spent = general_macs + sum(r * c for r, c in zip(rates, specialist_macs, strict=True))
        return float(spent * (2 if self.flip else 1))

    def spec(
        self,
        class_names: list[str],
        members: dict[str, dict[str, str]] | None = None,
        input_shape: tuple[int, int, int] | None = None,
    ) -> EnsembleSpec:
        """What a runtime needs besides the model files to reproduce the ensemble; with the
        exported `members` files and `input_shape`, the whole of an exported ensemble.json.

        Fusion runs with `fuse`'s own tol and eps, so those are the contract's defaults.
        """
        return EnsembleSpec(
            classes=tuple(class_names),
            groups=tuple(tuple(int(c) for c in g) for g in self.groups),
            dustbin=self.dustbin, top_n=self.top_n, confidence=self.confidence,
            flip=self.flip, iterations=self.iterations, tol=FUSION_TOL, eps=FUSION_EPS,
            members=members, input_shape=input_shape,
        )  # fmt: skip

    def config(self, class_names: list[str]) -> dict[str, Any]:
        """The ensemble as ensemble.json lays it out, without member files (the run's copy)."""
        return self.spec(class_names).to_json()


class GatedTeacher:
    """The gated ensemble's forward pass in `keras.ops`, for use inside a train step.

    One generalist pass, the gate, each specialist once on the images that woke it, then
    the batched fusion: no Python per image, nothing computed twice. Gathering a ragged
    subset needs dynamic shapes, which TensorFlow graphs have; XLA and JAX want static ones,
    so there (`gather=False`) each specialist runs on the whole batch and the gate masks it.

    Args:
        ensemble: GatedEnsemble.
        gather: bool | None. Run specialists on their images only. None: on TensorFlow.
    """

    def __init__(self, ensemble: GatedEnsemble, gather: bool | None = None) -> None:
        self.ensemble = ensemble
        self.gather = keras.backend.backend() == "tensorflow" if gather is None else bool(gather)

    def __call__(self, x: Any, temperature: Any = None) -> Any:
        """Fused probabilities (B, K); with `temperature`, members are tempered before fusion."""
        ens = self.ensemble
        x = ops.cast(x, "float32")
        z_general = self._logits(ens.generalist, x)
        general = ops.softmax(z_general, axis=-1)
        active = gate(general, ens.membership, top_n=ens.top_n, confidence=ens.confidence)
        if temperature is not None:
            general = ops.softmax(z_general / temperature, axis=-1)
        ins, dusts = [], []
        for s, (model, group) in enumerate(zip(ens.specialists, ens.groups, strict=True)):
            if self.gather:
                idx = ops.nonzero(active[:, s] > 0.5)[0]
                width = model.output_shape[-1]
                # A convolution on an empty batch fails on TF's CPU kernels; skip instead.
                z_some = ops.cond(
                    ops.shape(idx)[0] > 0,
                    lambda m=model, i=idx: self._logits(m, ops.take(x, i, axis=0)),
                    lambda w=width: ops.zeros((0, w), "float32"),
                )
                # Rows that did not wake this specialist get zero logits; the gate masks them.
                z = ops.scatter(ops.expand_dims(idx, -1), z_some, (ops.shape(x)[0], width))
            else:
                z = self._logits(model, x)
            if temperature is not None:
                z = z / temperature
            p_in, dust = scatter_specialist(
                ops.softmax(z, axis=-1), group, ens.num_classes, dustbin=ens.dustbin
            )
            ins.append(p_in)
            dusts.append(dust)
        if not ins:
            return general
        return fuse(
            general, ops.stack(ins, axis=1), ops.stack(dusts, axis=1), active, ens.membership,
            dustbin=ens.dustbin, iterations=ens.iterations,
        )  # fmt: skip

    def _logits(self, model: keras.Model, x: Any) -> Any:
        """A member's float32 logits; with flip averaging, the log of its probabilities
        averaged over x and its mirror (a logit vector whose softmax is that average)."""
        z = ops.cast(model(x, training=False), "float32")
        if not self.ensemble.flip:
            return z
        z_mirror = ops.cast(model(ops.flip(x, axis=2), training=False), "float32")
        log_mean = ops.logaddexp(ops.log_softmax(z, axis=-1), ops.log_softmax(z_mirror, axis=-1))
        return log_mean - np.log(2.0).astype(np.float32)


def load_gated_ensemble(run_path: str | Path, **overrides: Any) -> GatedEnsemble:
    """The gated ensemble of a trained run (generalist, groups and specialists done)."""
    import edgekd.training.losses  # noqa: F401  (serialisable objects used in saved models)
    import edgekd.training.models.layers  # noqa: F401
    import edgekd.training.schedules  # noqa: F401
    from edgekd.recipe import build_recipe
    from edgekd.training.run import RunDir

    run = RunDir.open_existing(run_path)
    recipe = build_recipe(run.manifest["recipe"], source=str(run.path / "recipe.yaml"))
    groups = run.read_json("groups", "groups", "indices")["indices"]
    generalist = run.load_model("generalist", "model")
    specialists = [run.load_model("specialists", f"model_{m}") for m in range(len(groups))]
    ens = recipe.ensemble
    kwargs = {
        "top_n": ens.top_n,
        "confidence": ens.confidence,
        "dustbin": recipe.specialists.dustbin,
        "iterations": ens.fusion_iterations,
        "batch_size": ens.batch_size,
        "flip": ens.flip_average,
        **overrides,
    }
    return GatedEnsemble(
        generalist, specialists, groups, len(run.manifest["data"]["classes"]), **kwargs
    )
