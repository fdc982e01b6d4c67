"""Start one model from another's weights, matched by layer name.

ResNet layer names do not depend on width or depth (``"stage2_block1_conv1"``), so
a specialist takes its generalist's backbone and a shallower student takes the
blocks it shares with a deeper generalist; ``registry.inherits`` says when this fits.
"""

from __future__ import annotations

from collections.abc import Collection

import keras


def copy_weights(source: keras.Model, target: keras.Model, skip: Collection[str] = ()) -> int:
    """Copy every weighted layer of ``target`` from ``source``'s layer of the same name.

    Args:
        source: keras.Model. Where the weights come from; it may have more layers.
        target: keras.Model. Its layers, except those in ``skip``, must all exist in
            ``source`` with the same weight shapes.
        skip: names of ``target`` layers left as they are, e.g. ``{"head"}`` when the
            class count differs.

    Returns:
        The number of layers copied.

    Raises:
        ValueError: a layer is missing from ``source`` or its shapes differ.
    """
    copied = 0
    for layer in target.layers:
        if layer.name in skip or not layer.weights:
            continue
        try:
            weights = source.get_layer(layer.name).get_weights()
        except ValueError:
            raise ValueError(
                f"cannot start '{target.name}' from '{source.name}': it has no layer '{layer.name}'"
            ) from None
        shapes = [tuple(w.shape) for w in layer.weights]
        if [w.shape for w in weights] != shapes:
            raise ValueError(
                f"cannot start '{target.name}' from '{source.name}': layer '{layer.name}' "
                f"has weight shapes {[w.shape for w in weights]} in the source and "
                f"{shapes} in the target"
            )
        layer.set_weights(weights)
        copied += 1
    return copied
