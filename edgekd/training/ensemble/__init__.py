"""The gated ensemble: gating specialists on the generalist's candidates, and fusing the
generalist's and the active specialists' distributions into one."""

from edgekd.training.ensemble.fusion import (
    fuse,
    fusion_objective,
    membership_matrix,
    scatter_specialist,
)
from edgekd.training.ensemble.gating import activation_plan, gate, top_n_candidates

__all__ = [
    "activation_plan",
    "fuse",
    "fusion_objective",
    "gate",
    "membership_matrix",
    "scatter_specialist",
    "top_n_candidates",
]
