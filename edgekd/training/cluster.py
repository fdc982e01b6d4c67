"""The workers of a `train.distribution: multi_worker` run, and how they meet.

Every worker runs the same `edgekd train` command. Who is who comes from `--workers
host:port,... --worker-index I`, or from `TF_CONFIG` (what tf.distribute and the Kubernetes
training operators set). Worker 0 (or TF_CONFIG's `chief`) is the chief: the only process that
writes the run directory. The others run the same stages in step, in a private mirror of the
chief's run (`mirror_run`), so every fit sees the same stages, resume points and data.

On TensorFlow the workers form a `tf.distribute.MultiWorkerMirroredStrategy` (gRPC between
hosts, NCCL or ring all-reduce); on JAX, `keras.distribution.initialize` calls
`jax.distributed.initialize` and `keras.distribution.DataParallel` spans every process's
devices. `barrier` makes the workers wait for each other and checks that they agree (same
data, same stage inputs).
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from typing import Any

from edgekd.errors import EdgekdError


class ClusterError(EdgekdError):
    """The workers cannot form the cluster, or disagree about what they train."""


@dataclass(frozen=True)
class Cluster:
    """The workers' addresses (host:port, the chief first) and this process's place."""

    workers: tuple[str, ...]
    index: int
    tf_config: str | None = None  # TF_CONFIG as given, so TensorFlow resolves it itself

    def __post_init__(self) -> None:
        if len(self.workers) < 1:
            raise ClusterError("a cluster needs at least one worker address")
        for address in self.workers:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ClusterError(f"worker address {address!r} is not host:port")
        if len(set(self.workers)) != len(self.workers):
            raise ClusterError(f"worker addresses repeat: {', '.join(self.workers)}")
        if not 0 <= self.index < len(self.workers):
            raise ClusterError(
                f"worker index {self.index} is not in 0..{len(self.workers) - 1} "
                f"({len(self.workers)} workers)"
            )

    @property
    def size(self) -> int:
        return len(self.workers)

    @property
    def chief(self) -> bool:
        return self.index == 0

    def describe(self) -> str:
        role = "chief" if self.chief else "worker"
        return f"{role} {self.index} of {self.size} ({self.workers[self.index]})"

    @classmethod
    def from_flags(cls, workers: str, index: int) -> Cluster:
        """`--workers host:port,host:port --worker-index I`."""
        return cls(tuple(w.strip() for w in workers.split(",") if w.strip()), index)

    @classmethod
    def from_tf_config(cls, text: str) -> Cluster:
        """TF_CONFIG: {"cluster": {"chief": [...], "worker": [...]}, "task": {...}}."""
        try:
            config = json.loads(text)
            jobs = config["cluster"]
            task_type, task_index = config["task"]["type"], int(config["task"]["index"])
            chief, workers = list(jobs.get("chief", [])), list(jobs.get("worker", []))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ClusterError(
                f"TF_CONFIG is not a cluster spec ({type(exc).__name__}: {exc}); it needs "
                '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
                '"index": I}}'
            ) from None
        if task_type not in ("chief", "worker"):
            raise ClusterError(f"TF_CONFIG task type {task_type!r}: edgekd runs chief and worker")
        if len(chief) > 1:
            raise ClusterError(f"TF_CONFIG lists {len(chief)} chiefs; give at most one")
        index = task_index if task_type == "chief" else len(chief) + task_index
        return cls(tuple(chief + workers), index, tf_config=text)

    @classmethod
    def from_environment(cls, workers: str | None, index: int | None) -> Cluster | None:
        """The cluster the flags name, else TF_CONFIG's, else None."""
        if (workers is None) != (index is None):
            raise ClusterError("give --workers and --worker-index together")
        if workers is not None and index is not None:
            return cls.from_flags(workers, index)
        text = os.environ.get("TF_CONFIG", "").strip()
        return cls.from_tf_config(text) if text else None


