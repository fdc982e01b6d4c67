"""Training batches for `fit` under TensorFlow's MultiWorkerMirroredStrategy.

Each worker's `ImageBatches` is sharded (`ImageBatches.shard`): it reads and augments only
its own rows of every global batch. Those rows reach the worker's replicas through
`strategy.distribute_datasets_from_function`, one per-replica slice after another, so no
worker decodes another's images and tf.data's auto-sharding (which would make every worker
read everything and keep a part) is not involved.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import keras
import numpy as np

from edgekd.data import ImageBatches


def _split(batch: Any, parts: int) -> list[Any]:
    """A batch (arrays, nested) cut into `parts` equal consecutive slices."""
    import tensorflow as tf

    rows = len(tf.nest.flatten(batch)[0])
    each = rows // parts
    return [
        tf.nest.map_structure(lambda a, i=i: a[i * each : (i + 1) * each], batch)
        for i in range(parts)
    ]


def for_fit(model: keras.Model, batches: ImageBatches) -> Any:
    """A distributed dataset of this worker's shares of `batches`, for `model.fit`.

    It is one epoch long and is iterated anew every epoch. Keras makes the next epoch's
    iterator as soon as an epoch's last step is done, before any callback could set the
    epoch, so the epochs are counted here: the k-th iteration is epoch `batches.epoch + k`
    (set `batches.epoch` to the first epoch `fit` runs). The model is built from one local
    batch here, in place of Keras' pre-fit build, which reduces a whole batch across workers
    and fails under MultiWorkerMirroredStrategy.
    """
    import tensorflow as tf

    from edgekd.training import cluster

    strategy = cluster.strategy()
    replicas = cluster.replicas_per_worker()
    if (batches.batch_size // batches.shards) % replicas:
        raise ValueError(
            f"batch size {batches.batch_size} does not split over {batches.shards} workers x "
            f"{replicas} devices"
        )
    example = _split(batches.make_batch(batches.epoch, 0), replicas)[0]
    spec = tf.nest.map_structure(
        lambda a: tf.TensorSpec((None, *np.shape(a)[1:]), tf.as_dtype(np.asarray(a).dtype)),
        example,
    )
    steps = len(batches)
    epochs = itertools.count(batches.epoch)
    lock = threading.Lock()

    def generate() -> Any:
        with lock:
            epoch = next(epochs)
        for index in range(steps):
            yield from _split(batches.batch_of(epoch, index), replicas)

    def dataset(_context: Any) -> Any:
        data = tf.data.Dataset.from_generator(generate, output_signature=spec)
        return data.apply(tf.data.experimental.assert_cardinality(steps * replicas))

    def build_from_local_batch(iterator: Any = None, data_batch: Any = None) -> None:
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=example)

    model._maybe_symbolic_build = build_from_local_batch
    return strategy.distribute_datasets_from_function(dataset)
