"""What a stage is: a name, the stages and recipe sections it reads, and a `run`.

Stage modules import Keras and TensorFlow inside `run`, not at the top: `edgekd train`'s
pre-flight (recipe against data, run directory, upstream stages) then needs neither, and a
bad recipe fails in about a second instead of after TensorFlow's import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from edgekd.data.dataset import PreparedData
from edgekd.recipe import Recipe
from edgekd.training.run import RunDir

if TYPE_CHECKING:
    from edgekd.data import Augment
    from edgekd.training.accelerator import Accelerator


@dataclass
class StageContext:
    """Everything a stage may use: recipe, data, hardware, the run directory."""

    recipe: Recipe
    data: PreparedData
    accel: Accelerator
    run: RunDir
    verbose: str | int = "auto"
    log: Callable[[str], None] = print


@dataclass
class StageOutcome:
    """What a finished stage records in the manifest (artifact paths relative to the run)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)


def check_batch_size(recipe: Recipe, section: str, data: PreparedData) -> None:
    """A recipe error when `<section>.batch_size` exceeds the training images."""
    batch = getattr(recipe, section).batch_size
    if batch > len(data.train):
        raise recipe.error(
            f"{section}.batch_size",
            f"{batch} is larger than the {len(data.train)} training images",
        )


def check_input_size(recipe: Recipe, section: str, data: PreparedData) -> None:
    """A recipe error when the images are smaller than `<section>.arch` takes."""
    from edgekd.training.models import ARCHITECTURES

    arch = getattr(recipe, section).arch
    spec = ARCHITECTURES[arch]
    height, width = data.train.images.shape[1:3]
    if min(height, width) < spec.min_size:
        raise recipe.error(
            f"{section}.arch",
            f"{arch} needs images of at least {spec.min_size}x{spec.min_size} px; the data's "
            f"are {height}x{width}. Set data.image_size, or for small images use a CIFAR ResNet "
            "(resnet10, resnet14, resnet18, resnet34)",
        )


class Stage:
    """Base class. `sections` are the recipe sections whose change reruns the stage;
    `reads` are upstream stages whose hashes chain into this one."""

    name: ClassVar[str]
    sections: ClassVar[tuple[str, ...]]
    reads: ClassVar[tuple[str, ...]] = ()
    # Fits models: every worker of a multi_worker run takes part. The others are the chief's.
    trains: ClassVar[bool] = False

    def input_hash(self, recipe: Recipe, data_fingerprint: str, upstream: dict[str, str]) -> str:
        """Hash of everything that determines this stage's result."""
        return recipe.digest(
            *self.sections,
            extra={"data": data_fingerprint, **{s: upstream.get(s, "") for s in self.reads}},
        )

    def needs(self, recipe: Recipe) -> tuple[str, ...]:
        """The upstream stages this recipe's run of the stage loads: by default all it reads."""
        return self.reads

    def extends(self, recipe: Recipe, metrics: dict[str, Any]) -> bool:
        """True when the recipe asks a finished stage for more than it holds (e.g. more seeds)
        and the stage can add it without redoing what it has."""
        return False

    def check(self, recipe: Recipe, data: PreparedData) -> None:
        """Pre-flight checks that need the data; raise before anything is written."""

    def run(self, ctx: StageContext) -> StageOutcome:
        raise NotImplementedError


def augment_of(ctx: StageContext) -> Augment:
    """The recipe's `data.augment`, as the batches' augmentation every stage trains with."""
    from edgekd.data import Augment

    a = ctx.recipe.data.augment
    return Augment(
        crop=a.crop_for(min(ctx.data.train.images.shape[1:3])), scale=a.crop_scale,
        crop_padding=a.crop_padding, padding_mode=a.padding_mode, flip=a.flip, cutout=a.cutout,
    )  # fmt: skip
