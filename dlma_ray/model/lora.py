"""LoRA (peft) adapters for training: wrap a loaded causal LM so that only the adapters train, and save a
round's policy as a MERGED HF folder (what vLLM engines, scorers and the next round load) with the adapter
beside it in `adapter/`.

The `train` section's `lora_rank` (0 = off), `lora_alpha`, `lora_dropout` and `lora_target_modules` set it.
Reference log-probs stay precomputed in the pairs table, so no second (reference) model is ever needed: the
frozen base under the adapters is not used as the reference.

Policy folder with LoRA:
    config.json, model.safetensors, tokenizer files   the merged model W + (alpha / r) B A (an ordinary HF folder)
    adapter/adapter_config.json, adapter_model.safetensors   the trained adapter (peft's format)

The merge is done in float32 and the merged policy saved in float32, whatever train.precision is: a LoRA
update is small against the weight it lands on (at lr 1e-4 often below half a bf16 ulp of W), so W + dW rounded
to bf16 is W again, and a bf16 policy would silently drop what training learned although training's forward
(base(x) + B A x, apart) used it. In float32 the update survives, adds up over rounds (the next round merges onto
this float32 policy), and each consumer rounds the true policy once at load, in its own dtype. Keeping the
adapter separate where it is served (vLLM's LoRA) would also keep it, but stacks one adapter per round in every
engine, scorer and trainer; one float32 folder keeps every consumer an ordinary model load.
"""

from __future__ import annotations

import os
from typing import Any

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def enabled(train: dict) -> bool:
    return int(train.get("lora_rank", 0) or 0) > 0


def target_modules(train: dict) -> list[str]:
    return [m.strip() for m in str(train["lora_target_modules"]).split(",") if m.strip()]


def lora_config(train: dict):
    from peft import LoraConfig

    return LoraConfig(r=int(train["lora_rank"]), lora_alpha=float(train["lora_alpha"]),
                      lora_dropout=float(train["lora_dropout"]),
                      target_modules=target_modules(train), bias="none", task_type="CAUSAL_LM")


def wrap(model, train: dict, adapter_from: str | None = None):
    """`model` with LoRA adapters on `train.lora_target_modules`; every other weight frozen. With
    `adapter_from` (a folder holding adapter_model.safetensors, e.g. a train checkpoint) the adapters start
    from those weights instead of peft's initialisation (lora_B = 0: the wrapped model equals `model`)."""
    from peft import get_peft_model

    missing = [m for m in target_modules(train) if not any(n.split(".")[-1] == m for n, _ in model.named_modules())]
    if missing:
        raise ValueError(f"train.lora_target_modules: {missing} name no layer of this model "
                         f"({type(model).__name__}); its linear layers include "
                         f"{sorted(linear_names(model))[:12]}")
    if train.get("gradient_checkpointing"):
        # The frozen embeddings give checkpointed blocks inputs without grad; this makes backward reach the adapters.
        model.enable_input_require_grads()
    peft_model = get_peft_model(model, lora_config(train))
    if adapter_from:
        load_adapter(peft_model, adapter_from)
    return peft_model


def linear_names(model) -> set[str]:
    import torch

    return {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def trainable(model) -> list:
    """The parameters the optimizer gets: the adapters with LoRA, every weight without."""
    return [p for p in model.parameters() if p.requires_grad]


def adapter_state(peft_model, state: dict | None = None) -> dict[str, Any]:
    """The adapter weights in peft's saved naming, from the module or a full (e.g. ZeRO-3 gathered) state dict."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model, state_dict=state)


def load_adapter(peft_model, folder: str) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = os.path.join(folder, ADAPTER_WEIGHTS)
    result = set_peft_model_state_dict(peft_model, load_file(path, device="cpu"))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{path}: adapter weights that fit no adapter of the model: {unexpected[:5]}")


def save_adapter(peft_model, folder: str, state: dict | None = None) -> None:
    """peft's adapter folder (adapter_config.json + adapter_model.safetensors) from the module's weights, or
    from `state`, a full state dict of the wrapped model (ZeRO-3 partitions the module's own)."""
    kwargs = {"state_dict": state} if state is not None else {}
    peft_model.save_pretrained(folder, safe_serialization=True, **kwargs)


def trained_adapters(peft_model) -> dict[str, Any]:
    """The trained adapter weights by parameter name, float32 on the CPU: DeepSpeed's float32 master copies
    where it keeps them (bf16/fp16 training, every ZeRO stage; under ZeRO-3 a gather, so every rank must call
    it), else the module's own weights."""
    out = {}
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            full = None
            if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):  # DeepSpeed's (ZeRO-3; ZeRO-1/2 and bf16)
                from deepspeed.utils import safe_get_full_fp32_param

                full = safe_get_full_fp32_param(p)
            out[name] = (p.detach() if full is None else full).float().cpu().clone()
    return out


def save_policy(base_path: str, train: dict, adapters: dict, out: str, tokenizer,
                trust_remote_code: bool = False) -> None:
    """The policy folder: the adapter into <out>/adapter/, the merged model (float32 safetensors: see the module's
    docstring) and the tokenizer into <out>. `adapters` (`trained_adapters`) go onto the round's starting
    policy `base_path` as stored, not onto the training copy (bf16 under bf16 training), and merge in float32."""
    peft_model = rebuild(base_path, train, adapters, trust_remote_code, dtype="float32")
    save_adapter(peft_model, os.path.join(out, ADAPTER_DIR))
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def rebuild(base_path: str, train: dict, state: dict, trust_remote_code: bool = False, dtype: str = "float32"):
    """A CPU copy of the trained wrapped model: the base from `base_path`, the adapters from `state` (parameter
    names of the wrapped model; any other entry, e.g. the frozen weights a ZeRO-3 gather holds in the training
    precision, is ignored: the base stays the stored one)."""
    from dlma_ray.model.loading import load_causal_lm

    peft_model = wrap(load_causal_lm(base_path, dtype, trust_remote_code), {**train, "gradient_checkpointing": False})
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"the trained state misses adapter weights of the LoRA model: {missing[:5]}")
    peft_model.load_state_dict({n: state[n] for n in names}, strict=False)
    return peft_model
