"""Engine actors whose pairs the policy itself labels, on the engine that sampled them (Ray Data callable classes,
like dlma_ray.workers.generation's): the answers and their judgements come from one vLLM engine, in batches.

    RlaifEngine           two answers per prompt (under the contrastive prompts, or two plain samples), then the
                          A/B judge (dlma_ray.evaluation.judges.ab) in both orders: one request per prompt and
                          order, reading the letters' next-token log-probs (`ab_readings`: `logprob_token_ids`,
                          max_tokens 1)
    SelfRewardingEngine   N answers per prompt under the plain context, each judged `num_judgements` times with the
                          5-point rubric (`five_point_judgements`; dlma_ray.evaluation.judges.five_point); the pair
                          is the best mean against the worst; with `meta_judge`, a second row per prompt: its best
                          judgement against its worst, as the policy meta-judges them (judges.meta_judge)

Both write one generation row per prompt (GENERATION_SCHEMA) with the judge's columns (and the meta-judge its
judgement pairs after them); a prompt the judge gives no
pair keeps its row, with `label_drop` saying why, so the score stage counts it (and never scores it).
"""

from __future__ import annotations

import json

import numpy as np

from dlma_ray.core.prompts import context_ids, engine_prompt
from dlma_ray.core.schema import LABEL_DEFAULTS
from dlma_ray.evaluation.judges import ab, five_point, meta_judge
from dlma_ray.workers.engines import plain_logprobs
from dlma_ray.workers.generation import GenerationEngine, request_seed, sampled_ids, sampling_params


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
    `self_rewarding` section); the best mean against the worst is the prompt's pair (with `length_control`: the
    shortest of the best band against the longest of the worst). With `meta_judge` the policy also compares its
    judgements of the answer they disagree on most, and its best judgement against its worst is a second row
    (`pair_of`: judgements) for each training prompt that has one."""

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
        lengths = [len(sampled_ids(a, self.stop_ids)[0]) for a in answers]
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
            pick = five_point.best_vs_worst(means, lengths[j * m:(j + 1) * m], sr["length_control"])
            judged = sum(not np.isnan(x) for x in means)
            reason = "" if pick else ("too_few_judged" if judged < 2 else "tie")
            b, w = pick or (0, 1)
            best.append(j * m + b)
            worst.append(j * m + w)
            drop.append(reason)
            chosen_score.append(means[b] if pick else np.nan)
            rejected_score.append(means[w] if pick else np.nan)
            details.append({"scores": per_sample, "means": [None if np.isnan(x) else x for x in means],
                            "unparsed": sum(s is None for row in per_sample for s in row),
                            "samples_without_score": m - judged, "best": b, "worst": w,
                            "lengths": lengths[j * m:(j + 1) * m]})
        judgement_rows = []
        if sr["meta_judge"]:
            judgement_rows = self._judgement_pairs(batch, questions, answers, texts, details)
        out = {**batch, **context,
               **self._response_columns("chosen", [answers[i] for i in best]),
               **self._response_columns("rejected", [answers[i] for i in worst]),
               "chosen_judge_score": np.array(chosen_score, dtype=np.float64),
               "rejected_judge_score": np.array(rejected_score, dtype=np.float64),
               "label_drop": np.array(drop, dtype=object),
               "judge_json": np.array([json.dumps(d) for d in details], dtype=object),
               "pair_of": np.array(["answers"] * n, dtype=object)}
        return with_rows(out, judgement_rows)

    def _judgement_pairs(self, batch, questions: list[str], answers: list, texts: list[str],
                         details: list[dict]) -> list[dict]:
        """Meta-Rewarding's judge pairs of a batch, one engine call for every prompt's contests in both orders: the
        rows (GENERATION_SCHEMA, `pair_of` judgements), and each prompt's outcome in ``details`` (`meta_judge`:
        `pair`, or why not: `heldout`, `judgements_agree`, `too_long`, `wins_tie`, `same_points`)."""
        tok, m, t = self.llm.get_tokenizer(), self.sr["num_samples"], self.sr["num_judgements"]
        limit = self.gen["max_model_len"] - 1  # room for the letter
        disputes = {}  # prompt j -> (answer i, its judgements, the contests, their contexts: each pair in both orders)
        for j, d in enumerate(details):
            if str(batch["split"][j]) != "train":  # held-out prompts are never trained on, judgements included
                d["meta_judge"] = "heldout"
                continue
            i = meta_judge.disputed_answer(d["scores"])
            judged = texts[(j * m + i) * t:(j * m + i + 1) * t] if i is not None else []
            contests = meta_judge.contests(d["scores"][i], judged) if i is not None else []
            if not contests:
                d["meta_judge"] = "judgements_agree"
                continue
            contexts = [judge_context(tok, meta_judge.meta_question(questions[j], answers[j * m + i].text, judged[x],
                                                                    judged[y]), self.renderer.style,
                                      meta_judge.WINNER_CUE)
                        for a, b in contests for x, y in ((a, b), (b, a))]
            if any(len(context_ids(tok, c)) > limit for c in contexts):
                d["meta_judge"] = "too_long"  # a round robin missing a contest would rank its judgements unfairly
                continue
            disputes[j] = (i, judged, contests, contexts)
        if not disputes:
            return []
        seeds = [request_seed(self.gen["seed"], self.round_index, str(batch["prompt_id"][j]), f"meta{i}.{a}.{b}")
                 for j, (i, _, contests, _) in disputes.items() for a, b in contests for _ in range(2)]
        readings = iter(ab_readings(self.llm, [c for *_, contexts in disputes.values() for c in contexts], seeds))
        rows = []
        for j, (i, judged, contests, _) in disputes.items():
            both = [(next(readings), next(readings)) for _ in contests]  # P(A) with a shown first, then with b
            points = details[j]["scores"][i]
            wins = meta_judge.judgement_wins(t, contests, [p for p, _ in both], [q for _, q in both])
            pick = meta_judge.judgement_pair(points, wins)
            details[j]["meta_judge"] = "pair" if isinstance(pick, tuple) else pick
            if isinstance(pick, tuple):
                record = {"answer": i, "points": points, "wins": [None if np.isnan(w) else w for w in wins],
                          "contests": [[a, b, p, q] for (a, b), (p, q) in zip(contests, both)],
                          "best": pick[0], "worst": pick[1]}
                question = five_point.judge_question(questions[j], answers[j * m + i].text)
                rows.append(self._judgement_row(batch, j, question, judged[pick[0]], judged[pick[1]], record))
        return rows

    def _judgement_row(self, batch, j: int, question: str, chosen: str, rejected: str, record: dict) -> dict:
        """One generation row whose pair is two judgements of an answer: the judge's question is its prompt (its
        three contexts are the one the judgements were written in), the judgements its responses, as given texts."""
        tok = self.llm.get_tokenizer()
        messages = [{"role": "user", "content": question}]
        context = judge_context(tok, question, self.renderer.style)
        row = {"prompt_id": f"{batch['prompt_id'][j]}:judge", "messages_json": json.dumps(messages),
               "prompt": question, "kind": batch["kind"][j], "split": "train", "round": batch["round"][j],
               "policy": self.model_ref, "pos_context": context, "neg_context": context, "plain_context": context,
               "end_of_turn": self.renderer.end_of_turn, "label_preference": np.nan, "chosen_judge_score": np.nan,
               "rejected_judge_score": np.nan, "label_drop": "", "judge_json": json.dumps({"meta_judge": record}),
               "pair_of": "judgements"}
        for side, text in (("chosen", chosen), ("rejected", rejected)):
            ids = list(tok(text, add_special_tokens=False)["input_ids"])
            row.update({side: text, f"{side}_token_ids": ids, f"{side}_tokens": len(ids), f"{side}_finished": True})
        return row


def with_rows(columns: dict[str, np.ndarray], rows: list[dict]) -> dict[str, np.ndarray]:
    """``columns`` (a batch) with ``rows`` appended; a row lacking a column fills it with the column's default."""
    if not rows:
        return columns
    out = {}
    for name, values in columns.items():
        extra = np.empty(len(rows), dtype=object)
        extra[:] = [r.get(name, LABEL_DEFAULTS.get(name)) for r in rows]  # lists stay one object each
        joined = np.concatenate([np.asarray(values, dtype=object), extra])
        out[name] = joined if values.dtype.kind in "OUS" else joined.astype(values.dtype)  # text never cut to width
    return out