PACK_BYTES = 32 << 20
_STRATEGY: Any = None  # one MultiWorkerMirroredStrategy per process, as TensorFlow requires
_CLUSTER: Cluster | None = None


def connect(cluster: Cluster) -> None:
    """Join the cluster (once per process, before any other TensorFlow or JAX work)."""
    global _STRATEGY, _CLUSTER
    if _CLUSTER is not None:
        if cluster != _CLUSTER:
            raise ClusterError("this process already joined another cluster")
        return
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if cluster.tf_config is not None:
            resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        else:
            resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
                tf.train.ClusterSpec({"worker": list(cluster.workers)}),
                task_type="worker", task_id=cluster.index, rpc_layer="grpc",
            )  # fmt: skip
        # Gradients travel packed, a few all-reduces per step instead of one per variable.
        options = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=PACK_BYTES)
        _STRATEGY = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=options
        )
        _patch_keras_for_multi_worker()
    elif backend == "jax":
        from keras import distribution

        distribution.initialize(cluster.workers[0], cluster.size, cluster.index)
    else:
        raise ClusterError(
            f"train.distribution=multi_worker needs the TensorFlow or JAX backend "
            f"(KERAS_BACKEND is {backend!r})"
        )
    _CLUSTER = cluster


def current() -> Cluster | None:
    """The cluster this process joined, or None."""
    return _CLUSTER


def strategy() -> Any:
    """This process's MultiWorkerMirroredStrategy (TensorFlow), or None."""
    return _STRATEGY


def replicas_per_worker() -> int:
    """Devices each worker trains on (all workers are assumed alike, as tf.distribute does)."""
    if _STRATEGY is not None:
        return max(1, _STRATEGY.num_replicas_in_sync // (_CLUSTER.size if _CLUSTER else 1))
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.local_device_count()
    return 1


def digest(value: str) -> int:
    """A 31-bit number standing for `value`, for workers to compare at a barrier."""
    return zlib.crc32(value.encode()) & 0x7FFFFFFF


def barrier(what: str, value: str = "") -> None:
    """Wait until every worker gets here; fail if they reached it with different `value`s."""
    if _CLUSTER is None or _CLUSTER.size == 1:
        return
    mine = digest(value)
    if _STRATEGY is not None:
        import tensorflow as tf

        ours = tf.constant([mine], tf.int64)
        values = _STRATEGY.experimental_distribute_values_from_function(lambda _: ours)
        seen = _STRATEGY.gather(values, axis=0).numpy().tolist()
    else:
        import numpy as np
        from jax.experimental import multihost_utils

        seen = np.asarray(multihost_utils.process_allgather(np.array([mine]))).ravel().tolist()
    per = max(1, len(seen) // _CLUSTER.size)
    odd = sorted({i // per for i, v in enumerate(seen) if v != seen[0]})
    if odd:
        raise ClusterError(
            f"{what}: workers {', '.join(map(str, odd))} disagree with the chief; every worker "
            "must run the same edgekd version, recipe and data (same files, same fingerprint)"
        )


def _patch_keras_for_multi_worker() -> None:
    """A gap in Keras 3's TensorFlow trainer under MultiWorkerMirroredStrategy.

    Its `reduce_per_replica` averages each step's logs with `strategy.reduce(axis=0)`, which
    fails on the scalar losses and metrics (`Invalid reduction dimension 0`). Logs are
    averaged over replicas here with axis=None, what the single-worker path computes. (Its
    pre-fit build fails as well; `edgekd.training.distributed_input` builds from a local
    batch instead.)
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer.reduce_per_replica, "edgekd", False):
        return
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
            strategy
        ):
            import tensorflow as tf

            def mean(v: Any) -> Any:
                if not tf_trainer._is_per_replica_instance(v):
                    return v
                return strategy.reduce("MEAN", v, axis=None)

            return tf.nest.map_structure(mean, values)
        return original(values, strategy, reduction)

    reduce_per_replica.edgekd = True  # type: ignore[attr-defined]
    tf_trainer.reduce_per_replica = reduce_per_replica
