"""Several engines, scorers and train workers give the single-worker run's results (docs/scale.md).

One whole round with 1 engine, 1 scorer and 1 train worker, and the same round (same seeds, same tiny config)
with 2 engines, 2 scorers and 2 DeepSpeed ranks on gloo (ZeRO-2); then the 2-rank train stage again with
ZeRO-3 on the same pairs. The pairs tables must be identical (rows, sampled token ids; log-probs within 1e-4)
and the trained weights equal within floating-point tolerance: 2 ranks averaging gradients over half of
each step's micro-batches = 1 rank accumulating all of them (dlma_ray.workers.sharding orders and splits the rows).
SGD, so a weight's change is the gradient itself (Adam's first step is ~lr*sign(g), which would blow up
rounding differences in near-zero gradients into lr-sized ones).
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "RAY_ADDRESS": "local"}
# 64 prompts (61 train after the default 5% held out), 4 new tokens; 3 optimizer steps of 16 pairs.
# generation.batch_size 8 gives the engines 8 batches to share; the scorers get 2 batches of 32 rows.
COMMON = ["data.max_prompts=64", "rounds.count=1", "generation.max_new_tokens=4", "generation.batch_size=8",
          "generation.cpu_kvcache_gb=1", "train.micro_batch_size=4", "train.global_batch_size=16",
          "train.optimizer=sgd", "train.lr=2.0", "eval.enabled=false", "resources.torch_threads=1",
          "resources.cpus_per_engine=0.5", "resources.cpus_per_scorer=0.5", "resources.cpus_per_train_worker=0.5"]
SCALED = ["resources.num_engines=2", "resources.num_scorers=2", "resources.num_train_workers=2"]
TRAIN_ONLY = """
import sys
from dlma_ray.cli import parse, setup_environment
setup_environment()
cfg = parse("train stage only", sys.argv[2:])
from dlma_ray import methods
from dlma_ray.run.layout import RunLayout
from dlma_ray.stages.round import Round
from dlma_ray.stages.ray_session import init_ray
init_ray(cfg)
print("train result:", methods.check(cfg).train(Round(cfg, RunLayout(sys.argv[1]), 0)))
"""


def job(args: list[str], timeout: int = 900) -> tuple[str, float]:
    start = time.time()
    proc = subprocess.run([sys.executable, str(REPO / "jobs/iterate.py"), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr, time.time() - start


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("scale")
    model = f"model.path={tiny_model_dir}"
    one, t1 = job([model, f"run.dir={base / 'one'}", *COMMON])
    two, t2 = job([model, f"run.dir={base / 'two'}", *COMMON, *SCALED])
    # ZeRO-3: the train stage alone, 2 ranks, on a copy of the 1-worker run's pairs.
    (base / "zero3/round_0").mkdir(parents=True)
    shutil.copytree(base / "one/round_0/pairs", base / "zero3/round_0/pairs")
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", TRAIN_ONLY, str(base / "zero3"), model, f"run.dir={base / 'zero3'}",
                           *COMMON, *SCALED, "train.zero_stage=3"], cwd=REPO, env=ENV, capture_output=True, text=True,
                          check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"\nwall time: 1 worker round {t1:.0f}s, 2 workers round {t2:.0f}s, ZeRO-3 train {time.time() - start:.0f}s")
    return base, one, two


def pairs(run_dir: Path) -> dict:
    t = pq.read_table(run_dir / "round_0/pairs").to_pydict()
    order = np.argsort(t["prompt_id"])
    return {k: [v[i] for i in order] for k, v in t.items()}


def weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_scaled_pools_were_used(runs):
    _, one, two = runs
    assert "fit beside" not in two, "a pool was shrunk: the run did not use 2 engines / scorers"
    steps = [re.findall(r"training on (\d+) pairs, (\d+) optimizer steps of 16", log) for log in (one, two)]
    assert steps[0] == steps[1] and len(steps[0]) == 1 and int(steps[0][0][1]) >= 2, steps


def test_pairs_tables_identical(runs):
    base, _, _ = runs
    a, b = pairs(base / "one"), pairs(base / "two")
    assert len(a["prompt_id"]) == len(b["prompt_id"]) == 64
    assert a.keys() == b.keys()
    floats = [k for k in a if isinstance(a[k][0], float)]
    assert {"logp_pos_chosen", "self_reward", "ref_logp_rejected"} <= set(floats)
    for k in a:
        if k in floats:
            np.testing.assert_allclose(np.array(a[k], dtype=float), np.array(b[k], dtype=float), atol=1e-4, rtol=0,
                                       err_msg=k)
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("other", ["two", "zero3"], ids=["zero2-2-workers", "zero3-2-workers"])
def test_trained_weights_equal(runs, tiny_model_dir, other):
    base, _, _ = runs
    w0, w1, w2 = weights(Path(tiny_model_dir)), weights(base / "one/round_0/policy"), weights(base / other / "round_0/policy")
    assert w1.keys() == w2.keys() and set(w1) <= set(w0)
    step = np.sqrt(sum(float(((w1[k] - w0[k]).astype(np.float64) ** 2).sum()) for k in w1))
    diff = np.sqrt(sum(float(((w1[k] - w2[k]).astype(np.float64) ** 2).sum()) for k in w1))
    worst = max(float(np.abs(w1[k] - w2[k]).max()) for k in w1)
    print(f"\n{other}: |update| {step:.3e}, |difference| {diff:.3e} (relative {diff / step:.2e}), max abs {worst:.2e}")
    assert step > 1e-2, "training must have moved the weights for the comparison to mean anything"
    assert diff / step < 1e-4 and worst < 1e-5
