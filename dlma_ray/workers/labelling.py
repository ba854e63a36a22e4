"""Engine actors whose pairs the policy itself labels, on the engine that sampled them (Ray Data callable classes,
like dlma_ray.workers.generation's): the answers and their judgements come from one vLLM engine, in batches.

    RlaifEngine           two answers per prompt (under the contrastive prompts, or two plain samples), then the
                          A/B judge (dlma_ray.evaluation.judges.ab) in both orders: one request per prompt and
                          order, reading the letters' next-token log-probs (`ab_readings`: `logprob_token_ids`,
                          max_tokens 1)
    SelfRewardingEngine   N answers per prompt under the plain context, each judged `num_judgements` times with the
                          5-point rubric (`five_point_judgements`; dlma_ray.evaluation.judges.five_point); the pair
                          is the best mean against the worst

Both write one generation row per prompt (GENERATION_SCHEMA) with the judge's columns; a prompt the judge gives no
pair keeps its row, with `label_drop` saying why, so the score stage counts it (and never scores it).
"""

from __future__ import annotations

import json

import numpy as np

from dlma_ray.core.prompts import engine_prompt
from dlma_ray.evaluation.judges import ab, five_point
from dlma_ray.workers.engines import plain_logprobs
from dlma_ray.workers.generation import GenerationEngine, request_seed, sampling_params


def judge_context(tokenizer, question: str, style: str, reply_start: str = "") -> str:
    """A judge question as the policy's own user turn, its reply begun with ``reply_start``: the chat template with
    the generation prompt (style `chat`), or the question's raw text followed by ``reply_start`` (style `raw`, and
    models without a template: RLCD's release gave its base model the text as is)."""
    if style == "chat" and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": question.rstrip()}], tokenize=False,
                                             add_generation_prompt=True) + reply_start
    return question + reply_start


def token_choices(tokenizer, labels) -> dict[int, str]:
    """{token id: label} over every single-token spelling of each label (ab.letter_token_ids)."""
    return {i: label for label in labels for i in ab.letter_token_ids(tokenizer, label)}


def rlaif_prompts(tokenizer, chats: list, first: list[str], second: list[str], instructions: list[str],
                  style: str) -> list[str]:
    """RLCD's labelling prompt of each pair (``first`` shown as (A)), as the policy's user turn with its reply begun
    with the answer's cue, so the next token is the letter."""
    cue = ab.ANSWER_CUE
    return [judge_context(tokenizer, ab.labelling_prompt(c, a, b, i).removesuffix(cue), style, cue)
            for c, a, b, i in zip(chats, first, second, instructions)]


def ab_readings(llm, prompts: list[str], seeds: list[int]) -> list[float]:
    """P(A) after each labelling prompt (ab.ab_probability), from one engine call: one greedy token per request,
    whose log-probs of the letters' spellings are read (`logprob_token_ids`)."""
    from vllm import SamplingParams

    tok = llm.get_tokenizer()
    a_ids, b_ids = ab.letter_token_ids(tok, "A"), ab.letter_token_ids(tok, "B")
    params = [SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=a_ids + b_ids, seed=s) for s in seeds]
    outs = llm.generate([engine_prompt(tok, p) for p in prompts], params, use_tqdm=False)
    return [ab.ab_probability(plain_logprobs(o.outputs[0].logprobs)[0], a_ids, b_ids) for o in outs]


def five_point_judgements(llm, questions: list[str], seeds: list[int], sr: dict, style: str,
                          stop_ids: set[int]) -> list[str]:
    """One judgement text per rubric question (``sr``: the `self_rewarding` config section): free text, or with
    `constrained_score` a justification up to "Score:" and then points sampled from the digit tokens alone."""
    from vllm import SamplingParams

    tok = llm.get_tokenizer()
    contexts = [judge_context(tok, q, style) for q in questions]
    stop = [five_point.SCORE_CUE] if sr["constrained_score"] else None
    params = [SamplingParams(temperature=sr["judge_temperature"], top_p=1.0, max_tokens=sr["judge_max_tokens"],
                             seed=s, stop=stop, stop_token_ids=sorted(stop_ids)) for s in seeds]
    texts = [o.outputs[0].text for o in
             llm.generate([engine_prompt(tok, c) for c in contexts], params, use_tqdm=False)]
    if not sr["constrained_score"]:
        return texts
    points = token_choices(tok, five_point.POINTS)
    heads = [t.rstrip() + f"\n{five_point.SCORE_CUE}" for t in texts]
    params = [SamplingParams(temperature=sr["judge_temperature"], top_p=1.0, max_tokens=1, seed=s + 1,
                             allowed_token_ids=sorted(points)) for s in seeds]
    outs = llm.generate([engine_prompt(tok, c + h) for c, h in zip(contexts, heads)], params, use_tqdm=False)
    return [f"{h} {points.get(o.outputs[0].token_ids[0], '?') if o.outputs[0].token_ids else '?'}"
            for h, o in zip(heads, outs)]


