"""LoRA under bf16 training (issue 22, defect 8): an adapter update smaller than half a bf16 ulp of the weight it
lands on must reach the saved policy that the next round's engines, scorer and trainer load from round_k/policy.
A bf16 merge rounds W + dW back to W; the policy is merged in float32 onto the stored starting weights and kept
in float32 (dlma_ray.model.lora)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dlma_ray.model import lora
from dlma_ray.model.loading import load_causal_lm, load_tokenizer
from dlma_ray.model.tiny import make_tiny_model

T = {"lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "lora_target_modules": "q_proj,v_proj",
     "gradient_checkpointing": False}


@pytest.fixture(scope="module")
def bf16_base(tmp_path_factory, smol_dir) -> str:
    """A tiny model whose weights are stored in bf16, as Llama, Mistral and Qwen checkpoints are."""
    out = str(tmp_path_factory.mktemp("bf16-base"))
    make_tiny_model(smol_dir, out)
    load_causal_lm(out).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    return out


def trained_bf16(base: str):
    """The training copy (bf16, as train.precision=bf16 loads it) wrapped with adapters whose update dW = (alpha/r)
    B A is ~1e-6, far below half a bf16 ulp of the ~0.02 weights (~6e-5): what a few steps at a small lr leave."""
    torch.manual_seed(0)
    model = lora.wrap(load_causal_lm(base, "bfloat16"), T)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(1e-5 * torch.randn(p.shape))
    return model


def test_sub_ulp_update_reaches_the_saved_policy(bf16_base, tmp_path):
    model = trained_bf16(bf16_base)
    adapters = lora.trained_adapters(model)
    start = load_file(f"{bf16_base}/model.safetensors")
    delta = {}
    for k, a in adapters.items():
        if k.endswith("lora_A.default.weight"):
            stem = k[: -len("lora_A.default.weight")]
            delta[stem.removeprefix("base_model.model.") + "weight"] = \
                T["lora_alpha"] / T["lora_rank"] * adapters[stem + "lora_B.default.weight"] @ a
    assert len(delta) == 2 * 2  # 2 layers x q, v
    for k, d in delta.items():  # the premise: rounded to bf16, W + dW is W again almost everywhere
        w = start[k].float()
        assert d.abs().max() > 0
        assert ((w + d).to(torch.bfloat16) == start[k]).float().mean() > 0.95, k

    lora.save_policy(bf16_base, T, adapters, str(tmp_path), load_tokenizer(bf16_base))
    merged = load_file(str(tmp_path / "model.safetensors"))
    for k, w in start.items():
        got = merged[k].float()
        if k in delta:  # the trained change is there, in every weight, as float32 computes W + dW
            kept = (got != w.float()).float().mean().item()
            assert kept > 0.99, f"{k}: the update vanished from {1 - kept:.0%} of the policy's weights"
            torch.testing.assert_close(got, w.float() + delta[k], atol=1e-9, rtol=1e-6)
        else:
            assert torch.equal(got, w.float()), k
    assert {v.dtype for v in merged.values()} == {torch.float32}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float32"

    # what the next round's scorer loads (scoring.dtype float32): the policy computes something else than the start
    ids = torch.tensor([[1, 5, 9, 42, 7, 3, 11, 2]])
    with torch.no_grad():
        got = load_causal_lm(str(tmp_path), "float32")(input_ids=ids).logits
        was = load_causal_lm(bf16_base, "float32")(input_ids=ids).logits
    assert (got - was).abs().max() > 0
    # the adapter beside it, in peft's format, gives the same model on the round's starting policy
    from peft import PeftModel

    base = load_causal_lm(bf16_base, "float32")
    again = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).merge_and_unload()
    for k in delta:
        torch.testing.assert_close(again.state_dict()[k], merged[k], atol=1e-9, rtol=1e-6)
