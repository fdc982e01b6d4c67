"""The recipe schema: every key, its type, default, range and cross-checks, and nowhere else.

Each section is a frozen pydantic model; `Recipe` holds them and hashes what a stage depends on.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from edgekd.contract import FORMATS, FUSION_ITERATIONS, IO_DTYPES, PRECISIONS
from edgekd.errors import RecipeError

STAGES: tuple[str, ...] = (
    "generalist", "groups", "specialists", "ensemble", "student", "budget"
)  # fmt: skip
# The method's stages; `budget` (a control that costs as much as the method) is opt-in.
METHOD_STAGES: tuple[str, ...] = STAGES[:5]
RESIZED_CROP_FROM = 96
"""`data.augment.crop: auto` takes the random resized crop for images at least this large."""


class FieldError(ValueError):
    """A cross-check failure pinned to a key below the section that raised it."""

    def __init__(self, subpath: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.subpath = subpath


def _unknown(kind: str, value: str, known: Sequence[str]) -> str:
    hint = difflib.get_close_matches(value, list(known), n=1)
    tip = f"; did you mean {hint[0]!r}?" if hint else "."
    return f"unknown {kind} {value!r}{tip} Known: {', '.join(known)}"


def _parent(path: str) -> str:
    """'a.b[2]' -> 'a.b' -> 'a' -> ''."""
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path.rsplit(".", 1)[0] if "." in path else ""


class _Section(BaseModel):
    """Base of every recipe section: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )


class AugmentConfig(_Section):
    """Training-time augmentation, applied on the fly to in-memory uint8 images."""

    crop: Literal["auto", "pad", "resized"] = Field(
        "auto",
        description="pad: pad and random crop (a shift; the CIFAR recipe); resized: "
        "Inception-style random resized crop (the ImageNet recipe); auto: resized for images of "
        f"{RESIZED_CROP_FROM} px and up, pad below",
    )
    crop_scale: tuple[float, float] = Field(
        (0.08, 1.0), description="resized: the crop's share of the image area, [low, high]"
    )
    crop_padding: int = Field(4, ge=0, le=64, description="pad-and-random-crop margin in pixels")
    padding_mode: Literal["reflect", "constant"] = "reflect"
    flip: bool = Field(True, description="random horizontal flip")
    cutout: int = Field(0, ge=0, le=64, description="side of a random zeroed square; 0 = off")

    @model_validator(mode="after")
    def _scale_range(self) -> AugmentConfig:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise FieldError(("crop_scale",), f"needs 0 < low <= high <= 1; got [{low}, {high}]")
        return self

    def crop_for(self, image_side: int) -> str:
        """The crop this config means for images whose shorter side is `image_side` px."""
        if self.crop != "auto":
            return self.crop
        return "resized" if image_side >= RESIZED_CROP_FROM else "pad"


_Side = Annotated[int, Field(ge=8, le=1024)]


class DataConfig(_Section):
    """Where images come from and how validation is split off the training data."""

    path: str = Field(
        ...,
        min_length=1,
        description="folder:PATH | cifar:PATH | tfds:NAME | tfrecord:GLOB | PATH (autodetect)",
    )
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="seeded, stratified split")
    limit_per_class: int | None = Field(None, ge=1, description="cap per class for quick runs")
    classes: tuple[str, ...] | None = Field(None, description="subset and order of classes")
    image_size: _Side | tuple[_Side, _Side] | None = Field(
        None, description="resize every image to this size: one side (a square) or [height, width]"
    )
    tfds_dir: str | None = Field(None, description="TFDS data_dir holding prepared datasets")
    cache_dir: str | None = Field(None, description="decoded-image cache; $EDGEKD_CACHE default")
    pipeline: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="memory: decode every image into RAM; stream: decode once into an on-disk "
        "cache of resized images and read each batch from it (memory does not grow with the "
        "data); auto: stream when the decoded images would pass memory_limit_gb. Both give the "
        "same batches",
    )
    memory_limit_gb: float = Field(
        4.0, gt=0.0, description="pipeline auto: the most decoded images held in memory, in GB"
    )
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _unique_classes(self) -> DataConfig:
        if self.classes is not None:
            seen: set[str] = set()
            for i, name in enumerate(self.classes):
                if name in seen:
                    raise FieldError(("classes", i), f"class {name!r} is listed twice")
                seen.add(name)
        return self


