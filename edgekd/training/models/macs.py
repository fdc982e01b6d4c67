"""Size and cost of a model: parameter counts and multiply-accumulates (MACs).

``count_macs`` follows the convention of the field (the figures papers and
model cards quote as "FLOPs" or "MACs"): it counts the multiply-accumulates of
convolutions and Dense layers, one image, one forward pass, and nothing else.
BatchNormalization, activations, additions, pooling, Normalization, dropout
and reshapes count 0: they are cheap next to the convolutions, and a deployed
model folds BatchNormalization into the preceding convolution anyway. Biases
count 0 too.

The count walks the Functional graph and takes each layer's input and output
shapes from it, so every call of a shared layer counts once per call. Nested
Functional and Sequential models are walked too. Other layers, including
custom layers that hold convolutions inside, count 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_DEPTHWISE_CONVS = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE_CONVS = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_TRANSPOSED_CONVS = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)


def _static(shape: Sequence[int | None], layer: keras.layers.Layer) -> tuple[int, ...]:
    """Return ``shape`` without its batch dimension, checking that all of it is known.

    Args:
        shape: sequence of int or None. A symbolic shape, batch dimension first.
        layer: keras.layers.Layer. The layer the shape belongs to, for the error message.
    """
    dims = tuple(shape[1:])
    if any(d is None for d in dims):
        raise ValueError(
            f"count_macs needs static shapes, but layer '{layer.name}' sees shape "
            f"{tuple(shape)}. Build the model with a fixed input shape, e.g. "
            "keras.Input(shape=(32, 32, 3))."
        )
    return dims  # type: ignore[return-value]


def _spatial_and_channels(
    shape: Sequence[int | None], layer: keras.layers.Layer
) -> tuple[int, int]:
    """Return (number of spatial positions, channels) of a conv layer's input or output.

    Args:
        shape: sequence of int or None. The symbolic shape, batch dimension first.
        layer: keras.layers.Layer. A convolution with a ``data_format`` attribute.
    """
    dims = _static(shape, layer)
    if layer.data_format == "channels_first":
        return math.prod(dims[1:]), dims[0]
    return math.prod(dims[:-1]), dims[-1]


def _layer_macs(
    layer: keras.layers.Layer,
    input_shape: Sequence[int | None],
    output_shape: Sequence[int | None],
) -> int:
    """Return the MACs of one call of ``layer`` for one example.

    Args:
        layer: keras.layers.Layer. The layer called.
        input_shape: sequence of int or None. Shape of its (first) input, batch first.
        output_shape: sequence of int or None. Shape of its (first) output, batch first.
    """
    if isinstance(layer, _CONVS):
        _, c_in = _spatial_and_channels(input_shape, layer)
        positions, _ = _spatial_and_channels(output_shape, layer)
        kernel = math.prod(layer.kernel_size)
        return positions * kernel * (c_in // layer.groups) * layer.filters
    if isinstance(layer, _DEPTHWISE_CONVS):
        _, c_in = _spatial_and_channels(input_shape, layer)
        positions, _ = _spatial_and_channels(output_shape, layer)
        return positions * math.prod(layer.kernel_size) * c_in * layer.depth_multiplier
    if isinstance(layer, _SEPARABLE_CONVS):
        _, c_in = _spatial_and_channels(input_shape, layer)
        positions, _ = _spatial_and_channels(output_shape, layer)
        mid = c_in * layer.depth_multiplier
        return positions * (math.prod(layer.kernel_size) * mid + mid * layer.filters)
    if isinstance(layer, _TRANSPOSED_CONVS):
        # Every input position scatters one kernel into the output.
        positions, c_in = _spatial_and_channels(input_shape, layer)
        return positions * math.prod(layer.kernel_size) * c_in * layer.filters
    if isinstance(layer, keras.layers.Dense):
        dims = _static(input_shape, layer)
        return math.prod(dims[:-1]) * dims[-1] * layer.units
    return 0


def _functional_graph(model: keras.Model) -> keras.Model | None:
    """Return the Functional model behind ``model``, or None if it has no graph.

    Args:
        model: keras.Model. A Functional model, or a built Sequential model.
    """
    if hasattr(model, "_nodes_by_depth"):
        return model
    functional = getattr(model, "_functional", None)  # a built Sequential
    if functional is not None and hasattr(functional, "_nodes_by_depth"):
        return functional
    return None


def count_macs(model: keras.Model) -> int:
    """Count the multiply-accumulates of one forward pass of one example.

    Counts convolutions (regular, grouped, depthwise, separable, transposed)
    and Dense layers only; everything else counts 0 (see the module
    docstring). Halve "FLOPs" figures that count a multiply and an add
    separately before comparing.

    Args:
        model: keras.Model. A Functional model, or a built Sequential model,
            with static input shapes except for the batch dimension.

    Returns:
        The MACs per example, an int.

    Raises:
        ValueError: the model has no Functional graph (a subclassed model or an
            unbuilt Sequential), or a counted layer sees an unknown dimension.

    Example:

    >>> count_macs(build_model("resnet18", num_classes=10))
    555422720
    """
    graph = _functional_graph(model)
    if graph is None:
        raise ValueError(
            f"count_macs needs a Functional or built Sequential model; received "
            f"{type(model).__name__} '{model.name}', which has no layer graph. "
            "Build it with keras.Input(...) and keras.Model(inputs, outputs)."
        )
    total = 0
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            layer = node.operation
            if not node.input_tensors or not node.output_tensors:
                continue  # an InputLayer
            if isinstance(layer, keras.Model):
                total += count_macs(layer)
                continue
            total += _layer_macs(layer, node.input_tensors[0].shape, node.output_tensors[0].shape)
    return total


def count_params(model: keras.Model) -> int:
    """Count every weight of ``model``, trainable and non-trainable.

    Non-trainable weights include the moving mean and variance of each
    BatchNormalization, so a CIFAR ResNet-18 has 11,183,562 weights of which
    11,173,962 are trainable (the figure papers quote).

    Args:
        model: keras.Model. A built model.

    Returns:
        The number of scalar weights, an int.
    """
    return int(sum(math.prod(w.shape) for w in model.weights))


def model_summary_stats(model: keras.Model) -> dict[str, int]:
    """Return the size and cost of ``model`` for reports and run directories.

    Args:
        model: keras.Model. A built Functional or Sequential model.

    Returns:
        A dict with ``params`` (all weights), ``trainable_params`` and
        ``macs`` (per example, see ``count_macs``).
    """
    return {
        "params": count_params(model),
        "trainable_params": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "macs": count_macs(model),
    }
