"""The scheduler: transfer measurements (BWT, FWT, D, forgetting, entropy), the order planner,
the prediction check and the policies (`joint`, `sequential`, `bwt`, `bandit`)."""

from omnisched.schedule.bandit import BanditPolicy, LearnabilityPolicy, TransferAwarePolicy
from omnisched.schedule.planner import (
    Estimate,
    TransferModel,
    plan_blocks,
    plan_order,
    predict_final,
    predict_spread,
)
from omnisched.schedule.policies import POLICIES, Decision, Policy, estimate_transfer
from omnisched.schedule.prediction import order_rank_correlation, prediction_error
from omnisched.schedule.state import Evaluation, PhaseRecord, SchedulerState
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
    "Decision",
    "Estimate",
    "Evaluation",
    "LearnabilityPolicy",
    "PhaseRecord",
    "Policy",
    "SchedulerState",
    "TransferAwarePolicy",
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
    "predict_spread",
    "prediction_error",
    "sample_forgetting",
    "transfer_matrix",
    "transfer_rates",
]
