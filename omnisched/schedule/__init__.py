"""The scheduler: transfer measurements (BWT, FWT), the order planner and the policies."""

from omnisched.schedule.planner import TransferModel, plan_order, predict_final
from omnisched.schedule.policies import POLICIES, Decision, Policy
from omnisched.schedule.state import Evaluation, PhaseRecord, SchedulerState
from omnisched.schedule.transfer import (
    backward_transfer,
    forward_transfer,
    phase_deltas,
    sample_forgetting,
)

__all__ = [
    "POLICIES",
    "Decision",
    "Evaluation",
    "PhaseRecord",
    "Policy",
    "SchedulerState",
    "TransferModel",
    "backward_transfer",
    "forward_transfer",
    "phase_deltas",
    "plan_order",
    "predict_final",
    "sample_forgetting",
]
