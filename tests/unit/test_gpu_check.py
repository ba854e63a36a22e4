"""bench/gpu_check.sh cannot run without a GPU: its syntax, its dry run, and the configs its steps use are
checked here, so that the first lent GPU runs what issue 22 fixes (bf16 scorer and train step, a checkpoint
every step with a worker killed and resumed, two NCCL ranks on two GPUs, GPU processes after every step)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from dlma_ray.cli import main
from dlma_ray.config.tree import load_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def dry_run(tmp_path, gpus: int) -> str:
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--gpus", str(gpus)], capture_output=True, text=True,
                          env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout


def steps(out: str) -> dict[str, tuple[int, list[str]]]:
    return {m[1]: (int(m[2]), shlex.split(m[3])) for m in re.finditer(r"^step (\S+) \(timeout (\d+) s\): (.*)$", out,
                                                                       re.M)}


def test_syntax():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_dry_run_lists_what_issue_22_needs_checked(tmp_path):
    out = dry_run(tmp_path, 1)
    s = steps(out)
    assert list(s) == ["plan", "generate", "score", "train_step", "round"]
    assert sum(limit for limit, _ in s.values()) <= 600, "must fit 10 minutes on one GPU"
    assert "--dtype bfloat16" in " ".join(s["score"][1])
    assert "--precision bf16" in " ".join(s["train_step"][1]) and "--zero-stage 3" in " ".join(s["train_step"][1])
    round_args = s["round"][1]
    for needed in ("train.checkpoint_every=1", "train.zero_stage=3", "train.precision=bf16",
                   "resources.use_gpu_for_training=true", "resources.num_train_workers=1"):
        assert needed in round_args, needed
    assert "kill -9 each RayTrainWorker" in out and "resuming from the" in out
    assert out.count("nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv") == len(s)
    assert not list(tmp_path.glob("*.md")), "a dry run writes no report"
    two = steps(dry_run(tmp_path, 2))
    assert "resources.num_train_workers=2" in two["round"][1] and "train.global_batch_size=4" in two["round"][1]


def test_the_steps_configs_pass_the_checks_and_the_round_fits_one_gpu(tmp_path):
    s = steps(dry_run(tmp_path, 1))
    round_overrides = [a for a in s["round"][1] if "=" in a]
    load_config(None, round_overrides)  # the config checks of defect 9 accept the round
    load_config(None, [a for a in s["generate"][1] if "=" in a])
    plan_args = s["plan"][1][3:]  # after `python3 -m dlma_ray`
    assert plan_args[0] == "plan"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(plan_args)
    assert rc == 0, out.getvalue()
    assert "fits: every stage" in out.getvalue()


@pytest.mark.parametrize("flag", ["--bogus"])
def test_unknown_flag_is_refused(flag):
    done = subprocess.run(["bash", str(SCRIPT), flag], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage" in done.stderr
