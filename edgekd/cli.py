"""The `edgekd` command: a thin shim that parses, loads the recipe and calls the Python API."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from edgekd.contract import IO_DTYPES
from edgekd.device.bench import (
    DEFAULT_BATCH,
    DEFAULT_LIMIT,
    DEFAULT_ROUNDS,
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
)
from edgekd.errors import EdgekdError, RunDirError
from edgekd.native_log import NativeLogFilter

# TensorFlow's C++ start-up chatter hides the messages users need; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf.function retracing notes fire once per loaded model (the gated ensemble loads several).
logging.getLogger("tensorflow").setLevel(logging.ERROR)


class _Group(click.Group):
    """Maps user errors to one line on stderr and exit code 2; Ctrl-C to 130."""

    def invoke(self, ctx: click.Context):
        from edgekd.training import interrupts

        interrupts.install()
        native = NativeLogFilter()
        native.start()
        try:
            result = super().invoke(ctx)
            if _supervised():
                _exit(0)
            return result
        except EdgekdError as exc:
            native.stop()
            click.echo(f"error: {exc}", err=True)
            _exit(exc.exit_code)
        except KeyboardInterrupt:
            native.stop()
            click.echo("\ninterrupted: run the same command again to resume.", err=True)
            _exit(130)
        except Exception as exc:
            if not (_supervised() and _peer_lost(exc)):
                raise
            from edgekd.errors import reason
            from edgekd.training.supervisor import PEER_LOST

            native.stop()
            click.echo(f"edgekd: lost contact with another worker ({reason(exc)})", err=True)
            _exit(PEER_LOST)
        finally:
            native.stop()


def _supervised() -> bool:
    from edgekd.training.supervisor import supervised

    return supervised()


def _peer_lost(exc: BaseException) -> bool:
    """A TensorFlow error that means a worker (or the link to it) went away."""
    lost = {"UnavailableError", "AbortedError", "DeadlineExceededError", "CancelledError"}
    while exc is not None:
        if type(exc).__module__.startswith("tensorflow") and type(exc).__name__ in lost:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _exit(code: int) -> None:
    """sys.exit, except in a supervised training child: there TensorFlow's cluster shutdown
    would wait for workers that are gone, so the process ends at once after flushing."""
    if _supervised():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


@click.group(cls=_Group)
@click.version_option(package_name="edgekd")
def main() -> None:
    """Generalist + specialists -> gated ensemble -> distilled student -> edge."""


@main.command()
@click.argument("recipe")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a recipe key, e.g. --set generalist.epochs=3 (repeatable).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory. Defaults to runs/<recipe name>.",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="One line per epoch, no per-batch bar (the default when stdout is not a terminal).",
)
@click.option(
    "--workers",
    default=None,
    metavar="HOST:PORT,...",
    help="train.distribution: multi_worker: every worker's address, the chief first, the same "
    "list on every worker (instead of TF_CONFIG).",
)
@click.option(
    "--worker-index",
    type=click.IntRange(min=0),
    default=None,
    help="This worker's place in --workers (0 is the chief, which writes the run directory).",
)
def train(
    recipe: str,
    overrides: tuple[str, ...],
    run_dir: str | None,
    quiet: bool,
    workers: str | None,
    worker_index: int | None,
) -> None:
    """Train the stages RECIPE asks for (a YAML file or a built-in name, e.g. smoke)."""
    from edgekd.recipe import load_recipe
    from edgekd.training.cluster import Cluster

    if run_dir is not None and not run_dir.strip():
        raise RunDirError("--run-dir is empty: give a folder, or leave it out for runs/<name>")
    resolved = load_recipe(recipe, overrides)
    cluster = Cluster.from_environment(workers, worker_index)
    if resolved.train.distribution == "multi_worker" and cluster and not _supervised():
        from edgekd.training.supervisor import supervise

        code = supervise(
            [sys.executable, "-m", "edgekd", *sys.argv[1:]],
            resolved.train.worker_timeout_s, cluster.describe(),
            log=lambda line: click.echo(line, err=True),
        )  # fmt: skip
        sys.exit(code)
    from edgekd.training.pipeline import train as run_train

    run = run_train(
        resolved, run_dir, verbose=2 if quiet or not sys.stdout.isatty() else 1, cluster=cluster
    )
    click.echo(f"run directory: {run.path}   (next: edgekd eval {run.path})")


@main.command(name="eval")
@click.argument("run", type=click.Path())
@click.option(
    "--data",
    "data_spec",
    default=None,
    metavar="SPEC",
    help="Evaluate on folder:PATH / cifar:PATH / tfds:NAME instead of the run's own data.",
)
@click.option(
    "--split",
    type=click.Choice(["val", "test"]),
    default="val",
    show_default=True,
    help="Which split of the run's own data (test only where the source has one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def evaluate(run: str, data_spec: str | None, split: str, as_json: bool) -> None:
    """Overall and per-class accuracy of every model in RUN."""
    from edgekd.training.evaluate import evaluate_run

    report = evaluate_run(run, data_spec, split)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.tables())


@main.command(name="report")
@click.argument("run", type=click.Path())
@click.option(
    "--out", type=click.Path(file_okay=False), default=None,
    help="Folder for report.html, report.md and the figures. [default: RUN/report]",
)  # fmt: skip
@click.option(
    "--data", "data_spec", default=None, metavar="SPEC",
    help="Evaluate on folder:PATH / cifar:PATH / tfds:NAME instead of the run's own data.",
)  # fmt: skip
@click.option(
    "--split", type=click.Choice(["val", "test"]), default="val", show_default=True,
    help="Which split of the run's own data (test only where the source has one).",
)  # fmt: skip
@click.option(
    "--export", "export_dir", type=click.Path(file_okay=False), default=None,
    help="The export folder to report on. [default: RUN/export, left out if absent]",
)  # fmt: skip
@click.option(
    "--bench", "bench_path", type=click.Path(dir_okay=False), default=None,
    help="A bench result, e.g. copied back from the device. [default: EXPORT/bench.json]",
)  # fmt: skip
def report(
    run: str,
    out: str | None,
    data_spec: str | None,
    split: str,
    export_dir: str | None,
    bench_path: str | None,
) -> None:
    """RUN on one page: report.html (self-contained) and report.md with its figures."""
    from edgekd.training.report import build_report

    written = build_report(
        run, out, data_spec=data_spec, split=split, export_dir=export_dir,
        bench_path=bench_path, log=lambda m: click.echo(m, err=True),
    )  # fmt: skip
    click.echo(f"report: {written['report.html']}")
    click.echo(f"markdown: {written['report.md']} (+ {len(written) - 2} figures beside it)")


@main.command(name="export")
@click.argument("run", type=click.Path())
@click.option("--float", "want_float", is_flag=True, help="float32 files.")
@click.option("--fp16", is_flag=True, help="float16 weights (TFLite; ONNX; TensorRT engine).")
@click.option("--dynamic", is_flag=True, help="Dynamic-range int8 weights (TFLite).")
@click.option("--int8", is_flag=True, help="Full-integer int8 (TFLite; ONNX Q/DQ; TensorRT).")
@click.option(
    "--format",
    "formats",
    default=None,
    metavar="LIST",
    help="Comma-separated: tflite,onnx,tensorrt,saved_model. Default: the recipe's export.formats.",
)
@click.option(
    "--int8-io",
    type=click.Choice(list(IO_DTYPES)),
    default=None,
    help="Input/output tensors of int8 TFLite files. Default: the recipe's export.int8_io.",
)
@click.option(
    "--onnx-int8",
    "onnx_int8",
    default=None,
    metavar="LIST",
    help="Comma-separated int8 ONNX flavours: tensorrt (student-int8.onnx, symmetric Q/DQ), "
    "cpu (student-int8-cpu.onnx, uint8 activations, fast on ONNX Runtime's CPU provider). "
    "Default: the recipe's export.onnx_int8.",
)
@click.option("--members", is_flag=True, default=None, help="Also the generalist and specialists.")
@click.option(
    "--qat", is_flag=True, default=None, help="Also int8 TFLite after quantisation-aware training."
)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Default: RUN/export.")
@click.option("--force", is_flag=True, help="Exit 0 even if a file fails the parity gate.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a recipe key, e.g. --set export.calibration_images=1000.",
)
def export(
    run: str,
    want_float: bool,
    fp16: bool,
    dynamic: bool,
    int8: bool,
    formats: str | None,
    int8_io: str | None,
    onnx_int8: str | None,
    members: bool | None,
    qat: bool | None,
    out: str | None,
    force: bool,
    overrides: tuple[str, ...],
) -> None:
    """Export RUN's student for the edge; every file is run and checked against Keras.

    Precision flags combine (--float --int8); with none, the recipe's export.precisions.
    """
    from edgekd.export.exporter import export_run
    from edgekd.recipe import EXPORT_FORMATS

    picked = [p for p, on in (("float32", want_float), ("float16", fp16), ("dynamic", dynamic),
                              ("int8", int8)) if on]  # fmt: skip
    fmts = None
    if formats:
        fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
        unknown = [f for f in fmts if f not in EXPORT_FORMATS]
        if unknown:
            raise click.BadParameter(
                f"unknown format {unknown[0]!r}; choose from {', '.join(EXPORT_FORMATS)}",
                param_hint="--format",
            )
    flavours = ()
    if onnx_int8:
        flavours = tuple(f.strip() for f in onnx_int8.split(",") if f.strip())
        unknown = [f for f in flavours if f not in ("tensorrt", "cpu")]
        if unknown or not flavours:
            raise click.BadParameter(
                f"unknown int8 ONNX flavour {(unknown or [onnx_int8])[0]!r}; choose from "
                "tensorrt, cpu",
                param_hint="--onnx-int8",
            )
    export_run(
        run, formats=fmts, precisions=tuple(picked) or None, members=members or None,
        qat=qat or None, out=out,
        force=force, log=click.echo,
        overrides=(*overrides, *((f"export.int8_io={int8_io}",) if int8_io else ()),
                   *((f"export.onnx_int8=[{','.join(flavours)}]",) if flavours else ())),
    )  # fmt: skip


@main.command()
@click.argument("export_dir", type=click.Path())
@click.option(
    "--device",
    default=None,
    metavar="NAME|PATH",
    help="Device profile: devices/NAME.yaml or a built-in name (e.g. raspberry-pi-5).",
)
@click.option(
    "--runtime",
    type=click.Choice(["litert", "onnxruntime", "tensorrt", "all"]),
    default=None,
    help="Which files to run: .tflite on LiteRT, .onnx on ONNX Runtime, TensorRT .engine/.plan "
    "files on TensorRT, or all those installed. [default: all]",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Runtime threads.")
@click.option(
    "--data",
    "data_spec",
    default=None,
    metavar="SPEC",
    help="Images (folder:PATH, one sub-folder per class). Default: the run's validation split.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Images for accuracy and throughput: the first LIMIT/K of each class.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help=f"Throughput batch. [default: the device profile's, else {DEFAULT_BATCH}]",
)
@click.option("--warmup", type=click.IntRange(min=0), default=DEFAULT_WARMUP, show_default=True)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=DEFAULT_RUNS,
    show_default=True,
    help="Batch-1 calls.",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=DEFAULT_ROUNDS,
    show_default=True,
    help="Fresh-process rounds per model, interleaved; timings are medians over rounds.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Report file. [default: EXPORT_DIR/bench.json]",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Accuracy-vs-latency PNG (needs matplotlib). [default: EXPORT_DIR/bench.png]",
)
def bench(
    export_dir: str,
    device: str | None,
    runtime: str | None,
    threads: int | None,
    data_spec: str | None,
    limit: int,
    batch: int | None,
    warmup: int,
    runs: int,
    rounds: int,
    json_path: str | None,
    plot_path: str | None,
) -> None:
    """Benchmark EXPORT_DIR's student files against its gated ensemble.

    Latency (batch 1), throughput, peak memory, size and accuracy of every student file and
    of the gated ensemble in members/, each in a fresh process; no TensorFlow needed.
    """
    from pathlib import Path

    from edgekd.device.bench import format_report, run_bench, save_plot

    report = run_bench(
        export_dir, device=device, runtime=runtime, threads=threads, data=data_spec,
        limit=limit, batch=batch, warmup=warmup, runs=runs, rounds=rounds,
        log=lambda m: click.echo(m, err=True),
    )  # fmt: skip
    click.echo(format_report(report))
    out = Path(json_path) if json_path else Path(export_dir) / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"report: {out}")
    click.echo(save_plot(report, plot_path or Path(export_dir) / "bench.png"))


@main.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Runtime threads.")
@click.option(
    "--ensemble", is_flag=True,
    help="Run the gated ensemble from the export folder's members/ instead of the student.",
)  # fmt: skip
@click.option(
    "--format", "ensemble_format", type=click.Choice(["tflite", "onnx"]), default="tflite",
    show_default=True, help="Ensemble only: which member files to run.",
)  # fmt: skip
@click.option(
    "--precision", "ensemble_precision", default="float32", show_default=True,
    help="Ensemble only: which exported precision of the members (float32, int8, ...).",
)  # fmt: skip
def predict(
    model: str,
    images: tuple[str, ...],
    top_k: int,
    threads: int | None,
    ensemble: bool,
    ensemble_format: str,
    ensemble_precision: str,
) -> None:
    """Top-k labels and scores of IMAGES.

    MODEL is a .tflite/.onnx file (labels.txt beside it), an export folder (its int8
    student .tflite, else float32), or a members/ folder (the gated ensemble, which also
    says which specialists each image woke). No TensorFlow needed.
    """
    from edgekd.device.predict import format_predictions, predict_files

    path, runtime, predictions = predict_files(
        model, images, top_k=top_k, threads=threads, ensemble=ensemble,
        ensemble_format=ensemble_format, ensemble_precision=ensemble_precision,
    )  # fmt: skip
    click.echo(f"model: {path} ({runtime})")
    click.echo(format_predictions(predictions))


@main.command(name="recipes")
def list_recipes() -> None:
    """List the built-in recipes."""
    from edgekd.recipe import builtin_recipes

    for name, path in builtin_recipes().items():
        click.echo(f"{name:20s} {path}")


if __name__ == "__main__":
    main()
