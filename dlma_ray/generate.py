"""Generate stage: Ray Data `map_batches` over vLLM engine actors.

Each actor owns one vLLM engine loaded from the round's policy folder and answers every prompt of
a batch twice in one engine call: under the positive and under the negative prompt of the pair.
Each request carries its own seed derived from (run seed, round, prompt id, side), so a row's
samples do not depend on how Ray Data batched the rows. `SampleEngine` (Self-Contrast) instead samples
N responses per prompt under the plain context, seeded per (prompt, sample index).
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np

from dlma_ray import metrics
from dlma_ray.prompts import ContrastiveRenderer, PromptPair


def request_seed(base_seed: int, round_index: int, prompt_id: str, side: str) -> int:
    digest = hashlib.sha256(f"{base_seed}:{round_index}:{prompt_id}:{side}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def engine_kwargs(model_path: str, gen: dict, tensor_parallel_size: int, trust_remote_code: bool) -> dict:
    """Arguments of `vllm.LLM` for one engine (CPU build or CUDA build: same call)."""
    import torch

    kwargs = dict(model=model_path, dtype=gen["dtype"], enforce_eager=gen["enforce_eager"],
                  max_model_len=gen["max_model_len"], seed=gen["seed"], trust_remote_code=trust_remote_code,
                  tensor_parallel_size=tensor_parallel_size)
    if torch.cuda.is_available():
        kwargs["gpu_memory_utilization"] = gen["gpu_memory_utilization"]
    else:
        # vLLM's CPU build crashes ("CPU Generator does not use offset") when a request with its own
        # seed has its prefill chunked; whole prefills keep per-request seeds working.
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(4096, gen["max_model_len"]))
    return kwargs


class GenerationEngine:
    """A Ray Data callable class: prompt rows in, rows with (y+, y-) and their contexts out."""

    def __init__(self, model_path: str, pair: PromptPair, style: str, gen: dict, round_index: int,
                 tensor_parallel_size: int = 1, trust_remote_code: bool = False, torch_threads: int = 1):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(gen["cpu_kvcache_gb"]))
        import torch
        from vllm import LLM

        from dlma_ray.models import resolve_model_path

        torch.set_num_threads(torch_threads)
        self.llm = LLM(**engine_kwargs(resolve_model_path(model_path), gen, tensor_parallel_size, trust_remote_code))
        self.renderer = ContrastiveRenderer(self.llm.get_tokenizer(), pair, style)
        self.gen, self.round_index, self.model_ref = gen, round_index, model_path

    def _params(self, prompt_id: str, side: str):
        from vllm import SamplingParams

        return SamplingParams(temperature=self.gen["temperature"], top_p=self.gen["top_p"],
                              max_tokens=self.gen["max_new_tokens"],
                              seed=request_seed(self.gen["seed"], self.round_index, prompt_id, side))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chats = [json.loads(m) for m in batch["messages_json"]]
        ids = list(batch["prompt_id"])
        pos = [self.renderer.positive(c) for c in chats]
        neg = [self.renderer.negative(c) for c in chats]
        params = [self._params(i, "pos") for i in ids] + [self._params(i, "neg") for i in ids]
        # Both sides in one call: the engine batches them together.
        start = time.perf_counter()
        outs = self.llm.generate(pos + neg, params, use_tqdm=False)
        n = len(ids)
        chosen, rejected = [o.outputs[0] for o in outs[:n]], [o.outputs[0] for o in outs[n:]]
        tokens = sum(len(o.token_ids) for o in chosen + rejected)
        metrics.inc("dlma_prompts_generated_total", n, round=self.round_index)
        metrics.inc("dlma_tokens_generated_total", tokens, round=self.round_index)
        metrics.set_gauge("dlma_generation_tokens_per_second", tokens / (time.perf_counter() - start),
                          round=self.round_index)
        out = dict(batch)
        out.update(
            policy=np.array([self.model_ref] * n, dtype=object),
            pos_context=np.array(pos, dtype=object),
            neg_context=np.array(neg, dtype=object),
            plain_context=np.array([self.renderer.plain(c) for c in chats], dtype=object),
            end_of_turn=np.array([self.renderer.end_of_turn] * n, dtype=object),
            chosen=np.array([c.text for c in chosen], dtype=object),
            rejected=np.array([r.text for r in rejected], dtype=object),
            chosen_tokens=np.array([len(c.token_ids) for c in chosen], dtype=np.int32),
            rejected_tokens=np.array([len(r.token_ids) for r in rejected], dtype=np.int32),
            chosen_finished=np.array([c.finish_reason == "stop" for c in chosen]),
            rejected_finished=np.array([r.finish_reason == "stop" for r in rejected]),
        )
        return out


class SampleEngine(GenerationEngine):
    """Self-Contrast's sampler: N responses per prompt under the plain context, one output row per sample.

    Sample i of a prompt is seeded by (run seed, round, prompt id, i), so the set of samples does not depend
    on batching. Each row carries chosen = the prompt's SFT target y* (input column `target`) and
    rejected = the sample; pos/neg contexts are the pair's renderings, kept for judging only.
    """

    def __init__(self, *args, num_samples: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_samples = num_samples

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chats = [json.loads(m) for m in batch["messages_json"]]
        ids, n = list(batch["prompt_id"]), self.num_samples
        plain = [self.renderer.plain(c) for c in chats]
        pos, neg = [self.renderer.positive(c) for c in chats], [self.renderer.negative(c) for c in chats]
        owner = np.repeat(np.arange(len(ids)), n)  # output row -> input row
        params = [self._params(ids[j], f"sample{i}") for j in range(len(ids)) for i in range(n)]
        start = time.perf_counter()
        outs = [o.outputs[0] for o in self.llm.generate([plain[j] for j in owner], params, use_tqdm=False)]
        tokens = sum(len(o.token_ids) for o in outs)
        metrics.inc("dlma_prompts_generated_total", len(ids), round=self.round_index)
        metrics.inc("dlma_tokens_generated_total", tokens, round=self.round_index)
        metrics.set_gauge("dlma_generation_tokens_per_second", tokens / (time.perf_counter() - start),
                          round=self.round_index)
        tok = self.llm.get_tokenizer()
        targets = [str(t) for t in batch["target"]]
        target_tokens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in targets]
        out = {name: np.asarray(values)[owner] for name, values in batch.items()}
        out.update(
            policy=np.array([self.model_ref] * len(owner), dtype=object),
            pos_context=np.array([pos[j] for j in owner], dtype=object),
            neg_context=np.array([neg[j] for j in owner], dtype=object),
            plain_context=np.array([plain[j] for j in owner], dtype=object),
            end_of_turn=np.array([self.renderer.end_of_turn] * len(owner), dtype=object),
            chosen=np.array([targets[j] for j in owner], dtype=object),
            rejected=np.array([o.text for o in outs], dtype=object),
            chosen_tokens=np.array([target_tokens[j] for j in owner], dtype=np.int32),
            rejected_tokens=np.array([len(o.token_ids) for o in outs], dtype=np.int32),
            chosen_finished=np.ones(len(owner), dtype=bool),
            rejected_finished=np.array([o.finish_reason == "stop" for o in outs]),
        )
        return out
