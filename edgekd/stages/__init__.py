"""The ordered stages of `edgekd train`; each names what it reads and what it writes."""

from edgekd.stages.base import Stage, StageContext, StageOutcome
from edgekd.stages.budget import BudgetStage
from edgekd.stages.ensemble import EnsembleStage
from edgekd.stages.generalist import GeneralistStage
from edgekd.stages.groups import GroupsStage
from edgekd.stages.specialists import SpecialistsStage
from edgekd.stages.student import StudentStage

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
