"""The bench's vocabulary: runtimes, formats per runtime, default counts, and its error."""

from __future__ import annotations

from edgekd.contract import CPU_TAG, PRECISIONS, QAT_TAG
from edgekd.errors import EdgekdError

RUNTIMES = ("litert", "onnxruntime", "tensorrt", "all")
FORMAT_OF = {"litert": "tflite", "onnxruntime": "onnx", "tensorrt": "tensorrt"}
# The student files of each format are those edgekd.contract.FORMATS names: TensorRT
# engines as `sh student-int8.trtexec.sh` (or `build_engine`) writes them on the device,
# or under the other usual suffix.
INSTALL_HINTS = {
    "litert": "pip install ai-edge-litert",
    "onnxruntime": "pip install onnxruntime",
    "tensorrt": "the tensorrt Python package from JetPack/the TensorRT install, and "
    "pip install cuda-python",
}
ENSEMBLE_PRECISIONS = ("float32", "int8")  # the reference ensemble and its int8 twin
# Rows' precisions: the contract's, and the flavoured int8 files (QAT TFLite, CPU ONNX).
_PRECISION_ORDER = {p: i for i, p in enumerate((*PRECISIONS, f"int8{QAT_TAG}", f"int8{CPU_TAG}"))}


def base_precision(label: str) -> str:
    """The contract precision of a row's label: 'int8' for 'int8-qat' and 'int8-cpu'."""
    for tag in (QAT_TAG, CPU_TAG):
        label = label.removesuffix(tag)
    return label


DEFAULT_BATCH = 32
DEFAULT_LIMIT = 1000
DEFAULT_WARMUP = 10  # batch-1 calls before timing
DEFAULT_RUNS = 100  # timed batch-1 calls
DEFAULT_ROUNDS = 3  # fresh processes per model; timings are medians over them


class BenchError(EdgekdError):
    """An export folder, device profile or bench option is missing or malformed."""
