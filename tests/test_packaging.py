"""The distribution: recipes, converters and devices install inside `edgekd`, and a plain
(non-editable) install can name the built-in recipes."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


def test_every_package_folder_is_listed():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = {v: k for k, v in config["package-dir"].items()}
    found = set()
    for init in REPO.glob("**/__init__.py"):
        rel = init.parent.relative_to(REPO)
        if rel.parts[0] in {".venv", "tests", "build"}:
            continue
        top = dirs.get(rel.parts[0])
        if top is None:
            continue
        found.add(".".join([top, *rel.parts[1:]]))
    assert found == listed


def test_wheel_carries_recipes_inside_edgekd(tmp_path):
    pytest.importorskip("setuptools")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("edgekd-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for rel in (
        "edgekd/recipes/smoke.yaml",
        "edgekd/recipes/cifar10-cpu.yaml",
        "edgekd/recipes/cifar10-paper.yaml",
        "edgekd/converters/__init__.py",
        "edgekd/devices/__init__.py",
        "edgekd/data/folder.py",
    ):
        assert rel in names, rel
    tops = {Path(n).parts[0] for n in names}
    assert not tops & {"recipes", "converters", "devices", "tests"}, tops

    # A plain install of that wheel finds the built-in recipes by name.
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import edgekd.recipe as r; print(r.__file__); "
            "print(r.load_recipe('cifar10-cpu').name)",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    where, name = probe.stdout.split()
    assert where.startswith(str(site)) and name == "cifar10-cpu"
