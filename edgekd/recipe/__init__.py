"""The recipe: one YAML file describes one experiment.

`schema.py` is the single source of truth for options: every key, its type, default, range
and cross-checks. `loading.py` turns YAML into a typed, frozen `Recipe` at the door; errors
name the YAML path of the culprit and its line (or the `--set` that introduced it).
Precedence: schema defaults < recipe file < `--set key.path=value` overrides.
"""

from edgekd.recipe.loading import (
    apply_overrides,
    build_recipe,
    builtin_recipes,
    load_recipe,
    parse_override,
    resolve_recipe_path,
)
from edgekd.recipe.schema import (
    DEFAULT_SOFT_WEIGHT,
    DEFAULT_TEMPERATURE,
    EXPORT_FORMATS,
    EXPORT_PRECISIONS,
    METHOD_STAGES,
    STAGES,
    AugmentConfig,
    BudgetConfig,
    DataConfig,
    EnsembleConfig,
    ExportConfig,
    FieldError,
    GroupsConfig,
    ModelTrainConfig,
    OptimizerConfig,
    RampConfig,
    Recipe,
    ScheduleConfig,
    SpecialistConfig,
    StudentConfig,
    TrainConfig,
    stable_digest,
)

__all__ = [
    "DEFAULT_SOFT_WEIGHT",
    "DEFAULT_TEMPERATURE",
    "EXPORT_FORMATS",
    "EXPORT_PRECISIONS",
    "METHOD_STAGES",
    "STAGES",
    "AugmentConfig",
    "BudgetConfig",
    "DataConfig",
    "EnsembleConfig",
    "ExportConfig",
    "FieldError",
    "GroupsConfig",
    "ModelTrainConfig",
    "OptimizerConfig",
    "RampConfig",
    "Recipe",
    "ScheduleConfig",
    "SpecialistConfig",
    "StudentConfig",
    "TrainConfig",
    "apply_overrides",
    "build_recipe",
    "builtin_recipes",
    "load_recipe",
    "parse_override",
    "resolve_recipe_path",
    "stable_digest",
]
