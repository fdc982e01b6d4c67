"""`edgekd export`'s parity gate from the command line: a file whose accuracy falls more than
`export.tolerance_pp` below the Keras model's makes the command exit 3, the file and its card
stay for inspection, and `--force` accepts it.

Nothing is patched: the failure is a real int8 file that quantisation broke. The run is
trained here on images of two brightnesses (most very dim, the rest bright; the class is the
brightest colour channel, learnt at either brightness), and exported with
`export.calibration_images=1`. The one calibration image is a dim one, so the uint8 input's
scale covers only pixels up to about 30: every bright image saturates to grey in the input
tensor and the file loses every bright image it cannot guess. A tiny calibration set is
exactly the misconfiguration the gate is there to catch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli

FILE = "generalist-int8.tflite"
EXPORT = ("export", "--int8", "--format", "tflite", "--set", "export.model=generalist",
          "--set", "export.calibration_images=1")  # fmt: skip


def _two_brightness_folder(root: Path, per_class: int = 40, dim_share: float = 0.5) -> Path:
    """3 classes; class c is channel c at 255 over the others at 120, times 0.1 when dim."""
    rng = np.random.default_rng(0)
    for c in range(3):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        base = 120 + 135 * np.eye(3)[c]
        for i in range(per_class):
            scale = 0.1 if rng.random() < dim_share else 1.0
            img = np.clip(scale * (base + rng.normal(0, 20, (32, 32, 3))), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A generalist-only run on the two-brightness images (30 validation images)."""
    data = _two_brightness_folder(tmp_path_factory.mktemp("two-brightness"))
    run_dir = tmp_path_factory.mktemp("runs") / "two-brightness"
    proc = run_cli(
        "train", "smoke", "--run-dir", str(run_dir), "-q",
        "--set", f"data.path=folder:{data}", "--set", "data.limit_per_class=null",
        "--set", "data.val_fraction=0.25", "--set", "train.stages=[generalist]",
        "--set", "train.tensorboard=false", "--set", "generalist.epochs=16",
        "--set", "generalist.batch_size=16",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def failed(trained):
    """The int8 export at export.tolerance_pp=5, as the user ran it, and its card."""
    proc = run_cli(EXPORT[0], str(trained), *EXPORT[1:], "--set", "export.tolerance_pp=5")
    card_path = trained / "export" / f"{FILE}.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else None
    return trained, proc, card


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_failed_gate_exits_3_and_keeps_the_file_and_card(failed):
    run_dir, proc, card = failed
    assert card is not None, proc.stderr[-3000:]
    # The premise: calibration saw one dim image (pixels up to ~30), not the bright ones.
    assert card["input"]["dtype"] == "uint8" and card["input"]["scale"] < 0.2, card["input"]
    p = card["parity"]
    assert p["keras_accuracy"] >= 0.6, p  # the float model has learnt something to lose
    assert p["tolerance_pp"] == 5.0 and p["drop_pp"] > 5.0 and p["passed"] is False, p

    assert proc.returncode == 3, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    err = " ".join(proc.stderr.split())  # the message may wrap
    assert "parity gate failed" in err and f"{FILE} (+{p['drop_pp']:.2f} pp)" in err
    assert "export.tolerance_pp=5.0" in err and "--force" in err
    assert f"{FILE}: " in proc.stdout and "FAILS the parity gate" in proc.stdout

    # Kept, not deleted: the file the card describes, and the summary says it failed.
    out = run_dir / "export"
    assert (out / FILE).is_file() and card["sha256"] == _sha256(out / FILE)
    (row,) = [r for r in json.loads((out / "export.json").read_text())["variants"]
              if r["file"] == FILE]  # fmt: skip
    assert row["passed"] is False and row["accuracy"] == pytest.approx(p["accuracy"])


def test_force_accepts_the_failed_file(failed, tmp_path):
    run_dir, _, card = failed
    assert card is not None
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    proc = run_cli(EXPORT[0], str(copy), *EXPORT[1:], "--set", "export.tolerance_pp=5", "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parity gate failed" not in proc.stderr
    forced = json.loads((copy / "export" / f"{FILE}.json").read_text())
    # Forcing changes the exit status, not the record: the card still says it failed.
    assert forced["parity"]["passed"] is False
    assert forced["parity"]["drop_pp"] == pytest.approx(card["parity"]["drop_pp"])
    assert (copy / "export" / FILE).is_file()
    assert forced["sha256"] == _sha256(copy / "export" / FILE)


@pytest.mark.slow
def test_tolerance_above_the_drop_passes_without_force(failed, tmp_path):
    """The same file passes once export.tolerance_pp exceeds its drop: the tolerance, not
    something else about the file, is what made the command exit 3."""
    run_dir, _, card = failed
    assert card is not None
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    proc = run_cli(EXPORT[0], str(copy), *EXPORT[1:], "--set", "export.tolerance_pp=100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((copy / "export" / f"{FILE}.json").read_text())
    assert again["parity"]["passed"] is True and again["parity"]["tolerance_pp"] == 100.0
    assert again["parity"]["drop_pp"] == pytest.approx(card["parity"]["drop_pp"])