class OptimizerConfig(_Section):
    """SGD with momentum; weight decay skips BatchNorm parameters and biases."""

    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.1, gt=0.0, le=10.0, description="peak learning rate for batch_size")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(
        5e-3,
        ge=0.0,
        lt=1.0,
        description="decoupled: w -= lr*wd*w per step (5e-3 ~ PyTorch SGD 5e-4 at momentum 0.9)",
    )


class ScheduleConfig(_Section):
    """Learning-rate schedule over the whole run, stepped per batch."""

    name: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0.0, description="linear warm-up from 0 (cosine)")
    final_lr_fraction: float = Field(0.0, ge=0.0, le=1.0, description="end lr / peak lr")
    peak_at: float = Field(0.25, gt=0.0, lt=1.0, description="onecycle: share of run at peak")


class ModelTrainConfig(_Section):
    """One model and how to train it: architecture, width and schedule."""

    arch: str = Field("resnet18", description="registered architecture name")
    width: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="ResNets: channels of the first stage; MobileNets and EfficientNet-Lite: "
        "the width multiplier in percent; null: the published network's (64, or 100)",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bn_momentum: float = Field(0.9, gt=0.0, lt=1.0)
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    weights: str | None = Field(
        None,
        min_length=1,
        description="imagenet: keras.applications' pretrained backbone (downloaded once into "
        "~/.keras/models); or the path of that file, copied from a machine online; null: random",
    )

    @model_validator(mode="before")
    @classmethod
    def _family_width(cls, data: Any) -> Any:
        """An unset width is the registered architecture's published one."""
        if isinstance(data, dict) and data.get("width") is None:
            from edgekd.training.models import ARCHITECTURES

            arch = data.get("arch", cls.model_fields["arch"].default)
            spec = ARCHITECTURES.get(arch) if isinstance(arch, str) else None
            if spec is not None:  # an unknown or mistyped arch is reported by its own check
                data = {**data, "width": spec.default_width}
        return data

    @model_validator(mode="after")
    def _warmup_fits(self) -> ModelTrainConfig:
        if self.schedule.warmup_epochs >= self.epochs and self.schedule.name == "cosine":
            raise FieldError(
                ("schedule", "warmup_epochs"),
                f"warm-up ({self.schedule.warmup_epochs} epochs) must be shorter than "
                f"epochs ({self.epochs})",
            )
        return self

    @model_validator(mode="after")
    def _known_arch(self) -> ModelTrainConfig:
        from edgekd.training.models import architecture_names

        names = architecture_names()
        if self.arch not in names:
            raise FieldError(("arch",), _unknown("architecture", self.arch, names))
        return self

    @model_validator(mode="after")
    def _weights_fit(self) -> ModelTrainConfig:
        from edgekd.training.models import weights_problem

        problem = weights_problem(self.arch, self.width, self.weights)
        if problem:
            raise FieldError(("weights",), problem)
        return self


class GroupsConfig(_Section):
    """How specialist class groups are chosen from the generalist's validation predictions."""

    method: Literal["confusion", "covariance", "explicit"] = Field(
        "confusion",
        description="confusion: symmetrised confusion matrix (seed); covariance: of predicted "
        "probabilities (Hinton et al., no labels); explicit: the `explicit` lists",
    )
    n_groups: Literal["auto"] | int = Field("auto", description="number of specialists or auto")
    overlap: bool = Field(False, description="a class may join a second group it is confused with")
    max_group_size: int | None = Field(None, ge=2)
    explicit: tuple[tuple[str, ...], ...] | None = Field(
        None, description="groups by class name, e.g. [[cat, dog], [automobile, truck]]"
    )

    @model_validator(mode="after")
    def _consistent(self) -> GroupsConfig:
        if isinstance(self.n_groups, int) and self.n_groups < 1:
            raise FieldError(("n_groups",), f"must be >= 1 or 'auto', got {self.n_groups}")
        if self.method == "explicit" and not self.explicit:
            raise FieldError(("explicit",), "method 'explicit' needs a list of groups here")
        if self.method != "explicit" and self.explicit:
            raise FieldError(
                ("method",),
                f"groups.explicit is set but method is {self.method!r}; "
                "set method: explicit (or remove explicit)",
            )
        return self


