"""Memory and time of each stage's actors, from a model's shape: the model of docs/scale.md as plain functions.

Bytes per parameter follow the ZeRO paper (Rajbhandari et al. 2020, section 3.1: mixed-precision Adam keeps 2
bytes of 16-bit weights, 2 of 16-bit gradients and K = 12 of fp32 master weights and moments) and DeepSpeed's
own estimators (`deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`, which adds the
4-byte fp32 gradient partition the optimizer steps on, and `stage3.estimate_zero3_model_states_mem_needs`, which
adds 4 bytes x the largest layer for ZeRO-3's gathered weights). Activations use Korthikanti et al. 2022 (34 h
bytes per token and layer in 16 bits with a fused attention kernel), the MLP term scaled to the model's
intermediate size. Engines follow vLLM's own sizing: `gpu_memory_utilization` x the device, less weights, the
profiled activation peak and overheads, is KV cache. Every number is an estimate to check a plan against.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

GIB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
# fp32 master + optimizer moments per parameter in mixed precision (K of the ZeRO paper); fp32 training keeps no
# master copy. torch's SGD here runs without momentum (no state).
OPTIMIZER_STATE_BYTES = {"adamw": 8, "rmsprop": 4, "sgd": 0}

# Shapes of hub models the shipped configs name, from each model's config.json on the Hub, for plans made
# where the model is not downloaded. Any other model: a local folder, --model-config FILE or --params.
KNOWN_SHAPES = {
    "meta-llama/llama-2-7b-chat-hf": dict(hidden_size=4096, num_hidden_layers=32, vocab_size=32000,
                                          num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008),
    "meta-llama/llama-2-13b-chat-hf": dict(hidden_size=5120, num_hidden_layers=40, vocab_size=32000,
                                           num_attention_heads=40, num_key_value_heads=40, intermediate_size=13824),
    "meta-llama/llama-2-70b-chat-hf": dict(hidden_size=8192, num_hidden_layers=80, vocab_size=32000,
                                           num_attention_heads=64, num_key_value_heads=8, intermediate_size=28672),
    "meta-llama/meta-llama-3-8b-instruct": dict(hidden_size=4096, num_hidden_layers=32, vocab_size=128256,
                                                num_attention_heads=32, num_key_value_heads=8,
                                                intermediate_size=14336),
    "mistralai/mistral-7b-instruct-v0.2": dict(hidden_size=4096, num_hidden_layers=32, vocab_size=32000,
                                               num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336),
    "qwen/qwen2.5-7b-instruct": dict(hidden_size=3584, num_hidden_layers=28, vocab_size=152064,
                                     num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944),
}
KNOWN_SHAPES["meta-llama/llama-2-7b-hf"] = KNOWN_SHAPES["meta-llama/llama-2-7b-chat-hf"]
KNOWN_SHAPES["meta-llama/llama-2-70b-hf"] = KNOWN_SHAPES["meta-llama/llama-2-70b-chat-hf"]
# The papers' policies (jobs/configs/*-paper-*.yaml): safe-rlhf's SFT of Llama-2-7B adds a <pad> token (id 32000);
# alignment-handbook's SFT of Mistral-7B-v0.1 (Self-Contrast's UltraChat policy) keeps Mistral's shape.
KNOWN_SHAPES["pku-alignment/alpaca-7b-reproduced-llama-2"] = {**KNOWN_SHAPES["meta-llama/llama-2-7b-chat-hf"],
                                                             "vocab_size": 32001}
KNOWN_SHAPES["alignment-handbook/zephyr-7b-sft-full"] = KNOWN_SHAPES["mistralai/mistral-7b-instruct-v0.2"]


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on: a decoder-only transformer with a gated MLP (Llama, Mistral, Qwen, Gemma)."""

    hidden: int
    layers: int
    vocab: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool = False
    head_dim: int = 0  # 0: hidden / heads
    source: str = ""  # where the shape came from, printed with the plan

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        attn = self.hidden * self.heads * self.dim * 2 + self.hidden * self.kv_heads * self.dim * 2  # q, o; k, v
        return attn + 3 * self.hidden * self.intermediate + 2 * self.hidden  # gate, up, down; two norms

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.layer_params + self.hidden

    @property
    def largest_layer(self) -> int:
        """Parameters of the largest module ZeRO-3 gathers at once (DeepSpeed's `largest_layer_params`)."""
        return max(self.vocab * self.hidden, self.layer_params)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.dim * dtype_bytes


