"""The `Round` every stage is handed (config, run paths, round index, kept engines), and the model references
actors load: pi_0 pinned to `model.revision`, local paths made absolute for other processes."""

from __future__ import annotations

import os
from dataclasses import dataclass

from dlma_ray.core import storage
from dlma_ray.config.tree import Config
from dlma_ray.workers.engines import KeptEngines
from dlma_ray.run.layout import RoundLayout, RunLayout


@dataclass(frozen=True)
class Round:
    """One round of one run: the config, the run's paths and the round index k (pi_k is trained into pi_{k+1})."""

    cfg: Config
    run: RunLayout
    k: int
    # vLLM engines the pipeline keeps from evaluate(k-1) for this round's generate (dlma_ray.workers.engines); None: none
    engines: KeptEngines | None = None

    @property
    def paths(self) -> RoundLayout:
        return self.run.round(self.k)

    @property
    def initial(self) -> str:
        """pi_0 as an actor loads it: the configured model, pinned to `model.revision`."""
        return initial_model(self.cfg)

    @property
    def policy(self) -> str:
        """pi_k as an actor loads it: the configured model at round 0, else the policy trained in round k-1."""
        return self.initial if self.k == 0 else model_for_actor(self.run.round(self.k - 1).policy)

    @property
    def reference(self) -> str:
        """The DPO reference: pi_k (`rounds.reference: round_start`, the paper) or pi_0 (`initial`)."""
        return self.policy if self.cfg.rounds.reference == "round_start" else self.initial


def model_for_actor(ref: str) -> str:
    # `builtin:` references resolve inside each actor: every node converts and caches its own copy.
    # Hub names pass through; only an existing local path is made absolute for other processes.
    return storage.absolute(ref) if not ref.startswith("builtin:") and os.path.exists(ref) else ref


def initial_model(cfg: Config) -> str:
    """pi_0 for every loader (engines, scorers, trainers, judges): `model.path`, pinned to `model.revision`."""
    from dlma_ray.model.loading import pinned

    return model_for_actor(pinned(cfg.model.path, cfg.model.revision))
