"""Does ONNX Runtime's x86 int8 kernel compute what an int8 ONNX file says? (issue 14)

    python benchmarks/onnx_int8_saturation.py RUN_DIR [--model student | --keras FILE] [--limit N]

On x86 CPUs without VNNI (AVX2, AVX-512F), ONNX Runtime multiplies uint8 activations by int8
weights with an instruction that adds pairs of products in int16 and saturates: 255 x 127 x 2
is above 32767. A full-range int8 file then computes something other than its own Q/DQ graph.
For the run's model, this writes (in a temporary folder) the float ONNX file and three int8
files calibrated on the same 512 training images: the TensorRT Q/DQ file, the CPU flavour
as `edgekd export` writes it (7-bit weights) and the CPU flavour with full-range weights.
Each int8 file runs twice on the same validation images: with ORT's optimisations (its fused
int8 kernels, what a user gets) and with them off (the graph as its operators define it:
DequantizeLinear -> float op -> QuantizeLinear, which is what TensorRT computes). The table
gives accuracy, top-1 agreement with the float file and the largest logit difference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--model", default="student", help="a model of the run (student, generalist)")
    ap.add_argument("--keras", default=None, help="a .keras file to use instead of --model")
    ap.add_argument("--limit", type=int, default=2000, help="validation images (first N)")
    ap.add_argument("--calibration", type=int, default=512)
    args = ap.parse_args()
    import onnxruntime.quantization as oq

    from edgekd.converters.onnx import export_onnx, quantize_onnx_int8, quantize_onnx_int8_cpu
    from edgekd.data.dataset import prepare_data
    from edgekd.device.runtime.onnx import OnnxRunner
    from edgekd.export.exporter import representative_images
    from edgekd.recipe import build_recipe
    from edgekd.tables import format_table
    from edgekd.training.run import RunDir

    run = RunDir.open_existing(args.run_dir)
    data = prepare_data(build_recipe(run.manifest["recipe"]), progress=False)
    if args.keras:
        import keras

        model = keras.saving.load_model(args.keras, compile=False)
    else:
        model = run.load_model(args.model, "model")
    val_x, val_y = data.val.images[: args.limit], data.val.labels[: args.limit]
    calib = representative_images(data.train.images, data.train.labels, args.calibration, 0)
    out = Path(tempfile.mkdtemp(prefix="edgekd-sat-"))
    files = {"float32": export_onnx(model, out / "m.onnx")}
    files["int8 TensorRT Q/DQ"] = quantize_onnx_int8(files["float32"], out / "trt.onnx", calib)
    files["int8 CPU, 7-bit weights (export)"] = quantize_onnx_int8_cpu(
        files["float32"], out / "cpu.onnx", calib
    )
    original = oq.quantize_static
    def full_range(*args: object, **kwargs: object) -> object:
        return original(*args, **{**kwargs, "reduce_range": False})

    oq.quantize_static = full_range
    try:
        files["int8 CPU, 8-bit weights"] = quantize_onnx_int8_cpu(
            files["float32"], out / "cpu8.onnx", calib
        )
    finally:
        oq.quantize_static = original

    floats = OnnxRunner(files["float32"], batch_size=100).predict(val_x)
    rows = [["float32", "", f"{100 * (floats.argmax(1) == val_y).mean():.2f}", "100.00", "0"]]
    for name, path in list(files.items())[1:]:
        fused = OnnxRunner(path, batch_size=100).predict(val_x)
        defined = OnnxRunner(path, batch_size=100, reference=True).predict(val_x)
        for how, scores in (("ORT fused kernels", fused), ("as defined (reference)", defined)):
            rows.append([
                name, how, f"{100 * (scores.argmax(1) == val_y).mean():.2f}",
                f"{100 * (scores.argmax(1) == floats.argmax(1)).mean():.2f}",
                f"{np.abs(scores - floats).max():.3g}",
            ])  # fmt: skip
        rows.append([name, "fused vs defined, max logit difference", "", "",
                     f"{np.abs(fused - defined).max():.3g}"])  # fmt: skip
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    print(f"{args.run_dir} {args.model}, {len(val_y)} validation images; this CPU "
          f"{'has' if vnni else 'lacks'} VNNI")  # fmt: skip
    print(format_table(["file", "run", "accuracy %", "agreement %", "max logit err"], rows))


if __name__ == "__main__":
    main()
