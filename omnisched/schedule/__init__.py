"""The scheduler: transfer measurements (BWT, FWT, D, forgetting, entropy), the order planner,
the prediction check and the policies (`joint`, `sequential`, `bwt`, `bandit`)."""

from omnisched.schedule.bandit import BanditPolicy
from omnisched.schedule.planner import TransferModel, plan_blocks, plan_order, predict_final
from omnisched.schedule.policies import POLICIES, Decision, Policy, estimate_transfer
from omnisched.schedule.prediction import order_rank_correlation, prediction_error
from omnisched.schedule.state import BanditState, Evaluation, PhaseRecord, SchedulerState
from omnisched.schedule.transfer import (
    backward_transfer,
    bwt_curve,
    chance_adjusted_forgetting,
    entropy_trend,
    forward_transfer,
    phase_deltas,
    sample_forgetting,
    transfer_matrix,
    transfer_rates,
)

__all__ = [
    "POLICIES",
    "BanditPolicy",
    "BanditState",
    "Decision",
    "Evaluation",
    "PhaseRecord",
    "Policy",
    "SchedulerState",
    "TransferModel",
    "backward_transfer",
    "bwt_curve",
    "chance_adjusted_forgetting",
    "entropy_trend",
    "estimate_transfer",
    "forward_transfer",
    "order_rank_correlation",
    "phase_deltas",
    "plan_blocks",
    "plan_order",
    "predict_final",
    "prediction_error",
    "sample_forgetting",
    "transfer_matrix",
    "transfer_rates",
]
