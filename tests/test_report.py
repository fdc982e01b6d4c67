"""`edgekd report`: the page of a real smoke run (trained, exported, benched as a user does),
its HTML rendered by headless Chromium; the sections whose inputs are missing left out with a
note; exit code 2 for a missing or damaged run, a bad --out and a missing dependency."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekd.tables import format_table
from tests.conftest import REPO, run_cli, smoke_copy

pytest.importorskip("jinja2")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
# Every figure of a run with all stages, an export with members and a bench result.
FIGURES = {
    "per-class-delta.png", "confusion.png", "groups.png", "curves-generalist.png",
    "curves-specialists.png", "curves-student.png", "activation.png", "accuracy-latency.png",
}  # fmt: skip


@pytest.fixture(scope="module")
def reported(smoke_exported, tmp_path_factory) -> Path:
    """A copy of the session's exported smoke run, benched and then reported, as a user runs
    them: `edgekd bench RUN/export`, then `edgekd report RUN` (into RUN/report/)."""
    run = tmp_path_factory.mktemp("report") / "smoke"
    shutil.copytree(smoke_exported, run)
    proc = run_cli(
        "bench", str(run / "export"), "--limit", "20", "--runs", "5", "--warmup", "1",
        "--rounds", "1", "--runtime", "litert",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("report", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report: {run / 'report' / 'report.html'}" in proc.stdout
    return run


class _Images(html.parser.HTMLParser):
    """The <img> elements of a page, and any tag that would fetch something from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("data:", "#")):
                self.external.append(f"<{tag} {key}={a[key]!r}>")
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


@pytest.mark.e2e
def test_report_holds_every_section_with_the_runs_numbers(reported):
    out = reported / "report"
    md = (out / "report.md").read_text()
    assert {p.name for p in out.glob("*.png")} == FIGURES
    for name in FIGURES:  # the Markdown shows each PNG written beside it
        assert f"]({name})" in md, name
    for title in ("## Stages", "## Accuracy", "## Confusion and groups", "## Training curves",
                  "## Specialists", "## Export parity", "## On the device"):  # fmt: skip
        assert title in md, title
    assert "Left out" not in md
    # eval's tables: overall, per class with Δ, and the paired comparisons with their CI.
    eval_report = json.loads(run_cli("eval", str(reported), "--json").stdout)
    for name, model in eval_report["models"].items():
        assert re.search(rf"\| {re.escape(name)} +\|.*\| +{100 * model['accuracy']:.2f} \|", md)
    assert "Δ ensemble (%)" in md and "Δ distilled (%)" in md
    for c in eval_report["comparisons"]:
        assert f"| {c['b']} vs {c['a']} " in md
        assert f"[{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]" in md
    # the parity table has a row per card; bench's table and headline are there.
    export = reported / "export"
    cards = [*export.glob("*.tflite.json"), *export.glob("*.onnx.json"),
             *(export / "members").glob("*.tflite.json")]  # fmt: skip
    for card in cards:
        assert card.name.removesuffix(".json") + " |" in md, card.name
    assert "p50 ms" in md and "faster at p50" in md
    groups = json.loads((reported / "groups" / "groups.json").read_text())["groups"]
    for g in groups:
        assert ", ".join(g) in md


@pytest.mark.e2e
def test_html_is_self_contained_and_its_figures_decode(reported):
    out = reported / "report"
    page = (out / "report.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert parser.external == []  # nothing fetched: one file that opens anywhere
    assert {img["data-name"] for img in parser.images} == FIGURES
    for img in parser.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix), img["data-name"]
        data = base64.b64decode(img["src"][len(prefix):], validate=True)
        assert data == (out / img["data-name"]).read_bytes()  # the same picture as the .md's
        image = _png(data)
        assert image.width >= 400 and image.height >= 300, img["data-name"]
        assert img["alt"]