class SpecialistConfig(ModelTrainConfig):
    """One specialist per group: its model, schedule, and how its data is enriched."""

    epochs: int = Field(2, ge=1, le=10_000)
    dustbin: bool = Field(True, description="an extra output for every class outside the group")
    group_share: float = Field(
        0.5, gt=0.0, lt=1.0, description="share of each batch drawn from the group's classes"
    )
    init: Literal["auto", "generalist", "scratch"] = Field(
        "auto",
        description="auto: from the generalist's weights when the width matches and the "
        "generalist has at least as many blocks per stage (shallower models take its first blocks)",
    )


class EnsembleConfig(_Section):
    """The gated ensemble: which specialists wake up, and how outputs are fused."""

    top_n: int = Field(1, ge=1, description="the generalist's top-n classes gate the specialists")
    confidence: float | None = Field(
        None, gt=0.0, le=1.0, description="no specialist runs above this generalist confidence"
    )
    fusion_iterations: int = Field(FUSION_ITERATIONS, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1)
    flip_average: bool = Field(
        False,
        description="average every member's probabilities over the image and its mirror "
        "before gating and fusion (test-time augmentation at twice the members' cost); the "
        "teacher of the student stage does the same on the student's augmented view",
    )


class RampConfig(_Section):
    """A distillation hyper-parameter that moves from `start` to `end` over the run."""

    start: float
    end: float
    shape: Literal["linear", "cosine"] = "linear"


# The distillation loss's defaults: the schema's, and the Distiller's and QAT's when called
# without a recipe.
DEFAULT_TEMPERATURE = 4.0
DEFAULT_SOFT_WEIGHT = 0.8


class StudentConfig(ModelTrainConfig):
    """The student: distilled from the teacher, plus a hard-label twin as the control."""

    teacher: Literal["ensemble", "full_ensemble", "generalist"] = Field(
        "ensemble",
        description="gated ensemble, every specialist on every image, or the generalist alone",
    )
    temperature: float | RampConfig = Field(
        DEFAULT_TEMPERATURE, description="T, or {start, end, shape: linear|cosine} over the run"
    )
    soft_weight: float | RampConfig = Field(
        DEFAULT_SOFT_WEIGHT,
        description="lambda, the soft-target share of the loss, or a ramp like temperature",
    )
    target: Literal["fused", "members"] = Field(
        "fused",
        description="fused: temper the fused distribution; members: temper members, then fuse",
    )
    init: Literal["auto", "generalist", "scratch"] = Field(
        "auto",
        description="auto: from the generalist's weights when the width matches and the "
        "generalist has at least as many blocks per stage (shallower models take its first blocks)",
    )
    targets: Literal["online", "stored"] = Field(
        "online",
        description="online: the teacher runs in every student step; stored: it labels the "
        "student's augmented batches once, before training, under the run's targets/ folder, "
        "and every student that sees the same batches reuses them (a distilled step then "
        "costs about a hard-label one)",
    )
    control: bool = Field(True, description="also train the same student on hard labels alone")
    temperature_search: tuple[float, ...] | None = Field(
        None, description="try these T first (search_epochs each), keep the best on validation"
    )
    search_epochs: int = Field(1, ge=1, le=10_000)
    seeds: int = Field(
        1,
        ge=1,
        le=100,
        description="train the distilled student and its control with seeds seed, seed+1, ...; "
        "eval gives each seed's paired difference and the mean and std over seeds",
    )

    @model_validator(mode="after")
    def _ranges(self) -> StudentConfig:
        for key, lo, hi in (("temperature", 0.0, None), ("soft_weight", 0.0, 1.0)):
            value = getattr(self, key)
            for sub, v in (
                [((), value)] if isinstance(value, float) else
                [(("start",), value.start), (("end",), value.end)]
            ):  # fmt: skip
                if key == "temperature" and v <= lo:
                    raise FieldError((key, *sub), f"must be > 0, got {v}")
                if key == "soft_weight" and not lo <= v <= hi:
                    raise FieldError((key, *sub), f"must be in [0, 1], got {v}")
        if self.targets == "stored" and self.target != "fused":
            raise FieldError(
                ("targets",),
                "stored targets are the teacher's fused distribution, tempered afterwards; "
                "they need target: fused (members tempers each member before fusing)",
            )
        for i, t in enumerate(self.temperature_search or ()):
            if t <= 0:
                raise FieldError(("temperature_search", i), f"must be > 0, got {t}")
        if self.temperature_search is not None and not self.temperature_search:
            raise FieldError(("temperature_search",), "give at least one temperature, or null")
        return self


