"""The ordered stages of `edgekd train`; each names what it reads and what it writes."""

from edgekd.training.stages.base import Stage, StageContext, StageOutcome
from edgekd.training.stages.budget import BudgetStage
from edgekd.training.stages.ensemble import EnsembleStage
from edgekd.training.stages.generalist import GeneralistStage
from edgekd.training.stages.groups import GroupsStage
from edgekd.training.stages.specialists import SpecialistsStage
from edgekd.training.stages.student import StudentStage

# Pipeline order.
STAGES: tuple[Stage, ...] = (
    GeneralistStage(),
    GroupsStage(),
    SpecialistsStage(),
    EnsembleStage(),
    StudentStage(),
    BudgetStage(),
)

__all__ = ["STAGES", "Stage", "StageContext", "StageOutcome"]