def shape_from_config(cfg: dict, source: str) -> ModelShape:
    """A HF config.json's fields (text_config for multimodal wrappers); KeyError names what is missing."""
    cfg = cfg.get("text_config", cfg)
    heads = cfg["num_attention_heads"]
    return ModelShape(cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], heads,
                      cfg.get("num_key_value_heads") or heads, cfg["intermediate_size"],
                      bool(cfg.get("tie_word_embeddings", False)), cfg.get("head_dim") or 0, source)


def shape_from_params(params: float) -> ModelShape:
    """A Llama-like shape for ``params`` parameters when nothing better is known: 12 L h^2 = params with
    h / L = 128 (Llama-2 7B, 13B), every head its own KV head (the largest KV cache), vocab 32k."""
    hidden = int(round((params * 128 / 12) ** (1 / 3) / 128)) * 128 or 128
    layers = max(1, round(params / (12 * hidden * hidden)))
    return ModelShape(hidden, layers, 32000, hidden // 128, hidden // 128, int(hidden * 8 / 3 // 256 * 256),
                      source=f"assumed Llama-like shape for --params {params / 1e9:g}B")


def find_shape(model_ref: str, model_config: str | None = None, params: float | None = None,
               revision: str = "") -> ModelShape:
    """The shape of ``model_ref``: a config file given, a builtin (dlma_ray.model.loading converts it once), a local
    folder, a hub name in the HF cache or in KNOWN_SHAPES, else from ``params``; ValueError says what to give."""
    if model_config:
        return shape_from_config(json.loads(Path(model_config).read_text()), model_config)
    from dlma_ray.model.loading import BUILTIN_PREFIX, resolve_model_path

    folder = None
    if model_ref.startswith(BUILTIN_PREFIX) or Path(model_ref).is_dir():
        folder = resolve_model_path(model_ref)
    elif "://" not in model_ref:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_ref, "config.json", revision=revision or None)
            folder = str(Path(cached).parent) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - not a repo name: the table or --params decide
            folder = None
    if folder:
        return shape_from_config(json.loads((Path(folder) / "config.json").read_text()),
                                 f"{Path(folder) / 'config.json'}")
    if model_ref.lower() in KNOWN_SHAPES:
        return shape_from_config(KNOWN_SHAPES[model_ref.lower()], "dlma_ray.model.sizing.KNOWN_SHAPES (its config.json "
                                 "on the Hub)")
    if params:
        return shape_from_params(params)
    raise ValueError(f"model.path {model_ref!r}: its shape is unknown here (not a builtin, not a local folder, not "
                     "in the Hugging Face cache, not in dlma_ray.model.sizing.KNOWN_SHAPES); give --model-config "
                     "PATH/config.json (hidden_size, num_hidden_layers, vocab_size, num_attention_heads, "
                     "num_key_value_heads, intermediate_size) or --params N (billions of parameters)")


# ------------------------------------------------------------------------------------------------ memory

def train_state_bytes(params: int, precision: str, optimizer: str, zero_stage: int, ranks: int) -> dict[str, float]:
    """Model states per rank by ZeRO stage: weights (split at stage 3), gradients (split from 2), optimizer
    states (fp32 master + moments, split from 1) and the fp32 gradient partition the optimizer steps on."""
    mixed = precision != "fp32"
    w = DTYPE_BYTES[precision]
    opt = OPTIMIZER_STATE_BYTES[optimizer] + (4 if mixed else 0)
    split = lambda stage: ranks if zero_stage >= stage else 1  # noqa: E731
    out = {"weights": params * w / split(3), "gradients": params * w / split(2),
           "optimizer states": params * opt / split(1)}
    if mixed:
        out["fp32 gradient partition"] = params * 4 / split(1)
    return out


