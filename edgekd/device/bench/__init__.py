"""`edgekd bench`: the exported student against the gated ensemble, on the device itself.

For every student file of an export folder (each format and precision) and for the gated
ensemble of its `members/` folder, on the same images: batch-1 latency after warm-up (p50,
p90, p99), throughput at a larger batch, peak resident memory of a fresh load and run, size
on disk, top-1 accuracy through the runtime, and for the ensemble how many members ran per
image. Then the student-vs-ensemble ratios the project is about (speed-up, size, accuracy).

Each model is measured in a fresh child process (`python -c ... _child_main`), so one
model's allocations, thread pools and caches never leak into another's numbers, and the
peak RSS of a row is the peak of a process that loaded only that model.

Nothing here imports TensorFlow or Keras: only numpy, Pillow, PyYAML, `edgekd.device.runtime`
and the numpy-only parts of `edgekd.data`, so it runs where only the runtime wheels are.
"""

from __future__ import annotations

from edgekd.device.bench.child import measure, measure_here
from edgekd.device.bench.images import EvalImages, load_eval_images, read_classes
from edgekd.device.bench.options import (
    DEFAULT_BATCH,
    DEFAULT_LIMIT,
    DEFAULT_ROUNDS,
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
    ENSEMBLE_PRECISIONS,
    FORMAT_OF,
    RUNTIMES,
    BenchError,
)
from edgekd.device.bench.profiles import DeviceProfile, device_profiles, load_profile
from edgekd.device.bench.report import format_report, save_plot
from edgekd.device.bench.runner import compare, merge_rounds, run_bench, select_formats
from edgekd.device.bench.targets import Target, ensemble_spec, find_targets

__all__ = [
    "BenchError",
    "DEFAULT_BATCH",
    "DEFAULT_LIMIT",
    "DEFAULT_ROUNDS",
    "DEFAULT_RUNS",
    "DEFAULT_WARMUP",
    "DeviceProfile",
    "ENSEMBLE_PRECISIONS",
    "EvalImages",
    "FORMAT_OF",
    "RUNTIMES",
    "Target",
    "compare",
    "device_profiles",
    "ensemble_spec",
    "find_targets",
    "format_report",
    "load_eval_images",
    "load_profile",
    "measure",
    "measure_here",
    "merge_rounds",
    "read_classes",
    "run_bench",
    "save_plot",
    "select_formats",
]
