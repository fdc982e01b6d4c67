"""Building TensorRT engines per TensorRT version: the plan, the trtexec command lines, the
device script's version branch (run with a stand-in `trtexec`), and `build_engine` against
stand-in `tensorrt` modules of TensorRT 10.3 and 11.1.

No TensorRT or GPU is here. The stand-ins follow NVIDIA's sources (github.com/NVIDIA/TensorRT
tags v10.3.0 and v11.1): trtexec prints `&&&& RUNNING TensorRT.trtexec [TensorRT v100300]`
first, 11.x refuses `--fp16`/`--int8` as unknown options; `NetworkDefinitionCreationFlag`
has `STRONGLY_TYPED = 1` on 10.3 and `= 0` on 11.1, whose `BuilderFlag` has no FP16/INT8.
The ONNX files are a few nodes made here, so nothing needs TensorFlow.
"""

from __future__ import annotations

import enum
import os
import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.converters import tensorrt as trt_conv
from edgekd.converters.onnx import convert_onnx_float16, onnx_precision

SHAPE = (1, 4, 4, 3)
ARGS = {"workspace_mib": 512, "batch": 8, "shape": SHAPE}  # for trtexec_command
SHAPES = [
    "--memPoolSize=workspace:512M",
    "--minShapes=pixels:1x4x4x3",
    "--optShapes=pixels:8x4x4x3",
    "--maxShapes=pixels:8x4x4x3",
    "--skipInference",
]