def train_activation_bytes(shape: ModelShape, sequences: int, tokens: int, dtype_bytes: int,
                           checkpointing: bool) -> dict[str, float]:
    """Activations of one micro-batch of ``sequences`` x ``tokens``: per layer and token 2 (6 h + 3 i) bytes in
    16 bits (Korthikanti et al.'s 34 h for i = 4 h), only each layer's input with gradient checkpointing, plus
    the fp32 logits and their gradient."""
    n = sequences * tokens
    layer = n * (6 * shape.hidden + 3 * shape.intermediate) * dtype_bytes
    kept = shape.layers * n * shape.hidden * dtype_bytes + layer if checkpointing else shape.layers * layer
    return {"activations": kept, "logits": 2 * n * shape.vocab * 4}


def inference_activation_bytes(shape: ModelShape, tokens: int, dtype_bytes: int, logit_tokens: int) -> float:
    """Peak of a forward without gradients: one layer's activations over ``tokens`` and fp32 logits."""
    return tokens * (6 * shape.hidden + 3 * shape.intermediate) * dtype_bytes + logit_tokens * shape.vocab * 4


@dataclass(frozen=True)
class EngineMemory:
    device_total: float  # what vLLM takes: gpu_memory_utilization x the device
    weights: float
    activations: float
    overhead: float
    kv_cache: float  # the rest (can be negative: does not fit)
    kv_tokens: int


def engine_memory(shape: ModelShape, dtype_bytes: int, tp: int, device_bytes: float, utilization: float,
                  batched_tokens: int, max_seqs: int, cuda_graphs: bool) -> EngineMemory:
    """One engine's share of each GPU it spans: vLLM profiles a forward over ``batched_tokens`` and a sampler
    over ``max_seqs`` logits, keeps ~1 GiB of CUDA context and (with CUDA graphs) ~0.5 GiB of graphs, and gives
    the rest of ``utilization`` x the device to the KV cache."""
    total = utilization * device_bytes
    weights = shape.params * dtype_bytes / tp
    act = inference_activation_bytes(shape, batched_tokens, dtype_bytes, 0) / tp + max_seqs * shape.vocab * 4
    overhead = (1.5 if cuda_graphs else 1.0) * GIB
    kv = total - weights - act - overhead
    return EngineMemory(total, weights, act, overhead, kv, int(max(kv, 0) // (shape.kv_bytes_per_token(dtype_bytes)
                                                                             / tp)))


# ------------------------------------------------------------------------------------------------ time

# Measured on the embedded SmolLM2-135M (134.5M parameters) on 2 CPU cores (bench/RESULTS.md); on CPU a stage's
# throughput is scaled by 134.5M / the model's parameters, per actor.
SMOL_PARAMS = 134.5e6
CPU_MEASURED = {
    "generate": (145.0, "tokens/s, the pipeline's engine, float32 (bench_generate, 2026-12-02 04:17)"),
    "score": (832.0, "tokens/s, packed rows of 2,048 (bench_score, 2026-12-01 21:29)"),
    "train": (0.511 * 2 * 114, "tokens/s, DeepSpeed ZeRO-2 step, 4 pairs of 114 tokens (bench_train_step, "
                               "2026-12-02 02:05)"),
    "engine start": (27.1, "s, engine start in the actor (bench_generate, 2026-12-02 04:17)"),
}
# No GPU was measured yet (bench/RESULTS.md, GPU): the data sheet of an H100 SXM and docs/scale.md's assumptions.
GPU_ASSUMED = {"tflops": 989.0, "hbm_tbps": 3.35, "mfu": 0.40, "engine_start_s": 90.0, "write_gbps": 1.0}


def decode_seconds(shape: ModelShape, dtype_bytes: int, tp: int, sequences: int, new_tokens: int,
                   concurrency: int, hbm_tbps: float) -> float:
    """Bandwidth-bound decoding: each step reads the engine's weights once for every sequence in flight."""
    waves = math.ceil(sequences / max(1, concurrency))
    return waves * new_tokens * shape.params * dtype_bytes / tp / (hbm_tbps * 1e12)


def compute_seconds(params: int, tokens: float, flops_per_param_token: int, devices: int, tflops: float,
                    mfu: float) -> float:
    """Compute-bound work: ``flops_per_param_token`` x params x tokens (2 forward, 6 forward + backward)."""
    return flops_per_param_token * params * tokens / (devices * tflops * 1e12 * mfu)
