"""Edge architectures in the registry: MobileNetV2/V3, EfficientNet-Lite0, ImageNet ResNets.

Each builds at a tiny width and small input, trains a step, round-trips through `.keras`, and
keeps the contract (pixels 0..255 in, "preprocess" first, logits from "head"). Their sizes
match the published figures; `weights` loads a local file and fails fast offline; `init:
generalist` is refused across families. Int8 TFLite through the export parity gate runs for
two architectures by default and for the other six under `-m slow`: each needs a trained
model (a minute to trace its training step on two cores) and half a minute to convert.
"""

from __future__ import annotations

import socket
import time
import urllib.error
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from edgekd.errors import RecipeError
from edgekd.export.exporter import export_model
from edgekd.recipe import ExportConfig, build_recipe
from edgekd.training.models import (
    ARCHITECTURES,
    build_model,
    copy_weights,
    count_macs,
    count_params,
    inheritance_problem,
    inherits,
)
from edgekd.training.models.applications import DOWNLOAD_TIMEOUT_S, WeightsUnavailableError
from edgekd.training.models.imagenet_resnet import _stem_takes_rgb

# Architecture: (input side in px, width) of the tiny test models.
EDGE = {
    "mobilenetv2": (32, 35),
    "mobilenetv3small": (32, 35),
    "mobilenetv3small_minimalistic": (32, 35),
    "mobilenetv3large": (32, 35),
    "mobilenetv3large_minimalistic": (32, 35),
    "efficientnet_lite0": (32, 25),
    "resnet18_imagenet": (96, 8),
    "resnet50": (96, 8),
}
# Full int8 parity in the default run; the rest are behind -m exhaustive.
PARITY_BY_DEFAULT = ("mobilenetv3small_minimalistic",)
# One of each family in the default run; the larger variants (tens of seconds each on two
# cores) behind -m exhaustive: CI's time goes to checks that can find something new.
ROUND_TRIP_BY_DEFAULT = ("mobilenetv2", "mobilenetv3small_minimalistic", "resnet18_imagenet")


def tiny(arch: str, num_classes: int = 3) -> keras.Model:
    size, width = EDGE[arch]
    return build_model(arch, num_classes=num_classes, width=width, input_shape=(size, size, 3))


def pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


# Building, one training step, .keras round trip.


def test_registry_lists_the_edge_architectures() -> None:
    assert set(EDGE) <= set(ARCHITECTURES)
    for arch in EDGE:
        spec = ARCHITECTURES[arch]
        assert spec.description and spec.family
    assert ARCHITECTURES["mobilenetv2"].default_width == 100
    assert ARCHITECTURES["resnet50"].min_size == 96


@pytest.mark.parametrize(
    "arch",
    [a if a in ROUND_TRIP_BY_DEFAULT else pytest.param(a, marks=pytest.mark.exhaustive)
     for a in EDGE],
)
def test_builds_trains_one_step_and_round_trips(arch: str, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    size, _ = EDGE[arch]
    model = tiny(arch)
    assert model.name == arch
    assert model.layers[1].name == "preprocess"
    assert isinstance(model.layers[1], keras.layers.Normalization)
    head = model.get_layer("head")
    assert model.layers[-1] is head and head.activation is keras.activations.linear
    # A 32-px image keeps 2x2 positions to the end (stride-1 stem); 96 px ends at 3x3.
    assert tuple(model.get_layer("avg_pool").input.shape[1:3]) == ((2, 2) if size < 96 else (3, 3))

    x, y = pixels(8, size), np.arange(8) % 3
    kernel = head.get_weights()[0].copy()
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,  # tracing a training step costs a minute on two cores
    )
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(head.get_weights()[0], kernel)

    logits = keras.ops.convert_to_numpy(model(x, training=False))
    assert logits.shape == (8, 3) and np.isfinite(logits).all()
    assert not np.allclose(logits.sum(axis=1), 1.0)  # logits, not probabilities
    path = tmp_path / f"{arch}.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    again = keras.ops.convert_to_numpy(loaded(x, training=False))
    np.testing.assert_allclose(again, logits, rtol=1e-5, atol=1e-5)


