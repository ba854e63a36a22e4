"""The `Judge` base class and its registry (dlma_ray.core.registry). A judge is one decorated class in one file of
this folder:

    @register
    class FivePoint(Judge):
        name = "five_point"
        verdict = "score"
        runs_on = "policy"

A judge labels a pair (which of two answers is better, with a probability: ``verdict = "prefer"``) or scores
one answer (``verdict = "score"``, a pair's label is then the higher score). What it needs to run (``runs_on``):

    pair_logprobs  log-probs the score stage already computed (R, C): no model of its own
    policy         the model being trained, on the round's vLLM engines (next-token log-probs or generated text)
    score_model    a reward or cost model folder (eval.judge_model / --judge-model)
    endpoint       an OpenAI-compatible chat endpoint (eval.judge_url, eval.judge_model, a key in the environment)

Methods name the judge that labels their pairs (`Method.judge`); evaluation (`eval.judge`) and `dlma-ray judge`
/ `compare` (`--judge`) take judges by name from here. The judging itself is plain functions in each judge's
module (no Ray); the workers call them where the model already is.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

from dlma_ray.core.registry import Registry

J = TypeVar("J", bound=type)
RUNS_ON = ("pair_logprobs", "policy", "score_model", "endpoint")
VERDICTS = ("prefer", "score")


class JudgeError(RuntimeError):
    """A judge cannot be used (unknown name, missing model, unset key, unreachable endpoint)."""


_REGISTRY: Registry["Judge"] = Registry("judge", JudgeError)


class Judge:
    name: ClassVar[str]
    summary: ClassVar[str] = ""  # one line for the docs and --help
    verdict: ClassVar[str] = "prefer"  # "prefer": P(an answer beats the other); "score": a number per answer
    runs_on: ClassVar[str] = "pair_logprobs"
    head_to_head: ClassVar[bool] = False  # `dlma-ray judge` / `compare` can judge two policies' answers with it
    answers_vs_round0: ClassVar[bool] = False  # eval.judge: judges each round's answers against round 0's
    order: ClassVar[int] = 100  # where it is listed

    def check(self, cfg, timeout: float = 5.0) -> None:
        """Raise JudgeError naming the config key when the judge cannot be used with ``cfg``; quick, no model load
        (``timeout``: for a judge that asks a server)."""


def register(cls: J) -> J:
    """Class decorator: make a judge available under its `name`."""
    if cls.runs_on not in RUNS_ON or cls.verdict not in VERDICTS:
        raise ValueError(f"{cls.__name__}: runs_on {cls.runs_on!r} / verdict {cls.verdict!r}; expected one of "
                         f"{RUNS_ON} / {VERDICTS}")
    return _REGISTRY.add(cls)


def names(**where) -> list[str]:
    """Registered judge names in listing order; ``where``: class attributes to match (e.g. head_to_head=True)."""
    return _REGISTRY.names(**where)


def get(name: str, field: str = "judge") -> Judge:
    """The judge called ``name``; an unknown name raises JudgeError naming ``field`` and every judge."""
    return _REGISTRY.get(name, field)


def check_judge(cfg, timeout: float = 5.0) -> None:
    """Raise JudgeError naming the config key when ``cfg.eval.judge`` cannot be used; quick, no model load."""
    get(cfg.eval.judge, "eval.judge").check(cfg, timeout)
