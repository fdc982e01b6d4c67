"""Running exported models without TensorFlow: LiteRT for .tflite, ONNX Runtime for .onnx,
TensorRT for serialized engines (.engine/.plan).

Nothing under `edgekd.device.runtime` imports TensorFlow (a test checks it), so `edgekd bench` and
`edgekd predict` run on a device that has only the runtime wheels.
"""

from edgekd.device.runtime.base import Runner, TensorSpec
from edgekd.device.runtime.loader import load_runner

__all__ = ["Runner", "TensorSpec", "load_runner"]