def test_bn_momentum_and_small_stem_are_edited_in() -> None:
    model = tiny("mobilenetv3small_minimalistic")
    norms = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert norms and all(la.momentum == 0.9 for la in norms)  # keras builds them at 0.999
    assert model.get_layer("conv").strides == (1, 1)
    preprocess = model.get_layer("preprocess")
    np.testing.assert_allclose(np.ravel(preprocess.mean), 127.5)  # MobileNet: x / 127.5 - 1
    np.testing.assert_allclose(np.ravel(preprocess.variance), 127.5**2)
    # The minimalistic variant has no squeeze-and-excite and no hard-swish.
    assert not any("squeeze_excite" in la.name for la in model.layers)
    assert model.get_layer("head_hidden_act").get_config()["activation"] == "relu"


def test_imagenet_style_resnets_refuse_small_inputs() -> None:
    for arch in ("resnet50", "resnet18_imagenet"):
        with pytest.raises(ValueError, match=r"at least 96x96 px.*CIFAR ResNets"):
            build_model(arch, num_classes=10, width=8, input_shape=(32, 32, 3))


# Published sizes.


@pytest.mark.parametrize(
    ("arch", "params", "macs"),
    [
        # Sandler et al. 2018: 3.4M (keras.applications: 3.5M), 300M multiply-adds.
        ("mobilenetv2", 3.5e6, 300e6),
        # Howard et al. 2019, Table 3: 2.5M, 56M multiply-adds.
        ("mobilenetv3small", 2.5e6, 56e6),
        # He et al. 2016: 25.6M, 3.8G multiply-adds ("FLOPs") for ResNet-50 v1, keras' version
        # (stride in the first 1x1 conv). torchvision's v1.5 (stride in the 3x3) quotes 4.1G.
        ("resnet50", 25.6e6, 3.8e9),
        # He et al. 2016: 11.7M, 1.8G.
        ("resnet18_imagenet", 11.7e6, 1.8e9),
    ],
)
def test_sizes_match_the_published_figures(arch: str, params: float, macs: float) -> None:
    """All weights (BN statistics included) within 3%, MACs within 5%, at 224 px, 1000 classes."""
    model = build_model(arch, num_classes=1000, input_shape=(224, 224, 3))
    assert count_params(model) == pytest.approx(params, rel=0.03)
    assert count_macs(model) == pytest.approx(macs, rel=0.05)


# Weights: local files, offline failure, inheritance.