class RlaifEngine(GenerationEngine):
    """Answers a prompt twice and has the policy label the pair (``rlaif``: the config's `rlaif` section)."""

    def __init__(self, *args, rlaif: dict, run_seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.rlaif, self.run_seed = rlaif, run_seed

    def _answers(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.rlaif["pairs"] == "contrastive":
            return GenerationEngine.__call__(self, batch)
        chats = [json.loads(m) for m in batch["messages_json"]]
        ids, n = list(batch["prompt_id"]), len(batch["prompt_id"])
        context = self._context_columns(chats, range(n))
        params = [self._params(i, "sample0") for i in ids] + [self._params(i, "sample1") for i in ids]
        outs = self._generate(list(context["plain_context"]) * 2, params, n)
        return {**batch, **context, **self._response_columns("chosen", outs[:n]),
                **self._response_columns("rejected", outs[n:])}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._answers(batch)
        tok, cfg = self.llm.get_tokenizer(), self.rlaif
        chats = [json.loads(m) for m in out["messages_json"]]
        ids = [str(i) for i in out["prompt_id"]]
        instructions = [ab.instruction_for(cfg["instruction"], self.run_seed, pid) for pid in ids]
        y1, y2 = [str(t) for t in out["chosen"]], [str(t) for t in out["rejected"]]
        style = self.renderer.style
        seeds = [request_seed(self.gen["seed"], self.round_index, pid, "ab") for pid in ids]
        p_first = ab_readings(self.llm, rlaif_prompts(tok, chats, y1, y2, instructions, style), seeds)
        p_second = (ab_readings(self.llm, rlaif_prompts(tok, chats, y2, y1, instructions, style), seeds)
                    if cfg["both_orders"] else [0.5] * len(ids))
        labels = ab.label_pairs(p_first, p_second, cfg["margin"], cfg["both_orders"])
        swap = np.array([s for _, s, _ in labels], dtype=bool)
        for side in ("", "_tokens", "_finished", "_token_ids"):  # the preferred answer becomes `chosen`
            c, r = out[f"chosen{side}"].copy(), out[f"rejected{side}"].copy()
            c[swap], r[swap] = out[f"rejected{side}"][swap], out[f"chosen{side}"][swap]
            out[f"chosen{side}"], out[f"rejected{side}"] = c, r
        out["label_preference"] = np.array([p for p, _, _ in labels], dtype=np.float64)
        out["label_drop"] = np.array(["within_margin" if d else "" for _, _, d in labels], dtype=object)
        out["judge_json"] = np.array([json.dumps({"p_a_first": a, "p_a_second": b if cfg["both_orders"] else None,
                                                  "instruction": i})
                                      for a, b, i in zip(p_first, p_second, instructions)], dtype=object)
        return out


class SelfRewardingEngine(GenerationEngine):
    """N answers per prompt, each scored by the policy with the 5-point rubric (``self_rewarding``: the config's
    `self_rewarding` section); the best mean against the worst is the prompt's pair."""

    def __init__(self, *args, self_rewarding: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.sr = self_rewarding

    def _sample_params(self, prompt_id: str, tag: str):
        """The answers' sampling: the paper's temperature and nucleus, top-k off; the rest as generation.*."""
        gen = {**self.gen, "temperature": self.sr["temperature"], "top_p": self.sr["top_p"], "top_k": -1}
        return sampling_params(gen, gen["max_new_tokens"], request_seed(gen["seed"], self.round_index, prompt_id, tag),
                               self.stop_ids)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sr = self.sr
        chats = [json.loads(m) for m in batch["messages_json"]]
        ids, n, m, t = list(batch["prompt_id"]), len(batch["prompt_id"]), sr["num_samples"], sr["num_judgements"]
        context = self._context_columns(chats, range(n))
        params = [self._sample_params(ids[j], f"sample{i}") for j in range(n) for i in range(m)]
        answers = self._generate([c for c in context["plain_context"] for _ in range(m)], params, n)
        questions = [five_point.question_of(c) for c in chats]
        asked = [(j, i, k) for j in range(n) for i in range(m) for k in range(t)]
        texts = five_point_judgements(
            self.llm, [five_point.judge_question(questions[j], answers[j * m + i].text) for j, i, _ in asked],
            [request_seed(self.gen["seed"], self.round_index, ids[j], f"judge{i}.{k}") for j, i, k in asked], sr,
            self.renderer.style, self.stop_ids)
        scores = [five_point.parse_score(x) for x in texts]
        best, worst, drop, details, chosen_score, rejected_score = [], [], [], [], [], []
        for j in range(n):
            per_sample = [scores[(j * m + i) * t:(j * m + i + 1) * t] for i in range(m)]
            means = five_point.mean_scores(per_sample, sr["min_valid_judgements"])
            pick = five_point.best_vs_worst(means)
            judged = sum(not np.isnan(x) for x in means)
            reason = "" if pick else ("too_few_judged" if judged < 2 else "tie")
            b, w = pick or (0, 1)
            best.append(j * m + b)
            worst.append(j * m + w)
            drop.append(reason)
            chosen_score.append(means[b] if pick else np.nan)
            rejected_score.append(means[w] if pick else np.nan)
            details.append(json.dumps({"scores": per_sample, "means": [None if np.isnan(x) else x for x in means],
                                       "unparsed": sum(s is None for row in per_sample for s in row),
                                       "samples_without_score": m - judged, "best": b, "worst": w}))
        return {**batch, **context,
                **self._response_columns("chosen", [answers[i] for i in best]),
                **self._response_columns("rejected", [answers[i] for i in worst]),
                "chosen_judge_score": np.array(chosen_score, dtype=np.float64),
                "rejected_judge_score": np.array(rejected_score, dtype=np.float64),
                "label_drop": np.array(drop, dtype=object), "judge_json": np.array(details, dtype=object)}
