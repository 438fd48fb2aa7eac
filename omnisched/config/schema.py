"""Recipe schema: one pydantic model per component, `extra="forbid"` so a typo names its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from omnisched.config.learner import DeepSpeedConfig as DeepSpeedConfig  # re-exported
from omnisched.config.learner import LearnerConfig
from omnisched.config.rollout_options import DynamicSamplingConfig, HFEngineConfig
from omnisched.config.strict import Strict


class RunConfig(Strict):
    name: str = "run"
    output_dir: Path = Path("runs")
    seed: int = 0
    data_seed: int | None = Field(
        None,
        description="seed of the domains' data (eval sets, warm-start demonstrations) and of "
        "the warm start; None = run.seed. `reproduce` fixes it so that every seed of every arm "
        "shares one warm start and one eval set, and only the RL seed varies",
    )
    threads: int = Field(2, ge=1, description="torch intra-op threads per process")
    log_rollouts_every: int = Field(
        10,
        ge=0,
        description="GRPO steps between the steps whose groups go to rollouts.jsonl (prompt, "
        "completions, reward per component with its reason, advantage); every evaluation's go "
        "too; 0: evaluations only",
    )
    checkpoint_every: int = Field(
        10, ge=0, description="GRPO steps between resumable checkpoints (0: phase ends only)"
    )
    max_restarts: int = Field(
        2, ge=0, description="automatic resumes from the last checkpoint after a learner rank dies"
    )


class TinyModelConfig(Strict):
    """A small Qwen2-architecture model built from config with a local tokenizer: char-level, or
    `chat` (byte-level BPE with a chat template, `omnisched.model.chat_model`)."""

    tokenizer: Literal["char", "chat"] = "char"
    hidden_size: int = Field(256, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(1024, ge=8)
    max_position_embeddings: int = Field(256, ge=16)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("model.tiny.hidden_size must be divisible by model.tiny.num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("model.tiny.num_heads must be divisible by model.tiny.num_kv_heads")
        return self


class WarmStartConfig(Strict):
    """Short SFT on the domains' demonstrations before RL, cached on disk by its config."""

    enabled: bool = True
    steps: int = Field(300, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    examples_per_domain: int = Field(2000, ge=1)
    cache_dir: Path = Path("~/.cache/omnisched/warm_start")


class ModelConfig(Strict):
    path: str | None = Field(None, description="an HF causal-LM folder; None builds the tiny model")
    tiny: TinyModelConfig = TinyModelConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto",
        description="rollout engines' weights and the warm start's autocast; auto = bfloat16 "
        "where the hardware runs it natively (GPU, CPU with AVX512-BF16 or AMX), else float32",
    )


class RewardComponent(Strict):
    """One term of a domain's reward: a verifier (rewards/) or a judge (judges/), weighted.

    `gate` names another component of the domain: this one is evaluated only for samples whose
    gate scored >= `gate_threshold`. A failed gate sets the sample's whole reward to 0 when
    `gate_fail` is None, else only this component's value to `gate_fail`.
    """

    verifier: str | None = None
    judge: str | None = None
    name: str | None = Field(None, description="component name; default: the verifier or judge")
    weight: float = Field(1.0, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)
    gate: str | None = Field(None, description="name of the component that gates this one")
    gate_threshold: float = Field(1.0, ge=0, le=1)
    gate_fail: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _one_source(self) -> RewardComponent:
        if (self.verifier is None) == (self.judge is None):
            raise ValueError("a reward component names exactly one of 'verifier' or 'judge'")
        if self.gate is not None and self.gate == self.key:
            raise ValueError(f"reward component '{self.key}' cannot gate itself")
        return self

    @property
    def key(self) -> str:
        """The component's name in logs, gates and `ScoredBatch.components`."""
        return self.name or self.verifier or self.judge or ""


class DomainConfig(Strict):
    """A domain: a builtin generator (`type`), user data (`type: data`) or reasoning-gym tasks."""

    name: str
    type: str = Field(
        ..., description="builtin generator: math | code | qa | creative | data | gym | humaneval"
    )
    options: dict[str, Any] = Field(default_factory=dict)
    eval_size: int = Field(64, ge=1)
    demos: int | None = Field(
        None,
        ge=0,
        description="warm-start demonstrations drawn from this domain; None uses "
        "model.warm_start.examples_per_domain (harder domains may need more)",
    )
    reward: list[RewardComponent] | None = Field(
        None, description="reward components; None uses the domain type's default"
    )
    weight: float = Field(
        1.0,
        gt=0,
        description="share of a mixed phase's prompts (joint training) relative to the other "
        "domains', as OpenRLHF's prompt_data_probs; online policies set their own mixture",
    )


