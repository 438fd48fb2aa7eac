"""LLM-as-judge backends and rubric judges, found by name through the `JUDGES` registry."""

from judges.base import Judge, Verdict
from judges.rubric import CreativeRubricJudge
from omnisched.registry import Registry

JUDGES: Registry = Registry("judge", "omnisched.judges")
JUDGES.add("creative_rubric", CreativeRubricJudge)


def get(name: str):
    """The judge class (or factory) registered under `name`."""
    return JUDGES.get(name)


__all__ = ["JUDGES", "CreativeRubricJudge", "Judge", "Verdict", "get"]
