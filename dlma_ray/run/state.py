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

from dlma_ray.core import storage
from dlma_ray.core.dicts import config_diff

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
# The stages of a round, in order (dlma_ray.pipeline runs them; evaluate only with eval.enabled).
STAGES = ("generate", "score", "train", "evaluate")
# The first stage of a round whose output a changed key makes stale; keys not listed here shape the prompts or
# the samples (model, data, pair, generation, run.seed, rounds.*), so every stage from `generate` on.
# The first prefix that matches decides (train.method changes every stage; train.max_length what score keeps).
FIRST_STALE_STAGE = (("train.method", "generate"), ("train.max_length", "score"), ("scoring.", "score"),
                     ("rounds.reference", "score"), ("self_contrast.", "score"), ("spin.history_rounds", "score"),
                     ("spin.", "train"), ("train.", "train"),
                     ("eval.", "evaluate"))


def first_stale_stage(key: str) -> str:
    """The first stage of a round that a change of ``key`` (a dotted config path) makes stale."""
    return next((stage for prefix, stage in FIRST_STALE_STAGE if key.startswith(prefix)), "generate")


def parse_stage(text: str, option: str = "--restart-from") -> tuple[int, str]:
    """`round_1/train` -> (1, "train"); a ValueError naming ``option`` and the accepted form otherwise."""
    head, _, stage = text.strip().strip("/").partition("/")
    index = head[len("round_"):] if head.startswith("round_") else ""
    if not index.isdigit() or stage not in STAGES:
        raise ValueError(f"{option} {text!r}: expected round_K/STAGE with K a round index and STAGE one of "
                         f"{', '.join(STAGES)} (e.g. round_1/train)")
    return int(index), stage


def stage_key(entry_or_point) -> tuple[int, int]:
    """Where a stage entry ({round, stage}) or a (round, stage) point falls in the run's order."""
    k, stage = (entry_or_point["round"], entry_or_point["stage"]) if isinstance(entry_or_point, dict) \
        else entry_or_point
    return k, STAGES.index(stage)


@dataclass
class RunState:
    run_dir: str
    config: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)
    restarts: list[dict[str, Any]] = field(default_factory=list)  # each --restart-from: where, which changes

    @property
    def path(self) -> str:
        return storage.join(self.run_dir, "state.json")

    @classmethod
    def open(cls, run_dir: str, config: dict[str, Any], restart_from: tuple[int, str] | None = None,
             unused: tuple[str, ...] = ()) -> "RunState":
        """Load the run's state, or start one; refuse a run dir made with another config, unless ``restart_from``
        (round, stage) says where to redo the run from with it: that stage and every later one are forgotten
        (their outputs are replaced as they are redone) and the change is recorded under `restarts`.
        ``unused``: key prefixes this run never reads (other methods' sections): changing them is accepted."""
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
        stale = [d for d in changes if not d.startswith(RESUMABLE_KEYS + tuple(unused))]
        restarts = saved.get("restarts", [])
        if restart_from is not None:
            keep = [e for e in stages if stage_key(e) < stage_key(restart_from)]
            where = f"round_{restart_from[0]}/{restart_from[1]}"
            log.warning("%s: restarting from %s: %d finished stages kept, %d to redo%s", path, where, len(keep),
                        len(stages) - len(keep), f"; the kept ones were made before these changes: {stale}"
                        if stale and keep else "")
            restarts = [*restarts, {"from": where, "changes": stale, "kept": len(keep),
                                    "at": time.strftime("%Y-%m-%dT%H:%M:%S")}]
            state = cls(run_dir, config, keep, restarts)
            state.save()
            return state
        if stale:
            first = min((first_stale_stage(d.split(":", 1)[0].strip()) for d in stale), key=STAGES.index)
            raise ConfigMismatchError(
                f"{run_dir} was made with a different config, and these changes would make its finished stages "
                "stale:\n  " + "\n  ".join(stale) + "\nUse another run.dir, or the config the run was made with "
                "(it is stored in state.json under `config`), or redo the run from the first stage these changes "
                f"touch with `--restart-from round_0/{first}` (a later round keeps the earlier rounds as they were "
                "made). Changes to resources, inference batch sizes, evaluation settings and rounds.count are "
                "accepted.")
        for change in changes:
            log.info("%s: resuming with a changed setting that leaves finished stages valid: %s", path, change)
        return cls(run_dir, config, stages, restarts)

    def save(self) -> None:
        doc = {"config": self.config, "stages": self.stages, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
               **({"restarts": self.restarts} if self.restarts else {})}
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
