"""Head to head: policy A's answers against policy B's on the same held-out prompts -> <out>/<a>_vs_<b>.<judge>.json.

    read_side         a run dir (its last evaluated round's answers.jsonl and policy), an answers .jsonl
                      file (e.g. <run>/baseline_answers.jsonl: pi_0's), or a policy folder / model name
    matched_answers   the two stored answer sets when they answered the same prompts with the same
                      sampling settings and seed (reused), else None
    head_to_head      answers (reused or generated), the judge in both orders, win / tie / lose with
                      intervals, and the judge's agreement with the human labels of eval.preference_pairs
    judge_accuracy    every named judge (the policy's own A/B and 5-point judgements too) against the human
                      labels of eval.preference_pairs -> <run.dir>/judge_accuracy.json (`dlma-ray judge-accuracy`)

Judges (`judge`): "openai" (an OpenAI-compatible endpoint, asked here in the driver: no model loads),
"reward_model" / "cost_model" (a folder: safe-rlhf score model or HF classification head; a cost model
prefers the LOWER score), "distillation" (C under pi_0 with the run's prompt pair, as the evaluation's
own judge), and the policy judges "ab" (RLAIF's A/B reading, both orders) and "five_point" (Self-Rewarding's
rubric), asked of a model on a vLLM engine (`--judge-model`, default the run's pi_0). Model work runs in Ray tasks
with max_calls=1, like the evaluate stage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from dlma_ray.config.tree import Config
from dlma_ray.core import storage
from dlma_ray.evaluation import headtohead as h2h
from dlma_ray.evaluation import judges
from dlma_ray.run.layout import RunLayout

log = logging.getLogger("dlma_ray.stages.judging")
JUDGES = judges.names(head_to_head=True)  # the judges of dlma_ray.evaluation.judges that can judge two policies
ACCURACY_JUDGES = ("self_reward", "distillation", "ab", "five_point", "reward_model", "cost_model")
POLICY_JUDGES = ("ab", "five_point")  # judges a language model runs on a vLLM engine (head to head: --judge-model)
SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed")


def _rows(path: str) -> list[dict]:
    return [json.loads(x) for x in storage.read_text(path).splitlines() if x.strip()]


def read_side(ref: str) -> dict:
    """{name, policy, answers, source} for one side; ``answers`` None when nothing is stored to reuse."""
    ref = ref.rstrip("/")
    if ref.endswith(".jsonl"):  # an answer file alone: pi_0's baseline_answers.jsonl is the common case
        rows = _rows(ref)
        name = "pi_0" if Path(ref).name == "baseline_answers.jsonl" else Path(ref).stem
        return {"name": name, "policy": rows[0].get("model") if rows else None, "answers": rows, "source": ref}
    run = RunLayout(storage.absolute(ref))
    if storage.exists(run.state):
        for k in sorted(run.rounds(), reverse=True):
            paths = run.round(k)
            if storage.exists(paths.answers):
                return {"name": Path(ref).name, "policy": paths.policy, "answers": _rows(paths.answers),
                        "source": paths.answers}
        policy = run.round(run.latest_policy()).policy if run.latest_policy() is not None else None
        return {"name": Path(ref).name, "policy": policy, "answers": None, "source": None}
    return {"name": Path(ref).name.replace(":", "_"), "policy": ref, "answers": None, "source": None}


def matched_answers(a: list[dict] | None, b: list[dict] | None) -> tuple[list[dict], list[dict]] | None:
    """Both sets by prompt id when they hold the same prompts, sampled with the same settings and seed."""
    if not a or not b:
        return None
    by_a, by_b = {r["prompt_id"]: r for r in a}, {r["prompt_id"]: r for r in b}
    if set(by_a) != set(by_b):
        return None
    settings = {tuple(r.get(k) for k in SAMPLING_KEYS) for r in a + b}
    if len(settings) != 1:
        return None
    ids = sorted(by_a)
    return [by_a[i] for i in ids], [by_b[i] for i in ids]


def _remote(fn, cfg: Config, engine: bool = False):
    import ray

    from dlma_ray.workers import engines

    res = cfg.resources
    if engine:
        return ray.remote(num_cpus=res.cpus_per_engine, num_gpus=res.gpus_per_engine, max_calls=1,
                          runtime_env=engines.ENGINE_RUNTIME_ENV,
                          **({"resources": res.engine_resources} if res.engine_resources else {}))(fn)
    return ray.remote(num_cpus=res.cpus_per_scorer, num_gpus=res.gpus_per_scorer, max_calls=1,
                      **({"resources": res.scorer_resources} if res.scorer_resources else {}))(fn)


def generate_both(cfg: Config, policies: tuple[str, str]) -> tuple[list[dict], list[dict]]:
    """Both policies answer the config's held-out prompts with the evaluation's seeds (eval_tasks)."""
    import ray

    from dlma_ray.model.loading import load_tokenizer
    from dlma_ray.stages.round import initial_model, model_for_actor
    from dlma_ray.stages.ray_session import init_ray
    from dlma_ray.stages.evaluate import load_eval_prompts
    from dlma_ray.workers import eval_tasks

    prompts = load_eval_prompts(cfg, load_tokenizer(initial_model(cfg), cfg.model.trust_remote_code))
    init_ray(cfg)
    gen = _remote(eval_tasks.generate_answers, cfg, engine=True)
    a, b = ray.get([gen.remote(model_for_actor(p), prompts, cfg) for p in policies])
    return a, b


def score_sets(cfg: Config, judge: str, judge_model: str, sets: list[list[dict]]) -> list[list[float]]:
    from dlma_ray.stages.round import initial_model

    return _score_task(cfg, judge, initial_model(cfg) if judge == "distillation" else judge_model, sets)


def human_rows(cfg: Config) -> tuple[list[dict], list[dict]]:
    """eval.preference_pairs as two answer sets: the human-chosen answers (A) and the rejected ones (B)."""
    from dlma_ray.model.loading import load_tokenizer
    from dlma_ray.stages.round import initial_model
    from dlma_ray.stages.evaluate import load_eval_pairs

    if cfg.eval.max_pairs < 0 or not cfg.eval.preference_pairs:
        return [], []
    pairs, _ = load_eval_pairs(cfg, load_tokenizer(initial_model(cfg), cfg.model.trust_remote_code))
    side = lambda key: [{"prompt_id": p["prompt_id"], "messages": p["messages"], "answer": p[key], "finished": True}
                        for p in pairs]
    return side("chosen"), side("rejected")


def verdicts(cfg: Config, judge: str, judge_model: str, a: list[dict], b: list[dict],
             human: tuple[list[dict], list[dict]], scorer=None) -> tuple[list[dict], list[dict]]:
    """(A vs B verdicts, chosen vs rejected verdicts) under one judge. ``scorer(cfg, judge, model_ref, sets)``:
    where a score judge's model work runs (default: a Ray task, ``score_sets``)."""
    ids, hids = [r["prompt_id"] for r in a], [r["prompt_id"] for r in human[0]]
    if judge == "openai":
        from dlma_ray.evaluation.judges import api_key, openai_picks

        key = api_key(cfg.eval.judge_api_key_env)
        out = []
        for x, y, pid in ((a, b, ids), (human[0], human[1], hids)):
            first, second = openai_picks(cfg.eval.judge_url, judge_model, key, [r["messages"] for r in x],
                                         [r["answer"] for r in x], [r["answer"] for r in y])
            out.append(h2h.pick_verdicts(pid, first, second))
        return out[0], out[1]
    if judge == "ab":  # a pairwise judge on an engine: P(A) in both orders, each order's pick its own
        import ray

        from dlma_ray.stages.ray_session import init_ray
        from dlma_ray.workers.judge_tasks import ab_pair_readings

        init_ray(cfg)
        sets = [[{"prompt_id": x["prompt_id"], "messages": x["messages"], "chosen": x["answer"], "rejected": y["answer"]}
                 for x, y in zip(first, second)] for first, second in ((a, b), human)]
        readings = ray.get(_remote(ab_pair_readings, cfg, engine=True).remote(cfg, judge_model, sets))
        return tuple(h2h.pick_verdicts(pid, [h2h.probability_pick(p) for p in p_first],
                                       [h2h.probability_pick(p) for p in p_second])
                     for pid, (p_first, p_second) in zip((ids, hids), readings))
    if scorer is None:
        sa, sb, hc, hr = score_sets(cfg, judge, judge_model, [a, b, human[0], human[1]])
    else:
        from dlma_ray.stages.round import initial_model

        ref = initial_model(cfg) if judge == "distillation" else judge_model
        sa, sb, hc, hr = scorer(cfg, judge, ref, [a, b, human[0], human[1]])
    low = judge == "cost_model"
    return h2h.score_verdicts(ids, sa, sb, low), h2h.score_verdicts(hids, hc, hr, low)


