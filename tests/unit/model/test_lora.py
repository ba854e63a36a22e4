"""dlma_ray.model.lora on the tiny model, without Ray or DeepSpeed: only the adapters train, the merged folder
computes what the wrapped model computes, and a full (ZeRO-3-style) state dict rebuilds the same model."""

from __future__ import annotations

import os

import pytest
import torch

from dlma_ray.model import lora
from dlma_ray.config.tree import ConfigError, config_from_dict
from dlma_ray.model.loading import load_causal_lm, load_tokenizer

T = {"lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "lora_target_modules": "q_proj,v_proj,o_proj",
     "gradient_checkpointing": False}


def ids(tokenizer):
    return tokenizer(["Hello there, how are you?", "Tell me a short story."], return_tensors="pt",
                     padding=True)


@pytest.fixture()
def trained(tiny_model_dir):
    """The wrapped tiny model after one AdamW step on next-token loss; the base weights before it."""
    torch.manual_seed(0)
    base = load_causal_lm(tiny_model_dir)
    start = {k: v.clone() for k, v in base.state_dict().items()}
    model = lora.wrap(base, T)
    model.train()
    before = {k: v.clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(lora.trainable(model), lr=1e-2, weight_decay=0.0)
    batch = ids(load_tokenizer(tiny_model_dir))
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.input_ids)
    out.loss.backward()
    opt.step()
    model.eval()
    return model, start, before, batch


def test_only_adapters_train(trained):
    model, start, before, _ = trained
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # lora_A gets a gradient only once lora_B != 0 (after this step), and no weight decay moves it: only B moves
    assert changed and all("lora_B" in n for n in changed), changed
    assert len(changed) == 2 * 3  # 2 layers x q, v, o
    # the base weights under the adapters are the starting ones, bit for bit
    base_now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                for k, v in model.state_dict().items() if "lora_" not in k}
    assert set(base_now) == set(start)
    assert all(torch.equal(base_now[k], start[k]) for k in start)


def test_merge_matches_wrapped(trained, tiny_model_dir, tmp_path):
    model, start, _, batch = trained
    with torch.no_grad():
        wrapped = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        plain = load_causal_lm(tiny_model_dir)(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert (wrapped - plain).abs().max() > 1e-4  # the step changed what the model computes
    # what merging must give, computed by hand: W + (alpha / r) B A on each targeted layer
    sd = model.state_dict()
    expect = {}
    for k in sd:
        if k.endswith("lora_A.default.weight"):
            stem = k[: -len("lora_A.default.weight")]
            name = stem.replace("base_model.model.", "") + "weight"
            expect[name] = start[name] + T["lora_alpha"] / T["lora_rank"] * sd[stem + "lora_B.default.weight"] @ sd[k]
    assert len(expect) == 6
    lora.save_policy(tiny_model_dir, T, lora.trained_adapters(model), str(tmp_path), load_tokenizer(tiny_model_dir))
    assert os.path.exists(tmp_path / "adapter" / "adapter_model.safetensors")
    assert os.path.exists(tmp_path / "model.safetensors")
    merged = load_causal_lm(str(tmp_path))
    msd = merged.state_dict()
    for k in start:
        if k in expect:
            torch.testing.assert_close(msd[k], expect[k], atol=1e-6, rtol=0)
        else:
            assert torch.equal(msd[k], start[k]), k
    with torch.no_grad():
        logits = merged(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert (logits - wrapped).abs().max() < 1e-5


def test_adapter_reload_and_rebuild(trained, tiny_model_dir, tmp_path):
    model, _, _, batch = trained
    with torch.no_grad():
        want = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    lora.save_adapter(model, str(tmp_path))  # what a train checkpoint holds
    again = lora.wrap(load_causal_lm(tiny_model_dir), T, adapter_from=str(tmp_path)).eval()
    full = {k: v.clone() for k, v in model.state_dict().items()}  # what ZeRO-3 gathers on rank 0
    rebuilt = lora.rebuild(tiny_model_dir, T, full).eval()
    for m in (again, rebuilt):
        with torch.no_grad():
            got = m(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        assert (got - want).abs().max() < 1e-6
    assert set(lora.adapter_state(model)) == set(lora.adapter_state(rebuilt))


def test_unknown_target_module_is_named(tiny_model_dir):
    with pytest.raises(ValueError, match="qkv_proj"):
        lora.wrap(load_causal_lm(tiny_model_dir), {**T, "lora_target_modules": "q_proj,qkv_proj"})


def test_config():
    t = config_from_dict({"train": {"lora_rank": 8}}).train
    assert lora.enabled(vars(t)) and lora.target_modules(vars(t)) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert not lora.enabled(vars(config_from_dict({}).train))
    with pytest.raises(ConfigError, match="lora_target_modules"):
        config_from_dict({"train": {"lora_rank": 8, "lora_target_modules": " , "}})
    with pytest.raises(ConfigError, match="lora_rank"):
        config_from_dict({"train": {"lora_rank": -1}})
