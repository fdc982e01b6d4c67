"""float32 vs TensorRT-style int8 vs CPU int8 ONNX on ONNX Runtime's CPU provider (issue 14).

    python benchmarks/onnx_int8_cpu.py [EXPORT_DIR_OR_TMP] [--runs 300] [--threads N]

Builds an untrained ResNet-14 w16 student (the `cifar10-cpu` one; random weights: this
measures speed, not accuracy), exports `student.onnx`, `student-int8.onnx` (symmetric Q/DQ
for TensorRT) and the CPU flavour in both of ONNX Runtime's formats (QOperator, the default
`student-int8-cpu.onnx`, and QDQ), calibrated on seeded random pixels. Then, in one process,
it times batch-1 runs of every file interleaved round-robin (warm-up first; medians), and
counts the Conv nodes ONNX Runtime fused with their ReLU in each optimised graph.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default=None)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calibration", type=int, default=256)
    args = ap.parse_args()
    import onnxruntime as ort

    from edgekd.converters.onnx import (
        describe_ort_cpu_graph,
        export_onnx,
        quantize_onnx_int8,
        quantize_onnx_int8_cpu,
    )
    from edgekd.tables import format_table
    from edgekd.training.models import build_model

    out = Path(args.out or tempfile.mkdtemp(prefix="edgekd-int8cpu-"))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, (args.calibration, 32, 32, 3), dtype=np.uint8)
    model = build_model("resnet14", num_classes=10, width=16)
    files = {"float32": export_onnx(model, out / "student.onnx")}
    files["int8 (TensorRT Q/DQ)"] = quantize_onnx_int8(
        files["float32"], out / "student-int8.onnx", calib
    )
    files["int8-cpu QOperator"] = quantize_onnx_int8_cpu(
        files["float32"], out / "student-int8-cpu.onnx", calib, quant_format="qoperator"
    )
    files["int8-cpu QDQ"] = quantize_onnx_int8_cpu(
        files["float32"], out / "qdq" / "student-int8-cpu.onnx", calib, quant_format="qdq"
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sessions = {
        k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        for k, p in files.items()
    }
    x = rng.integers(0, 256, (1, 32, 32, 3)).astype(np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.warmup):
        for s in sessions.values():
            s.run(None, {"pixels": x})
    for _ in range(args.runs):  # round-robin: a noisy neighbour hits every file alike
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"pixels": x})
            times[k].append(1e3 * (time.perf_counter() - t0))
    base = statistics.median(times["float32"])
    print(f"ORT {ort.__version__} CPU EP, batch 1, {args.threads} thread(s), {args.runs} runs")
    trt = statistics.median(times["int8 (TensorRT Q/DQ)"])
    rows = []
    for k, p in files.items():
        med = statistics.median(times[k])
        g = describe_ort_cpu_graph(p)
        rows.append([
            k, f"{med:.3f}", f"{base / med:.2f}x", f"{trt / med:.2f}x",
            f"{g['int8_convs']} of {g['convs']}", str(g["relu_fused"]), str(g["relu_left"]),
            f"{p.stat().st_size / 1024:.0f}",
        ])  # fmt: skip
    headers = ["file", "median ms", "vs fp32", "vs int8", "int8 Convs", "ReLU fused",
               "ReLU left", "KiB"]  # fmt: skip
    print(format_table(headers, rows))
    print("vs int8: against the TensorRT Q/DQ file. int8 Convs: Convs ORT runs as QLinearConv;")
    print("ReLU fused: float Convs with the ReLU folded in; ReLU left: standalone ReLU nodes.")
    print(f"files in {out}")


if __name__ == "__main__":
    main()