def check_judge_model(judge: str, judge_model: str) -> None:
    """A reward/cost model's folder must say what it scores when it can: a cost model read as a reward (or the
    reverse) would turn every verdict around."""
    if judge not in ("reward_model", "cost_model"):
        return
    if not judge_model or not os.path.isfile(os.path.join(os.path.expanduser(judge_model), "config.json")):
        raise ValueError(f"--judge {judge} needs --judge-model: a local folder with config.json")
    from dlma_ray.model.scoremodel import score_type

    kind = score_type(judge_model)
    if kind in ("reward", "cost") and kind != judge.split("_")[0]:
        raise ValueError(f"{judge_model} is a safe-rlhf {kind} model (config score_type); use --judge {kind}_model")


def head_to_head(cfg: Config, ref_a: str, ref_b: str, judge: str, judge_model: str = "",
                 out_dir: str | None = None, scorer=None) -> dict:
    """Judge A against B; writes and returns the result document (see the module docstring). ``scorer``: see
    ``verdicts`` (the tests run the worker's function in this process)."""
    if judge not in JUDGES:
        raise ValueError(f"--judge: {judge!r} cannot judge two policies' answers; expected one of {', '.join(JUDGES)} "
                         f"(the judges: {', '.join(judges.names())})")
    judge_model = judge_model or (cfg.eval.judge_model if judge in ("openai", "reward_model", "cost_model") else "")
    if judge in POLICY_JUDGES and not judge_model:  # the policy judges read with the run's pi_0 unless told
        from dlma_ray.stages.round import initial_model

        judge_model = initial_model(cfg)
    check_judge_model(judge, judge_model)
    start = time.time()
    side_a, side_b = read_side(ref_a), read_side(ref_b)
    matched = matched_answers(side_a["answers"], side_b["answers"])
    if matched is not None:
        a, b = matched
        answers = f"reused: {side_a['source']} and {side_b['source']} (same prompts, sampling and seed)"
    else:
        if not side_a["policy"] or not side_b["policy"]:
            raise ValueError("the stored answers differ in prompts or sampling and a side has no policy to answer "
                             "again with")
        a, b = generate_both(cfg, (side_a["policy"], side_b["policy"]))
        answers = (f"generated: {len(a)} eval.prompts answered by both policies with eval.seed={cfg.eval.seed} "
                   "(stored answers were missing or differed in prompts or sampling)")
    human = human_rows(cfg)
    v, hv = verdicts(cfg, judge, judge_model, a, b, human, scorer)
    doc = {"a": side_a["name"], "b": side_b["name"], "a_ref": ref_a, "b_ref": ref_b, "judge": judge,
           "judge_model": judge_model, "judge_url": cfg.eval.judge_url if judge == "openai" else "",
           "answers": answers.split(":")[0], "answers_detail": answers, "result": h2h.tally(v),
           "human": {**h2h.human_agreement(hv), "source": cfg.eval.preference_pairs} if hv else None,
           "verdicts": v, "human_verdicts": hv, "seconds": round(time.time() - start, 2)}
    if out_dir:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{doc['a']}_vs_{doc['b']}.{judge}.json")
        storage.write_text_atomic(storage.join(out_dir, name), json.dumps(doc, indent=1))
        doc["path"] = storage.join(out_dir, name)
    return doc