class BudgetConfig(_Section):
    """The budget-matched control: the student's architecture trained from scratch on hard
    labels for as long as the method took, to answer "why not just train one model longer?"."""

    match: Literal["wall_time", "images"] = Field(
        "wall_time",
        description="wall_time: the method's measured seconds at the control's images/s; "
        "images: as many training images seen as the method's models saw",
    )
    teacher_cost: tuple[Literal["counted", "amortised"], ...] = Field(
        ("counted", "amortised"),
        min_length=1,
        description="counted: the budget is the teacher's stages (the generalist alone for "
        "student.teacher: generalist) and the distilled student; "
        "amortised: the distilled student's own training only (the teacher is reused)",
    )
    batch_size: int = Field(128, ge=1, le=65_536)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()

    @model_validator(mode="after")
    def _distinct(self) -> BudgetConfig:
        if len(set(self.teacher_cost)) != len(self.teacher_cost):
            raise FieldError(("teacher_cost",), "list each of counted, amortised at most once")
        return self


# The exported-model contract's vocabulary (edgekd.contract.FORMATS); a pair a format does
# not hold (onnx dynamic) is skipped by export with a note.
EXPORT_FORMATS: tuple[str, ...] = tuple(FORMATS)
EXPORT_PRECISIONS: tuple[str, ...] = PRECISIONS


class MetadataConfig(_Section):
    """What every exported `.tflite` file says about itself in its TFLite metadata (read by
    MediaPipe Tasks and the TFLite Task Library), beside its labels and input normalisation."""

    name: str | None = Field(None, min_length=1, description="null: <recipe name>-<model>")
    version: str = Field("1", min_length=1, description="the model's version")
    description: str | None = Field(
        None, description="null: what the model is, the recipe it came from, what it outputs"
    )
    author: str = Field("", description="who made the model; empty: left out")
    license: str = Field("", description="the model's licence, e.g. Apache-2.0; empty: left out")


