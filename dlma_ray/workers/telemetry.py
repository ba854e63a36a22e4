"""The pipeline's own metrics, exported through `ray.util.metrics`.

They appear on the Ray dashboard's metrics view and on each node's Prometheus endpoint (prefixed
`ray_`), beside Ray Data's and Ray Train's own progress. Metrics are created lazily in the process
that records them (actors, train workers, the driver); outside Ray every call is a no-op, so the
stage classes stay usable in plain Python.

    dlma_prompts_generated_total      prompts answered (both sides)          tags: round
    dlma_tokens_generated_total       response tokens sampled                tags: round
    dlma_generation_tokens_per_second tokens/s of the last engine batch      tags: round
    dlma_pairs_scored_total           pairs scored                           tags: round
    dlma_self_reward_abs              histogram of |R| (Ray wants boundaries > 0)  tags: round, sign
    dlma_train_loss                   loss of the last optimizer step        tags: round
    dlma_train_reward_margin          DPO reward margin of the last step     tags: round
    dlma_train_steps_total            optimizer steps                        tags: round
    dlma_current_round                round the job is in
    dlma_stage_running                1 for the stage running now, else 0    tags: stage
    dlma_stage_seconds                duration of each finished stage        tags: round, stage
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)

ABS_R_BOUNDARIES = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0]

_SPECS = {
    "dlma_prompts_generated_total": ("counter", "Prompts answered under both contrastive prompts", ("round",)),
    "dlma_tokens_generated_total": ("counter", "Response tokens sampled by the engines", ("round",)),
    "dlma_generation_tokens_per_second": ("gauge", "Tokens per second of the last engine batch", ("round",)),
    "dlma_pairs_scored_total": ("counter", "Preference pairs scored", ("round",)),
    "dlma_self_reward_abs": ("histogram", "|R| of scored pairs; tag sign: positive (y+ preferred) or not",
                             ("round", "sign")),
    "dlma_train_loss": ("gauge", "DLMA loss of the last optimizer step", ("round",)),
    "dlma_train_reward_margin": ("gauge", "DPO implicit reward margin of the last optimizer step", ("round",)),
    "dlma_train_steps_total": ("counter", "Optimizer steps taken", ("round",)),
    "dlma_current_round": ("gauge", "Round the job is in", ()),
    "dlma_stage_running": ("gauge", "1 for the stage running now", ("stage",)),
    "dlma_stage_seconds": ("gauge", "Seconds the finished stage took", ("round", "stage")),
}


@functools.lru_cache(maxsize=None)
def _metric(name: str):
    try:
        import ray
        from ray.util import metrics

        if not ray.is_initialized():
            return None
    except ImportError:
        return None
    kind, doc, tags = _SPECS[name]
    if kind == "counter":
        return metrics.Counter(name, description=doc, tag_keys=tags)
    if kind == "gauge":
        return metrics.Gauge(name, description=doc, tag_keys=tags)
    return metrics.Histogram(name, description=doc, boundaries=ABS_R_BOUNDARIES, tag_keys=tags)


def _tags(**tags) -> dict[str, str]:
    return {k: str(v) for k, v in tags.items()}


def inc(name: str, value: float = 1.0, **tags) -> None:
    m = _metric(name)
    if m is not None and value > 0:
        m.inc(value, tags=_tags(**tags))


def set_gauge(name: str, value: float, **tags) -> None:
    m = _metric(name)
    if m is not None:
        m.set(float(value), tags=_tags(**tags))


def observe_self_rewards(values, round_index: int) -> None:
    m = _metric("dlma_self_reward_abs")
    if m is None:
        return
    for v in values:
        if v == v:  # skip NaN (methods without a self-reward)
            m.observe(abs(float(v)), tags=_tags(round=round_index, sign="positive" if v > 0 else "non_positive"))
