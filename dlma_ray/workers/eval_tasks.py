"""The model work of the evaluate stage, run inside Ray tasks (dlma_ray.stages.evaluate starts them).

    generate_answers       vLLM: a model's sampled answers to the held-out prompts, plain chat format, on an
                           engine of its own (answer_prompts: on any engine, e.g. one kept across stages)
    initial_model_scores   transformers on pi_0, the fixed judge of every round: the contrast
                           C(y) = log pi_0(y | positive) - log pi_0(y | negative) of both answer sets,
                           log pi_0 of the policy's answers (KL), of the human pairs (implicit reward's
                           reference) and of the neutral text (perplexity); a reward-model judge's margins
    policy_scores          transformers on pi_k: the same log-probs under the policy, R of human-written
                           and of held-out generated pairs, the RLAIF text judge
    text_judge_preferences the RLAIF text judge on the round's generated pairs, asked of the model that scored
                           their R (the paper's R-versus-RLAIF comparison; dlma_ray.evaluation.score_analysis)

Answers are scored as token ids (`logprobs.response_ids`): the sampled ids, with the end-of-turn tokens
only after an answer that finished. Each function returns plain lists; the numbers with their intervals
are made by the driver (dlma_ray.stages.evaluate), so a task never decides what a measure means.

One scoring call per evaluation task: the (context, response ids) sequences of several measures gathered,
scored by a single `score_ids` call and split back by name.

`score_ids` packs the sequences of a call as prefix trees (dlma_ray.model.packing): a context is computed once
for all its responses in that call. One call per measure forwarded a context once per call (the same held-out
prompt under the positive template for pi_k's and pi_0's answers; a human pair's plain context for y+ and again
for y-). Each sequence's sum is still that of a forward of it alone, so the numbers are the separate calls'
(tests/unit/workers/test_eval_tasks.py; bench/RESULTS.md "Evaluation's scoring in one call per model").

``threads_per_task``: the torch threads of the evaluate stage's scorer tasks, which run at once.
"""

from __future__ import annotations

import gc

from dlma_ray.config.tree import Config


class ScoreBatch:
    """Named parts of (context, response ids); ``score`` scores them all in one `score_ids` call."""

    def __init__(self):
        self.contexts: list[str] = []
        self.ids: list[list[int]] = []
        self.parts: dict[str, tuple[int, int]] = {}

    def add(self, name: str, contexts: list[str], ids: list[list[int]]) -> None:
        if len(contexts) != len(ids) or name in self.parts:
            raise ValueError(f"part {name!r}: {len(contexts)} contexts, {len(ids)} responses (or added twice)")
        self.parts[name] = (len(self.contexts), len(ids))
        self.contexts += contexts
        self.ids += [list(i) for i in ids]

    def add_contrast(self, name: str, r, chats: list, ids: list[list[int]]) -> None:
        """``name``+ and ``name``-: the answers after the positive and after the negative context."""
        self.add(name + "+", [r.positive(c) for c in chats], ids)
        self.add(name + "-", [r.negative(c) for c in chats], ids)

    def add_rewards(self, name: str, pos: list[str], neg: list[str], y_plus, y_minus) -> None:
        """The four log-probs of R (see ``contrastive_rewards``) of each pair."""
        for ctx, side in ((pos, "+"), (neg, "-")):
            self.add(f"{name}{side}chosen", ctx, y_plus)
            self.add(f"{name}{side}rejected", ctx, y_minus)

    def add_neutral(self, name: str, tokenizer, r, docs: list[dict]) -> None:
        """The neutral texts as response ids after their question, no end-of-turn (as ``neutral_nll``)."""
        from dlma_ray.model.logprobs import text_ids

        self.add(name, [r.plain([{"role": "user", "content": d["prompt"]}]) for d in docs],
                 [text_ids(tokenizer, d["text"]) for d in docs])

    def score(self, model, tokenizer, batch_size: int) -> "ScoredParts":
        from dlma_ray.model.logprobs import score_ids

        lp = score_ids(model, tokenizer, self.contexts, self.ids, batch_size) if self.ids else []
        return ScoredParts({n: lp[s:s + k] for n, (s, k) in self.parts.items()},
                           {n: [len(i) for i in self.ids[s:s + k]] for n, (s, k) in self.parts.items()})


