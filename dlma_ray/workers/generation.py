"""Generate stage: Ray Data `map_batches` over vLLM engine actors.

Each actor owns one vLLM engine loaded from the round's policy folder (or drives one the evaluation kept:
dlma_ray.workers.engines) and answers every prompt of a batch twice in one engine call: under the positive and under the negative prompt of the pair.
Each request carries its own seed derived from (run seed, round, prompt id, side), so a row's
samples do not depend on how Ray Data batched the rows. `SampleEngine` (Self-Contrast) instead samples
N responses per prompt under the plain context, seeded per (prompt, sample index). Engines get each context as
token ids (`prompts.engine_prompt`), the ids the scorer and the trainer condition on: a text prompt would be
tokenised by vLLM with special tokens, a second BOS on templates that write their own.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from dlma_ray.workers import phases, telemetry
from dlma_ray.workers.engines import HostedEngine, start_engine, stop_engine
from dlma_ray.core.prompts import ContrastiveRenderer, PromptPair, end_of_turn_ids, engine_prompt


def request_seed(base_seed: int, round_index: int, prompt_id: str, side: str) -> int:
    digest = hashlib.sha256(f"{base_seed}:{round_index}:{prompt_id}:{side}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def sampled_ids(output, stop_ids: set[int]) -> tuple[list[int], bool]:
    """(content token ids, finished) of one vLLM completion.

    A completion that stopped (finish_reason "stop") ended its turn; vLLM keeps the stop token among its
    ids, which is dropped here because the tables store the content and every consumer appends the
    end-of-turn tokens to finished responses (logprobs.response_ids). One cut at max_tokens is kept as is.
    """
    ids = [int(i) for i in output.token_ids]
    finished = output.finish_reason == "stop"
    if finished and ids and ids[-1] in stop_ids:
        ids = ids[:-1]
    return ids, finished


def stop_token_ids(tokenizer, end_of_turn: str) -> set[int]:
    """Ids whose sampling ends a turn: the tokenizer's EOS and the template's end-of-turn token."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eot = end_of_turn_ids(tokenizer, end_of_turn)  # the ids logprobs.response_ids appends: the same function
    return ids | ({eot[0]} if len(eot) == 1 else set())


def sampling_params(gen: dict, max_tokens: int, seed: int, stop_ids: set[int]):
    """vLLM SamplingParams with every setting explicit (the released code left them implicit)."""
    from vllm import SamplingParams

    return SamplingParams(temperature=gen["temperature"], top_p=gen["top_p"], top_k=gen["top_k"],
                          max_tokens=max_tokens, seed=seed, stop_token_ids=sorted(stop_ids))


class GenerationEngine:
    """A Ray Data callable class: prompt rows in, rows with (y+, y-) and their contexts out."""

    def __init__(self, model_path: str, pair: PromptPair, style: str, gen: dict, round_index: int,
                 tensor_parallel_size: int = 1, trust_remote_code: bool = False, torch_threads: int = 1,
                 engine_hosts: list | None = None):
        # engine_hosts: engines kept from the evaluation (dlma_ray.workers.engines.KeptEngines) instead of a new one
        phases.process_started()
        self.llm = (HostedEngine.claim(engine_hosts, model_path, trust_remote_code) if engine_hosts else
                    start_engine(model_path, gen, tensor_parallel_size, trust_remote_code, torch_threads))
        self.renderer = ContrastiveRenderer(self.llm.get_tokenizer(), pair, style)
        self.stop_ids = stop_token_ids(self.llm.get_tokenizer(), self.renderer.end_of_turn)
        self.gen, self.round_index, self.model_ref = gen, round_index, model_path

    def __del__(self):  # Ray Data calls it when the stage ends its actor pool
        if getattr(self, "llm", None) is not None:
            stop_engine(self.llm)
            self.llm = None

    def _params(self, prompt_id: str, side: str):
        return sampling_params(self.gen, self.gen["max_new_tokens"],
                               request_seed(self.gen["seed"], self.round_index, prompt_id, side), self.stop_ids)

    def _response_columns(self, prefix: str, outputs) -> dict[str, np.ndarray]:
        """The generation-table columns of one side: text, sampled ids, token count, finished."""
        sampled = [sampled_ids(o, self.stop_ids) for o in outputs]
        ids = np.empty(len(sampled), dtype=object)
        ids[:] = [list(i) for i, _ in sampled]  # Python lists: Ray Data keeps them as list<int>
        return {prefix: np.array([o.text for o in outputs], dtype=object), f"{prefix}_token_ids": ids,
                f"{prefix}_tokens": np.array([len(i) for i, _ in sampled], dtype=np.int32),
                f"{prefix}_finished": np.array([f for _, f in sampled], dtype=bool)}

    def _generate(self, contexts: list[str], params: list, n_prompts: int) -> list:
        """One engine call (vLLM batches every request together) on the contexts' ids, timed and counted."""
        start = time.perf_counter()
        tok = self.llm.get_tokenizer()
        prompts = [engine_prompt(tok, c) for c in contexts]
        outs = [o.outputs[0] for o in self.llm.generate(prompts, params, use_tqdm=False)]
        tokens = sum(len(o.token_ids) for o in outs)
        telemetry.inc("dlma_prompts_generated_total", n_prompts, round=self.round_index)
        telemetry.inc("dlma_tokens_generated_total", tokens, round=self.round_index)
        telemetry.set_gauge("dlma_generation_tokens_per_second", tokens / (time.perf_counter() - start),
                          round=self.round_index)
        return outs

    def _context_columns(self, chats: list, owner) -> dict[str, np.ndarray]:
        """The policy, the three renderings of each output row's chat and the end-of-turn text."""
        texts = {name: [render(c) for c in chats] for name, render in
                 (("pos_context", self.renderer.positive), ("neg_context", self.renderer.negative),
                  ("plain_context", self.renderer.plain))}
        out = {name: np.array([values[j] for j in owner], dtype=object) for name, values in texts.items()}
        out.update(policy=np.array([self.model_ref] * len(owner), dtype=object),
                   end_of_turn=np.array([self.renderer.end_of_turn] * len(owner), dtype=object))
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chats = [json.loads(m) for m in batch["messages_json"]]
        ids, n = list(batch["prompt_id"]), len(batch["prompt_id"])
        context = self._context_columns(chats, range(n))
        params = [self._params(i, "pos") for i in ids] + [self._params(i, "neg") for i in ids]
        outs = self._generate(list(context["pos_context"]) + list(context["neg_context"]), params, n)
        return {**batch, **context, **self._response_columns("chosen", outs[:n]),
                **self._response_columns("rejected", outs[n:])}


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
        owner = np.repeat(np.arange(len(ids)), n)  # output row -> input row
        context = self._context_columns(chats, owner)
        params = [self._params(ids[j], f"sample{i}") for j in range(len(ids)) for i in range(n)]
        outs = self._generate(list(context["plain_context"]), params, len(ids))
        tok = self.llm.get_tokenizer()
        targets = [str(t) for t in batch["target"]]
        target_ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in targets]
        chosen_ids = np.empty(len(owner), dtype=object)
        chosen_ids[:] = [target_ids[j] for j in owner]
        out = {name: np.asarray(values)[owner] for name, values in batch.items()}
        out.update(
            **context,
            chosen=np.array([targets[j] for j in owner], dtype=object), chosen_token_ids=chosen_ids,
            chosen_tokens=np.array([len(target_ids[j]) for j in owner], dtype=np.int32),
            chosen_finished=np.ones(len(owner), dtype=bool),
            **self._response_columns("rejected", outs),
        )
        return out
