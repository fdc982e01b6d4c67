"""keras.applications backbones under edgekd's model contract.

Every registered model takes raw RGB pixels ``0..255`` (float32, channels last), normalises
them itself in its first layer, a ``Normalization`` named ``"preprocess"``, and returns
float32 logits from a Dense layer named ``"head"``. keras.applications builds its networks to
other contracts: its own preprocessing or none, a softmax top, BatchNormalization momentum
0.99 or 0.999 (tuned for long ImageNet runs). ``application_model`` builds one without its
top on the output of ``"preprocess"``, edits its config, rebuilds it, and adds the head:

- every BatchNormalization's momentum becomes ``bn_momentum`` (the recipe's);
- preprocessing layers the backbone cannot leave out (EfficientNet's Rescaling and
  Normalization) are removed: what they computed is in ``"preprocess"`` instead;
- below ``SMALL_INPUT`` px, the caller's ``small_stem`` edits apply: the stem convolution runs
  at stride 1, so a 32-px image ends in a 2x2 map instead of 1x1 (a CIFAR-size stem; the
  MACs after the stem are then 4x the unedited network's at that size);
- optionally, every convolution's filters are scaled (ResNet-50's width).

The blocks, kernels and layer names stay keras.applications', so its weights still fit: the
edits change no weight's shape except the filter scaling, which is refused with weights.

Pretrained weights: ``weights="imagenet"`` is passed to keras.applications, which downloads
the no-top file once into ``~/.keras/models`` (``$KERAS_HOME/models``) and reads it from there
afterwards. Offline, the download fails within ``DOWNLOAD_TIMEOUT_S`` seconds and raises
``WeightsUnavailableError``, naming the file and where to put a copy. ``weights`` may also be
the path of that file (copied from a machine online), or of one saved with ``save_weights``
from the same backbone: keras.applications' own ``weights`` argument reads it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import socket
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras

from edgekd.errors import EdgekdError

SMALL_INPUT = 96
"""Inputs narrower than this (px) get the caller's ``small_stem`` edits."""

DOWNLOAD_TIMEOUT_S = 30.0
"""Seconds a pretrained-weights download may wait on the network before it fails."""


class WeightsUnavailableError(EdgekdError):
    """Pretrained weights could not be downloaded or read; the message says what to do."""


def width_multiplier(width: int) -> float:
    """Return the width multiplier (MobileNets' alpha) an edgekd ``width`` means: width / 100.

    Raises:
        ValueError: ``width`` is not a positive integer.
    """
    if int(width) != width or width < 1:
        raise ValueError(
            f"`width` is the width multiplier in percent (100 = 1.0); received {width}."
        )
    return width / 100


def application_model(
    backbone: Callable[..., keras.Model],
    *,
    arch: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    mean: Sequence[float],
    std: Sequence[float],
    weights: str | None = None,
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    small_stem: Mapping[str, Mapping[str, Any]] | None = None,
    drop_classes: Collection[str] = (),
    filter_scale: tuple[int, int] | None = None,
    hidden: tuple[int, str] | None = None,
    after_load: Callable[[keras.Model], None] | None = None,
    name: str,
) -> keras.Model:
    """Build a keras.applications backbone as an edgekd classifier (see the module docstring).

    Args:
        backbone: callable. keras.applications' constructor with its architecture arguments
            bound (e.g. ``functools.partial(keras.applications.MobileNetV2, alpha=0.35)``);
            it is called with ``include_top=False``, ``weights`` and ``input_tensor``.
        arch: str. The registry name, for error messages.
        num_classes: int. Number of logits the head returns.
        input_shape: tuple of int. ``(height, width, 3)`` of one image.
        mean: sequence of float. Per-channel mean "preprocess" subtracts, in pixels.
        std: sequence of float. Per-channel scale "preprocess" divides by, in pixels.
        weights: str or None. None (random), ``"imagenet"`` or a weights file's path.
            Defaults to `None`.
        bn_momentum: float. Momentum of every BatchNormalization. Defaults to `0.9`.
        dropout: float. Dropout rate before the head; ``0`` adds no layer. Defaults to `0.0`.
        small_stem: mapping of layer name to config overrides, applied when the input is
            narrower than ``SMALL_INPUT``. Defaults to `None` (no edits).
        drop_classes: collection of str. Layer classes to remove from the backbone
            (single-input layers only), e.g. its own preprocessing. Defaults to `()`.
        filter_scale: (numerator, denominator) or None. Multiply every convolution's
            ``filters`` by this; each must come out whole. Defaults to `None`.
        hidden: (units, activation) or None. A Dense layer ``"head_hidden"`` between the
            pooling and the head (MobileNetV3's last 1x1 conv, which keras counts as top).
            Defaults to `None`.
        after_load: callable or None. Called on the rebuilt backbone after weights were
            copied into it, e.g. to reorder the stem's input channels. Defaults to `None`.
        name: str. Name of the model.

    Returns:
        An uncompiled Functional ``keras.Model``: pixels in, logits out.

    Raises:
        ValueError: a bad argument (class count, dropout, input shape, filter scaling with
            weights).
        WeightsUnavailableError: the weights file is missing or cannot be downloaded.
    """
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive integer; received {num_classes}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1); received {dropout}.")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(
            f"{arch} takes RGB images, `input_shape` (height, width, 3); received {input_shape}."
        )
    if filter_scale is not None and weights is not None:
        raise ValueError(f"{arch}: pretrained weights fit only the standard width.")

    inputs = keras.Input(shape=input_shape, dtype="float32", name="pixels")
    # Normalise in float32 whatever the dtype policy: pixels reach 255.
    x = keras.layers.Normalization(
        axis=-1,
        mean=[float(m) for m in mean],
        variance=[float(s) ** 2 for s in std],
        dtype="float32",
        name="preprocess",
    )(inputs)
    source = _call_backbone(backbone, x, weights, arch)

    small = min(input_shape[:2]) < SMALL_INPUT
    config = edit_config(
        source.get_config(),
        bn_momentum=bn_momentum,
        overrides=(small_stem or {}) if small else {},
        drop_classes=drop_classes,
        filter_scale=filter_scale,
    )
    body = keras.Model.from_config(config)
    if weights is not None:
        for layer in body.layers:
            if layer.weights:
                layer.set_weights(source.get_layer(layer.name).get_weights())
        if after_load is not None:
            after_load(body)

    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(body.output)
    if hidden is not None:
        units, activation = hidden
        x = keras.layers.Dense(units, name="head_hidden")(x)
        x = keras.layers.Activation(activation, name="head_hidden_act")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    # float32 so that mixed precision still returns float32 logits.
    outputs = keras.layers.Dense(num_classes, dtype="float32", name="head")(x)
    return keras.Model(body.inputs[0], outputs, name=name)


