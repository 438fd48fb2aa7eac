"""LLM-as-judge backends and rubric judges, found by name through the `JUDGES` registry.

`http` (alias `openai`): any OpenAI-compatible server (`vllm serve`, `python -m judges.serve`).
`hf_local`: a local HF model folder run in-process (imports torch lazily, on first use).
`creative_rubric`: the deterministic rubric of the built-in `creative` domain.
"""

from judges.base import CountingJudge, Judge, Verdict
from judges.rubric import CreativeRubricJudge
from omnisched.registry import Registry

JUDGES: Registry = Registry("judge", "omnisched.judges")
JUDGES.add("creative_rubric", CreativeRubricJudge)
JUDGES.add_lazy("http", "judges.http:HttpJudge")  # lazy: aiohttp is only needed when used
JUDGES.add_lazy("openai", "judges.http:HttpJudge")
JUDGES.add_lazy("hf_local", "judges.hf_local:HFLocalJudge")


def get(name: str):
    """The judge class (or factory) registered under `name`."""
    return JUDGES.get(name)


__all__ = ["JUDGES", "CountingJudge", "CreativeRubricJudge", "Judge", "Verdict", "get"]
