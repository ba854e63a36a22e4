"""Train ranks load the model in the training precision, under ZeRO-3 already partitioned (issue 22, defect 3):
two DeepSpeed ranks (gloo) load the real SmolLM2-135M stored in bf16, as 7B checkpoints are, through
bench/bench_train_load.py (dlma_ray.model.loading.load_for_training, then deepspeed.initialize with the pipeline's
config). Each rank's memory while loading stays well below the whole model in float32 (what every rank
allocated before: 4 bytes a parameter); the weights built under zero.Init are the file's, bit for bit; and LoRA
on such a model trains and saves its policy (the adapters' float32 masters merged onto the stored start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
RANK = 4  # bench_train_load: lora_alpha = 2 x rank, targets q_proj, v_proj


@pytest.fixture(scope="module")
def bf16_smol(tmp_path_factory, smol_dir) -> str:
    from dlma_ray.model.loading import load_causal_lm, load_tokenizer

    out = str(tmp_path_factory.mktemp("smol-bf16"))
    load_causal_lm(smol_dir).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    load_tokenizer(smol_dir).save_pretrained(out)
    return out


def bench(tmp_path: Path, model: str, *args: str) -> dict:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench/bench_train_load.py"), "--model", model, "--world", "2",
                           "--zero-stage", "3", "--precision", "bf16", "--json", str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, bf16_smol):
    tmp = tmp_path_factory.mktemp("lora-run")
    result = bench(tmp, bf16_smol, "--lora-rank", str(RANK), "--steps", "1", "--save", str(tmp / "policy"))
    return result, tmp / "policy"


def test_each_rank_loads_less_than_a_float32_copy(lora_run):
    result, _ = lora_run
    full = result["fp32_copy_mib"]  # 513 MiB; the bf16 partition of one of 2 ranks is 128 MiB
    for r in result["ranks"]:
        # anonymous memory: rank 0 also maps the file (page cache, shared by the node), others never touch it
        assert r["load"]["peak_anon_mib"] < 0.75 * full, r
        if r["rank"] > 0:
            assert r["load"]["peak_rss_mib"] < 0.75 * full, r


def test_lora_policy_from_a_zero3_model_built_partitioned(lora_run, bf16_smol):
    _, policy = lora_run
    adapter = load_file(str(policy / "adapter" / "adapter_model.safetensors"))
    assert all(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # one step moved every B
    start = load_file(f"{bf16_smol}/model.safetensors")
    merged = load_file(str(policy / "model.safetensors"))
    changed = 0
    for k, w in start.items():
        stem = "base_model.model." + k.removesuffix("weight")
        if stem + "lora_A.weight" in adapter:
            expect = w.float() + 2.0 * adapter[stem + "lora_B.weight"] @ adapter[stem + "lora_A.weight"]
            torch.testing.assert_close(merged[k], expect, atol=1e-7, rtol=1e-6)
            changed += 1
        else:
            assert torch.equal(merged[k], w.float()), k
    assert changed == 2 * 30  # q, v of SmolLM2's 30 layers


def test_zero3_weights_built_partitioned_are_the_files(tmp_path, bf16_smol):
    bench(tmp_path, bf16_smol, "--save", str(tmp_path / "policy"))  # no step: the policy is what was loaded
    start = load_file(f"{bf16_smol}/model.safetensors")
    saved = load_file(str(tmp_path / "policy" / "model.safetensors"))
    assert set(saved) == set(start)
    for k, w in start.items():
        assert torch.equal(saved[k], w), k