def edit_config(
    config: dict[str, Any],
    *,
    bn_momentum: float,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    drop_classes: Collection[str] = (),
    filter_scale: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Return a Functional model's config with the edits of ``application_model`` made.

    Args:
        config: dict. ``get_config()`` of a Functional model; not modified.
        bn_momentum: float. Momentum given to every BatchNormalization.
        overrides: mapping of layer name to config keys and their new values, or None.
        drop_classes: collection of str. Classes of single-input layers to remove; their
            consumers read their input instead. ``"preprocess"`` is never removed.
        filter_scale: (numerator, denominator) or None. Scale every ``filters``.

    Raises:
        ValueError: an override names no layer, or a scaled filter count is not whole.
    """
    config = copy.deepcopy(config)
    overrides = overrides or {}
    kept, bypass = [], {}
    missing = set(overrides)
    for layer in config["layers"]:
        layer.pop("build_config", None)  # shapes change; layers build when called
        cfg = layer["config"]
        if layer["class_name"] in drop_classes and layer["name"] != "preprocess":
            (node,) = layer["inbound_nodes"]
            bypass[layer["name"]] = node["args"][0]["config"]["keras_history"]
            continue
        if layer["class_name"] == "BatchNormalization":
            cfg["momentum"] = bn_momentum
        if filter_scale is not None and "filters" in cfg:
            numerator, denominator = filter_scale
            filters, rest = divmod(cfg["filters"] * numerator, denominator)
            if rest or filters < 1:
                raise ValueError(
                    f"layer '{layer['name']}': {cfg['filters']} filters x "
                    f"{numerator}/{denominator} is not a whole number; choose another width."
                )
            cfg["filters"] = filters
        if layer["name"] in overrides:
            cfg.update(overrides[layer["name"]])
            missing.discard(layer["name"])
        kept.append(layer)
    if missing:
        raise ValueError(
            f"model '{config.get('name')}' has no layer {sorted(missing)} to edit: this Keras "
            "version builds it differently from the one edgekd was written for."
        )
    config["layers"] = kept

    def source(history: list[Any]) -> list[Any]:
        while history[0] in bypass:
            history = bypass[history[0]]
        return history

    def rewire(node: Any) -> None:
        if isinstance(node, dict):
            if "keras_history" in node:
                node["keras_history"] = source(node["keras_history"])
            for value in node.values():
                rewire(value)
        elif isinstance(node, list | tuple):
            for value in node:
                rewire(value)

    rewire(config["layers"])
    outputs = config["output_layers"]  # [name, node, index], or a list of them
    single = isinstance(outputs[0], str)
    config["output_layers"] = source(outputs) if single else [source(h) for h in outputs]
    return config


def _call_backbone(
    backbone: Callable[..., keras.Model], x: keras.KerasTensor, weights: str | None, arch: str
) -> keras.Model:
    """Call keras.applications' ``backbone`` on ``x``; turn a failed download into advice."""
    if weights is not None and weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"{arch}: the weights file {weights} does not exist. `weights` takes "
                "'imagenet' or the path of the backbone's weights file (the no-top .h5 file "
                "keras.applications downloads into ~/.keras/models)."
            )
        weights = str(path)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S if weights == "imagenet" else None):
            return backbone(include_top=False, weights=weights, input_tensor=x)
    except Exception as exc:
        if weights != "imagenet" or not _is_download_failure(exc):
            raise
        raise WeightsUnavailableError(_offline_advice(arch, exc)) from exc


@contextlib.contextmanager
def _socket_timeout(seconds: float | None) -> Iterator[None]:
    """Make blocking sockets give up after ``seconds`` (urllib's downloads have no timeout)."""
    if seconds is None:
        yield
        return
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _is_download_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is keras' download failing (keras wraps URLError in a bare Exception)."""
    return isinstance(exc, OSError) or str(exc).startswith("URL fetch failure")


def _offline_advice(arch: str, exc: BaseException) -> str:
    """The message of a failed download: what failed, and how to use a local copy."""
    cache = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"
    found = re.search(r"URL fetch failure on (\S+): ", str(exc))
    origin = found.group(1) if found else None
    what = f"the file {origin.rsplit('/', 1)[-1]}" if origin else "the backbone's no-top .h5 file"
    source = f" (or download {origin})" if origin else ""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"{arch}: cannot download its ImageNet weights ({reason}). keras.applications fetches "
        f"them once into {cache} and reads them from there afterwards. Offline, copy {what} "
        f"from that folder on a machine with internet{source}, then put it in {cache} or set "
        "the model's `weights:` to its path."
    )
