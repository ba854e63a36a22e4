"""The vLLM engine class on its own (no Ray): seeded per request, both sides in one call."""

import json

import numpy as np

from dlma_ray.core.prompts import BUILTIN_PAIRS



def rows(ids):
    # Long prompts: together they exceed vLLM's per-step token budget, so prefills would be chunked.
    chats = [[{"role": "user", "content": f"Question {i}: " + "tell me more " * (20 + 3 * i)}] for i in ids]
    return {"prompt_id": np.array([f"p{i}" for i in ids], dtype=object),
            "messages_json": np.array([json.dumps(c) for c in chats], dtype=object),
            "round": np.array([0] * len(ids), dtype=np.int32)}


def test_samples_do_not_depend_on_batching(tiny_model_dir):
    from dlma_ray.config.tree import GenerationConfig
    from dlma_ray.workers.generation import GenerationEngine

    gen = vars(GenerationConfig(max_new_tokens=8, cpu_kvcache_gb=1))
    engine = GenerationEngine(tiny_model_dir, BUILTIN_PAIRS["harmless"], "chat", gen, round_index=0)
    try:
        big = engine(rows(range(64)))
        small = engine(rows([40, 3, 17]))
    finally:  # now, not at interpreter exit (where vLLM's monitor thread would log into closed streams)
        engine.__del__()
    index = {pid: i for i, pid in enumerate(big["prompt_id"])}
    for j, pid in enumerate(small["prompt_id"]):
        assert small["chosen"][j] == big["chosen"][index[pid]]
        assert small["rejected"][j] == big["rejected"][index[pid]]
    assert len(set(big["chosen"])) > 60, "each request must get its own seed"
    assert all(1 <= t <= 8 for t in big["chosen_tokens"])
    assert big["pos_context"][0] != big["neg_context"][0]
    assert set(big["end_of_turn"]) == {"<|im_end|>"} and set(big["policy"]) == {tiny_model_dir}