def _graph(qdq: bool) -> onnx.ModelProto:
    """pixels (N, 4, 4, 3) float32 -> [Q/DQ] -> Flatten -> MatMul -> logits (N, 2)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(48, 2)).astype(np.float32), "w")]
    nodes, x = [], "pixels"
    if qdq:
        inits += [
            numpy_helper.from_array(np.array(2.0, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "zp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["pixels", "s", "zp"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"]),
        ]
        x = "dq"
    nodes += [
        helper.make_node("Flatten", [x], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 4, 4, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """m.onnx (float32), m-fp16.onnx (float16) and m-int8.onnx (Q/DQ), one folder."""
    out = tmp_path_factory.mktemp("trt")
    onnx.save(_graph(qdq=False), str(out / "m.onnx"))
    onnx.save(_graph(qdq=True), str(out / "m-int8.onnx"))
    convert_onnx_float16(out / "m.onnx", out / "m-fp16.onnx")
    return {"fp32": out / "m.onnx", "fp16": out / "m-fp16.onnx", "int8": out / "m-int8.onnx"}


def test_the_tiny_files_are_what_their_names_say(files):
    assert {p: onnx_precision(f) for p, f in files.items()} == {
        "fp32": "float32", "fp16": "float16", "int8": "int8",
    }  # fmt: skip


# ------------------------------------------------------------------------------ the plan

# precision -> (ONNX file precision, trtexec flags, network flags, builder flags)
PLANS = {
    ("10.3.0.30", True): {
        "fp32": ("float32", ["--stronglyTyped"], ["STRONGLY_TYPED"], []),
        "fp16": ("float16", ["--stronglyTyped"], ["STRONGLY_TYPED"], []),
        "int8": ("int8", ["--stronglyTyped"], ["STRONGLY_TYPED"], []),
    },
    ("10.3.0.30", None): {  # JetPack 6: weakly typed by default before 10.12
        "fp32": ("float32", [], [], []),
        "fp16": ("float32", ["--fp16"], [], ["FP16"]),
        "int8": ("int8", ["--int8", "--fp16"], [], ["INT8", "FP16"]),
    },
    ("10.11.0", False): {
        "fp32": ("float32", [], [], []),
        "fp16": ("float32", ["--fp16"], [], ["FP16"]),
        "int8": ("int8", ["--int8", "--fp16"], [], ["INT8", "FP16"]),
    },
    ("10.12.0", None): {
        "fp32": ("float32", ["--stronglyTyped"], ["STRONGLY_TYPED"], []),
        "fp16": ("float16", ["--stronglyTyped"], ["STRONGLY_TYPED"], []),
        "int8": ("int8", ["--stronglyTyped"], ["STRONGLY_TYPED"], []),
    },
    ("10.13.3", True): {
        "fp32": ("float32", ["--stronglyTyped"], ["STRONGLY_TYPED"], []),
        "fp16": ("float16", ["--stronglyTyped"], ["STRONGLY_TYPED"], []),
        "int8": ("int8", ["--stronglyTyped"], ["STRONGLY_TYPED"], []),
    },
    ("11.1.0", None): {
        "fp32": ("float32", [], [], []),
        "fp16": ("float16", [], [], []),
        "int8": ("int8", [], [], []),
    },
}


@pytest.mark.parametrize(("version", "strongly_typed"), list(PLANS))
def test_build_plan_per_version(version, strongly_typed):
    for precision, (source, trtexec, network, builder) in PLANS[version, strongly_typed].items():
        plan = trt_conv.build_plan(precision, version, strongly_typed=strongly_typed)
        got = (plan.onnx_precision, list(plan.trtexec_flags), list(plan.network_flags),
               list(plan.builder_flags))  # fmt: skip
        assert got == (source, trtexec, network, builder), (version, precision)
        default = trt_conv.parse_version(version) >= (10, 12)
        assert plan.strongly_typed is (default if strongly_typed is None else strongly_typed)


def test_build_plan_refuses_what_no_tensorrt_builds():
    with pytest.raises(ValueError, match="strongly typed networks only"):
        trt_conv.build_plan("fp16", "11.0", strongly_typed=False)
    with pytest.raises(ValueError, match="TensorRT 8.6: .*10 or newer"):
        trt_conv.build_plan("int8", "8.6.1")
    with pytest.raises(ValueError, match="precision 'int4'"):
        trt_conv.build_plan("int4", "10.3")
    with pytest.raises(ValueError, match="not a TensorRT version"):
        trt_conv.build_plan("fp32", "latest")


def test_parse_version_reads_what_tensorrt_reports():
    assert trt_conv.parse_version("10.3.0.30") == (10, 3)  # tensorrt.__version__ on JetPack 6
    assert trt_conv.parse_version("11.1.0.106") == (11, 1)
    assert trt_conv.parse_version("11") == (11, 0)
    assert trt_conv.parse_version((10, 13, 3)) == (10, 13)


# ------------------------------------------------------------------------------ trtexec


def _cmd(precision: str, onnx_file: str, **kwargs) -> list[str]:
    line = trt_conv.trtexec_command(onnx_file, f"m-{precision}.engine", precision, **ARGS, **kwargs)
    return shlex.split(line)


# The command lines, pinned: (version, strongly_typed) -> precision -> argv after `trtexec`.
COMMANDS = {
    ("10.3", True): {
        "fp32": ["--onnx=m.onnx", "--saveEngine=m-fp32.engine", "--stronglyTyped", *SHAPES],
        "fp16": ["--onnx=m-fp16.onnx", "--saveEngine=m-fp16.engine", "--stronglyTyped", *SHAPES],
        "int8": ["--onnx=m-int8.onnx", "--saveEngine=m-int8.engine", "--stronglyTyped", *SHAPES],
    },
    ("10.3", None): {  # JetPack 6's weakly typed builds, as edgekd wrote them before
        "fp32": ["--onnx=m.onnx", "--saveEngine=m-fp32.engine", *SHAPES],
        "fp16": ["--onnx=m.onnx", "--saveEngine=m-fp16.engine", "--fp16", *SHAPES],
        "int8": ["--onnx=m-int8.onnx", "--saveEngine=m-int8.engine", "--int8", "--fp16", *SHAPES],
    },
    ("11.1", None): {
        "fp32": ["--onnx=m.onnx", "--saveEngine=m-fp32.engine", *SHAPES],
        "fp16": ["--onnx=m-fp16.onnx", "--saveEngine=m-fp16.engine", *SHAPES],
        "int8": ["--onnx=m-int8.onnx", "--saveEngine=m-int8.engine", *SHAPES],
    },
}


@pytest.mark.parametrize(("version", "strongly_typed"), list(COMMANDS))
def test_trtexec_command_lines(version, strongly_typed):
    for precision, expected in COMMANDS[version, strongly_typed].items():
        onnx_file = expected[0].removeprefix("--onnx=")
        got = _cmd(precision, onnx_file, version=version, strongly_typed=strongly_typed)
        assert got == ["trtexec", *expected], (version, precision)
        assert not [a for a in got if a.startswith(("--workspace", "--explicitBatch", "--calib"))]
    for precision in ("fp32", "fp16", "int8"):  # TensorRT 11 has no precision flags at all
        assert not {"--fp16", "--int8", "--best", "--bf16"} & set(
            _cmd(precision, "m.onnx", version="11.1")
        )


def test_trtexec_command_quotes_and_checks():
    quoted = trt_conv.trtexec_command("my dir/m.onnx", "e.engine", "fp32", version="11")
    assert "'--onnx=my dir/m.onnx'" in quoted
    with pytest.raises(ValueError, match="precision"):
        trt_conv.trtexec_command("m.onnx", "m.engine", "int4", version="10.3")
    with pytest.raises(ValueError, match="positive"):
        trt_conv.trtexec_command("m.onnx", "m.engine", "fp32", version="10.3", batch=0)


# ------------------------------------------------------------------------------ the script


def _stub_trtexec(folder: Path, banner: str | None) -> Path:
    """A `trtexec` that prints `banner` for --help (as the real one's first line) and
    otherwise its arguments, one a line."""
    folder.mkdir(parents=True, exist_ok=True)
    stub = folder / "trtexec"
    help_text = f'echo "{banner}"; echo "=== Model Options ==="' if banner else "echo usage"
    stub.write_text(
        "#!/bin/sh\n"
        f'if [ "${{1:-}}" = --help ]; then {help_text}; exit 0; fi\n'
        "printf '%s\\n' \"$@\"\n"
    )
    stub.chmod(0o755)
    return stub


BANNERS = {  # what trtexec prints first, per samples/common/logging.h
    "10.3": "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help",
    "10.13": "&&&& RUNNING TensorRT.trtexec [TensorRT v101303] # trtexec --help",
    "11.1": "&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b106] # trtexec --help",
    "8.6": "&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --help",
}


def _run(script: Path, stub_dir: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("TRTEXEC", "TRT_VERSION", "TRT_TYPING")
    }
    environ |= {"PATH": f"{stub_dir}{os.pathsep}{environ.get('PATH', '')}", **env}
    return subprocess.run(
        ["sh", str(script)], env=environ, cwd=cwd, capture_output=True, text=True, timeout=30
    )


@pytest.fixture(scope="module")
def scripts(files) -> dict[str, Path]:
    return {
        p: trt_conv.write_trtexec_script(f, f.with_name(f"m-{p}.engine"), p, workspace_mib=512,
                                         max_batch=8)
        for p, f in files.items()
    }  # fmt: skip


def test_scripts_are_written_beside_the_onnx_files(files, scripts):
    for precision, script in scripts.items():
        assert script == files[precision].with_name(f"m-{precision}.trtexec.sh")
        assert os.access(script, os.X_OK)
        text = script.read_text()
        assert text.startswith("#!/bin/sh\n") and "set -eu" in text
        assert subprocess.run(["sh", "-n", str(script)]).returncode == 0  # parses as sh
    assert "float16 tensors of m-fp16.onnx" in scripts["fp16"].read_text()
    assert "Q/DQ nodes of m-int8.onnx" in scripts["int8"].read_text()


@pytest.mark.parametrize(
    ("banner", "typing", "commands"),
    [("10.3", None, ("10.3", None)), ("10.13", None, ("10.3", True)),
     ("10.3", "strong", ("10.3", True)), ("10.13", "weak", ("10.3", None)),
     ("11.1", None, ("11.1", None))],
)  # fmt: skip
def test_script_picks_the_command_for_the_trtexec_it_finds(
    scripts, tmp_path, banner, typing, commands
):
    """The script asks the trtexec on PATH for its version and runs that version's command
    (from its own folder, whatever the caller's working directory)."""
    stub_dir = tmp_path / banner
    _stub_trtexec(stub_dir, BANNERS[banner])
    env = {"TRT_TYPING": typing} if typing else {}
    for precision, script in scripts.items():
        expected = COMMANDS[commands][precision]
        proc = _run(script, stub_dir, tmp_path, **env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == expected, (banner, typing, precision)
        assert f"TensorRT {banner}." in proc.stderr


def test_script_takes_the_version_from_trt_version_and_the_program_from_trtexec(scripts, tmp_path):
    stub = _stub_trtexec(tmp_path / "elsewhere", None)  # no banner: --help says nothing
    proc = _run(scripts["int8"], tmp_path / "empty", tmp_path, TRTEXEC=str(stub),
                TRT_VERSION="11.1.0.106")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == COMMANDS["11.1", None]["int8"]
    proc = _run(scripts["int8"], tmp_path / "empty", tmp_path, TRTEXEC=str(stub),
                TRT_VERSION="10.3")  # fmt: skip
    assert proc.stdout.splitlines() == COMMANDS["10.3", None]["int8"]
    proc = _run(scripts["int8"], tmp_path / "empty", tmp_path, TRTEXEC=str(stub),
                TRT_VERSION="10.12")  # fmt: skip
    assert proc.stdout.splitlines() == COMMANDS["10.3", True]["int8"]


@pytest.mark.parametrize(
    ("banner", "env", "message"),
    [(None, {}, "cannot tell the TensorRT version"),
     ("8.6", {}, "TensorRT 8.6.1: these files need TensorRT 10 or newer"),
     ("11.1", {"TRT_TYPING": "weak"}, "strongly typed networks only"),
     ("10.3", {"TRT_TYPING": "fast"}, "TRT_TYPING is strong or weak, not 'fast'")],
)  # fmt: skip
def test_script_refuses_what_it_cannot_build(scripts, tmp_path, banner, env, message):
    stub_dir = tmp_path / "bin"
    _stub_trtexec(stub_dir, BANNERS.get(banner))
    proc = _run(scripts["fp16"], stub_dir, tmp_path, **env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stdout == ""  # trtexec never ran a build


def test_script_without_trtexec_says_how_to_point_at_it(scripts, tmp_path):
    proc = _run(scripts["fp32"], tmp_path / "empty", tmp_path, TRTEXEC=str(tmp_path / "nope"))
    assert proc.returncode == 2 and "TRTEXEC=/path/to/trtexec" in proc.stderr


def test_write_trtexec_script_checks_the_onnx_file(files, tmp_path):
    with pytest.raises(ValueError, match=r"m\.onnx: holds a float32 model.*float16 ONNX file"):
        trt_conv.write_trtexec_script(files["fp32"], tmp_path / "m-fp16.engine", "fp16")
    with pytest.raises(ValueError, match=r"m\.onnx: holds a float32 model.*int8 ONNX file"):
        trt_conv.write_trtexec_script(files["fp32"], tmp_path / "m-int8.engine", "int8")
    with pytest.raises(ValueError, match="precision"):
        trt_conv.write_trtexec_script(files["fp32"], tmp_path / "m.engine", "fp8")


def test_weak_fp16_branch_needs_the_float32_file(files, tmp_path):
    """A float16 file alone: the strongly typed branches work (and are 10.3's default then),
    TRT_TYPING=weak says why not."""
    lone = tmp_path / "alone" / "m-fp16.onnx"
    lone.parent.mkdir()
    lone.write_bytes(files["fp16"].read_bytes())
    script = trt_conv.write_trtexec_script(lone, lone.with_name("m-fp16.engine"), "fp16")
    _stub_trtexec(tmp_path / "bin", BANNERS["10.3"])
    assert _run(script, tmp_path / "bin", tmp_path).returncode == 0
    proc = _run(script, tmp_path / "bin", tmp_path, TRT_TYPING="weak")
    assert proc.returncode == 2 and "no float32 ONNX file" in proc.stderr


# ------------------------------------------------------------------------------ build_engine


def _fake_tensorrt(calls: dict, version: str = "10.3.0.30", *, parse_ok: bool = True):
    """Just enough of TensorRT's Python API, as `version` has it, to record what
    `build_engine` asks of it. As the real builder, a strongly typed network with a
    precision builder flag fails to build (returns None)."""
    major = int(version.split(".")[0])
    if major >= 11:  # include/NvInfer.h and python/src/infer/pyCore.cpp at v11.1
        network_flag = enum.IntEnum(
            "NetworkDefinitionCreationFlag",
            {"STRONGLY_TYPED": 0, "PREFER_AOT_PYTHON_PLUGINS": 1, "PREFER_JIT_PYTHON_PLUGINS": 2},
        )
        builder_flag = enum.IntEnum("BuilderFlag", {"DEBUG": 0, "TF32": 6, "REFIT": 2})
    else:  # ... at v10.3.0
        network_flag = enum.IntEnum(
            "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
        )
        builder_flag = enum.IntEnum(
            "BuilderFlag", {"FP16": 0, "INT8": 1, "DEBUG": 2, "TF32": 7, "BF16": 16}
        )
    precision_flags = {f for f in ("FP16", "INT8", "BF16") if hasattr(builder_flag, f)}

    class Logger:
        WARNING = "warning"

        def __init__(self, severity):
            calls["log_level"] = severity

    class Tensor:
        name, shape = "pixels", (-1, 4, 4, 3)

    class Network:
        num_inputs = 1

        def __init__(self, flags):
            known = sum(1 << int(f) for f in network_flag)
            assert isinstance(flags, int) and flags & ~known == 0, flags
            self.strongly_typed = major >= 11 or bool(
                flags & (1 << int(network_flag.STRONGLY_TYPED))
            )

        def get_input(self, i):
            return Tensor()

    class ParserError:
        def code(self):
            return "UNSUPPORTED_NODE"

        def desc(self):
            return "no importer for op Foo"

        def node(self):
            return 7

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return parse_ok

        def get_error(self, i):
            return ParserError()

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls["profile"] = (name, lo, opt, hi)

    class Config:
        def __init__(self):
            self.flags: list = []

        def set_memory_pool_limit(self, pool, size):
            calls["pool"] = (pool, size)

        def set_flag(self, flag):
            assert isinstance(flag, builder_flag), flag
            self.flags.append(flag)
            calls.setdefault("flags", []).append(flag.name)

        def add_optimization_profile(self, profile):
            calls["profiles"] = calls.get("profiles", 0) + 1

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            calls["network_flags"] = flags
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if network.strongly_typed and {f.name for f in config.flags} & precision_flags:
                return None  # "precision flags are not allowed with strongly typed networks"
            return b"serialized-engine"

    return types.SimpleNamespace(
        __version__=version,
        Logger=Logger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        NetworkDefinitionCreationFlag=network_flag,
        BuilderFlag=builder_flag,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
    )


# (version, strongly_typed, precision) -> (ONNX file, create_network flags, builder flags)
API_CALLS = [
    ("10.3.0.30", True, "fp32", "fp32", 1 << 1, []),
    ("10.3.0.30", True, "fp16", "fp16", 1 << 1, []),
    ("10.3.0.30", True, "int8", "int8", 1 << 1, []),
    ("10.3.0.30", None, "fp32", "fp32", 0, []),
    ("10.3.0.30", None, "fp16", "fp32", 0, ["FP16"]),
    ("10.3.0.30", None, "int8", "int8", 0, ["INT8", "FP16"]),
    ("11.1.0.106", None, "fp32", "fp32", 0, []),
    ("11.1.0.106", None, "fp16", "fp16", 0, []),
    ("11.1.0.106", None, "int8", "int8", 0, []),
]


@pytest.mark.parametrize(("version", "typed", "precision", "source", "network", "flags"), API_CALLS)
def test_build_engine_drives_the_tensorrt_api(
    files, tmp_path, monkeypatch, version, typed, precision, source, network, flags
):
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(calls, version))
    assert trt_conv.installed_version() == trt_conv.parse_version(version)
    engine = tmp_path / f"m-{precision}.engine"
    out = trt_conv.build_engine(
        files[source], engine, precision, strongly_typed=typed, workspace_mib=256, max_batch=8
    )
    assert out == engine and engine.read_bytes() == b"serialized-engine"
    assert calls["network_flags"] == network and calls["parsed"] == str(files[source])
    assert calls.get("flags", []) == flags
    assert calls["pool"] == ("workspace", 256 << 20)
    assert calls["profile"] == ("pixels", (1, 4, 4, 3), (8, 4, 4, 3), (8, 4, 4, 3))
    assert calls["profiles"] == 1


@pytest.mark.parametrize("version", ["10.3.0.30", "11.1.0.106"])
def test_build_engine_refuses_the_wrong_onnx_file(files, tmp_path, monkeypatch, version):
    """A strongly typed fp16 build of the float32 file would be a float32 engine: refused,
    naming the file and the file it needs."""
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(calls, version))
    engine = tmp_path / "m-fp16.engine"
    with pytest.raises(ValueError, match=r"m\.onnx: holds a float32 model.*float16 ONNX file"):
        trt_conv.build_engine(files["fp32"], engine, "fp16", strongly_typed=True)
    with pytest.raises(ValueError, match=r"holds a float32 model.*int8 ONNX file.*Q/DQ"):
        trt_conv.build_engine(files["fp32"], tmp_path / "m-int8.engine", "int8")
    assert "parsed" not in calls and not engine.exists()


def test_build_engine_refuses_weak_typing_on_tensorrt_11(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt({}, "11.0.0.1"))
    with pytest.raises(ValueError, match="TensorRT 11.0 builds strongly typed networks only"):
        trt_conv.build_engine(files["fp32"], tmp_path / "m-fp16.engine", "fp16",
                              strongly_typed=False)  # fmt: skip


def test_build_engine_needs_a_readable_version(files, tmp_path, monkeypatch):
    fake = _fake_tensorrt({})
    del fake.__version__
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(RuntimeError, match="cannot tell this TensorRT's version"):
        trt_conv.build_engine(files["fp32"], tmp_path / "m.engine", "fp32")


def test_build_engine_reports_parser_errors(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt({}, parse_ok=False))
    with pytest.raises(RuntimeError, match="no importer for op Foo") as info:
        trt_conv.build_engine(files["fp32"], tmp_path / "m.engine", "fp32")
    assert "UNSUPPORTED_NODE" in str(info.value) and "node 7" in str(info.value)
    assert not (tmp_path / "m.engine").exists()


def test_build_engine_without_tensorrt_names_trtexec(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    assert trt_conv.installed_version() is None
    engine = tmp_path / "m-int8.engine"
    with pytest.raises(RuntimeError, match="trtexec") as info:
        trt_conv.build_engine(files["int8"], engine, "int8", max_batch=4)
    message = str(info.value)
    tensorrt_10, tensorrt_11 = message.split("\n")[2], message.split("\n")[4]
    assert "--stronglyTyped" in tensorrt_10 and "--stronglyTyped" not in tensorrt_11
    for line in (tensorrt_10, tensorrt_11):
        assert f"--onnx={files['int8']}" in line and "--int8" not in line
        assert "--minShapes=pixels:1x4x4x3" in line and "--maxShapes=pixels:4x4x4x3" in line
    assert not engine.exists()
    with pytest.raises(RuntimeError) as info:
        trt_conv.build_engine(files["fp32"], tmp_path / "m-fp16.engine", "fp16",
                              strongly_typed=False)  # fmt: skip
    assert "TensorRT 10:" in str(info.value) and "TensorRT 11" not in str(info.value)
    assert "--fp16" in str(info.value)
