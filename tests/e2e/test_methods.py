"""One tiny round of each non-DLMA method end to end through jobs/iterate.py (DLMA itself:
tests/e2e/test_killed_run.py).

Each method runs once, in a subprocess (this process never starts Ray), as a module-scoped fixture; the
tests read the finished run dir. RAY_ADDRESS=local gives every run a private Ray instance, so runs of
other test sessions on the same machine are never joined. The rlcd, context-distillation and self-contrast
runs start from their paper presets (jobs/configs/*-paper-*.yaml) with jobs/configs/embedded-overlay.yaml, so a
preset that no longer loads or runs fails here; the tests' own overrides come last.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from dlma_ray.core.schema import PAIR_SCHEMA

REPO = Path(__file__).resolve().parents[2]
K, N = 2, 4
OVERLAY = REPO / "jobs/configs/embedded-overlay.yaml"


def preset(name: str) -> list[str]:
    """`--config` arguments that start a run from the preset ``name`` of jobs/configs, made tiny by the overlay."""
    return ["--config", str(REPO / "jobs/configs" / name), "--config", str(OVERLAY)]


def run_method(tiny_model_dir: str, run_dir: Path, method: str, *extra: str, configs: list[str] = ()) -> Path:
    args = [*configs, f"model.path={tiny_model_dir}", f"run.dir={run_dir}", f"train.method={method}", "rounds.count=1",
            "eval.enabled=false", "data.max_prompts=8", "data.heldout_fraction=0.2", "generation.max_new_tokens=8",
            "generation.cpu_kvcache_gb=1", "train.micro_batch_size=2", "train.global_batch_size=4", "train.lr=1e-3",
            *extra]
    env = dict(os.environ, RAY_ADDRESS="local")
    result = subprocess.run([sys.executable, str(REPO / "jobs/iterate.py"), *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    # A healthy run's log has no tracebacks: users learn to read them, not skip them (engines are ended so that
    # vLLM shuts its core down itself: dlma_ray.workers.engines.ENGINE_RUNTIME_ENV).
    lines = (result.stdout + result.stderr).splitlines()
    ours = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    assert not ours, "\n".join(lines[ours[0]:ours[0] + 30]) if ours else ""
    stages = [(s["round"], s["stage"]) for s in json.loads((run_dir / "state.json").read_text())["stages"]]
    assert stages == [(0, "generate"), (0, "score"), (0, "train")]
    return run_dir


@pytest.fixture(scope="module")
def rlcd_run(tiny_model_dir, tmp_path_factory):
    return run_method(tiny_model_dir, tmp_path_factory.mktemp("rlcd") / "run", "rlcd",
                      configs=preset("rlcd-paper-pku-7b.yaml"))


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir, tmp_path_factory, hh_file):
    return run_method(tiny_model_dir, tmp_path_factory.mktemp("dpo") / "run", "dpo", f"data.source={hh_file}")


@pytest.fixture(scope="module")
def cd_run(tiny_model_dir, tmp_path_factory):
    return run_method(tiny_model_dir, tmp_path_factory.mktemp("cd") / "run", "context_distillation",
                      configs=preset("context-distillation-paper-pku-7b.yaml"))


@pytest.fixture(scope="module")
def sc_run(tiny_model_dir, tmp_path_factory, hh_file):
    return run_method(tiny_model_dir, tmp_path_factory.mktemp("sc") / "run", "self_contrast",
                      f"data.source={hh_file}", "data.prompt_field=chosen", f"self_contrast.num_samples={N}",
                      f"self_contrast.num_negatives={K}", configs=preset("self-contrast-paper-hh-rlhf-7b.yaml"))


def pairs(run_dir: Path) -> list[dict]:
    table = pq.read_table(run_dir / "round_0/pairs")
    assert table.schema.names == PAIR_SCHEMA.names and [f.type for f in table.schema] == [f.type for f in PAIR_SCHEMA]
    return table.to_pylist()


def train_steps(run_dir: Path) -> list[dict]:
    lines = (run_dir / "round_0/policy/train_metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def weights_changed(tiny_model_dir: str, run_dir: Path) -> bool:
    from safetensors.torch import load_file

    before, after = load_file(f"{tiny_model_dir}/model.safetensors"), load_file(run_dir / "round_0/policy/model.safetensors")
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_rlcd_has_no_self_reward_and_trains(rlcd_run, tiny_model_dir):
    rows = pairs(rlcd_run)
    assert len(rows) == 8
    for r in rows:
        assert all(math.isnan(r[c]) for c in ("self_reward", "logp_pos_chosen", "logp_neg_chosen",
                                               "logp_pos_rejected", "logp_neg_rejected", "similarity"))
        assert math.isfinite(r["ref_logp_chosen"]) and math.isfinite(r["ref_logp_rejected"])
        assert r["pos_context"] != r["neg_context"] and r["negative_index"] == 0
        # the preset's raw tags (the released DLMA text), not the embedded defaults' chat template
        assert r["pos_context"].startswith("USER: ") and r["pos_context"].endswith(
            "\nASSISTANT(law-abiding, ethical, inoffensive response):\n")
    steps = train_steps(rlcd_run)
    assert steps and all(s["target_margin"] == 0.0 for s in steps), "gamma = 0: no self-reward margin"
    assert weights_changed(tiny_model_dir, rlcd_run)


def test_dpo_trains_on_the_datas_pairs(dpo_run, hh_file, tiny_model_dir):
    from dlma_ray.data.records import load_preference_pairs

    data, _ = load_preference_pairs(str(hh_file))
    expected = {(p.prompt.prompt_id, p.chosen, p.rejected) for p in data}
    rows = pairs(dpo_run)
    assert len(rows) == 8
    assert {(r["prompt_id"], r["chosen"], r["rejected"]) for r in rows} <= expected
    for r in rows:
        assert r["policy"] == f"data:{hh_file}" and r["chosen_finished"] and r["chosen_tokens"] > 0
        assert math.isnan(r["self_reward"]) and math.isfinite(r["ref_logp_rejected"])
        assert r["plain_context"].endswith("<|im_start|>assistant\n")
    assert train_steps(dpo_run) and weights_changed(tiny_model_dir, dpo_run)


def test_dpo_run_writes_trl_named_tensorboard_events(dpo_run):
    """Train rank 0 logged each optimizer step under TRL's names (read back with TensorBoard's reader), matching
    the round's train_metrics.jsonl; the driver logged the finished round's stages."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(dpo_run / "tracking/tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    trl = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "learning_rate", "grad_norm", "num_tokens", "h", "pairs_per_second", "tokens_per_second"}
    assert trl <= tags and "self_reward/raw" not in tags, trl - tags  # dpo has no R
    steps = train_steps(dpo_run)
    assert [e.step for e in acc.Scalars("loss")] == [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    assert [e.value for e in acc.Scalars("rewards/margins")] == pytest.approx([s["reward_margin"] for s in steps])
    tokens = [e.value for e in acc.Scalars("num_tokens")]
    assert tokens == [s["num_tokens"] for s in steps] and 0 < tokens[0] and tokens == sorted(tokens)  # running total
    assert all(e.value > 0 for e in acc.Scalars("grad_norm"))
    assert [e.step for e in acc.Scalars("stage/train/rows")] == [0]


def test_context_distillation_learns_the_positive_answers(cd_run, tiny_model_dir, tokenizer):
    from conftest import direct_logprob, eot_ids
    from dlma_ray.model.loading import load_causal_lm

    rows = pairs(cd_run)
    assert all(r["plain_context"].startswith("USER: ") and r["plain_context"].endswith("\nASSISTANT:\n") for r in rows)
    assert all(math.isnan(r[c]) for r in rows for c in ("ref_logp_chosen", "ref_logp_rejected", "self_reward"))
    steps = train_steps(cd_run)
    assert steps and "reward_margin" not in steps[0] and steps[0]["loss"] > 0
    assert weights_changed(tiny_model_dir, cd_run)
    train = [r for r in rows if r["split"] == "train"]
    ids = [list(r["chosen_token_ids"]) + (eot_ids(tokenizer) if r["chosen_finished"] else []) for r in train]
    before, after = (sum(direct_logprob(load_causal_lm(m), tokenizer, r["plain_context"], i) for r, i in zip(train, ids))
                     for m in (tiny_model_dir, str(cd_run / "round_0/policy")))
    assert after > before, "SFT on y+ raised the log-likelihood of the trained y+"


def test_self_contrast_k_negatives_per_prompt(sc_run, hh_file, tiny_model_dir):
    from dlma_ray.data.records import record_from_row

    targets = {}
    for line in hh_file.read_text().splitlines():
        try:
            rec = record_from_row(json.loads(line), "chosen")
        except ValueError:
            continue
        targets.setdefault(rec.prompt_id, rec.target)
    generations = pq.read_table(sc_run / "round_0/generations").to_pylist()
    assert len(generations) == 8 * N
    rows = pairs(sc_run)
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    config = json.loads((sc_run / "state.json").read_text())["config"]  # the preset's sampling and optimizer
    gen = config["generation"]
    assert (gen["top_k"], gen["seed"], config["train"]["optimizer"]) == (-1, 42, "adamw")
    state = json.loads((sc_run / "state.json").read_text())["stages"][1]
    assert state["metrics"]["kept_prompts"] == len(by_prompt) and state["metrics"]["prompts"] == 8
    assert len(by_prompt) >= 4
    for pid, group in by_prompt.items():
        assert sorted(r["negative_index"] for r in group) == list(range(K))
        assert len({r["rejected"] for r in group}) == K
        for r in group:
            assert r["chosen"] == targets[pid] and r["rejected"].strip() != r["chosen"].strip()
            assert -1.0 <= r["similarity"] <= 1.0 and math.isnan(r["self_reward"])
            assert math.isfinite(r["ref_logp_chosen"]) and math.isfinite(r["ref_logp_rejected"])
        # The negatives are among the min(int(0.75 N), unique - 1) least similar of the prompt's samples.
        samples = [g for g in generations if g["prompt_id"] == pid]
        assert all(r["rejected"] in {s["rejected"] for s in samples} for r in group)
    # The stored similarity against a direct computation: all-MiniLM-L6-v2 is mean pooling then L2 norm.
    from transformers import AutoModel, AutoTokenizer

    from dlma_ray.workers.embedding import resolve_embedding_model

    path = resolve_embedding_model("builtin:all-minilm-l6-v2")
    enc_tok, enc = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    for r in rows[:2]:
        vecs = []
        for text in (r["rejected"], r["chosen"]):
            inputs = enc_tok(text, return_tensors="pt", truncation=True)
            with torch.no_grad():
                v = enc(**inputs).last_hidden_state[0].mean(0)
            vecs.append(v / v.norm())
        assert float(vecs[0] @ vecs[1]) == pytest.approx(r["similarity"], abs=1e-4)
    steps = train_steps(sc_run)
    assert steps and weights_changed(tiny_model_dir, sc_run)