class ScoredParts:
    """``ScoreBatch.score``'s summed log-probs per part, read back as the tasks' measures."""

    def __init__(self, logps: dict[str, list[float]], lengths: dict[str, list[int]]):
        self.logps, self.lengths = logps, lengths

    def __getitem__(self, name: str) -> list[float]:
        return self.logps[name]

    def contrast(self, name: str) -> list[float]:
        return [a - b for a, b in zip(self.logps[name + "+"], self.logps[name + "-"])]

    def rewards(self, name: str) -> list[float]:
        from dlma_ray.core.losses import self_reward

        lp = [self.logps[name + k] for k in ("+chosen", "-chosen", "+rejected", "-rejected")]
        return [self_reward(*v) for v in zip(*lp)]

    def neutral(self, name: str) -> tuple[list[float], list[int]]:
        """(summed NLL, token count) per text: ``neutral_nll``'s result."""
        return [-v for v in self.logps[name]], self.lengths[name]


def threads_per_task(configured: int, tasks: int, nodes: list[dict], cpus_per_task: float,
                     gpus_per_task: float) -> int:
    """Torch threads for each of ``tasks`` scorer tasks the stage runs at once: ``configured``
    (resources.torch_threads, or the CPUs a task reserves) unless the tasks that fit on one node would then
    run more threads than it has CPUs; then that node's CPUs split among them (at least 1), on the smallest
    node that can host a task. Ray reserves a task's CPUs but does not stop it running more threads: two tasks
    of 2 threads on a 2-CPU node ran their scoring slower than 1 thread each (bench/RESULTS.md, "Evaluation's
    scoring in one call per model"). A GPU node has a GPU per task and its CPUs usually fit: unchanged there.
    ``nodes``: `ray.nodes()` entries."""
    threads = configured
    for node in nodes:
        res = node.get("Resources", {})
        if not node.get("Alive", True):
            continue
        fit = tasks
        if cpus_per_task > 0:
            fit = min(fit, int(res.get("CPU", 0) // cpus_per_task))
        if gpus_per_task > 0:
            fit = min(fit, int(res.get("GPU", 0) // gpus_per_task))
        if fit >= 1:
            threads = min(threads, max(1, int(res.get("CPU", 0) // fit)))
    return threads


def device() -> str:
    """The GPU Ray assigned to this task, or "cpu" (dlma_ray.workers.devices)."""
    from dlma_ray.workers.devices import ray_device

    return ray_device()


def free_memory() -> None:
    """Give back the memory of models the caller has just dropped (set to None)."""
    import torch

    gc.collect()
    if torch.cuda.is_initialized():  # only where this process used CUDA: a CPU task never touches it
        torch.cuda.empty_cache()


def load(ref: str, cfg: Config, threads: int | None = None):
    """The model and tokenizer at ``ref``; ``threads``: torch threads (None: the scorer's configured count; the
    evaluate stage passes fewer when its tasks share a node: dlma_ray.stages.evaluate.threads_per_task)."""
    import torch

    from dlma_ray.model.loading import load_causal_lm, load_tokenizer

    from dlma_ray.workers import phases

    phases.process_started()  # a task of its own process (max_calls=1): each load is one process start
    torch.set_num_threads(threads or cfg.resources.threads_for(cfg.resources.cpus_per_scorer))
    with phases.phase("model_load"):
        model = load_causal_lm(ref, cfg.scoring.dtype, cfg.model.trust_remote_code).to(device())
    return model, load_tokenizer(ref, cfg.model.trust_remote_code)


def answer_ids(tokenizer, rows: list[dict], end_of_turn: str) -> list[list[int]]:
    from dlma_ray.model.logprobs import response_ids

    return [response_ids(tokenizer, a["answer"], a.get("token_ids"), a["finished"], end_of_turn) for a in rows]


def pair_ids(tokenizer, pairs: list[dict], end_of_turn: str) -> tuple[list[list[int]], list[list[int]]]:
    """Human-written (given) y+ and y-: whole answers, so each is followed by the end-of-turn tokens."""
    from dlma_ray.model.logprobs import response_ids

    return ([response_ids(tokenizer, p["chosen"], None, True, end_of_turn) for p in pairs],
            [response_ids(tokenizer, p["rejected"], None, True, end_of_turn) for p in pairs])


def contrastive_rewards(model, tokenizer, pos: list[str], neg: list[str], y_plus: list[list[int]],
                        y_minus: list[list[int]], batch_size: int) -> list[float]:
    """R = [l+(y+) - l-(y+)] - [l+(y-) - l-(y-)] per pair, in one sorted scoring pass over token ids."""
    from dlma_ray.model.logprobs import score_ids
    from dlma_ray.core.losses import self_reward

    n = len(pos)
    lp = score_ids(model, tokenizer, pos + pos + neg + neg, y_plus + y_minus + y_plus + y_minus, batch_size)
    return [self_reward(lp[i], lp[2 * n + i], lp[n + i], lp[3 * n + i]) for i in range(n)]


def contrast(model, tokenizer, r, rows: list[dict], ids: list[list[int]], batch_size: int) -> list[float]:
    """C(y) = log p(y | positive) - log p(y | negative) of each answer under ``model``."""
    from dlma_ray.model.logprobs import score_ids

    chats = [a["messages"] for a in rows]
    lp = score_ids(model, tokenizer, [r.positive(c) for c in chats] + [r.negative(c) for c in chats], ids + ids,
                   batch_size)
    return [lp[i] - lp[len(rows) + i] for i in range(len(rows))]


def plain_logps(model, tokenizer, r, chats: list, ids: list[list[int]], batch_size: int) -> list[float]:
    from dlma_ray.model.logprobs import score_ids

    return score_ids(model, tokenizer, [r.plain(c) for c in chats], ids, batch_size)


def neutral_nll(model, tokenizer, r, docs: list[dict], batch_size: int) -> tuple[list[float], list[int]]:
    """Summed NLL and token count of each neutral text after its question (no end-of-turn: text only)."""
    from dlma_ray.model.logprobs import answer_nll

    return answer_nll(model, tokenizer, [r.plain([{"role": "user", "content": d["prompt"]}]) for d in docs],
                      [d["text"] for d in docs], batch_size)


def generate_answers(model_ref: str, prompts: list[dict], cfg: Config) -> list[dict]:
    """The model's sampled answer to each prompt under the plain chat format, on an engine of its own."""
    from dlma_ray.workers import phases
    from dlma_ray.workers.engines import start_engine, stop_engine

    phases.process_started()
    llm = start_engine(model_ref, dict(vars(cfg.generation), seed=cfg.eval.seed), cfg.resources.tensor_parallel_size,
                       cfg.model.trust_remote_code, cfg.resources.threads_for(cfg.resources.cpus_per_scorer))
    try:
        return answer_prompts(llm, model_ref, prompts, cfg)
    finally:
        stop_engine(llm)


def answer_prompts(llm, model_ref: str, prompts: list[dict], cfg: Config) -> list[dict]:
    """Answers from ``llm``, a `vllm.LLM` or an engine kept across stages (dlma_ray.workers.engines), seeded per prompt."""
    from dlma_ray.workers.generation import request_seed, sampled_ids, sampling_params, stop_token_ids
    from dlma_ray.core.prompts import engine_prompt

    gen = dict(vars(cfg.generation), seed=cfg.eval.seed)
    r = cfg.pair.renderer(llm.get_tokenizer())
    stop = stop_token_ids(llm.get_tokenizer(), r.end_of_turn)
    params = [sampling_params(gen, cfg.eval.max_new_tokens, request_seed(cfg.eval.seed, 0, p["prompt_id"], "eval"),
                              stop) for p in prompts]
    tok = llm.get_tokenizer()  # the context's ids, as the scorer sees them (prompts.context_ids)
    outs = llm.generate([engine_prompt(tok, r.plain(p["messages"])) for p in prompts], params, use_tqdm=False)
    rows = []
    for p, o in zip(prompts, outs):
        ids, finished = sampled_ids(o.outputs[0], stop)
        rows.append({**p, "model": model_ref, "answer": o.outputs[0].text, "token_ids": ids, "tokens": len(ids),
                     "finished": finished, **answer_sampling(cfg)})
    return rows


def answer_sampling(cfg: Config) -> dict:
    """The settings an answer set was sampled with: a cached set is reused only when they all match."""
    g = cfg.generation
    return {"max_new_tokens": cfg.eval.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p,
            "top_k": g.top_k, "seed": cfg.eval.seed}


FIXED_SCORES = ("contrast_baseline", "tokens_baseline", "pairs_chosen", "pairs_rejected", "neutral")


def initial_model_scores(cfg: Config, round0_ref: str, answers: list[dict], baseline: list[dict],
                         pairs: list[dict], neutral: list[dict], judged_pairs: list[dict] | None = None,
                         fixed: dict | None = None, text_judge_judged: bool = False,
                         threads: int | None = None) -> dict:
    """Everything pi_0 (the fixed judge) computes: see the module docstring. ``fixed`` holds the FIXED_SCORES
    of an earlier round (they depend on pi_0 and the evaluation items only): they are not computed again.
    ``text_judge_judged``: pi_0 also judges ``judged_pairs`` in text (round 0, where pi_0 is the model whose R
    they carry: the RLAIF baseline of the same model, without loading it twice)."""
    model, tok = load(round0_ref, cfg, threads)
    r, bs = cfg.pair.renderer(tok), cfg.eval.batch_size
    if text_judge_judged and judged_pairs:
        from dlma_ray.evaluation.judges import rlaif_judge

        _, out_rlaif = rlaif_judge(model, tok, [(p["messages"], p["chosen"], p["rejected"]) for p in judged_pairs], bs)
    else:
        out_rlaif = None
    new_ids, chats = answer_ids(tok, answers, r.end_of_turn), [a["messages"] for a in answers]
    batch = ScoreBatch()  # every log-prob of this task in one scoring call (ScoreBatch says why)
    batch.add_contrast("policy", r, chats, new_ids)
    batch.add("policy", [r.plain(c) for c in chats], new_ids)
    if fixed is None:
        base_ids = answer_ids(tok, baseline, r.end_of_turn)
        y_plus, y_minus = pair_ids(tok, pairs, r.end_of_turn)
        pair_chats = [p["messages"] for p in pairs]
        batch.add_contrast("baseline", r, [b["messages"] for b in baseline], base_ids)
        batch.add("chosen", [r.plain(c) for c in pair_chats], y_plus)
        batch.add("rejected", [r.plain(c) for c in pair_chats], y_minus)
        batch.add_neutral("neutral", tok, r, neutral)
    lp = batch.score(model, tok, bs)
    out = {"contrast_policy": lp.contrast("policy"), "tokens_policy": [len(i) for i in new_ids],
           "logp_policy_answers": lp["policy"], "margins": None, "judged_pair_rlaif": out_rlaif}
    if fixed is not None:
        out.update({k: fixed[k] for k in FIXED_SCORES})
    else:
        out.update(contrast_baseline=lp.contrast("baseline"), tokens_baseline=[len(i) for i in base_ids],
                   pairs_chosen=lp["chosen"], pairs_rejected=lp["rejected"], neutral=lp.neutral("neutral"))
    if cfg.eval.judge == "reward_model":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from dlma_ray.model.scoremodel import reward_model_scores

        model = None
        free_memory()
        rm = AutoModelForSequenceClassification.from_pretrained(
            cfg.eval.judge_model, trust_remote_code=cfg.model.trust_remote_code, use_safetensors=True,
        ).eval().to(device())
        rm_tok = AutoTokenizer.from_pretrained(cfg.eval.judge_model, trust_remote_code=cfg.model.trust_remote_code)
        chats = [a["messages"] for a in answers]
        new = reward_model_scores(rm, rm_tok, chats, [a["answer"] for a in answers], bs)
        old = reward_model_scores(rm, rm_tok, chats, [b["answer"] for b in baseline], bs)
        out["margins"] = [a - b for a, b in zip(new, old)]
        if judged_pairs:  # the round's generated pairs: does the external judge agree with R's sign?
            chats = [p["messages"] for p in judged_pairs]
            plus = reward_model_scores(rm, rm_tok, chats, [p["chosen"] for p in judged_pairs], bs)
            minus = reward_model_scores(rm, rm_tok, chats, [p["rejected"] for p in judged_pairs], bs)
            out["judge_pair_margins"] = [a - b for a, b in zip(plus, minus)]
    return out


def text_judge_preferences(cfg: Config, model_ref: str, judged_pairs: list[dict], threads: int | None = None,
                           ) -> list[float]:
    """The RLAIF text judge's preference for y+ of each generated pair (both orders averaged), asked of the model
    that scored their R (pi_k of the round; round 0 does this inside initial_model_scores)."""
    from dlma_ray.evaluation.judges import rlaif_judge

    model, tok = load(model_ref, cfg, threads)
    _, prefs = rlaif_judge(model, tok, [(p["messages"], p["chosen"], p["rejected"]) for p in judged_pairs],
                           cfg.eval.batch_size)
    return prefs


def policy_scores(cfg: Config, policy_ref: str, answers: list[dict], pairs: list[dict], heldout: list[dict],
                  neutral: list[dict], threads: int | None = None) -> dict:
    """Everything the evaluated policy pi_k computes: see the module docstring."""
    from dlma_ray.evaluation.judges import rlaif_judge
    from dlma_ray.model.logprobs import side_ids

    model, tok = load(policy_ref, cfg, threads)
    r, bs = cfg.pair.renderer(tok), cfg.eval.batch_size
    y_plus, y_minus = pair_ids(tok, pairs, r.end_of_turn)
    chats = [p["messages"] for p in pairs]
    batch = ScoreBatch()  # every log-prob of this task in one scoring call (ScoreBatch says why)
    batch.add("policy", [r.plain(a["messages"]) for a in answers], answer_ids(tok, answers, r.end_of_turn))
    batch.add("chosen", [r.plain(c) for c in chats], y_plus)
    batch.add("rejected", [r.plain(c) for c in chats], y_minus)
    batch.add_rewards("human", [r.positive(c) for c in chats], [r.negative(c) for c in chats], y_plus, y_minus)
    batch.add_neutral("neutral", tok, r, neutral)
    if heldout:
        cols = {c: [h[c] for h in heldout] for c in heldout[0]}
        batch.add_rewards("heldout", cols["pos_context"], cols["neg_context"], side_ids(tok, cols, "chosen"),
                          side_ids(tok, cols, "rejected"))
    lp = batch.score(model, tok, bs)
    out = {"logp_policy_answers": lp["policy"], "pairs_chosen": lp["chosen"], "pairs_rejected": lp["rejected"],
           "self_reward_human": lp.rewards("human"), "neutral": lp.neutral("neutral"), "rlaif": None,
           "heldout_r": lp.rewards("heldout") if heldout else []}
    if pairs and cfg.eval.rlaif_judge:  # the next token's distribution, not a summed log-prob: a pass of its own
        out["rlaif"], _ = rlaif_judge(model, tok, [(p["messages"], p["chosen"], p["rejected"]) for p in pairs], bs)
    return out