def _screenshot(page: Path, shot: Path, profile: Path) -> np.ndarray:
    """Headless Chromium's screenshot of `page` (1280 x 3000 px) as an RGB array."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,3000",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), proc.stderr[-2000:]
    return np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)


def _colourful(pixels: np.ndarray) -> int:
    """Pixels with a clear hue (channels apart by more than 60): figures, not text."""
    return int(((pixels.max(axis=2) - pixels.min(axis=2)) > 60).sum())


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_page_renders_in_chromium_with_its_figures(reported, tmp_path):
    page = reported / "report" / "report.html"
    pixels = _screenshot(page, tmp_path / "page.png", tmp_path / "profile")
    assert pixels.shape == (3000, 1280, 3)
    distinct = np.unique(pixels.reshape(-1, 3) @ np.array([1 << 16, 1 << 8, 1]))
    assert len(distinct) > 500  # text, tables and plots, not one colour
    assert 0.05 < float((pixels.min(axis=2) < 245).mean()) < 0.9  # drawn on, not a blank page
    # The same page with its images emptied: what the figures themselves put on the screen.
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', page.read_text()))
    without = _screenshot(bare, tmp_path / "bare.png", tmp_path / "profile")
    assert _colourful(pixels) > 50_000
    assert _colourful(pixels) > 20 * max(_colourful(without), 1)


@pytest.mark.e2e
def test_missing_export_and_bench_are_left_out_with_a_note(smoke_trained, tmp_path):
    run = smoke_copy(smoke_trained, tmp_path / "smoke")
    out = tmp_path / "elsewhere"
    proc = run_cli("report", str(run), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (run / "report").exists()  # --out, not RUN/report
    md = (out / "report.md").read_text()
    assert f"_Left out: no export at `{run / 'export'}` (`edgekd export RUN`)._" in md
    assert f"_Left out: no bench result at `{run / 'export' / 'bench.json'}`" in md
    assert "## Accuracy" in md and "## Specialists" in md and "Left out" not in md.split(
        "## Export parity")[0]  # fmt: skip
    assert not (out / "accuracy-latency.png").exists()
    assert "Left out: no export at" in (out / "report.html").read_text()
    # Asked for by name, a missing bench result is an error, not a note.
    proc = run_cli("report", str(run), "--out", str(out), "--bench", str(tmp_path / "b.json"))
    assert proc.returncode == 2 and "--bench: no bench result at" in proc.stderr


def test_missing_or_foreign_run_is_exit_2(tmp_path):
    proc = run_cli("report", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "not a run directory (no manifest.json)" in proc.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    proc = run_cli("report", str(tmp_path / "mine"))
    assert proc.returncode == 2 and "not an edgekd run" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.e2e
def test_damaged_run_and_bad_out_are_exit_2(smoke_trained, tmp_path):
    run = smoke_copy(smoke_trained, tmp_path / "smoke")
    (tmp_path / "file").write_text("")
    proc = run_cli("report", str(run), "--out", str(tmp_path / "file" / "report"))
    assert proc.returncode == 2 and "is a file, but --out must be a folder" in proc.stderr
    groups = run / "groups" / "groups.json"
    groups.write_text(groups.read_text()[:100])
    proc = run_cli("report", str(run))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "groups/groups.json" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "report").exists()


@pytest.mark.e2e
def test_missing_jinja2_says_what_to_install(smoke_trained):
    code = ("import sys; sys.modules['jinja2'] = None\n"
            "from edgekd.cli import main\nmain(['report', sys.argv[1]])")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, str(smoke_trained[0])], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert 'needs jinja2, not installed: pip install "edgekd[report]"' in proc.stderr
    assert not (smoke_trained[0] / "report").exists()


# --- the pieces, on numbers made here -------------------------------------------------------


def test_tables_read_back_into_cells_and_alignment():
    from edgekd.training.report.content import Table, Text, blocks_from_text

    rows = [["a b", "12.50", "[-1.00, +2.00]", "uint8 I/O"], ["c", "-", "-", ""]]
    md = format_table(["model", "accuracy (%)", "95% CI (pp)", "note"], rows)
    table = Table(md)
    assert table.headers == ["model", "accuracy (%)", "95% CI (pp)", "note"]
    assert table.rows == rows
    assert table.numeric == [False, True, True, False]
    blocks = blocks_from_text(f"header line\n\n{md}\nafter one\nafter two")
    assert [type(b) for b in blocks] == [Text, Table, Text, Text]
    assert blocks[1].markdown == md and blocks[3].text == "after two"


def _evaluation(with_ensemble: bool):
    """A RunEvaluation of three classes: the generalist, and the ensemble when asked."""
    from edgekd.training.evaluate import Evaluation, RunEvaluation

    names = ["cat", "dog", "ship"]
    results = {"generalist": Evaluation(np.array([[4, 1, 0], [2, 3, 0], [0, 0, 5]]), names)}
    about = {"generalist": {"architecture": "resnet10 w4", "params": "0.02M", "MACs/image": "1M"}}
    specialists = []
    if with_ensemble:
        results["ensemble"] = Evaluation(np.array([[5, 0, 0], [1, 4, 0], [0, 0, 5]]), names)
        about["ensemble"] = {"architecture": "gated, top-2", "params": "", "MACs/image": "2M"}
        specialists = [{"index": 0, "classes": ["cat", "dog"], "group_accuracy": 0.9,
                        "dustbin_accuracy": 1.0, "activation_rate": 0.6}]  # fmt: skip
    return RunEvaluation(results, "validation split (15 images)", about, specialists)


def test_sections_without_their_inputs_say_so(tmp_path):
    from edgekd.training.report import render, sections
    from edgekd.training.report.content import Report
    from edgekd.training.run import RunDir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"stages": {"generalist": {
        "status": "done", "metrics": {"val_accuracy": 0.8, "macs": 10}}}}))  # fmt: skip
    run = RunDir.open_existing(run_dir)
    ev = _evaluation(with_ensemble=False)
    bench, why = sections.read_bench(run_dir / "export" / "bench.json")
    parts = [
        sections.accuracy(ev), sections.groups(run, ev), sections.curves(run),
        sections.specialists(ev, None), sections.export(run, run_dir / "export"),
        sections.bench(bench, why, ev, run),
    ]  # fmt: skip
    notes = {s.id: s.note for s in parts if s.note}
    assert set(notes) == {"curves", "specialists", "export", "bench"}
    assert notes["specialists"] == "Left out: the run has no finished ensemble stage."
    assert all(n.startswith("Left out: ") and "\n" not in n for n in notes.values())
    # The groups section keeps the confusion matrix and says the groups are missing.
    groups = next(s for s in parts if s.id == "groups")
    assert [f.name for f in groups.figures] == ["confusion.png"]
    assert any("the groups stage has not run" in getattr(b, "text", "") for b in groups.blocks)
    html, md = render.render(Report("t", ["fact"], parts), made="now")
    for note in notes.values():
        assert note in md and note.split("`")[0] in html
    (run_dir / "export").mkdir()
    (run_dir / "export" / "bench.json").write_text("{not json")
    bench, why = sections.read_bench(run_dir / "export" / "bench.json")
    assert bench is None and "is not a bench result (JSONDecodeError" in why


def test_specialist_rates_from_eval_and_bench():
    from edgekd.training.report import sections

    bench = {"rows": [{"model": "ensemble", "format": "tflite", "precision": "int8",
                       "activation_rate": [0.55]},
                      {"model": "ensemble", "format": "onnx", "precision": "int8",
                       "error": "broke"}]}  # fmt: skip
    section = sections.specialists(_evaluation(with_ensemble=True), bench)
    table = section.blocks[0]
    assert table.headers[-2:] == ["ran on: eval, 15 images (%)", "ran on: bench, int8 tflite (%)"]
    assert table.rows == [["specialist 0", "cat, dog", "90.00", "100.00", "60.00", "55.00"]]
    assert [f.name for f in section.figures] == ["activation.png"]


def test_competitors_sit_at_the_students_latency(tmp_path):
    """The hard-label control at the student file's latency; the generalist too when it is the
    student's architecture, else scaled by MACs and drawn hollow."""
    from edgekd.training.report import sections
    from edgekd.training.run import RunDir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stages = {s: {"status": "done", "metrics": {"macs": m}}
              for s, m in (("generalist", 40), ("student", 10))}  # fmt: skip
    (run_dir / "manifest.json").write_text(json.dumps({"stages": stages}))
    run = RunDir.open_existing(run_dir)
    ev = _evaluation(with_ensemble=True)
    ev.results["hard-label"] = ev.results["generalist"]
    ev.results["budget-matched"] = ev.results["generalist"]
    ev.results["distilled"] = ev.results["ensemble"]
    ev.about["distilled"] = {"architecture": "resnet10 w2"}
    row = {"model": "student", "accuracy": 0.5, "latency_ms": {"p50": 2.0}}
    bench = {"rows": [{**row, "format": "onnx", "precision": "float32", "latency_ms": {"p50": 9}},
                      {**row, "format": "tflite", "precision": "float32"},
                      {**row, "format": "tflite", "precision": "int8", "latency_ms": {"p50": 1}},
                      {"model": "ensemble", "format": "tflite", "precision": "float32",
                       "accuracy": 0.9, "latency_ms": {"p50": 5.0}}]}  # fmt: skip
    points = {p["legend"]: p for p in sections._competitors(bench, ev, run)}
    control = points["hard-label (eval)"]
    assert control["latency_ms"]["p50"] == 2.0 and not control["hollow"]  # tflite first
    assert points["budget-matched (eval)"]["latency_ms"]["p50"] == 2.0
    assert "budget-matched (amortised) (eval)" not in points  # not in this evaluation
    gen = points["generalist (eval; latency estimated from MACs)"]
    assert gen["latency_ms"]["p50"] == pytest.approx(8.0) and gen["hollow"]
    assert gen["accuracy"] == pytest.approx(12 / 15)
    ev.about["distilled"] = ev.about["generalist"]  # the same network: the same latency
    points = {p["legend"]: p for p in sections._competitors(bench, ev, run)}
    assert points["generalist (eval)"]["latency_ms"]["p50"] == 2.0


def test_group_order_keeps_groups_together():
    from edgekd.training.report.figures import group_order

    assert group_order(6, [[4, 1], [2, 4]]) == [4, 1, 2, 0, 3, 5]


def test_templates_ship_in_the_distribution():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "*.j2" in config["tool"]["setuptools"]["package-data"]["edgekd.training.report"]
    assert {"jinja2>=3.1", "matplotlib>=3.7"} <= set(config["project"]["optional-dependencies"]
                                                     ["report"])  # fmt: skip
    from importlib import resources

    folder = resources.files("edgekd.training.report")
    assert {"report.html.j2", "report.md.j2"} <= {p.name for p in folder.iterdir()}
