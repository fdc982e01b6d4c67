"""Tests for edgekd.training.models: ResNet graph, registry, parameter and MAC counts."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from edgekd.training.models import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    architecture_names,
    build_model,
    cifar_resnet,
    copy_weights,
    count_macs,
    count_params,
    inherits,
    model_summary_stats,
)
from edgekd.training.models.registry import ARCHITECTURES

REPO_ROOT = Path(__file__).resolve().parents[1]
MEAN_PIXELS = np.array(CIFAR10_MEAN, dtype="float32") * 255.0
STD_PIXELS = np.array(CIFAR10_STD, dtype="float32") * 255.0


def random_pixels(batch: int, seed: int = 0) -> np.ndarray:
    """Return a batch of random raw RGB 32x32 images in 0..255, float32."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 255.0, size=(batch, 32, 32, 3)).astype("float32")


@pytest.fixture(scope="module")
def tiny_resnet18() -> keras.Model:
    """A width-4 ResNet-18 for checks that do not change weights."""
    return build_model("resnet18", num_classes=10, width=4)


# Shapes and registry.


CIFAR_RESNETS = ["resnet10", "resnet14", "resnet18", "resnet34"]


@pytest.mark.parametrize("arch", CIFAR_RESNETS)  # the edge families: tests/test_edge_models.py
def test_output_shape_per_architecture(arch: str) -> None:
    model = build_model(arch, num_classes=7, width=4)
    assert model.name == arch
    logits = model.predict(random_pixels(3), verbose=0)
    assert logits.shape == (3, 7)
    assert np.all(np.isfinite(logits))


def test_registry_lists_architectures() -> None:
    names = architecture_names()
    assert names == sorted(names) and set(CIFAR_RESNETS) <= set(names)
    assert {"mobilenetv2", "mobilenetv3small_minimalistic", "efficientnet_lite0"} <= set(names)
    assert all(ARCHITECTURES[a].family == "resnet" for a in CIFAR_RESNETS)
    assert ARCHITECTURES["resnet14"].blocks == (1, 1, 2, 2)
    assert ARCHITECTURES["resnet34"].blocks == (3, 4, 6, 3)
    assert all(spec.description for spec in ARCHITECTURES.values())


def test_unknown_architecture_suggests_closest() -> None:
    with pytest.raises(ValueError, match="did you mean 'resnet18'") as info:
        build_model("resnet-18", num_classes=10)
    assert str(info.value) == (
        "unknown architecture 'resnet-18'; did you mean 'resnet18'? "
        f"Available: {', '.join(architecture_names())}"
    )


def test_unknown_architecture_without_close_match() -> None:
    with pytest.raises(ValueError, match=r"unknown architecture 'vgg'\. Available: efficientnet"):
        build_model("vgg", num_classes=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"blocks_per_stage": [2, 2, 2]}, "blocks_per_stage"),
        ({"num_classes": 0}, "num_classes"),
        ({"dropout": 1.0}, "dropout"),
        ({"mean": (0.5,)}, "one value per input channel"),
        ({"stem": "vgg"}, r"`stem` must be one of \('cifar', 'imagenet'\)"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict, message: str) -> None:
    arguments = {"blocks_per_stage": [1, 1, 1, 1], "num_classes": 10, "width": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        cifar_resnet(**arguments)


# Parameter and MAC counts.


def test_resnet18_width64_params_and_macs() -> None:
    model = build_model("resnet18", num_classes=10, width=64)
    stats = model_summary_stats(model)
    # The usual CIFAR ResNet-18 figures: 11.17M trainable parameters, 0.56 GMACs.
    assert stats["trainable_params"] == 11_173_962
    # Plus the BN moving mean and variance: 2 * 4,800 BN channels.
    assert stats["params"] == count_params(model) == 11_173_962 + 9_600
    assert stats["params"] == model.count_params()
    # Convolutions and the head only, hand-checked:
    # stem 1,769,472 + stage1 150,994,944 + 3 * 134,217,728 (stages 2-4) + head 5,120.
    assert stats["macs"] == 555_422_720


def _conv_macs(hw_out: int, k: int, c_in: int, c_out: int) -> int:
    """MACs of a square convolution: H_out * W_out * k * k * C_in * C_out."""
    return hw_out * hw_out * k * k * c_in * c_out


def test_macs_of_tiny_resnet10_match_formula() -> None:
    w, classes = 4, 10
    model = build_model("resnet10", num_classes=classes, width=w)
    expected = _conv_macs(32, 3, 3, w)  # stem
    expected += 2 * _conv_macs(32, 3, w, w)  # stage1, identity shortcut
    c_in, hw = w, 32
    for multiplier in (2, 4, 8):  # stages 2-4: stride 2 and a projection shortcut
        c_out, hw = w * multiplier, hw // 2
        expected += _conv_macs(hw, 3, c_in, c_out)  # conv1
        expected += _conv_macs(hw, 3, c_out, c_out)  # conv2
        expected += _conv_macs(hw, 1, c_in, c_out)  # shortcut
        c_in = c_out
    expected += c_in * classes  # head
    assert count_macs(model) == expected


def test_macs_of_single_layers() -> None:
    inputs = keras.Input((16, 16, 8))
    x = keras.layers.Conv2D(12, 3, strides=2, padding="same", groups=4)(inputs)  # 8x8 out
    x = keras.layers.DepthwiseConv2D(3, padding="valid", depth_multiplier=2)(x)  # 6x6 out
    x = keras.layers.SeparableConv2D(5, 1)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, outputs)
    expected = (
        8 * 8 * 9 * (8 // 4) * 12  # grouped conv
        + 6 * 6 * 9 * 12 * 2  # depthwise
        + 6 * 6 * (1 * 24 + 24 * 5)  # separable: depthwise + pointwise
        + 6 * 6 * 5 * 3  # dense
    )
    assert count_macs(model) == expected


def test_macs_walk_nested_models_and_shared_layers() -> None:
    inner = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 1)])
    shared = keras.layers.Dense(4)
    inputs = keras.Input((8, 8, 2))
    x = inner(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(shared(shared(x)))
    model = keras.Model(inputs, outputs)
    # The shared layer counts once per call.
    assert count_macs(model) == 8 * 8 * 2 * 4 + 2 * (4 * 4) + 4 * 5


def test_macs_reject_subclassed_model() -> None:
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="Functional"):
        count_macs(Subclassed())