class ExportConfig(_Section):
    """`edgekd export`: which model, formats and precisions; calibration; the parity gate."""

    model: Literal["student", "control", "generalist"] = Field(
        "student", description="student: the distilled one; control: its hard-label twin"
    )
    formats: tuple[Literal[EXPORT_FORMATS], ...] = Field(("tflite", "onnx"), min_length=1)
    precisions: tuple[Literal[EXPORT_PRECISIONS], ...] = Field(
        ("float32", "int8"),
        min_length=1,
        description="dynamic: int8 weights, float activations (TFLite only)",
    )
    int8_io: Literal[IO_DTYPES] = Field(
        "uint8", description="int8 TFLite input/output tensors; uint8 takes the pixels as they are"
    )
    onnx_int8: tuple[Literal["tensorrt", "cpu"], ...] = Field(
        ("tensorrt",),
        min_length=1,
        description="the int8 ONNX files: tensorrt: <model>-int8.onnx, symmetric Q/DQ as "
        "TensorRT takes it; cpu: <model>-int8-cpu.onnx, asymmetric uint8 activations, fast on "
        "ONNX Runtime's CPU provider",
    )
    calibration_images: int = Field(
        512, ge=1, description="class-balanced, seeded sample of the training split"
    )
    parity_images: int | None = Field(
        None, ge=1, description="validation images for the parity check; null: all of them"
    )
    tolerance_pp: float = Field(
        1.0, ge=0.0, description="largest accuracy drop (points) before export fails"
    )
    members: bool = Field(False, description="also export the generalist and the specialists")
    qat: bool = Field(
        False, description="also write <model>-int8-qat.tflite: quantisation-aware fine-tuning"
    )
    qat_epochs: int = Field(1, ge=1, le=1000)
    qat_lr: float = Field(1e-3, gt=0.0, le=1.0)
    threads: int | None = Field(None, ge=1, description="runtime threads for the parity run")
    output: Literal["logits", "probabilities"] = Field(
        "logits",
        description="what the exported model outputs: logits, or their softmax (MediaPipe's "
        "score thresholds and max_results assume probabilities); members and the QAT file "
        "keep logits",
    )
    metadata: MetadataConfig = MetadataConfig()

    @model_validator(mode="after")
    def _distinct_onnx_int8(self) -> ExportConfig:
        if len(set(self.onnx_int8)) != len(self.onnx_int8):
            raise FieldError(("onnx_int8",), "list each of tensorrt, cpu at most once")
        return self


class TrainConfig(_Section):
    """How `edgekd train` runs: which stages, on what hardware settings."""

    stages: tuple[str, ...] = Field(METHOD_STAGES, min_length=1)
    distribution: Literal["none", "mirrored", "multi_worker"] = Field(
        "none",
        description="mirrored: data parallel over this host's devices (tf.distribute."
        "MirroredStrategy on TensorFlow, keras.distribution.DataParallel on JAX); "
        "multi_worker: over several processes or hosts, one `edgekd train` per worker "
        "(TF_CONFIG, or --workers/--worker-index): MultiWorkerMirroredStrategy on TensorFlow, "
        "DataParallel after jax.distributed.initialize on JAX. Batch sizes and learning rates "
        "are those of the global batch",
    )
    worker_timeout_s: float = Field(
        600.0,
        gt=0.0,
        description="multi_worker: how long a worker waits for all the others to join (at "
        "start, and after one is lost) before it fails",
    )
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "auto", description="auto: mixed_float16 on a GPU, float32 on a CPU"
    )
    jit_compile: Literal["auto"] | bool = Field(
        "auto", description="auto: XLA on GPU/JAX, off on a TF CPU (2.5x slower there)"
    )
    tensorboard: bool = True

    @model_validator(mode="before")
    @classmethod
    def _legacy_strategy(cls, data: Any) -> Any:
        """`strategy: default|mirrored`, the key before `distribution`, is still read."""
        if isinstance(data, dict) and "strategy" in data:
            data = dict(data)
            legacy = data.pop("strategy")
            if "distribution" in data:
                raise FieldError(("strategy",), "give train.distribution alone (strategy is "
                                 "its old name)")  # fmt: skip
            data["distribution"] = {"default": "none"}.get(legacy, legacy)
        return data

    @model_validator(mode="after")
    def _known_stages(self) -> TrainConfig:
        for i, stage in enumerate(self.stages):
            if stage not in STAGES:
                raise FieldError(("stages", i), _unknown("stage", stage, STAGES))
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise FieldError(
                ("stages",), f"stages must be distinct and in the order {list(STAGES)}"
            )
        return self


# Keys that say where things are or which stages to run, not what a stage computes: changing
# them reruns nothing (the data fingerprint, not the path, goes into stage hashes).
# `student.seeds` only adds models: more seeds extend a finished stage (Stage.extends).
_NOT_HASHED = {
    "data": ("path", "cache_dir", "tfds_dir", "pipeline", "memory_limit_gb"),
    "train": ("stages", "tensorboard", "distribution", "worker_timeout_s"),
    "student": ("seeds",),
}


