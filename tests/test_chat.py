"""Real tokenizers and conversational data: a locally built byte-level BPE tokenizer with a
Qwen-style chat template, its tiny Qwen2 folder, conversational JSONL rows rendered with the
template, and the bad inputs a user brings (each one line naming the domain and the file)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from omnisched.config.schema import DomainConfig, RewardComponent, TinyModelConfig
from omnisched.domains import ChatTemplate, build_domain
from omnisched.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
TINY = TinyModelConfig(hidden_size=64, num_layers=2, intermediate_size=128)
QUESTION = [{"role": "user", "content": "What is 12 + 30?"}]
CONVERSATIONS = [
    QUESTION,
    [{"role": "system", "content": "Answer with a number."}, *QUESTION],
    [*QUESTION, {"role": "assistant", "content": "42"}, {"role": "user", "content": "And 1+1?"}],
]


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory) -> Path:
    from omnisched.model import build_chat_model

    return build_chat_model(tmp_path_factory.mktemp("chat") / "tiny-instruct", TINY)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(n: int = 8) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
            "answer": str(i + 1),
            "completion": [{"role": "assistant", "content": str(i + 1)}],
        }
        for i in range(n)
    ]


def _domain(path: Path, chat: ChatTemplate | None, **options):
    cfg = DomainConfig(
        name="chatmath",
        type="data",
        eval_size=2,
        options={"path": str(path), **options},
        reward=[RewardComponent(verifier="exact_match")],
    )
    return build_domain(cfg, 0, chat)


def test_bpe_tokenizer_reloads_identically_and_stops_on_two_eos(chat_folder):
    from transformers import AutoTokenizer

    from omnisched.model.chat_model import IM_END, IM_START, build_bpe_tokenizer

    built, loaded = build_bpe_tokenizer(), AutoTokenizer.from_pretrained(str(chat_folder))
    text = "<|im_start|>user\nWhat is 123 + 45? ünïcode 😀<|im_end|>\n"
    ids = loaded.encode(text, add_special_tokens=False)
    assert ids == built.encode(text, add_special_tokens=False)
    assert loaded.decode(ids) == text  # byte-level: any text round-trips
    assert ids[0] == loaded.convert_tokens_to_ids(IM_START)  # a special token, not characters
    words = "what is the answer to the question"
    assert len(loaded.encode(words)) < len(words) // 3  # real merges, not one token a character
    assert loaded.eos_token == IM_END
    gen = json.loads((chat_folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == loaded.convert_tokens_to_ids([IM_END, "<|endoftext|>"])


def test_engine_stops_on_any_eos_id_and_the_learner_scores_its_exact_tokens(tmp_path, chat_folder):
    import shutil

    import torch

    from omnisched.config.schema import LearnerConfig
    from omnisched.learner.base import TrainSample
    from omnisched.learner.torch_learner import TorchLearner
    from omnisched.model import load_model
    from omnisched.rollout import HFEngine, SamplingParams

    prompt = ChatTemplate(chat_folder).render(QUESTION, "t")
    engine = HFEngine(chat_folder, dtype="float32")
    group = engine.generate([prompt], SamplingParams(n=4, max_new_tokens=10, seed=0))[0]
    tok = engine.tokenizer
    assert group[0].prompt_ids == tok.encode(prompt, add_special_tokens=False)
    assert group[0].prompt_ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    # the learner sees the engine's token ids (never a re-tokenisation of the decoded text)
    model, _ = load_model(chat_folder, "float32")
    learner = TorchLearner(model, LearnerConfig(bf16=False), tok.pad_token_id)
    recomputed = learner.logprobs([TrainSample(c.prompt_ids, c.token_ids, 0.0) for c in group])
    for c, lp in zip(group, recomputed):
        torch.testing.assert_close(torch.tensor(lp), torch.tensor(c.logprobs), atol=2e-4, rtol=0)
    # a second EOS id in generation_config.json ends a completion as the first does
    greedy = SamplingParams(max_new_tokens=10, temperature=0)
    first = engine.generate([prompt], greedy)[0][0]
    assert not first.finished and len(first.token_ids) == 10
    stop = first.token_ids[2]
    folder = Path(shutil.copytree(chat_folder, tmp_path / "stops"))
    gen = json.loads((folder / "generation_config.json").read_text())
    gen["eos_token_id"] = [tok.eos_token_id, stop]
    (folder / "generation_config.json").write_text(json.dumps(gen))
    stopped = HFEngine(folder, dtype="float32").generate([prompt], greedy)[0][0]
    end = first.token_ids.index(stop) + 1
    assert stopped.finished and stopped.token_ids == first.token_ids[:end]
    assert stopped.text == tok.decode(first.token_ids[: end - 1], skip_special_tokens=True)
    from judges.local_model import LocalGenerator  # the local judge model stops there too

    reply = LocalGenerator(folder).generate([QUESTION], max_tokens=10)[0]
    assert (reply.finish_reason, reply.text) == ("stop", stopped.text)
    assert reply.completion_tokens == end - 1


def test_rendering_matches_apply_chat_template_without_importing_torch(chat_folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(chat_folder))
    chat = ChatTemplate(chat_folder)
    for messages in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        assert chat.render(messages, "test") == expected
    assert chat.render(QUESTION, "t").endswith("<|im_start|>assistant\n")
    code = (
        "import sys\nfrom omnisched.domains import ChatTemplate\n"
        f"print(ChatTemplate({str(chat_folder)!r}).render({QUESTION!r}, 'x'))\n"
        "assert 'torch' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<|im_start|>assistant" in proc.stdout


def test_conversational_rows_are_rendered_and_keep_their_messages(tmp_path, chat_folder):
    path = _jsonl(tmp_path / "d.jsonl", _rows())
    dom = _domain(path, ChatTemplate(chat_folder), completion_field="completion")
    ex = dom.eval_set[0]
    assert ex.prompt.startswith("<|im_start|>system") and ex.prompt.endswith("assistant\n")
    assert ex.columns["messages"][0]["content"] in ex.prompt
    assert ex.demonstration == ex.columns["answer"]  # the assistant message's content
    import random

    prompts = {p for p, _ in dom.demonstrations(random.Random(0), 4)}
    assert all(p.endswith("<|im_start|>assistant\n") for p in prompts)
    strings = _jsonl(tmp_path / "s.jsonl", [{"prompt": "2+2=", "answer": "4"}] * 4)
    assert _domain(strings, ChatTemplate(chat_folder)).eval_set[0].prompt == "2+2="  # as before


def test_warm_start_demos_encode_as_the_template_renders_the_whole_conversation(
    tmp_path, chat_folder
):
    """SFT on a conversational demonstration: rendered prompt + completion + EOS are the
    tokens of the template's rendering of the conversation with the assistant's answer."""
    import random

    from transformers import AutoTokenizer

    from omnisched.model.warm_start import IGNORE, encode_demos

    tok = AutoTokenizer.from_pretrained(str(chat_folder))
    dom = _domain(_jsonl(tmp_path / "d.jsonl", _rows()), ChatTemplate(chat_folder),
                  completion_field="completion")  # fmt: skip
    demos = dom.demonstrations(random.Random(0), 3)
    examples = {ex.prompt: ex for ex in dom._train}
    for (ids, labels), (prompt, completion) in zip(encode_demos(tok, demos, 256), demos):
        messages = examples[prompt].columns["messages"]
        full = tok.apply_chat_template(
            [*messages, {"role": "assistant", "content": completion}], tokenize=False
        )
        assert ids == tok.encode(full.removesuffix("\n"), add_special_tokens=False)
        taught = [t for t in labels if t != IGNORE]
        assert tok.decode(taught) == completion + "<|im_end|>"  # the answer, then end of turn


def test_the_tiny_chat_model_warm_starts_on_conversational_demonstrations(tmp_path):
    """model.tiny.tokenizer=chat: the tiny model gets the BPE chat tokenizer, so conversational
    rows with a completion_field train its warm start (formerly a 154-line traceback); the
    folder it writes renders prompts exactly as the driver did before it existed."""
    from omnisched.config import load_recipe
    from omnisched.domains import build_domains
    from omnisched.orchestration import sft
    from omnisched.orchestration.backend import InlineBackend

    data = _jsonl(tmp_path / "d.jsonl", _rows(12))
    recipe = load_recipe(ROOT / "recipes/tiny.yaml", [
        "model.tiny.tokenizer=chat", "model.tiny.hidden_size=64", "model.tiny.num_layers=1",
        "model.tiny.intermediate_size=128", "model.warm_start.steps=3",
        "model.warm_start.batch_size=4", "model.warm_start.examples_per_domain=16",
        f"model.warm_start.cache_dir={tmp_path / 'cache'}",
        f"domains=[{{name: chatmath, type: data, eval_size: 2, options: {{path: {data}, "
        "completion_field: completion}, reward: [{verifier: exact_match}]}]",
    ])  # fmt: skip
    domains = build_domains(recipe)
    (tmp_path / "run").mkdir()
    folder = Path(sft.warm_start(recipe, domains, InlineBackend(), tmp_path / "run"))
    steps = (tmp_path / "run" / "warm_start_progress.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in steps] == [1, 2, 3]
    ex = domains["chatmath"].eval_set[0]
    assert ChatTemplate(folder).render(ex.columns["messages"], "t") == ex.prompt
    gen = json.loads((folder / "generation_config.json").read_text())
    assert len(gen["eos_token_id"]) == 2


def test_verifiers_and_judges_receive_the_messages(tmp_path, chat_folder):
    import rewards
    from judges.core import JudgeCore
    from omnisched.orchestration.groups import Group
    from omnisched.orchestration.reward_pool import _flatten
    from omnisched.rollout.base import Completion
    from omnisched.scoring import RewardScorer

    dom = _domain(_jsonl(tmp_path / "d.jsonl", _rows()), ChatTemplate(chat_folder))
    ex = dom.eval_set[0]
    group = Group("g0", dom.name, ex, [Completion(ex.prompt, t, [], []) for t in ("1", "x")])
    prompts, texts, columns, ids = _flatten([group])

    @rewards.register("test_echoes_question")
    def echoes(completions, messages, prompts, **_):
        return [float(m[-1]["content"].startswith("What") and "<|im_start|>" in p)
                for m, p in zip(messages, prompts)]  # fmt: skip

    try:
        scored = RewardScorer([RewardComponent(verifier="test_echoes_question")]).score(
            prompts, texts, columns, ids
        )
    finally:
        rewards.VERIFIERS._items.pop("test_echoes_question")
    assert scored.total == [1.0, 1.0]
    _, requests = JudgeCore().plan("id", prompts, texts, columns)
    shown = requests[0].messages[-1]["content"]
    assert "user: What is" in shown and "<|im_start|>" not in shown  # the conversation


BAD_ROWS = [
    # a wrong role key, a missing content, a role that is no role, a completion not renderable
    ([{"prompt": [{"rol": "user", "content": "hi"}], "answer": "1"}] * 4, {},
     "row 0: prompt: message 0 has no 'role' key (its keys: content, rol)"),
    ([{"prompt": [{"role": "user"}], "answer": "1"}] * 4, {},
     "row 0: prompt: message 0 has no 'content' key (its keys: role)"),
    ([{"prompt": [{"role": "human", "content": "hi"}], "answer": "1"}] * 4, {},
     "message 0 has role 'human'; known: system, user, assistant, tool"),
    ([{"prompt": QUESTION, "answer": "1", "completion": [{"role": "user", "content": "1"}]}] * 4,
     {"completion_field": "completion"},
     "row 0: completion: must be a string or a list of one assistant message"),
    ([{"prompt": QUESTION, "answer": "1"}] * 4, {"completion_field": "response"},
     "options.completion_field 'response' is not a column; columns: prompt, answer"),
]  # fmt: skip


@pytest.mark.parametrize(("rows", "options", "needle"), BAD_ROWS)
def test_bad_conversational_rows_are_one_line_naming_domain_and_file(
    tmp_path, chat_folder, rows, options, needle
):
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        _domain(path, ChatTemplate(chat_folder), **options)
    line = str(err.value)
    assert needle in line and f"domain 'chatmath': {path}" in line and "\n" not in line


def test_a_tokenizer_without_chat_template_is_one_line(tmp_path):
    from omnisched.model import build_char_tokenizer, build_tiny_model, save_model

    path = _jsonl(tmp_path / "d.jsonl", _rows())
    with pytest.raises(DataError, match=r"domain 'chatmath': .*d\.jsonl: row 0: .*tiny"):
        _domain(path, ChatTemplate(None))  # the built-in tiny model: char tokenizer
    tok = build_char_tokenizer()
    folder = save_model(build_tiny_model(TINY, tok, 0), tok, tmp_path / "char")
    with pytest.raises(DataError, match=r"d\.jsonl: row 0: .* tokenizer of .*char has none"):
        _domain(path, ChatTemplate(folder))


def test_dry_run_refuses_conversational_rows_without_a_chat_template(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", _rows())
    domains = (
        f"domains=[{{name: chatmath, type: data, options: {{path: {path}}}, "
        "reward: [{verifier: exact_match}]}]"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "omnisched.cli", "run", str(ROOT / "recipes/tiny.yaml"),
         domains, f"run.output_dir={tmp_path / 'runs'}", "--dry-run"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "domain 'chatmath'" in lines[0] and str(path) in lines[0]
    assert "chat template" in lines[0]


def test_grpo_on_the_bpe_chat_model_with_a_conversational_domain(tmp_path, chat_folder):
    """The acceptance run: `omnisched run` (no Ray), 2 GRPO steps, prompts rendered with the
    template in rollouts.jsonl, a verified and a judged conversational domain."""
    data = _jsonl(tmp_path / "math.jsonl", _rows(10))
    open_rows = [
        {"prompt": [{"role": "user", "content": f"A line about {w}."}], "keyword": w}
        for w in ("sea", "sky", "tree", "road", "rain", "sun")
    ]
    words = _jsonl(tmp_path / "lines.jsonl", open_rows)
    recipe = {
        "run": {"name": "chat", "output_dir": str(tmp_path / "runs"), "log_rollouts_every": 1},
        "model": {"path": str(chat_folder), "dtype": "float32"},
        "domains": [
            {"name": "chatmath", "type": "data", "eval_size": 1,
             "options": {"path": str(data)}, "reward": [{"verifier": "exact_match"}]},
            {"name": "lines", "type": "data", "eval_size": 1,
             "options": {"path": str(words), "kind": "open"},
             "reward": [{"judge": "creative_rubric"}]},
        ],
        "rollout": {"group_size": 2, "max_new_tokens": 4},
        "learner": {"micro_batch_size": 8},
        "schedule": {"policy": "joint", "phases": 1, "steps_per_phase": 2, "prompts_per_step": 2},
        "eval": {"samples": 1},
        "ray": {"enabled": False},
    }  # fmt: skip
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run(
        [sys.executable, "-m", "omnisched.cli", "run", str(path), "--quiet"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    logged = [json.loads(x) for x in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["kind"] == "train"]
    assert {r["step"] for r in train} == {1, 2}
    assert {r["domain"] for r in logged} == {"chatmath", "lines"}
    for r in logged:
        assert r["prompt"].startswith("<|im_start|>system\n")
        assert r["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["kind"] == "train"] == [1, 2]


def test_local_instruct_recipe_passes_the_dry_run_on_a_local_folder(
    tmp_path, chat_folder, monkeypatch
):
    """recipes/local-instruct.yaml: reasoning-gym, HumanEval and a judged conversational domain
    on a local model folder; its placeholder model.path is refused in one line."""
    from omnisched.config import load_recipe
    from omnisched.preflight import check_runnable

    ok = subprocess.run(
        [sys.executable, "-m", "omnisched.cli", "run", "recipes/local-instruct.yaml",
         "--dry-run", f"run.output_dir={tmp_path / 'runs'}", f"model.path={chat_folder}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    resolved = next(yaml.safe_load_all(ok.stdout))
    assert [(d["name"], d["type"]) for d in resolved["domains"]] == [
        ("arithmetic", "gym"), ("gsm", "gym"), ("humaneval", "humaneval"), ("open", "data")
    ]  # fmt: skip
    assert resolved["domains"][3]["reward"][0]["judge"] == "http"
    assert not (tmp_path / "runs").exists()
    monkeypatch.chdir(ROOT)  # the recipe's data path is relative to the repository root
    recipe = load_recipe("recipes/local-instruct.yaml")  # model.path: models/tiny-instruct
    with pytest.raises(DataError, match=r"^domain 'open': recipes/data/open-ended.jsonl: row 0"):
        check_runnable(recipe)
