"""benchmarks/pair.py: it refuses runs whose validation images differ or a bad RUN:MODEL,
and its figures are edgekd's own paired statistics on the runs' per-image results."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, smoke_copy

SCRIPT = REPO / "benchmarks" / "pair.py"


def _load():
    spec = importlib.util.spec_from_file_location("pair_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(path, fingerprint="abc", seed=0, val_fraction=0.1):
    path.mkdir(parents=True)
    manifest = {"recipe": {"seed": seed, "data": {"val_fraction": val_fraction}},
                "data": {"fingerprint": fingerprint}, "stages": {}}  # fmt: skip
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def _pair(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300,
    )  # fmt: skip


def test_split_key_is_fingerprint_seed_and_val_fraction(tmp_path):
    pair = _load()
    a = _fake_run(tmp_path / "a")
    assert pair.split_key(str(a)) == ("abc", 0, 0.1)
    assert pair.split_key(str(_fake_run(tmp_path / "b", seed=1))) != pair.split_key(str(a))


@pytest.mark.parametrize("spec", ["runs/w8", "runs/w8:", ":distilled"])
def test_spec_without_run_or_model_is_refused(spec):
    with pytest.raises(SystemExit, match="RUN:MODEL"):
        _load().parse_spec(spec)


def test_runs_with_other_validation_images_are_refused(tmp_path):
    a, b = _fake_run(tmp_path / "a"), _fake_run(tmp_path / "b", fingerprint="xyz")
    proc = _pair(f"{a}:distilled", f"{b}:distilled")
    assert proc.returncode != 0
    assert "different validation images" in proc.stderr and "xyz" in proc.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_pairs_two_runs_with_edgekds_statistics(smoke_trained, tmp_path):
    from edgekd.maths.stats import compare_paired
    from edgekd.training.evaluate import evaluate_run

    a = smoke_copy(smoke_trained, tmp_path / "a")
    b = smoke_copy(smoke_trained, tmp_path / "b")
    out = tmp_path / "rows.json"
    proc = _pair(f"{a}:hard-label", f"{b}:distilled", f"{b}:generalist", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    ev = evaluate_run(str(a))
    expected = compare_paired("a", ev.correct["hard-label"], "b", ev.correct["distilled"])
    assert [r["b"] for r in rows] == [f"{b}:distilled", f"{b}:generalist"]
    for key in ("accuracy_a", "accuracy_b", "ci_low", "ci_high", "only_a", "only_b", "p_value"):
        assert rows[0][key] == pytest.approx(getattr(expected, key)), key
    assert f"{100 * expected.difference:+.2f}" in proc.stdout
