"""A real vLLM engine on a tiny Llama-2-style model (issue 22, defect 7): the prompt ids vLLM reports for each
request are the scorer's context ids, BOS once, for the generate stage (both styles) and evaluation's answers;
the scorer's log-probs of the sampled responses are those of vLLM's own prompt ids. One engine for the module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from families import FAMILIES, make_family_model

from dlma_ray.core.prompts import BUILTIN_PAIRS, ContrastiveRenderer, context_ids, end_of_turn_ids


CHATS = [
    [{"role": "user", "content": "How do I cook rice?"}],
    [{"role": "system", "content": "Reply in French."}, {"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Why?"}],
]


class Recording:
    """The real `vllm.LLM`, keeping every `RequestOutput` it returns (their `prompt_token_ids` are what vLLM ran)."""

    def __init__(self, llm):
        self.llm, self.outputs = llm, []

    def generate(self, prompts, params, use_tqdm=False):
        outs = self.llm.generate(prompts, params, use_tqdm=use_tqdm)
        self.outputs.extend(outs)
        return outs

    def __getattr__(self, name):
        return getattr(self.llm, name)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from dlma_ray.config.tree import GenerationConfig
    from dlma_ray.workers.generation import GenerationEngine

    path = make_family_model(FAMILIES["llama2"], str(tmp_path_factory.mktemp("llama2")), layers=1)
    gen = vars(GenerationConfig(max_new_tokens=8, cpu_kvcache_gb=1))
    eng = GenerationEngine(path, BUILTIN_PAIRS["harmless"], "chat", gen, round_index=0)
    eng.llm = Recording(eng.llm)
    try:
        yield eng, path
    finally:  # now, not at interpreter exit
        eng.__del__()


def rows():
    return {"prompt_id": np.array([f"p{i}" for i in range(len(CHATS))], dtype=object),
            "messages_json": np.array([json.dumps(c) for c in CHATS], dtype=object),
            "round": np.zeros(len(CHATS), dtype=np.int32)}


def direct_logprob(model, ids: list[int], n_context: int) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(n_context, len(ids)))


@pytest.mark.parametrize("style", ["chat", "raw"])
def test_vllm_prompt_ids_are_the_scorers_context_ids(engine, style):
    from dlma_ray.model.loading import load_causal_lm
    from dlma_ray.workers.scoring import PairScorer

    eng, path = engine
    tok = eng.llm.get_tokenizer()
    eng.renderer = ContrastiveRenderer(tok, BUILTIN_PAIRS["harmless"], style)
    eng.llm.outputs.clear()
    out = eng(rows())
    n = len(CHATS)
    sent = [list(o.prompt_token_ids) for o in eng.llm.outputs]
    assert len(sent) == 2 * n
    for i in range(n):
        for ids, column in ((sent[i], "pos_context"), (sent[n + i], "neg_context")):
            assert ids == context_ids(tok, str(out[column][i])), f"{style} {column} {i}: {ids[:4]}"
            assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id

    scored = PairScorer(path, path, mode="contrastive")(out)
    model = load_causal_lm(path)
    eot = end_of_turn_ids(tok, str(out["end_of_turn"][0]))
    for i in range(n):
        for ids, side, column in ((sent[i], "chosen", "logp_pos_chosen"),
                                  (sent[n + i], "rejected", "logp_neg_rejected")):
            y = list(out[f"{side}_token_ids"][i]) + (eot if out[f"{side}_finished"][i] else [])
            assert scored[column][i] == pytest.approx(direct_logprob(model, ids + y, len(ids)), abs=2e-4)


def test_evaluation_answers_condition_on_the_same_ids(engine):
    from dlma_ray.config.tree import Config
    from dlma_ray.workers.eval_tasks import answer_prompts

    eng, path = engine
    cfg = Config()
    cfg.pair.name, cfg.pair.style, cfg.eval.max_new_tokens = "harmless", "chat", 8
    eng.llm.outputs.clear()
    answers = answer_prompts(eng.llm, path, [{"prompt_id": f"e{i}", "messages": c} for i, c in enumerate(CHATS)], cfg)
    tok = eng.llm.get_tokenizer()
    r = cfg.pair.renderer(tok)
    for a, o in zip(answers, eng.llm.outputs):
        assert list(o.prompt_token_ids) == context_ids(tok, r.plain(a["messages"]))
        assert o.prompt_token_ids.count(tok.bos_token_id) == r.plain(a["messages"]).count("<s>")
