"""The device profiles' schema: every shipped profile meets it, and a bad file fails naming
the file and the key. No runtime is loaded here (bench itself is tested in test_bench.py)."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from edgekd.device.bench import BenchError, device_profiles, load_profile
from edgekd.device.bench import profiles as profiles_mod
from edgekd.device.bench.profiles import (
    SHIPPED_REQUIRED,
    ProfileSchema,
    ShippedProfileSchema,
    validate_profile,
)
from tests.conftest import REPO

SHIPPED = sorted(device_profiles())


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_profiles_are_the_repositorys_files():
    on_disk = sorted(p.stem for p in (REPO / "devices").glob("*.yaml"))
    assert on_disk == SHIPPED
    assert {"jetson-orin-nano", "jetson-orin-nano-jp7", "jetson-agx-thor"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_meets_the_shipped_schema(name):
    path = device_profiles()[name]
    raw = yaml.safe_load(path.read_text())
    checked = validate_profile(raw, path, shipped=True)
    assert isinstance(checked, ShippedProfileSchema)
    assert checked.name in (None, name)  # a name other than the file's would be confusing
    for key in SHIPPED_REQUIRED:
        assert key in raw, f"{name}: {key}"
    profile = load_profile(name)
    assert profile.name == name and profile.install and profile.notes and profile.description
    # the README's table lists it
    readme = (REPO / "devices" / "README.md").read_text()
    assert re.search(rf"^\| `{re.escape(name)}` +\|", readme, re.M), name


def test_a_copied_profile_loads_the_same(tmp_path):
    src = device_profiles()["jetson-orin-nano-jp7"]
    copy = _write(tmp_path, "jetson-orin-nano-jp7.yaml", src.read_text())
    a, b = asdict(load_profile("jetson-orin-nano-jp7")), asdict(load_profile(copy))
    assert a.pop("path") != b.pop("path")
    assert a == b


def test_jetson_stacks_pin_cuda_python_to_their_cuda_major():
    jp6 = load_profile("jetson-orin-nano")
    assert '"cuda-python<13"' in jp6.install and "JetPack 6" in jp6.description
    assert "python3 is 3.10" in jp6.install
    for name in ("jetson-orin-nano-jp7", "jetson-agx-thor"):
        prof = load_profile(name)
        assert '"cuda-python>=13,<14"' in prof.install, name
        assert "Python 3.12" in prof.description and "CUDA 13" in prof.description, name
        assert "--system-site-packages" in prof.install, name  # JetPack's tensorrt module
        assert prof.precisions == jp6.precisions and prof.runtime == jp6.runtime
    # The device install never needs more than edgekd's own floor, Python 3.10.
    pyproject = (REPO / "pyproject.toml").read_text()  # no tomllib: it is 3.11+
    assert re.search(r'^requires-python = ">=3\.10"$', pyproject, re.M)
    for name in SHIPPED:
        assert not re.search(r"python3\.1[1-9]|Python >= ?3\.1[1-9]", load_profile(name).install)


def test_a_users_profile_may_leave_every_key_out(tmp_path):
    prof = load_profile(_write(tmp_path, "mine.yaml", "threads: 2\n"))
    assert (prof.name, prof.runtime, prof.threads, prof.batch) == ("mine", "all", 2, 32)
    assert (prof.xnnpack, prof.gpu, prof.precisions) == (True, False, None)
    assert load_profile(_write(tmp_path, "empty.yaml", "")).runtime == "all"
    assert load_profile(_write(tmp_path, "one.yaml", "precisions: int8\n")).precisions == ["int8"]
    assert isinstance(validate_profile({}, "x.yaml"), ProfileSchema)


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("runtime: litert\nthread: 4\n", "thread", r"unknown key \(did you mean 'threads'\?"),
        ("delegate:\n  xnnpak: true\n", "delegate.xnnpak", r"unknown key \(did you mean"),
        ("threads: '4'\n", "threads", r"expected a positive integer or null, got '4'"),
        ("threads: 2.0\n", "threads", r"expected a positive integer or null, got 2\.0"),
        ("threads: true\n", "threads", r"expected a positive integer or null, got True"),
        ("batch: 0\n", "batch", r"expected a positive integer, got 0"),
        ("batch: null\n", "batch", r"expected a positive integer, got None"),
        ("runtime: tflite\n", "runtime", r"expected one of litert, onnxruntime, tensorrt, all"),
        ("precisions: [int8, int4]\n", "precisions", r"unknown precision 'int4'"),
        ("precisions: []\n", "precisions", r"expected a list of float32"),
        ("delegate: [xnnpack]\n", "delegate", r"expected a mapping \(xnnpack"),
        ("delegate:\n  gpu: 'yes'\n", "delegate.gpu", r"expected true or false, got 'yes'"),
        ("delegate:\n  gpu_library: ' '\n", "delegate.gpu_library", r"expected a library path"),
        ("description: 3\n", "description", r"expected text, got 3"),
        ("name: ''\n", "name", r"expected text, got an empty value"),
        ("1: x\n", "1", r"unknown key"),
    ],
)
def test_a_bad_profile_names_the_file_and_the_key(tmp_path, text, key, why):
    path = _write(tmp_path, "bad-device.yaml", text)
    with pytest.raises(BenchError) as info:
        load_profile(path)
    message = str(info.value)
    assert re.search(rf"bad-device\.yaml: key '{re.escape(key)}': {why}", message), message


def test_every_problem_is_reported_on_its_own_line(tmp_path):
    path = _write(tmp_path, "two.yaml", "threads: zero\nbatch: -1\nnotes: [a]\n")
    with pytest.raises(BenchError) as info:
        load_profile(path)
    lines = str(info.value).splitlines()
    assert [re.search(r"key '(\w+)'", line)[1] for line in lines] == ["threads", "batch", "notes"]
    assert all(line.startswith(f"{path}: key ") for line in lines)


def test_a_profile_is_a_mapping(tmp_path):
    with pytest.raises(BenchError, match=r"list\.yaml: a device profile is a mapping"):
        load_profile(_write(tmp_path, "list.yaml", "- runtime: litert\n"))
    with pytest.raises(BenchError, match=r"broken\.yaml:2: device profile"):
        load_profile(_write(tmp_path, "broken.yaml", "runtime: litert\n  threads: [\n"))


def test_a_shipped_profile_must_carry_its_required_keys(tmp_path, monkeypatch):
    text = "runtime: litert\ndescription: a board\ninstall: pip install edgekd\n"
    path = _write(tmp_path, "new-board.yaml", text)
    assert load_profile(path).notes == ""  # a user's file may leave notes out
    with pytest.raises(BenchError, match=r"new-board\.yaml: key 'notes': missing"):
        load_profile(path, shipped=True)
    # A file among the built-in profiles is held to the shipped schema without being asked.
    monkeypatch.setattr(profiles_mod, "device_profiles", lambda: {"new-board": path})
    with pytest.raises(BenchError, match=r"new-board\.yaml: key 'notes': missing"):
        load_profile("new-board")
    bare = _write(tmp_path, "bare.yaml", "threads: 1\n")
    with pytest.raises(BenchError) as info:
        load_profile(bare, shipped=True)
    missing = re.findall(r"bare\.yaml: key '(\w+)': missing", str(info.value))
    assert missing == list(SHIPPED_REQUIRED)
    blank = _write(tmp_path, "blank.yaml", text + "notes: ''\n")
    with pytest.raises(BenchError, match=r"blank\.yaml: key 'notes': expected text, got an empty"):
        load_profile(blank, shipped=True)
