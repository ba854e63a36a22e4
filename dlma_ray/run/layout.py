"""Every path of a run directory, spelled once. A run directory may be local or a URI (`s3://...`).

    <run>/state.json                 which stages finished (dlma_ray.run.state)
    <run>/.lock                      the one writer (dlma_ray.run.lock)
    <run>/baseline_answers.jsonl     pi_0's answers to the held-out prompts (evaluation, once per run)
    <run>/baseline_scores.json       pi_0's scores of the fixed evaluation items (once per run)
    <run>/report.md, <run>/report/   the run's report and its figures
    <run>/evals/<name>/              a policy evaluated on its own (jobs/evaluate.py)
    <run>/round_<k>/generations/     Parquet, GENERATION_SCHEMA
    <run>/round_<k>/pairs/           Parquet, PAIR_SCHEMA
    <run>/round_<k>/policy/          pi_{k+1}: HF folder (safetensors, tokenizer, train_metrics.jsonl)
    <run>/round_<k>/eval.json        the evaluation of pi_{k+1}; answers.jsonl beside it
    <run>/round_<k>/.ray_train/      Ray Train's scratch space while the round trains
    <run>/tracking/                  the experiment trackers' files (dlma_ray.run.tracking: tensorboard/, metrics.jsonl,
                                     mlruns/, wandb/)
"""

from __future__ import annotations

from dataclasses import dataclass

from dlma_ray.core import storage

ROUND_PREFIX = "round_"
TRAIN_METRICS_FILE = "train_metrics.jsonl"
BASELINE_ANSWERS_FILE = "baseline_answers.jsonl"
BASELINE_SCORES_FILE = "baseline_scores.json"  # beside the baseline answers it was computed with
STAGE_OUTPUTS = {"generate": "generations", "score": "pairs", "train": "policy", "evaluate": "eval.json"}


@dataclass(frozen=True)
class RoundLayout:
    """The folder of one round and what its stages write there."""

    dir: str
    index: int

    def _at(self, name: str) -> str:
        return storage.join(self.dir, name)

    @property
    def generations(self) -> str:
        return self._at("generations")

    @property
    def pairs(self) -> str:
        return self._at("pairs")

    @property
    def policy(self) -> str:
        return self._at("policy")

    @property
    def train_metrics(self) -> str:
        return storage.join(self.policy, TRAIN_METRICS_FILE)

    @property
    def eval_json(self) -> str:
        return self._at("eval.json")

    @property
    def answers(self) -> str:
        return self._at("answers.jsonl")

    @property
    def train_scratch(self) -> str:
        return self._at(".ray_train")

    def output(self, stage: str) -> str:
        """Where ``stage`` (generate, score, train, evaluate) writes its result."""
        return self._at(STAGE_OUTPUTS[stage])


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory (``root``: a local path or a URI)."""

    root: str

    def _at(self, name: str) -> str:
        return storage.join(self.root, name)

    @property
    def state(self) -> str:
        return self._at("state.json")

    @property
    def lock(self) -> str:
        return self._at(".lock")

    @property
    def tracking(self) -> str:
        return self._at("tracking")

    @property
    def baseline_answers(self) -> str:
        return self._at(BASELINE_ANSWERS_FILE)

    @property
    def baseline_scores(self) -> str:
        return self._at(BASELINE_SCORES_FILE)

    @property
    def report_md(self) -> str:
        return self._at("report.md")

    @property
    def report_dir(self) -> str:
        return self._at("report")

    def round(self, k: int) -> RoundLayout:
        return RoundLayout(self._at(f"{ROUND_PREFIX}{k}"), k)

    def evals(self, name: str) -> str:
        return storage.join(self._at("evals"), name)

    def rounds(self, planned: int = 0) -> list[int]:
        """The indices of the round folders present, ascending; looks past the ``planned`` count (a run may
        have been extended) but not past the first missing folder after it."""
        found, k = [], 0
        while k < planned or storage.exists(self.round(k).dir):
            if storage.exists(self.round(k).dir):
                found.append(k)
            k += 1
        return found

    def latest_policy(self) -> int | None:
        """The last round whose policy folder is complete (has config.json), or None."""
        done = [k for k in self.rounds() if storage.exists(storage.join(self.round(k).policy, "config.json"))]
        return done[-1] if done else None
