"""The embedded default model for real: its converted cache rebuilt when damaged and resolved safely by two
processes at once, and the real SmolLM2 answering a chat prompt. The fast checks: tests/unit/model/test_loading.py."""

import json
import os
import subprocess
import sys

from dlma_ray.model import loading as models


def test_damaged_cache_is_rebuilt_and_concurrent_resolution_is_safe(tmp_path):
    env = {**os.environ, "DLMA_RAY_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    code = "from dlma_ray.model.loading import resolve_model_path as r; print(r('builtin:smollm2-135m-instruct'))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] == str(tmp_path / "smollm2-135m-instruct")
    folder = tmp_path / "smollm2-135m-instruct"
    marker = json.loads((folder / "dlma_ray_conversion.json").read_text())
    assert marker["sizes"]["model.safetensors"] > 100_000_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".smollm2") and p.is_dir()], "temp dirs left"

    with open(folder / "model.safetensors", "r+b") as fh:  # damage: truncate the weights
        fh.truncate(1000)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0
    assert (folder / "model.safetensors").stat().st_size == marker["sizes"]["model.safetensors"]


def test_builtin_model_answers_a_chat_prompt_sensibly(smol_dir, tokenizer):
    import torch

    model = models.load_causal_lm("builtin:smollm2-135m-instruct")
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
