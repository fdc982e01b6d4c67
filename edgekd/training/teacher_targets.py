"""Teacher targets stored once, so that a distilled epoch costs about a hard-label one.

Online distillation runs the teacher inside every student step; with the mirror-averaged
gated ensemble that is 2.6 hard-label steps per step on a CPU. Every training batch is a
pure function of (seed, epoch, batch index) (`edgekd.data.ImageBatches`), so the teacher's
probabilities for exactly the student's augmented views can be computed once, before the
student trains, and read back with each batch (FKD, Shen & Xing 2021). The student then
trains on the same targets as online distillation, and every later student that sees the
same batches (another architecture or width, for another device) reuses them.

Layout: `<run>/targets/<key>/epoch-0001.npy`, one float32 (images, classes) array per epoch
in the epoch's batch order, and `store.json` with the key's inputs and the seconds each epoch
took to label; the key hashes the teacher, the data, the seed, the batch size and the
augmentation, so each seed of a student has its own store. Files are written atomically, so
an interrupted labelling pass resumes at the first missing epoch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edgekd import atomic
from edgekd.data import ImageBatches
from edgekd.recipe import stable_digest

STORE = "store.json"


class TargetStore:
    """The stored teacher probabilities of one teacher for one stream of batches.

    Args:
        root: Path. The run's `targets/` folder.
        inputs: dict. Everything the targets depend on (teacher, upstream stage hashes, data
            fingerprint, seed, batch size, augmentation); its hash names the folder.
        num_classes: int. Width of each stored row.
    """

    def __init__(self, root: Path, inputs: dict[str, Any], num_classes: int) -> None:
        self.inputs = dict(inputs)
        self.num_classes = int(num_classes)
        self.path = Path(root) / stable_digest(self.inputs)

    def epoch_path(self, epoch: int) -> Path:
        return self.path / f"epoch-{epoch + 1:04d}.npy"

    def _record(self) -> dict[str, Any]:
        try:
            record = json.loads((self.path / STORE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"inputs": self.inputs, "label_s": {}}
        if not isinstance(record, dict) or record.get("inputs") != self.inputs:
            return {"inputs": self.inputs, "label_s": {}}
        record.setdefault("label_s", {})
        return record

    def label_seconds(self, epochs: int) -> float:
        """Seconds spent labelling epochs 0..epochs-1, as recorded when they were written."""
        label_s = self._record()["label_s"]
        return float(sum(float(label_s.get(str(e + 1), 0.0)) for e in range(epochs)))

    def load(self, epoch: int, rows: int) -> np.ndarray | None:
        """Epoch `epoch`'s (rows, classes) targets, or None when missing or not as written."""
        path = self.epoch_path(epoch)
        if not path.is_file():
            return None
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if array.shape != (rows, self.num_classes) or array.dtype != np.float32:
            return None
        return array

    def write(self, epoch: int, targets: np.ndarray, seconds: float) -> None:
        """Save one epoch's targets atomically, then record how long they took."""
        with atomic.atomic_path(self.epoch_path(epoch)) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(targets, np.float32), allow_pickle=False)
        record = self._record()
        record["label_s"][str(epoch + 1)] = round(float(seconds), 2)
        atomic.write_json(self.path / STORE, record)


class _TeacherModel(keras.Model):
    """A teacher callable as a Keras model, so `predict_on_batch` compiles it on any backend.

    The teacher is held in a list, as in the Distiller, so Keras does not track its weights.
    """

    def __init__(self, teacher: Callable[[Any], Any]) -> None:
        super().__init__(name="teacher")
        self._teacher_ref = [teacher]

    def call(self, x: Any) -> Any:
        return self._teacher_ref[0](x)


def label_epochs(
    teacher: Callable[[Any], Any],
    batches: ImageBatches,
    store: TargetStore,
    epochs: int,
    log: Callable[[str], None] = print,
) -> float:
    """Label epochs 0..epochs-1 of `batches` with the teacher, skipping stored ones.

    Returns the seconds this call spent labelling. `batches` is the student's own training
    stream (same seed, batch size, augmentation); its `epoch` is restored afterwards.
    """
    rows = len(batches) * batches.batch_size
    missing = [e for e in range(epochs) if store.load(e, rows) is None]
    if not missing:
        return 0.0
    model = _TeacherModel(teacher)
    spent, saved_epoch = 0.0, batches.epoch
    try:
        for e in missing:
            t0 = time.perf_counter()
            batches.epoch = e
            out = np.empty((rows, store.num_classes), np.float32)
            for i in range(len(batches)):
                x = batches[i][0]
                q = np.asarray(model.predict_on_batch(x), np.float32)
                if q.shape != (len(x), store.num_classes) or not np.all(np.isfinite(q)):
                    raise ValueError(
                        f"teacher gave {q.shape} targets for a batch of {len(x)} images and "
                        f"{store.num_classes} classes, or non-finite ones"
                    )
                out[i * batches.batch_size : i * batches.batch_size + len(x)] = q
            seconds = time.perf_counter() - t0
            store.write(e, out, seconds)
            spent += seconds
            log(f"[student] teacher targets, epoch {e + 1}/{epochs}: {rows:,} views in "
                f"{seconds:.0f} s ({rows / max(seconds, 1e-9):.0f} views/s)")  # fmt: skip
    finally:
        batches.epoch = saved_epoch
    return spent


class TargetBatches(ImageBatches):
    """Training batches that carry the teacher's stored probabilities: (x, (y, q)).

    Order and augmentation are ImageBatches' own for (seed, epoch); q is row-for-row the
    teacher's output on those views, read from `targets(epoch)`, an (images, classes) array
    in the epoch's batch order (a `TargetStore` epoch, or the validation probabilities).
    """

    def __init__(self, *args: Any, targets: Callable[[int], np.ndarray], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.labels is None:
            raise ValueError("TargetBatches needs labels")
        self.targets = targets

    def batch_of(self, epoch: int, index: int):
        x, y = super().batch_of(epoch, index)
        start = index * self.batch_size + self._share(self.batch_size).start
        q = np.asarray(self.targets(epoch)[start : start + len(y)], np.float32)
        if len(q) != len(y):
            raise ValueError(
                f"stored targets of epoch {epoch + 1} end at row {start + len(q)}, "
                f"batch {index} needs {start + len(y)}"
            )
        return x, (y, q)