# Preprocessing, initialisation and layer names.


def test_preprocess_maps_mean_pixels_to_zero(tiny_resnet18: keras.Model) -> None:
    preprocess = tiny_resnet18.get_layer("preprocess")
    assert tiny_resnet18.layers[1] is preprocess
    mean_image = np.broadcast_to(MEAN_PIXELS, (2, 32, 32, 3)).copy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(preprocess(mean_image)), 0, atol=1e-5)
    plus_one_std = mean_image + STD_PIXELS
    np.testing.assert_allclose(keras.ops.convert_to_numpy(preprocess(plus_one_std)), 1, atol=1e-5)

    # The whole model on the mean image equals the network after preprocess on zeros.
    body = keras.Model(tiny_resnet18.get_layer("stem_conv").input, tiny_resnet18.output)
    np.testing.assert_allclose(
        tiny_resnet18.predict(mean_image, verbose=0),
        body.predict(np.zeros_like(mean_image), verbose=0),
        atol=1e-5,
    )


def test_zero_init_residual_makes_blocks_start_as_shortcuts(tiny_resnet18: keras.Model) -> None:
    for layer in tiny_resnet18.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma = keras.ops.convert_to_numpy(layer.gamma)
            expected = 0.0 if layer.name.endswith("_bn2") else 1.0
            np.testing.assert_array_equal(gamma, expected, err_msg=layer.name)
    # An identity-shortcut block then computes relu(relu(x) + 0) = its input.
    probe = keras.Model(
        tiny_resnet18.input,
        [
            tiny_resnet18.get_layer("stem_relu").output,
            tiny_resnet18.get_layer("stage1_block2_out").output,
        ],
    )
    before, after = probe.predict(random_pixels(2), verbose=0)
    np.testing.assert_allclose(before, after, atol=1e-6)

    plain = cifar_resnet([1, 1, 1, 1], num_classes=10, width=4, zero_init_residual=False)
    gamma = keras.ops.convert_to_numpy(plain.get_layer("stage1_block1_bn2").gamma)
    np.testing.assert_array_equal(gamma, 1.0)


def test_layer_names_do_not_depend_on_width_or_classes(tiny_resnet18: keras.Model) -> None:
    wider = build_model("resnet18", num_classes=5, width=8)
    names = [layer.name for layer in tiny_resnet18.layers]
    assert names == [layer.name for layer in wider.layers]
    assert names[:3] == ["pixels", "preprocess", "stem_conv"]
    assert "stage1_block1_conv1" in names and "stage4_block2_conv2" in names
    assert names[-1] == "head"