class RolloutConfig(Strict):
    backend: str = "hf"
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per engine; fractions share one")
    tensor_parallel: int = Field(1, ge=1, description="GPUs one engine shards the model over")
    group_size: int = Field(8, ge=2, description="G completions per prompt")
    max_new_tokens: int = Field(24, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    dynamic_sampling: DynamicSamplingConfig = DynamicSamplingConfig()
    hf: HFEngineConfig = HFEngineConfig()
    weight_sync: Literal["object_store", "broadcast"] = Field(
        "object_store",
        description="how learner weights reach the engines after each step: object_store sends "
        "the state dict through Ray's object store; broadcast sends only names, dtypes and shapes "
        "and streams the tensors over a gloo (CPU) or NCCL (GPU) group of learner rank 0 and the "
        "engines (needs ray.enabled: true)",
    )
    sleep_level: Literal[0, 1, 2] | None = Field(
        None,
        description="engines sleep through learner steps: 1 frees the KV cache and offloads the "
        "weights to CPU, 2 also drops them (re-sent at wake-up), 0 never; None: 1 colocated, 0 not",
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vLLM's share of each GPU's memory; None = 0.9, 0.4 colocated"
    )
    overlap: bool = Field(
        False,
        description="generate step k+1 while the learner trains step k: one step off-policy "
        "(importance ratios against the sampler's logprobs), staleness at most 1",
    )

    @model_validator(mode="after")
    def _tensor_parallel_gpus(self) -> RolloutConfig:
        if self.tensor_parallel > 1 and self.gpus_per_worker != self.tensor_parallel:
            raise ValueError(
                f"rollout.tensor_parallel={self.tensor_parallel} needs rollout.gpus_per_worker="
                f"{self.tensor_parallel} (one GPU per shard), got {self.gpus_per_worker:g}"
            )
        return self


class ScheduleConfig(Strict):
    policy: str = "bwt"
    order: list[str] | None = Field(None, description="domain order for the sequential policy")
    phases: int | None = Field(None, ge=1, description="number of phases; None = one per domain")
    steps_per_phase: int = Field(20, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    probe_steps: int | None = Field(
        None,
        ge=0,
        description="bwt policy: > 0 runs a short probe phase of this many steps on every domain "
        "first, to measure transfer and headroom before planning (adds len(domains) phases, "
        "paid from the step budget); 0: no probes; None: a quarter of steps_per_phase when "
        "that leaves at least half the budget to the regular phases",
    )
    plan_lengths: bool = Field(
        True,
        description="bwt policy: the planner also sets each phase's length (the budget of "
        "phases x steps_per_phase stays fixed) when its model predicts a better profile than "
        "equal lengths by more than one standard deviation; false keeps equal phases",
    )


class EvalConfig(Strict):
    """Held-out evaluation: accuracy = mean score over `samples` completions per eval prompt
    (avg@k at the sampling temperature, as RL papers report), so it sees the sharpening RL does;
    `temperature: 0` with `samples: 1` gives greedy accuracy instead."""

    max_new_tokens: int | None = Field(None, ge=1, description="None = rollout.max_new_tokens")
    temperature: float = Field(1.0, ge=0)
    samples: int = Field(4, ge=1, description="completions per eval prompt")


class RewardConfig(Strict):
    """How reward failures are handled (a verifier that raises or times out scores 0)."""

    max_error_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="a run stops, naming the domain and component, when a verifier fails "
        "(raises, times out) on more than this fraction of one step's items",
    )


class RayConfig(Strict):
    enabled: bool = Field(True, description="False runs every worker inside the driver, no Ray")
    address: str | None = Field(None, description="None starts a local Ray in-process")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a local Ray")
    reward_workers: int = Field(1, ge=1)
    reward_concurrency: int = Field(2, ge=1, description="items scored at once per reward worker")
    reward_timeout_s: float = Field(10.0, gt=0, description="per-item verifier timeout")


ModelShape = Literal[
    "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b",
    "qwen2.5-72b",
]  # fmt: skip


class PlacementConfig(Strict):
    """Where the learner runs and how it shares the cluster with the rollout engines.

    `colocate: true`: engines and learner ranks time-share the same GPUs (one bundle per learner
    rank; `placement.seats`), so both use the same GPU count. `nodes`, `gpus_per_node`,
    `cpus_per_node`, `gpu_memory_gib` describe the target cluster, checked by `--dry-run`."""

    learner_workers: int = Field(1, ge=1, description="data-parallel learner ranks (ZeRO world)")
    learner_gpus_per_worker: float = Field(0.0, ge=0)
    learner_cpus_per_worker: float = Field(1.0, gt=0)
    colocate: bool = False
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy for the bundles"
    )
    nodes: int | None = Field(None, ge=1, description="nodes of the target cluster; None: unknown")
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_node: int | None = Field(None, ge=1, description="None: CPUs are not checked")
    gpu_memory_gib: float = Field(80.0, gt=0, description="memory per GPU (--dry-run memory plan)")
    model_shape: ModelShape | None = Field(
        None, description="the memory plan's model when model.path holds no config.json"
    )