def test_local_weights_file_loads_into_the_backbone(tmp_path: Path) -> None:
    """A no-top backbone file, keras 3 or legacy .h5 (what keras.applications downloads)."""
    keras.utils.set_random_seed(1)
    source = keras.applications.MobileNetV2(
        alpha=0.35, include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    for layer in source.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma + 0.5, beta, mean + 1.0, var])
    source.save_weights(tmp_path / "backbone.weights.h5")
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(tmp_path / "backbone.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    for name in ("backbone.weights.h5", "backbone.h5"):
        model = build_model(
            "mobilenetv2",
            num_classes=3,
            width=35,
            input_shape=(32, 32, 3),
            weights=str(tmp_path / name),
        )
        for layer in ("Conv1", "bn_Conv1", "block_16_project_BN", "Conv_1_bn"):
            for got, want in zip(
                model.get_layer(layer).get_weights(),
                source.get_layer(layer).get_weights(),
                strict=True,
            ):
                np.testing.assert_array_equal(got, want)
        assert model.get_layer("bn_Conv1").momentum == 0.9


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_model(
            "mobilenetv2", num_classes=3, width=35, input_shape=(32, 32, 3),
            weights=str(tmp_path / "nope.h5"),
        )  # fmt: skip


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined")  # keras: 224-px weights
def test_imagenet_offline_fails_fast_and_says_where_to_put_a_file(monkeypatch, tmp_path):
    """No network: keras' download fails, under a socket timeout, with advice, in seconds."""
    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))  # an empty cache
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    timeouts = []

    def offline(url, *args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        build_model("mobilenetv2", num_classes=3, width=35, input_shape=(32, 32, 3),
                    weights="imagenet")  # fmt: skip
    assert time.perf_counter() - t0 < 60
    assert timeouts == [DOWNLOAD_TIMEOUT_S]
    assert socket.getdefaulttimeout() is None  # restored
    message = str(info.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5" in message
    assert str(tmp_path / "models") in message and "`weights:`" in message


def test_resnet50_weights_take_rgb() -> None:
    """keras' ResNet-50 weights expect BGR: the stem kernel's input channels are reversed."""
    inputs = keras.Input((8, 8, 3))
    backbone = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv1_conv")(inputs))
    kernel, bias = backbone.get_layer("conv1_conv").get_weights()
    _stem_takes_rgb(backbone)
    got, same = backbone.get_layer("conv1_conv").get_weights()
    np.testing.assert_array_equal(got[:, :, 0], kernel[:, :, 2])
    np.testing.assert_array_equal(got[:, :, 2], kernel[:, :, 0])
    np.testing.assert_array_equal(same, bias)


def test_inheritance_is_family_aware() -> None:
    assert inherits("mobilenetv2", 35, "mobilenetv2", 35)
    assert not inherits("mobilenetv2", 35, "mobilenetv2", 50)
    assert inherits("resnet18_imagenet", 16, "resnet18_imagenet", 16)
    assert inherits("resnet10", 16, "resnet18", 16)  # the CIFAR rule is unchanged
    for student, generalist in (
        ("mobilenetv2", "resnet18"),
        ("resnet18_imagenet", "resnet18"),
        ("mobilenetv3small_minimalistic", "mobilenetv3small"),
        ("resnet50", "resnet18_imagenet"),
    ):
        problem = inheritance_problem(student, 64, generalist, 64)
        assert problem and "family" in problem, (student, generalist)


def test_copy_weights_within_a_family() -> None:
    """What `init: generalist` does: the backbone and hidden layer copy, the head is skipped."""
    generalist, specialist = tiny("mobilenetv3small"), tiny("mobilenetv3small", num_classes=4)
    copied = copy_weights(generalist, specialist, skip={"head"})
    assert copied > 50
    x = pixels(2, 32)

    def features(model: keras.Model) -> np.ndarray:
        return keras.Model(model.input, model.get_layer("head").input)(x, training=False)

    np.testing.assert_allclose(features(specialist), features(generalist), atol=1e-6)


# The recipe: `weights` and `init` checks.

RECIPE = {"name": "t", "data": {"path": "folder:/tmp"}}


def recipe_error(**sections) -> str:
    with pytest.raises(RecipeError) as info:
        build_recipe({**RECIPE, **sections})
    return str(info.value)


def test_recipe_refuses_init_generalist_across_families() -> None:
    msg = recipe_error(
        generalist={"arch": "resnet18"},
        student={"arch": "mobilenetv2", "width": 64, "init": "generalist"},
    )
    assert "student.init" in msg and "family" in msg and "mobilenetv2 width 64" in msg
    ok = build_recipe(
        {**RECIPE, "generalist": {"arch": "mobilenetv2", "width": 100},
         "student": {"arch": "mobilenetv2", "width": 100, "init": "generalist"}}
    )  # fmt: skip
    assert ok.student.init == "generalist"
    # auto falls back to scratch across families: no error.
    build_recipe({**RECIPE, "student": {"arch": "mobilenetv3small", "width": 64}})


def test_recipe_weights_key() -> None:
    r = build_recipe({**RECIPE, "generalist": {"arch": "mobilenetv2", "width": 100,
                                               "weights": "imagenet"}})  # fmt: skip
    assert r.generalist.weights == "imagenet" and r.student.weights is None
    msg = recipe_error(generalist={"arch": "mobilenetv2", "width": 64, "weights": "imagenet"})
    assert "generalist.weights" in msg and "35, 50, 75, 100, 130, 140" in msg
    msg = recipe_error(generalist={"arch": "resnet18", "weights": "imagenet"})
    assert "generalist.weights" in msg and "no pretrained weights" in msg
    msg = recipe_error(student={"arch": "efficientnet_lite0", "width": 100, "weights": "imagenet"})
    assert "student.weights" in msg and "no ImageNet weights" in msg
    r = build_recipe({**RECIPE, "student": {"arch": "mobilenetv3small_minimalistic",
                                            "width": 100, "weights": "/w/file.h5"}})  # fmt: skip
    assert r.student.weights == "/w/file.h5"


def test_weights_at_its_default_leaves_stage_hashes_alone() -> None:
    """Runs made before the key existed keep their stage hashes."""
    from edgekd.recipe.schema import stable_digest

    sections = ("generalist", "specialists", "student")
    r = build_recipe(RECIPE)
    d = r.to_dict()
    for key in sections:
        assert d[key].pop("weights") is None
    del d["student"]["seeds"], d["student"]["targets"]  # unhashed, and hash-neutral at default
    assert r.digest(*sections) == stable_digest({k: d[k] for k in sections})
    pretrained = build_recipe({**RECIPE, "generalist": {"arch": "mobilenetv2", "width": 100,
                                                        "weights": "imagenet"}})  # fmt: skip
    plain = build_recipe({**RECIPE, "generalist": {"arch": "mobilenetv2", "width": 100}})
    assert pretrained.digest("generalist") != plain.digest("generalist")


# Int8 TFLite through the export parity gate.


def toy(n: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose class is their brightest colour channel, and the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int32)
    images = rng.integers(0, 120, (n, size, size, 3))
    images[np.arange(n), :, :, labels] += 120
    images[:, 0, 0, :], images[:, 0, 1, :] = 0, 255  # calibration sees 0..255
    return images.astype(np.uint8), labels


def train_briefly(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> None:
    """32 steps on the toy task, then BN statistics set from `images`: a network this young
    is still chaotic at initialisation and int8 noise would flip its answers, a trained one
    is not (32 steps: top-1 agreement 100% for MobileNetV2, against 75% untrained)."""
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    model.fit(images.astype("float32"), labels, batch_size=24, epochs=4, verbose=0)
    norms = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    momenta = [la.momentum for la in norms]
    for layer in norms:
        layer.momentum = 0.0  # moving statistics = this batch's
    model(images.astype("float32"), training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum


@pytest.mark.parametrize(
    "arch",
    # The rest take ~90 s each here: `pytest -m exhaustive` (outside CI's 30 minutes).
    [a if a in PARITY_BY_DEFAULT else pytest.param(a, marks=pytest.mark.exhaustive)
     for a in EDGE],
)
def test_int8_tflite_passes_the_parity_gate(arch: str, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    size, _ = EDGE[arch]
    model = tiny(arch)
    x, y = toy(192, seed=0, size=size)
    train_briefly(model, x, y)
    xv, yv = toy(100, seed=1, size=size)
    cfg = ExportConfig(formats=("tflite",), precisions=("int8",), tolerance_pp=1.0)
    (variant,) = export_model(model, arch, tmp_path, cfg, x[:32], xv, yv, {"run": "t"}, log=print)
    parity = variant.card["parity"]
    assert parity["keras_accuracy"] > 0.9, parity  # the drop measures quantisation
    assert variant.passed, parity
    assert variant.path.name == f"{arch}-int8.tflite"
    print(f"{arch}: int8 .tflite {variant.path.stat().st_size} bytes, parity {parity}")
