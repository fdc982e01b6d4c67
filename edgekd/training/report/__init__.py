"""`edgekd report RUN`: the run on one page, as self-contained HTML and as Markdown.

The page holds the seed's tables with `edgekd eval`'s paired intervals, the generalist's
confusion and the groups cut from it, training curves per stage, specialist activation
rates, the export's parity table and bench's accuracy against latency (with the generalist
and the hard-label control beside the student). It computes no statistic of its own: the
numbers are `evaluate_run`'s, the manifest's, the model cards' and bench's. Figures are
matplotlib PNGs, the page a Jinja2 template; both are optional dependencies
(`pip install "edgekd[report]"`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgekd.errors import EdgekdError, RunDirError
from edgekd.training.run import RunDir, check_run_path, now

INSTALL_HINT = 'pip install "edgekd[report]"'


class ReportError(EdgekdError):
    """The report cannot be made: a missing dependency, or an output or input path that is
    not what was asked for."""


def _require() -> None:
    """Jinja2 and matplotlib, or a ReportError saying what to install."""
    missing = []
    for name in ("jinja2", "matplotlib"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ReportError(
            f"edgekd report needs {' and '.join(missing)}, not installed: {INSTALL_HINT}"
        )


def _out_dir(path: Path) -> Path:
    """`path` as a folder to write into; a ReportError when it, or a folder above it, is a
    file."""
    for parent in [*reversed(path.parents), path]:
        if parent.exists() and not parent.is_dir():
            raise ReportError(f"{parent}: is a file, but --out must be a folder")
    return path


def build_report(
    run_path: str | Path,
    out: str | Path | None = None,
    *,
    data_spec: str | None = None,
    split: str = "val",
    export_dir: str | Path | None = None,
    bench_path: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Write RUN's report into `out` (default RUN/report/); the files written, by name.

    Args:
        run_path: str or Path. A finished (or partly finished) run directory.
        out: str or Path. Folder for `report.html`, `report.md` and the PNGs. Defaults to
            RUN/report.
        data_spec: str. Evaluate on these images instead of the run's own (as `eval --data`).
        split: str. "val" or "test", of the run's own data. Defaults to "val".
        export_dir: str or Path. The export to report on. Defaults to RUN/export (left out
            with a note when absent; an error when given and absent).
        bench_path: str or Path. A `bench.json` (e.g. copied back from the device). Defaults
            to EXPORT/bench.json, with the same rule.
        log: callable. Where progress lines go.
    """
    from edgekd.training.evaluate import evaluate_run
    from edgekd.training.report import render, sections
    from edgekd.training.report.content import Report

    check_run_path(Path(run_path))
    run = RunDir.open_existing(run_path)
    _require()
    out_dir = _out_dir(Path(out) if out is not None else run.path / "report")
    export = Path(export_dir) if export_dir is not None else run.path / "export"
    if export_dir is not None and not export.is_dir():
        raise ReportError(f"{export}: no such export folder (--export)")
    bench_file = Path(bench_path) if bench_path is not None else export / "bench.json"
    bench, why = sections.read_bench(bench_file)
    if bench_path is not None and bench is None:
        raise ReportError(f"--bench: {why}")
    for stage in sections.STAGES:
        damaged = run.intact(stage) if run.stage(stage).status == "done" else None
        if damaged:
            raise RunDirError(f"{run.path}: {damaged}. `edgekd train` on this run redoes the stage")

    log(f"report: evaluating every model of {run.path} (as edgekd eval does)")
    ev = evaluate_run(str(run.path), data_spec, split)
    log("report: drawing figures")
    facts, stages = sections.overview(run)
    facts.append(f"Evaluated on the {ev.data}.")
    report = Report(
        title=f"edgekd report: {run.path.name}",
        facts=facts,
        sections=[
            stages,
            sections.accuracy(ev),
            sections.groups(run, ev),
            sections.curves(run),
            sections.specialists(ev, bench),
            sections.export(run, export),
            sections.bench(bench, why, ev, run),
        ],
        recipe_yaml=sections.recipe_text(run),
    )
    return render.write(report, out_dir, now())
