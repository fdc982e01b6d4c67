"""benchmarks/distill_step.py runs end to end on its synthetic models."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.conftest import REPO


def test_synthetic_distill_step_benchmark(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "distill_step_bench", REPO / "benchmarks" / "distill_step.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look the module up
    spec.loader.exec_module(module)
    out = tmp_path / "result.json"
    args = ["--synthetic", "--batch", "8", "--steps", "1", "--rounds", "2", "--warmup", "1"]
    result = module.main([*args, "--json", str(out)])
    printed = capsys.readouterr().out
    assert "distillation step" in printed and "overhead" in printed
    saved = json.loads(out.read_text())
    assert saved["pass"] == result["pass"] == (saved["overhead"] <= 0.15)
    ms = saved["ms_per_step"]
    assert all(len(v) == 2 for v in saved["samples_ms"].values())
    assert ms["student_plus_teacher"] == ms["student_step"] + ms["teacher_forward"]
