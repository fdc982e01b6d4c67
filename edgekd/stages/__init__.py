"""The ordered stages of `edgekd train`; each names what it reads and what it writes."""

from edgekd.stages.base import Stage, StageContext, StageOutcome
from edgekd.stages.generalist import GeneralistStage

# Pipeline order. Later issues append groups, specialists, ensemble and student here.
STAGES: tuple[Stage, ...] = (GeneralistStage(),)

__all__ = ["STAGES", "Stage", "StageContext", "StageOutcome", "GeneralistStage"]