def default_judge(cfg: Config) -> str:
    """The head-to-head judge the config implies: its eval.judge, the evaluation's distillation score by default."""
    return {"openai": "openai", "reward_model": "reward_model"}.get(cfg.eval.judge, "distillation")


class ScoresOnce:
    """A score judge's scores of each answer set, computed once however many pairs the set takes part in: with n
    methods every set is in n pairs, and the human pairs in all of them (``score_fn(cfg, judge, model_ref,
    sets)``: where the model work runs, by default one Ray task per call, as ``score_sets``)."""

    def __init__(self, score_fn=None):
        self.score_fn = score_fn or _score_task
        self.scored: dict[tuple[str, str, str], list[float]] = {}
        self.calls = 0

    def __call__(self, cfg: Config, judge: str, model_ref: str, sets: list[list[dict]]) -> list[list[float]]:
        keys = [(judge, model_ref, _fingerprint(rows)) for rows in sets]
        todo = {k: rows for k, rows in zip(keys, sets) if k not in self.scored}
        if todo:
            self.calls += 1
            self.scored.update(zip(todo, self.score_fn(cfg, judge, model_ref, list(todo.values()))))
        return [self.scored[k] for k in keys]


def _fingerprint(rows: list[dict]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def _score_task(cfg: Config, judge: str, model_ref: str, sets: list[list[dict]]) -> list[list[float]]:
    import ray

    from dlma_ray.stages.ray_session import init_ray
    from dlma_ray.workers.judge_tasks import answer_set_scores

    init_ray(cfg)
    return ray.get(_remote(answer_set_scores, cfg, engine=judge in POLICY_JUDGES).remote(cfg, judge, model_ref, sets))


def judge_every_pair(cfg: Config, base: str, methods: list[str], judge: str | None = None) -> list[dict]:
    """Each pair of methods under ``base`` (and each method against pi_0), into <base>/headtohead/; a pair that
    fails is logged and left out (the comparison table says which pairs it has). A score judge scores each
    answer set once (``ScoresOnce``): n sets for the n(n-1)/2 pairs."""
    judge = judge or default_judge(cfg)
    scorer = ScoresOnce() if judge != "openai" else None
    out_dir, done = storage.join(base, "headtohead"), []
    runs = [m for m in methods if storage.exists(RunLayout(storage.join(base, m)).state)]
    pairs = [(storage.join(base, a), storage.join(base, b)) for i, a in enumerate(runs) for b in runs[i + 1:]]
    for m in runs:
        baseline = RunLayout(storage.join(base, m)).baseline_answers
        if storage.exists(baseline):
            pairs.append((storage.join(base, m), baseline))
    for a, b in pairs:
        try:
            done.append(head_to_head(cfg, a, b, judge, out_dir=out_dir, scorer=scorer))
        except Exception as exc:  # one pair's failure must not cost the others
            log.warning("head to head %s vs %s (%s) failed: %s", a, b, judge, exc)
    return done


def judge_accuracy(cfg: Config, names: list[str], policy: str | None = None, judge_model: str = "",
                   out_dir: str | None = None) -> dict:
    """Every named judge against the human labels of eval.preference_pairs (at most eval.max_pairs, seeded), the
    policy judges asked of ``policy`` (default: the run's initial model): rows of n, agreement and its 95% interval,
    written to <out_dir or run.dir>/judge_accuracy.json (dlma_ray.evaluation.judge_accuracy)."""
    import ray

    from dlma_ray.evaluation.judge_accuracy import accuracy_table
    from dlma_ray.model.loading import load_tokenizer
    from dlma_ray.stages.round import initial_model, model_for_actor
    from dlma_ray.stages.ray_session import init_ray
    from dlma_ray.stages.evaluate import load_eval_pairs
    from dlma_ray.workers.judge_tasks import human_pair_margins

    unknown = [n for n in names if n not in ACCURACY_JUDGES]
    if unknown:
        raise ValueError(f"--judges: {', '.join(unknown)} cannot be scored against human pairs here; expected any of "
                         f"{', '.join(ACCURACY_JUDGES)}")
    if {"reward_model", "cost_model"} & set(names):
        for name in {"reward_model", "cost_model"} & set(names):
            check_judge_model(name, judge_model)
    policy = model_for_actor(policy) if policy else initial_model(cfg)
    pairs, source = load_eval_pairs(cfg, load_tokenizer(initial_model(cfg), cfg.model.trust_remote_code))
    if not pairs:
        raise ValueError(f"eval.preference_pairs={cfg.eval.preference_pairs!r} holds no usable pair ({source})")
    init_ray(cfg)
    start = time.time()
    engine = bool({"ab", "five_point"} & set(names))
    task = _remote(human_pair_margins, cfg, engine=engine)
    margins = ray.get(task.remote(cfg, policy, initial_model(cfg), pairs, names, judge_model))
    doc = {"pairs": source, "policy": policy, "judges": accuracy_table(margins), "margins": margins,
           "seconds": round(time.time() - start, 1),
           "settings": {"ab": vars(cfg.rlaif), "five_point": vars(cfg.self_rewarding), "pair": cfg.pair.name}}
    out_dir = out_dir or storage.absolute(cfg.run.dir)
    storage.makedirs(out_dir)
    doc["path"] = storage.join(out_dir, "judge_accuracy.json")
    storage.write_text_atomic(doc["path"], json.dumps(doc, indent=1))
    return doc