class Recipe(Strict):
    @property
    def data_seed(self) -> int:
        """The seed of the data and the warm start (`run.data_seed`, else `run.seed`)."""
        return self.run.seed if self.run.data_seed is None else self.run.data_seed

    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    domains: list[DomainConfig]
    rollout: RolloutConfig = RolloutConfig()
    learner: LearnerConfig = LearnerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    eval: EvalConfig = EvalConfig()
    reward: RewardConfig = RewardConfig()
    ray: RayConfig = RayConfig()
    placement: PlacementConfig = PlacementConfig()

    @model_validator(mode="after")
    def _colocation_gpus(self) -> Recipe:
        if not self.placement.colocate:
            return self
        rollout = self.rollout.num_workers * self.rollout.gpus_per_worker
        learner = self.placement.learner_workers * self.placement.learner_gpus_per_worker
        if rollout != learner or learner == 0:
            raise ValueError(
                f"placement.colocate needs the same non-zero GPU count for rollout "
                f"(num_workers x gpus_per_worker = {rollout:g}) and learner "
                f"(learner_workers x learner_gpus_per_worker = {learner:g})"
            )
        return self

    @model_validator(mode="after")
    def _learner_ranks_backend(self) -> Recipe:
        workers, backend = self.placement.learner_workers, self.learner.backend
        if workers > 1 and backend != "deepspeed":
            raise ValueError(
                f"placement.learner_workers={workers} needs learner.backend: deepspeed (data-"
                f"parallel ZeRO ranks), got learner.backend: {backend}"
            )
        return self

    @model_validator(mode="after")
    def _budget_holds_a_sample(self) -> Recipe:
        budget, longest = self.learner.micro_batch_tokens, self.rollout.max_new_tokens
        if budget is not None and budget <= longest:
            raise ValueError(
                f"learner.micro_batch_tokens={budget} cannot hold one sample of "
                f"rollout.max_new_tokens={longest} completion tokens and its prompt; raise it"
            )
        return self

    @model_validator(mode="after")
    def _policy_needs(self) -> Recipe:
        s = self.schedule
        if s.policy == "tac" and not self.learner.grad_alignment:
            self.learner.grad_alignment = True  # what the policy reads
        if self.learner.grad_alignment and self.learner.backend != "torch":
            raise ValueError(
                "learner.grad_alignment (on for schedule.policy: tac) needs learner.backend: "
                f"torch, got {self.learner.backend}"
            )
        if s.probe_steps and s.policy == "bwt":  # None (auto) always fits
            phases = s.phases or len(self.domains)
            budget = phases * s.steps_per_phase
            probes = s.probe_steps * len(self.domains)
            if probes > budget - phases:
                raise ValueError(
                    f"schedule.probe_steps={s.probe_steps}: {len(self.domains)} probes take "
                    f"{probes} of the run's {budget} steps (phases x steps_per_phase), which "
                    f"must leave at least one step to each of the {phases} regular phases"
                )
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        names = [d.name for d in self.domains]
        if not names:
            raise ValueError("domains: at least one domain is required")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"domains: duplicate domain name(s) {dupes}")
        if self.schedule.order is not None:
            unknown = [n for n in self.schedule.order if n not in names]
            if unknown:
                raise ValueError(f"schedule.order names unknown domain(s) {unknown}; known {names}")
        return self
