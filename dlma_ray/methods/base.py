"""The `Method` base class and its registry. A method is one decorated class in one file of this folder:

    @register
    class Rlcd(Method):
        name = "rlcd"

Its defaults: the contrastive generate stage, the score stage computing reference log-probs only, training
on pair rows with the DPO loss, the standard evaluation. A method overrides what differs, nothing else.

Importing the registry loads no torch (the CLI lists methods in a fraction of a second): a loss imports the math
(dlma_ray.core.losses, dlma_ray.model.logprobs) when it first runs.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np

from dlma_ray.config.tree import Config, ConfigError
from dlma_ray.config.interfaces import Batch, StageResult
from dlma_ray.core.registry import Registry
from dlma_ray.evaluation import judges
from dlma_ray.stages import generate, score
from dlma_ray.stages import train as train_stage
from dlma_ray.stages.round import Round

M = TypeVar("M", bound=type)
_REGISTRY: Registry["Method"] = Registry("method", ConfigError)


class Method:
    name: ClassVar[str]
    unit: ClassVar[str] = "pairs"  # what a training row is
    scoring: ClassVar[str] = "reference"  # the score stage's mode (dlma_ray.workers.scoring): contrastive, reference, none
    summary: ClassVar[str] = ""  # one line for the docs and --help
    order: ClassVar[int] = 100  # where it is listed (docs, comparison): lower first
    generates_on_engines: ClassVar[bool] = True  # its generate stage samples pi_k on vLLM engines (engine_pool)
    judge: ClassVar[str | None] = None  # the judge (evaluation.judges) labelling its pairs; None: by construction
    iterates: ClassVar[bool] = False  # each new policy regenerates its data by design (compare's round counts)

    def check(self, cfg: Config) -> list[str]:
        """Config errors only this method can see (each naming its field); [] when fine."""
        return []

    def engine_call(self, cfg: Config) -> tuple[int, int]:
        """(prompts in one engine call, answers sampled per prompt): a contrastive pair per prompt by default.
        The generate stage sizes its calls so, and `dlma-ray plan` its KV cache."""
        return cfg.generation.batch_size, 2

    def judge_work(self, cfg: Config) -> tuple[int, int]:
        """(judge requests per prompt, tokens each) that the policy generates as its own judge on the engines."""
        return 0, 0

    def generate(self, r: Round) -> StageResult:
        return generate.contrastive(r)

    def score(self, r: Round) -> StageResult:
        return score.pairs(r, self.scoring)

    def train(self, r: Round) -> StageResult:
        return train_stage.fit(r, self)

    def evaluate(self, r: Round) -> StageResult:
        from dlma_ray.stages.evaluate import run_round  # the evaluation stage also serves jobs/evaluate.py

        return run_round(r)

    def train_options(self, cfg: Config) -> dict[str, Any]:
        """Settings of the method's own config section that its `loss` reads, added to the `train` dict it gets."""
        return {}

    def training_rows(self, ds):
        """The round's train-split pair rows as this method trains on them (one row = one `unit`)."""
        return ds

    def loss(self, model, tokenizer, rows: Batch, train: dict[str, Any], device) -> tuple[Any, dict]:
        """DPO on (y+, y-) against the stored reference log-probs (the DLMA loss with gamma 0)."""
        from dlma_ray.core.losses import dlma_loss

        logp_chosen, logp_rejected = pair_logprobs(model, tokenizer, rows, train["max_length"], device,
                                                   train.get("packing", True))
        return dlma_loss(logp_chosen, logp_rejected, float_column(rows["ref_logp_chosen"], device),
                         float_column(rows["ref_logp_rejected"], device), None, beta=train["beta"], gamma=0.0)


# ---------------------------------------------------------------- helpers the losses share

def float_column(values, device):
    """A column (or any sequence of numbers) as a float32 tensor; copies: Ray's numpy batches are read-only."""
    import torch

    return torch.tensor(np.asarray(values, dtype=np.float64), dtype=torch.float32, device=device)


def preference_encoded(tokenizer, rows: Batch, max_length: int) -> list[tuple[list[int], list[int]]]:
    """2B (context ids, response ids): the B chosen responses, then the B rejected ones, after the plain
    context, as the token ids the score stage scored (`logprobs.side_ids`)."""
    from dlma_ray.model.logprobs import encode_response, side_ids

    contexts = [str(c) for c in rows["plain_context"]] * 2
    responses = side_ids(tokenizer, rows, "chosen") + side_ids(tokenizer, rows, "rejected")
    return [encode_response(tokenizer, c, r, max_length) for c, r in zip(contexts, responses)]


def preference_batch(tokenizer, rows: Batch, max_length: int):
    """``preference_encoded`` as one padded batch (the unpacked path, and the benchmarks' baseline)."""
    from dlma_ray.model.logprobs import collate, pad_id

    return collate(preference_encoded(tokenizer, rows, max_length), pad_id(tokenizer))


def pair_logprobs(model, tokenizer, rows: Batch, max_length: int, device, packed: bool = True):
    """log pi(y+|x) and log pi(y-|x) under the plain context, in one forward (``logprobs.response_logprobs``)."""
    from dlma_ray.model.logprobs import pad_id, response_logprobs

    logp = response_logprobs(model, preference_encoded(tokenizer, rows, max_length), pad_id(tokenizer), device,
                             packed)
    n = len(rows["chosen"])
    return logp[:n], logp[n:]


# ---------------------------------------------------------------- the registry

def register(cls: M) -> M:
    """Class decorator: make a method available under its `name` (`train.method`)."""
    if cls.judge is not None and cls.judge not in judges.names():
        raise ValueError(f"{cls.__name__}.judge: {cls.judge!r} is not a judge; expected one of {judges.names()}")
    if cls.scoring not in ("contrastive", "reference", "none"):
        raise ValueError(f"{cls.__name__}.scoring: {cls.scoring!r}; expected contrastive, reference or none")
    return _REGISTRY.add(cls)


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy method clean up with this)."""
    _REGISTRY.remove(name)


def names() -> list[str]:
    """The registered method names, in listing order."""
    return _REGISTRY.names()


def get(name: str) -> Method:
    return _REGISTRY.get(name, "train.method")


def check(cfg: Config) -> Method:
    """The run's method, after its own config checks: raises ConfigError naming every bad field."""
    method = get(cfg.train.method)
    errors = method.check(cfg)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    return method