# Options added after runs were made with this schema: at their default they stay out of the
# stage hashes, so adding an option does not redo the stages of existing runs.
_HASH_NEUTRAL_DEFAULTS: dict[str, dict[str, Any]] = {
    # "auto" is "pad" for every image size runs were made at before these keys existed.
    "data": {"augment.crop": "auto", "augment.crop_scale": [0.08, 1.0]},
    "ensemble": {"flip_average": False},
    "generalist": {"weights": None},
    "specialists": {"weights": None},
    "student": {"targets": "online", "weights": None},
}


def stable_digest(payload: Any) -> str:
    """16 hex digits of sha256 over `payload` as canonical JSON (sorted keys): the same for
    equal contents whatever their order, so it can name what depends on them."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Recipe(_Section):
    """A whole experiment. Build one with `load_recipe`; `to_dict()` round-trips."""

    name: str = Field("recipe", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = Field(0, ge=0, lt=2**31)
    data: DataConfig
    generalist: ModelTrainConfig = ModelTrainConfig()
    groups: GroupsConfig = GroupsConfig()
    specialists: SpecialistConfig = SpecialistConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    student: StudentConfig = StudentConfig()
    budget: BudgetConfig = BudgetConfig()
    export: ExportConfig = ExportConfig()
    train: TrainConfig = TrainConfig()

    _origins: dict[str, str] = PrivateAttr(default_factory=dict)
    _source: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _inherits_generalist(self) -> Recipe:
        from edgekd.training.models import inheritance_problem

        gen = self.generalist
        for key in ("specialists", "student"):
            cfg = getattr(self, key)
            if cfg.init != "generalist":
                continue
            problem = inheritance_problem(cfg.arch, cfg.width, gen.arch, gen.width)
            if problem:
                raise FieldError(
                    (key, "init"),
                    f"'generalist' copies the generalist's weights layer by layer, so {problem}; "
                    f"{key} is {cfg.arch} width {cfg.width}, the generalist {gen.arch} width "
                    f"{gen.width} (use init: scratch or auto)",
                )
        return self

    @property
    def source(self) -> str | None:
        """The recipe file this came from, if any."""
        return self._source

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain JSON types; `Recipe(**to_dict())` gives it back."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The resolved recipe as YAML, keys in schema order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def where(self, path: str) -> str:
        """Where a dotted key was set: 'file.yaml:12', '--set', or 'default'."""
        key = path
        while key:
            if key in self._origins:
                return self._origins[key]
            key = _parent(key)
        return self._origins.get("", self._source or "default")

    def error(self, path: str, message: str) -> RecipeError:
        """A RecipeError for `path`, for checks that need more than the schema (e.g. disk).

        A `path` starting with `--` names a command-line option rather than a recipe key.
        """
        if path.startswith("--"):
            return RecipeError(f"{path}: {message}")
        return RecipeError(f"{self.where(path)}: {path}: {message}")

    def digest(self, *sections: str, extra: Mapping[str, Any] | None = None) -> str:
        """A stable hash of some top-level sections (plus extra inputs), for stage invalidation."""
        d = self.to_dict()
        for section, keys in _NOT_HASHED.items():
            for key in keys:
                d[section].pop(key, None)
        for section, defaults in _HASH_NEUTRAL_DEFAULTS.items():
            for key, default in defaults.items():
                *parents, leaf = key.split(".")
                node = d[section]
                for parent in parents:
                    node = node[parent]
                if node.get(leaf) == default:
                    node.pop(leaf)
        if "train" in d:
            # Runs made before train.distribution hashed `strategy: default`; the distribution
            # itself is not hashed (the same global batch gives the same update), and this
            # constant keeps those runs' stage hashes.
            d["train"]["strategy"] = "default"
        payload = {s: d[s] for s in sections}
        if extra:
            payload["extra"] = dict(extra)
        return stable_digest(payload)