def test_weights_copy_by_name_except_head() -> None:
    generalist = build_model("resnet10", num_classes=10, width=4)
    specialist = build_model("resnet10", num_classes=3, width=4)
    assert copy_weights(generalist, specialist, skip={"head"}) > 10
    images = random_pixels(2)

    def features(model: keras.Model) -> np.ndarray:
        return keras.Model(model.input, model.get_layer("avg_pool").output).predict(
            images, verbose=0
        )

    np.testing.assert_allclose(features(generalist), features(specialist), atol=1e-6)


def test_shallower_model_takes_the_first_block_of_each_stage() -> None:
    # With every second block's residual scale at zero, a ResNet-18 computes exactly what
    # its first blocks do, so the ResNet-10 that inherits them must return the same logits.
    deep = build_model("resnet18", num_classes=10, width=4)
    rng = np.random.default_rng(0)
    for layer in deep.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and "block2" not in layer.name:
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), beta, mean, var])
    shallow = build_model("resnet10", num_classes=10, width=4)
    copied = copy_weights(deep, shallow)
    assert copied == 2 + 4 * 4 + 3 * 2 + 1  # stem, 4 blocks, 3 projections, head
    images = random_pixels(3)
    np.testing.assert_allclose(
        shallow.predict(images, verbose=0), deep.predict(images, verbose=0), rtol=1e-4, atol=1e-4
    )


def test_inherits_needs_the_width_and_no_more_blocks() -> None:
    assert inherits("resnet10", 16, "resnet18", 16)
    assert inherits("resnet18", 16, "resnet34", 16)
    assert inherits("resnet18", 16, "resnet18", 16)
    assert not inherits("resnet18", 16, "resnet10", 16)
    assert not inherits("resnet10", 8, "resnet18", 16)
    with pytest.raises(ValueError, match="no layer 'stage1_block2_conv1'"):
        copy_weights(
            build_model("resnet10", num_classes=10, width=4),
            build_model("resnet18", num_classes=10, width=4),
        )
    with pytest.raises(ValueError, match="layer 'stem_conv' has weight shapes"):
        copy_weights(
            build_model("resnet10", num_classes=10, width=8),
            build_model("resnet10", num_classes=10, width=4),
        )


def test_dropout_adds_one_named_layer() -> None:
    model = cifar_resnet([1, 1, 1, 1], num_classes=10, width=4, dropout=0.2, head_name="logits")
    assert model.get_layer("dropout").rate == 0.2
    assert model.layers[-1].name == "logits"


def test_mixed_precision_keeps_float32_logits() -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_model("resnet10", num_classes=10, width=4)
        assert model.get_layer("stem_conv").compute_dtype == "float16"
        logits = model(random_pixels(2), training=False)
    finally:
        keras.config.set_dtype_policy(previous)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


# Training and serialization.


def test_training_step_changes_weights() -> None:
    model = build_model("resnet10", num_classes=10, width=4)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [np.array(w) for w in model.get_layer("stem_conv").get_weights()]
    labels = np.random.default_rng(0).integers(0, 10, size=8)
    history = model.fit(random_pixels(8), labels, batch_size=8, epochs=1, verbose=0)
    after = model.get_layer("stem_conv").get_weights()
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(before[0], after[0])


def test_config_round_trip(tiny_resnet18: keras.Model) -> None:
    config = tiny_resnet18.get_config()
    # from_config consumes parts of the dict it is given, so hand it a copy.
    restored = keras.Model.from_config(copy.deepcopy(config))
    assert restored.get_config() == config


def test_save_and_load_give_identical_predictions(tmp_path: Path) -> None:
    model = build_model("resnet10", num_classes=10, width=4, dropout=0.1)
    # Move the BN statistics away from their initial values so they must be saved.
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(random_pixels(4), np.arange(4), epochs=1, verbose=0)
    path = tmp_path / "resnet10.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    images = random_pixels(3, seed=1)
    np.testing.assert_array_equal(
        model.predict(images, verbose=0), loaded.predict(images, verbose=0)
    )
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]


@pytest.mark.slow
def test_builds_and_predicts_on_jax_without_tensorflow() -> None:
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import keras
        from edgekd.training.models import build_model, count_macs

        assert keras.backend.backend() == "jax", keras.backend.backend()
        model = build_model("resnet18", num_classes=10, width=4)
        logits = model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
        assert logits.shape == (2, 10), logits.shape
        assert count_macs(model) > 0
        assert "tensorflow" not in sys.modules, "tensorflow was imported"
        print("ok")
        """
    )
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
