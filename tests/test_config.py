"""Recipe validation: every mistake is one line naming the field, from the API and the CLI."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from omnisched.config import load_recipe
from omnisched.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.domains


def test_overrides_are_parsed_as_yaml():
    r = load_recipe(
        ROOT / "recipes/tiny.yaml",
        ["learner.lr=1e-5", "domains.0.eval_size=8", "schedule.order=[qa, math]"],
    )
    assert r.learner.lr == 1e-5
    assert r.domains[0].eval_size == 8
    assert r.schedule.order == ["qa", "math"]


def _write(tmp_path, data) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


BASE = {"domains": [{"name": "m", "type": "math"}]}


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"learner": {"lrr": 1}}, "learner.lrr: unknown field"),
        ({"learner": {"lr": "fast"}}, "learner.lr:"),
        ({"rollout": {"group_size": 1}}, "rollout.group_size:"),
        (
            {"domains": [{"name": "m", "type": "poetry"}]},
            "domains.0.type: unknown domain type 'poetry'",
        ),
        ({"schedule": {"order": ["m", "nope"]}}, "unknown domain(s) ['nope']"),
        ({"schedule": {"policy": "magic"}}, "schedule.policy: unknown policy 'magic'"),
        ({"domains": [{"name": "m", "type": "math"}, {"name": "m", "type": "qa"}]}, "duplicate"),
        (
            {"domains": [{"name": "m", "type": "math", "reward": [{"weight": 1}]}]},
            "exactly one of 'verifier' or 'judge'",
        ),
        (
            {"domains": [{"name": "m", "type": "math", "reward": [{"verifier": "nope"}]}]},
            "domains.0.reward.0.verifier: unknown verifier 'nope'; known:",
        ),
        (
            {"domains": [{"name": "m", "type": "math", "reward": [{"judge": "gpt"}]}]},
            "domains.0.reward.0.judge: unknown judge 'gpt'",
        ),
        ({"rollout": {"backend": "sglang"}}, "rollout.backend: unknown rollout engine 'sglang'"),
        ({"learner": {"kl_estimator": "k4"}}, "learner.kl_estimator: Input should be 'k1', 'k2'"),
        ({"learner": {"adv_eps": 0}}, "learner.adv_eps: Input should be greater than 0"),
        (
            {"rollout": {"dynamic_sampling": {"enabled": True, "max_rounds": -1}}},
            "rollout.dynamic_sampling.max_rounds: Input should be greater than or equal to 0",
        ),
        ({"learner": {"backend": "megatron"}}, "learner.backend: unknown learner 'megatron'"),
        (
            {"learner": {"micro_batch_tokens": 0}},
            "learner.micro_batch_tokens: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"learner": {"logits_chunk_tokens": -8}},
            "learner.logits_chunk_tokens: Input should be greater than or equal to 1 (got -8)",
        ),
        (
            {
                "learner": {
                    "backend": "deepspeed",
                    "logits_chunk_tokens": 8,
                    "deepspeed": {"zero_stage": 3},
                }
            },
            "learner: learner.logits_chunk_tokens needs learner.deepspeed.zero_stage <= 2",
        ),
    ],
)
def test_bad_recipes_name_the_field(tmp_path, patch, needle):
    with pytest.raises(ConfigError) as info:
        load_recipe(_write(tmp_path, {**BASE, **patch}))
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must look like"):
        load_recipe(_write(tmp_path, BASE), ["learner.lr"])
    with pytest.raises(ConfigError, match="list index"):
        load_recipe(_write(tmp_path, BASE), ["domains.5.eval_size=3"])


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"learner": {"lrr": 1}}, "learner.lrr: unknown field"),
        ({"learner": {"lr": "fast"}}, "learner.lr"),
        ({"domains": [{"name": "m", "type": "poetry"}]}, "domains.0.type"),
    ],
)
def test_cli_prints_one_line_and_exits_nonzero(tmp_path, patch, needle):
    path = _write(tmp_path, {**BASE, **patch})
    proc = subprocess.run(
        [sys.executable, "-m", "omnisched.cli", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert needle in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_unknown_judge_option_names_the_field(tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes" / "tiny.yaml").read_text())
    recipe["domains"][3]["reward"] = [{"judge": "http", "options": {"base_ulr": "http://x"}}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(
        ConfigError, match=r"domains\.3\.reward\.0\.options: judge 'http'.*base_ulr"
    ):
        load_recipe(path)


def test_unknown_reward_gate_fails_at_load(tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes" / "tiny.yaml").read_text())
    recipe["domains"][3]["reward"] = [{"judge": "creative_rubric", "gate": "fmt"}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=r"domains\.3\.reward: .*gate 'fmt'"):
        load_recipe(path)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "omnisched.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


REFUSED = [
    # placements the controller cannot start, each with the field it names
    (["placement.learner_workers=2", "learner.backend=deepspeed", "ray.enabled=false"],
     "placement.learner_workers=2 needs ray.enabled: true"),
    (["rollout.weight_sync=broadcast", "ray.enabled=false"],
     "rollout.weight_sync: broadcast needs ray.enabled: true"),
    (["rollout.num_workers=1", "rollout.gpus_per_worker=1", "placement.learner_gpus_per_worker=1",
      "placement.colocate=true", "rollout.weight_sync=broadcast"],
     "rollout.weight_sync: broadcast with placement.colocate"),
    (["rollout.tensor_parallel=2", "rollout.gpus_per_worker=2"],
     "rollout.tensor_parallel=2 needs rollout.backend: vllm"),
    (["rollout.overlap=true", "rollout.num_workers=1", "rollout.gpus_per_worker=1",
      "placement.learner_gpus_per_worker=1", "placement.colocate=true"],
     "rollout.overlap: true needs engines that stay awake during learner steps; got "
     "rollout.sleep_level=1 (placement.colocate=True)"),
    (["rollout.overlap=true", "rollout.top_p=0.9"],
     "rollout.overlap: true trains against the sampler's logprobs, which rollout.top_p=0.9"),
    # data that does not exist
    (["domains=[{name: d, type: data, options: {path: /nonexistent/d.jsonl},"
      " reward: [{verifier: exact_match}]}]"], "data file not found: /nonexistent/d.jsonl"),
    # a model folder that is not one (run found out in the warm start)
    (["model.path=/nonexistent/model"],
     "model.path /nonexistent/model is not an HF model folder (no config.json)"),
    # (LoRA targets that match no module: the same check_runnable, which builds the model in a
    # child; tests/test_lora.py::test_run_and_dry_run_check_lora_targets_before_anything_starts)
    # a decode loop that cannot compile (run found out inside the engine)
    (["rollout.hf.compile=true", "rollout.hf.decode=drop"],
     "rollout.hf: rollout.hf.compile: true needs rollout.hf.decode: mask or auto"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "needle"), REFUSED)
def test_dry_run_refuses_what_run_refuses_with_the_same_line(tmp_path, overrides, needle):
    recipe = str(ROOT / "recipes/tiny.yaml")
    out = [f"run.output_dir={tmp_path / 'runs'}"]
    real = _run_cli(recipe, *overrides, *out)
    dry = _run_cli(recipe, *overrides, *out, "--dry-run")
    assert real.returncode == dry.returncode == 2
    assert needle in real.stderr and real.stderr.strip() == dry.stderr.strip()
    assert len(real.stderr.strip().splitlines()) == 1 and "Traceback" not in real.stderr
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_verifier_options_are_checked_against_its_signature(tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes" / "tiny.yaml").read_text())
    recipe["domains"][0]["reward"] = [{"verifier": "length", "options": {"max_lenght": 10}}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(
        ConfigError,
        match=r"domains\.0\.reward\.0\.options: verifier 'length' has no option\(s\) "
        r"\['max_lenght'\]; it takes: max_length, buffer",
    ):
        load_recipe(path)
    recipe["domains"][0]["reward"] = [{"verifier": "length", "options": {"max_length": 10}}]
    path.write_text(yaml.safe_dump(recipe))
    assert load_recipe(path).domains[0].reward[0].options == {"max_length": 10}


def test_a_set_up_error_leaves_no_run_directory(tmp_path):
    from omnisched.orchestration.backend import InlineBackend
    from omnisched.orchestration.controller import Controller

    recipe = load_recipe(ROOT / "recipes/tiny.yaml", [f"model.path={tmp_path / 'missing'}"])
    run_dir = tmp_path / "run"
    with pytest.raises(Exception, match="is not an HF model folder"):
        Controller(recipe, run_dir).run(InlineBackend())
    assert not run_dir.exists()


def test_an_error_raised_in_a_ray_actor_prints_its_own_one_line(capsys):
    import typer
    from ray.exceptions import RayTaskError

    from omnisched.cli import _fail

    wrapped = RayTaskError(
        "LearnerWorker.train_groups", "Traceback (most recent call last):\n  ...",
        ConfigError("learner.micro_batch_tokens=64 is smaller than a sample of 67 tokens"),
    ).as_instanceof_cause()  # fmt: skip
    with pytest.raises(typer.Exit):
        _fail(wrapped)
    err = capsys.readouterr().err.strip()
    assert err == "error: learner.micro_batch_tokens=64 is smaller than a sample of 67 tokens"
