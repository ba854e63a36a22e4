"""`<run_dir>/state.json`: which stages of which rounds have finished, replaced atomically.

A stage counts as done only once its entry is here, and entries are written after the stage's
output has been renamed into place; so a killed run, started again, redoes at most the stage it
was in. The config the run was made with is stored too: a different config is refused, with the
differing keys named, because mixing rounds of two configs would silently change the experiment.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from dlma_ray import storage
from dlma_ray.config import config_diff

log = logging.getLogger("dlma_ray")
# Keys that may change between invocations of one run without making a finished stage's output stale: where
# the run lives and what runs it, how it logs, batch sizes of inference (not of training: they shape the
# optimizer steps), evaluation settings (rounds already evaluated keep their eval.json), and the round count
# (more rounds extend the run; fewer stop it early).
RESUMABLE_KEYS = ("run.dir", "run.log_level", "run.trackers", "resources.", "generation.batch_size",
                  "scoring.batch_size", "eval.", "rounds.count", "self_contrast.num_embedders",
                  "self_contrast.cpus_per_embedder", "self_contrast.gpus_per_embedder",
                  "self_contrast.embedding_batch_size")


class ConfigMismatchError(RuntimeError):
    pass


class StateFileError(RuntimeError):
    """state.json cannot be read: names the file and the ways out."""


@dataclass
class RunState:
    run_dir: str
    config: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return storage.join(self.run_dir, "state.json")

    @classmethod
    def open(cls, run_dir: str, config: dict[str, Any]) -> "RunState":
        """Load the run's state, or start one; refuse a run dir made with another config."""
        path = storage.join(run_dir, "state.json")
        if not storage.exists(path):
            state = cls(run_dir, config)
            state.save()
            return state
        try:
            saved = json.loads(storage.read_text(path))
            stages = saved["stages"]
            saved_config = saved["config"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StateFileError(
                f"{path} is damaged ({type(exc).__name__}: {exc}); it records which stages of the run finished. "
                f"Restore it from a backup, or move it aside to start the run over in {run_dir} (every stage is "
                "then redone and its output replaced), or use another run.dir.") from None
        if not stages:
            # Nothing finished yet: nothing a changed config could make stale (e.g. a first stage that failed).
            if saved_config != config:
                log.info("%s: no stage had finished; taking the new config", path)
            state = cls(run_dir, config)
            state.save()
            return state
        # Keys the saved config lacks were added by a newer dlma-ray: their defaults do not block a resume.
        changes = config_diff(saved_config, config, common_only=True)
        stale = [d for d in changes if not d.startswith(RESUMABLE_KEYS)]
        if stale:
            raise ConfigMismatchError(
                f"{run_dir} was made with a different config, and these changes would make its finished stages "
                "stale:\n  " + "\n  ".join(stale) + "\nUse another run.dir, or the config the run was made with "
                "(it is stored in state.json under `config`). Changes to resources, inference batch sizes, "
                "evaluation settings and rounds.count are accepted.")
        for change in changes:
            log.info("%s: resuming with a changed setting that leaves finished stages valid: %s", path, change)
        return cls(run_dir, config, stages)

    def save(self) -> None:
        doc = {"config": self.config, "stages": self.stages, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        storage.write_text_atomic(self.path, json.dumps(doc, indent=2))

    def done(self, round_index: int, stage: str) -> dict[str, Any] | None:
        for entry in self.stages:
            if entry["round"] == round_index and entry["stage"] == stage:
                return entry
        return None

    def truncate(self, count: int) -> None:
        """Forget every stage from position ``count`` on (their outputs are redone)."""
        self.stages = self.stages[:count]
        self.save()

    def record(self, round_index: int, stage: str, output: str, rows: int, seconds: float, **extra) -> None:
        self.stages.append({"round": round_index, "stage": stage, "output": output, "rows": rows,
                            "seconds": round(seconds, 2), **extra})
        self.save()
