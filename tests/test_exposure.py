"""A phase's exposure (step-equivalents per domain, what transfer is fitted on) counts what the
steps drew: `prompts/<domain>` / prompts_per_step from the step statistics, dynamic sampling's
extra draws and unequal domain weights included, for online mixtures and fixed phases alike;
a replayed step id after a resume changes nothing."""

import pytest

from omnisched.config.schema import ScheduleConfig
from omnisched.orchestration.services import SchedulerService
from omnisched.schedule import Evaluation, SchedulerState

KINDS = {"math": "structured", "code": "structured", "qa": "open"}
EVAL = Evaluation(dict.fromkeys(KINDS, 0.3), dict.fromkeys(KINDS, 1.0))


def service(path, policy: str, state: SchedulerState | None = None) -> SchedulerService:
    state = state or SchedulerState(list(KINDS), KINDS, policy, 3)
    cfg = ScheduleConfig(policy=policy, steps_per_phase=4, prompts_per_step=8, probe_steps=0)
    return SchedulerService(state, cfg, str(path))


def stats(drawn: dict[str, int]) -> dict:
    """A step record as the controller passes it: rewards and the prompts drawn per domain."""
    out = {f"reward/{d}": 0.5 for d, n in drawn.items() if n}
    return {**out, **{f"prompts/{d}": n for d, n in drawn.items()}, "domains": "+".join(KINDS)}


def test_an_online_mixture_charges_the_prompts_drawn_not_its_weights(tmp_path):
    svc = service(tmp_path / "s.json", "bandit")
    svc.record_baseline(EVAL)
    svc.next_phase()  # uniform weights: 1/3 each
    # dynamic sampling drew 12 prompts (8 + 4 refills): 1.5 step-equivalents, not 1
    svc.observe_step(1, stats({"math": 6, "code": 4, "qa": 2}))
    svc.observe_step(2, stats({"math": 3, "code": 3, "qa": 2}))
    expected = {"math": 9 / 8, "code": 7 / 8, "qa": 4 / 8}
    assert svc.state.phases[-1].exposure == pytest.approx(expected)
    assert svc.state.policy_state["bandit"]["exposure"] == pytest.approx(expected)
    resumed = service(tmp_path / "s.json", "bandit", SchedulerState.load(tmp_path / "s.json"))
    resumed.observe_step(2, stats({"math": 8, "code": 0, "qa": 0}))  # a replay: ignored
    assert resumed.state.phases[-1].exposure == pytest.approx(expected)


def test_a_fixed_phase_charges_what_its_steps_drew(tmp_path):
    svc = service(tmp_path / "s.json", "joint")
    svc.record_baseline(EVAL)
    svc.next_phase()
    svc.observe_step(1, stats({"math": 4, "code": 2, "qa": 2}))  # domain weights 2:1:1
    svc.observe_step(2, stats({"math": 8, "code": 3, "qa": 5}))  # refilled to 16 draws
    snapshot = svc.get_state()  # a checkpoint at step 2 holds the scheduler's state as it is
    # the process dies; the resumed run, from that checkpoint, replays step 2, then goes on
    resumed = service(tmp_path / "s.json", "joint", SchedulerState.from_dict(snapshot))
    resumed.next_phase()  # the open phase's decision stands
    resumed.observe_step(2, stats({"math": 8, "code": 3, "qa": 5}))
    resumed.observe_step(3, stats({"math": 4, "code": 2, "qa": 2}))
    resumed.finish_phase(3, EVAL)
    done = SchedulerState.load(tmp_path / "s.json").phases[0]
    assert done.exposure == pytest.approx({"math": 2.0, "code": 7 / 8, "qa": 9 / 8})

    resumed.next_phase()  # without draw counts (the simulator): steps split evenly, as before
    for step in (4, 5):
        resumed.observe_step(step, {"reward/math": 0.5})
    resumed.finish_phase(2, EVAL)
    assert resumed.state.phases[1].exposure == pytest.approx(dict.fromkeys(KINDS, 2 / 3))


def test_a_one_domain_phase_without_refills_keeps_one_step_equivalent_per_step(tmp_path):
    svc = service(tmp_path / "s.json", "sequential")
    svc.record_baseline(EVAL)
    trained = svc.next_phase().domains
    assert trained == ["math"]
    for step in range(4):
        svc.observe_step(step, stats({"math": 8, "code": 0, "qa": 0}))
    svc.finish_phase(4, EVAL)
    assert svc.state.phases[0].exposure == {"math": 4.0}
