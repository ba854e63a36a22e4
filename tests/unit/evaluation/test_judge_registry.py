"""Judges are one registry: methods name the judge that labels their pairs, eval.judge and --judge take names
from it, and an unknown name lists every judge."""

from __future__ import annotations

import typing

import pytest

from dlma_ray.config.tree import EvalConfig, load_config
from dlma_ray.evaluation import judges
from dlma_ray.evaluation.judges.judge import Judge, register


def test_every_judge_the_issue_names_is_registered():
    assert set(judges.names()) == {"self_reward", "distillation", "ab", "five_point", "reward_model", "cost_model",
                                   "openai"}
    for name in judges.names():
        j = judges.get(name)
        assert j.summary and j.runs_on in ("pair_logprobs", "policy", "score_model", "endpoint")


def test_unknown_judge_names_the_field_and_every_judge():
    with pytest.raises(judges.JudgeError) as err:
        judges.get("gpt5", "--judge")
    assert "--judge: 'gpt5' is not a judge" in str(err.value)
    assert all(n in str(err.value) for n in judges.names())


def test_methods_name_registered_judges():
    import dlma_ray.methods as methods

    labelled = {m: methods.get(m).judge for m in methods.names()}
    assert labelled["dlma"] == "self_reward" and labelled["rlaif"] == "ab" and labelled["self_rewarding"] == "five_point"
    assert all(j is None or j in judges.names() for j in labelled.values())


def test_eval_and_head_to_head_choices_come_from_the_registry():
    allowed = typing.get_args(typing.get_type_hints(EvalConfig)["judge"])
    assert set(allowed) == set(judges.names(answers_vs_round0=True))
    assert judges.names(head_to_head=True) == ["distillation", "ab", "five_point", "reward_model", "cost_model", "openai"]
    from dlma_ray.cli import build_parser

    parser = build_parser()
    for command in ("judge", "compare"):
        sub = parser._subparsers._group_actions[0].choices[command]
        choices = next(a.choices for a in sub._actions if "--judge" in a.option_strings)
        assert list(choices) == judges.names(head_to_head=True)


def test_check_judge_goes_through_the_registry(monkeypatch):
    judges.check_judge(load_config(None, []))  # self_reward: nothing to check
    with pytest.raises(judges.JudgeError, match="eval.judge=reward_model needs eval.judge_model"):
        judges.check_judge(load_config(None, ["eval.judge=reward_model"]))
    with pytest.raises(judges.JudgeError, match="eval.judge=openai needs eval.judge_url"):
        judges.check_judge(load_config(None, ["eval.judge=openai"]))


def test_a_judge_registers_once_with_a_valid_shape():
    class Twice(Judge):
        name = "ab"

    with pytest.raises(ValueError, match="registered twice"):
        register(Twice)

    class Odd(Judge):
        name = "odd"
        runs_on = "oracle"

    with pytest.raises(ValueError, match="runs_on"):
        register(Odd)
    assert "odd" not in judges.names()
