"""Recipe configuration: pydantic schema and YAML loading with dotted overrides."""

from omnisched.config.load import apply_override, load_recipe, validate_recipe
from omnisched.config.schema import (
    DomainConfig,
    EvalConfig,
    LearnerConfig,
    ModelConfig,
    Recipe,
    RewardComponent,
    RolloutConfig,
    ScheduleConfig,
    TinyModelConfig,
    WarmStartConfig,
)

__all__ = [
    "DomainConfig",
    "EvalConfig",
    "LearnerConfig",
    "ModelConfig",
    "Recipe",
    "RewardComponent",
    "RolloutConfig",
    "ScheduleConfig",
    "TinyModelConfig",
    "WarmStartConfig",
    "apply_override",
    "load_recipe",
    "validate_recipe",
]
