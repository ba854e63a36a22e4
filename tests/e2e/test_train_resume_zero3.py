"""Issue 22's "done when" for train checkpoints: a train stage with ZeRO-3, two train workers and a
checkpoint every step finishes; the same stage with a train worker SIGKILLed after a registered checkpoint
is retried by Ray Train, resumes from that checkpoint and ends with the uninterrupted stage's weights, bit
for bit (each rank's fp32 masters, moments, lr, RNG and step counters are restored: dlma_ray.model.zerostate).

Both runs train the same 24 pairs (of the committed old run's round-0 table: 3 optimizer steps) on the tiny
model through Ray Train (tests/e2e/test_scale.py's TRAIN_ONLY). In fp32: a bf16 forward and backward of the tiny
model takes ~25 s a micro-batch on this CPU (no native bf16), 10 minutes a run; that ZeRO-3 with two ranks
resumes bf16 bit for bit (fp32 masters restored) is tests/e2e/test_train_checkpoint.py's, on engines built
directly.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from processes import descendants
from conftest import checkpoint_registered
from test_scale import ENV, REPO, TRAIN_ONLY

PAIRS = REPO / "tests/data/run_before_layout/round_0/pairs"
ARGS = ["rounds.count=1", "eval.enabled=false", "train.zero_stage=3", "train.precision=fp32",
        "train.checkpoint_every=1", "train.micro_batch_size=2", "train.global_batch_size=8", "train.lr=2e-5",
        "train.epochs=1", "resources.num_train_workers=2", "resources.torch_threads=1",
        "resources.cpus_per_train_worker=0.5"]


def train_stage(tiny_model_dir: str, run_dir: Path, kill: bool) -> str:
    (run_dir / "round_0/pairs").mkdir(parents=True)
    table = pq.read_table(PAIRS)
    pq.write_table(table.filter(pc.equal(table["split"], "train")).slice(0, 24), run_dir / "round_0/pairs/part.parquet")
    log = run_dir.parent / f"{run_dir.name}.log"  # a file: an unread pipe would fill and stall the job
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", TRAIN_ONLY, str(run_dir), f"model.path={tiny_model_dir}",
                                 f"run.dir={run_dir}", *ARGS], cwd=REPO, env=ENV, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while kill:
            assert proc.poll() is None, "the stage ended before a checkpoint: " + log.read_text()[-4000:]
            assert time.time() < deadline, "no checkpoint in 600 s"
            if checkpoint_registered(run_dir, 0):
                workers = [p for p, c in descendants(proc.pid) if "RayTrainWorker" in c]
                if workers:
                    os.kill(workers[-1], signal.SIGKILL)  # one rank: Ray Train restarts the whole group
                    kill = False
            time.sleep(0.2)
        proc.wait(timeout=max(1, deadline - time.time()))
        out = log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-6000:]
    return out


def test_zero3_bf16_two_workers_killed_and_resumed_ends_as_uninterrupted(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    begin = time.time()
    train_stage(tiny_model_dir, tmp_path / "whole", kill=False)
    middle = time.time()
    out = train_stage(tiny_model_dir, tmp_path / "killed", kill=True)
    print(f"\nwall time: uninterrupted {middle - begin:.0f} s, killed and resumed {time.time() - middle:.0f} s")
    assert "resuming from the checkpoint at step" in out, out[-6000:]
    start = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    whole = load_file(str(tmp_path / "whole/round_0/policy/model.safetensors"))
    killed = load_file(str(tmp_path / "killed/round_0/policy/model.safetensors"))
    assert whole.keys() == killed.keys()
    moved = sum(int((whole[k].float() != start[k].float()).sum()) for k in whole)
    differ = sum(int((whole[k] != killed[k]).sum()) for k in whole)
    print(f"weights moved by training: {moved}; differing between the runs: {differ}")
    assert moved > 1000, "training must move the weights for the comparison to mean anything"
    assert differ == 0
