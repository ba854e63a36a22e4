"""Evaluation metrics on constructed cases with known answers, the judges, and the evaluate stage's pieces.

Fast: pure functions, a forced-logits judge, a local fake OpenAI endpoint, and the tiny model in-process.
The one slow test runs the evaluate stage (`run_round`) for real (Ray + vLLM) on a hand-built one-round run.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dlma_ray.config import load_config
from conftest import direct_logprob, eot_ids
from dlma_ray.judges import (
    JudgeError, ab_preference, check_judge, judge_prompt, letter_token_ids, openai_margins, rlaif_judge, rlaif_summary,
)
from dlma_ray.logprobs import answer_nll, answer_nll_from_logits, collate
from dlma_ray.measures import R_BIN_EDGES, accuracy_by_range, assemble_measures, implicit_rewards
from dlma_ray.refusal import refusal_rates

PAIRS_FILE = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf-harmless/pairs.jsonl.gz"


# ---------------------------------------------------------------- accuracy by |R| range

def test_accuracy_by_range_bins_counts_and_ties():
    values = [0.5, -0.5, 0.0, 1.5, 3.0, -7.0, 15.0, 25.0, 50.0, -100.0, float("inf"), float("nan")]
    out = accuracy_by_range(values)
    assert [(b["low"], b["high"]) for b in out["bins"]] == [(0, 1), (1, 2), (2, 5), (5, 10), (10, 20), (20, 40),
                                                             (40, None)]
    assert [b["n"] for b in out["bins"]] == [3, 1, 1, 1, 1, 1, 3]
    assert [b["correct"] for b in out["bins"]] == [1, 1, 1, 0, 1, 1, 2]
    assert out["bins"][0]["accuracy"] == pytest.approx(1 / 3)  # the tie R == 0 is in [0, 1) and counts wrong
    assert out["bins"][3]["accuracy"] == 0.0
    assert out["n"] == 11 and out["nan"] == 1 and out["ties"] == 1
    assert out["correct"] == 7 and out["accuracy"] == pytest.approx(7 / 11)
    assert sum(b["n"] for b in out["bins"]) == out["n"]
    assert len(R_BIN_EDGES) == 8 and math.isinf(R_BIN_EDGES[-1])


def test_empty_bins_report_none_not_zero():
    out = accuracy_by_range([])
    assert out["n"] == 0 and out["accuracy"] is None and all(b["accuracy"] is None for b in out["bins"])


def test_implicit_rewards_by_hand():
    # 0.1*((-1+2)-(-3+3)) = 0.1; 0.1*((-2+2)-(-1+2)) = -0.1; 0.1*(0-0) = 0
    out = implicit_rewards([-1.0, -2.0, -5.0], [-3.0, -1.0, -4.0], [-2.0, -2.0, -5.0], [-3.0, -2.0, -4.0], beta=0.1)
    assert out == pytest.approx([0.1, -0.1, 0.0])


def _answers(texts, kinds, tokens=None):
    return [{"prompt_id": str(i), "answer": t, "kind": k, "tokens": (tokens or [4] * len(texts))[i], "finished": True}
            for i, (t, k) in enumerate(zip(texts, kinds))]


def test_assemble_measures_by_hand():
    """Constructed task outputs with known answers: the gain, its sign, win / tie counts, refusal by kind,
    KL and implicit reward against pi_0, each with its n and an interval."""
    new = _answers(["I can't help with that.", "Sure, here it is.", "same", "Kill it with `kill -9 PID`."],
                   ["harmful", "harmful", "borderline", "borderline"], tokens=[2, 4, 5, 10])
    base = _answers(["Sure, first you...", "Sure, here it is!", "same", "I won't help with killing."],
                    ["harmful", "harmful", "borderline", "borderline"], tokens=[4, 4, 5, 10])
    initial = {"contrast_policy": [3.0, 1.0, 0.5, 2.0], "contrast_baseline": [1.0, 2.0, 0.5, 0.0],
               "tokens_policy": [2, 4, 5, 10], "tokens_baseline": [4, 4, 5, 10],
               "logp_policy_answers": [-10.0, -8.0, -6.0, -4.0], "pairs_chosen": [-5.0, -6.0],
               "pairs_rejected": [-7.0, -7.0], "neutral": ([math.log(2) * 3, math.log(2) * 5], [3, 5]), "margins": None}
    scores = {"logp_policy_answers": [-9.0, -8.0, -5.0, -4.0], "pairs_chosen": [-4.0, -6.5],
              "pairs_rejected": [-7.0, -7.0], "self_reward_human": [1.0, -2.0], "heldout_r": [1.0, 3.0],
              "neutral": ([math.log(4) * 3, math.log(4) * 5], [3, 5]),
              "rlaif": {"n": 2, "accuracy": 0.5}}
    m, d = assemble_measures(new, base, initial, scores, None, beta=0.1, seed=0, refusal_rates=refusal_rates)
    gain = m["distillation_gain"]
    assert gain["n"] == 4 and gain["mean"] == pytest.approx((2 - 1 + 0 + 2) / 4)
    assert gain["ci95"][0] <= gain["mean"] <= gain["ci95"][1]
    assert m["distillation_gain_per_token"]["mean"] == pytest.approx(((1.5 - 0.25) + (0.25 - 0.5) + 0 + (0.2 - 0)) / 4)
    # Wins: prompts 0 and 3; prompt 1 loses; prompt 2 has identical texts: a tie whatever C says.
    assert (m["win_rate"]["count"], m["win_rate"]["ties"], m["win_rate"]["losses"]) == (2, 1, 1)
    assert m["refusal_harmful"]["rate"] == 0.5 and m["refusal_harmful_initial"]["rate"] == 0.0
    assert m["over_refusal"]["rate"] == 0.0 and m["over_refusal_initial"]["rate"] == 0.5
    assert m["kl_to_initial"]["mean"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    # implicit: 0.1*((-4+5)-0) = 0.1 > 0; 0.1*((-6.5+6)-0) = -0.05: one of two right.
    assert m["implicit_reward_accuracy"]["rate"] == 0.5 and m["implicit_reward_margin"]["mean"] == pytest.approx(0.025)
    assert m["perplexity_neutral"]["value"] == pytest.approx(4.0) and m["perplexity_neutral_initial"]["value"] == pytest.approx(2.0)
    assert m["self_reward_accuracy_human"]["rate"] == 0.5 and m["heldout_pairs_r"]["mean"] == 2.0
    for name, summary in m.items():
        assert summary["n"] > 0 and len(summary["ci95"]) == 2, name
    assert d["answers"]["policy"]["finished"]["rate"] == 1.0


def test_perplexity_on_constructed_logits():
    # Two sequences: context of 2 tokens, answers of 3 and 1 tokens; vocab 8.
    batch = collate([([1, 2], [3, 4, 5]), ([1, 2], [6])], pad_id=0)
    uniform = torch.zeros(2, batch.input_ids.shape[1], 8)
    nll, count = answer_nll_from_logits(uniform, batch)
    assert count.tolist() == [3, 1]
    assert nll.tolist() == pytest.approx([3 * math.log(8), math.log(8)])
    # Put probability 1/2 on every true next token: perplexity exactly 2, whatever the answer lengths.
    logits = torch.full((2, batch.input_ids.shape[1], 8), -1e4)
    for b in range(2):
        for t in range(batch.input_ids.shape[1] - 1):
            logits[b, t, batch.input_ids[b, t + 1]] = 0.0
            logits[b, t, 7] = 0.0
    nll, count = answer_nll_from_logits(logits, batch)
    assert (nll / count).tolist() == pytest.approx([math.log(2)] * 2)


def test_answer_nll_matches_score_texts(tiny_model, tokenizer):
    contexts = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"] * 2
    answers = ["Hello there, friend.", "Hi"]
    nll, count = answer_nll(tiny_model, tokenizer, contexts, answers, batch_size=2)
    direct = [direct_logprob(tiny_model, tokenizer, c, tokenizer(a, add_special_tokens=False)["input_ids"])
              for c, a in zip(contexts, answers)]
    assert [-x for x in nll] == pytest.approx(direct, abs=1e-4)
    assert count == [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]


# ---------------------------------------------------------------- RLAIF text judge with forced logits

class CharTokenizer:
    """One token per character (id = code point): "A" is one token, " A" two, so only "A" is read."""

    pad_token_id = eos_token_id = 0
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


GOOD, BAD = "\u2713", "\u2717"  # markers in the chosen / rejected answers


class ForcedJudge(torch.nn.Module):
    """Logit of "A" = bias + signal if the chosen marker comes first in the prompt, bias - signal otherwise."""

    def __init__(self, bias: float, signal: float, vocab: int = 10240):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives ab_preference a device to read
        self.bias, self.signal, self.vocab = bias, signal, vocab

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            good_first = row.index(ord(GOOD)) < row.index(ord(BAD))
            logits[b, :, ord("A")] = self.bias + (self.signal if good_first else -self.signal)
        logits[..., ord("B")] = 50.0 * (input_ids == 0)  # reading a pad position would say "B" loudly
        return SimpleNamespace(logits=logits)


ITEMS = [([{"role": "user", "content": f"question {i}"}], f"good {GOOD} answer {'x' * i}", f"bad {BAD}")
         for i in range(5)]


def test_judge_both_orders_cancel_position_bias():
    tok = CharTokenizer()
    # Strong bias for "A" (+2) plus a real preference (+1) for the chosen answer.
    summary, prefs = rlaif_judge(ForcedJudge(bias=2.0, signal=1.0), tok, ITEMS, batch_size=2)
    sig = torch.sigmoid(torch.tensor([3.0, 1.0])).tolist()
    assert prefs == pytest.approx([0.5 + (sig[0] - sig[1]) / 2] * 5)
    assert summary["accuracy"] == 1.0  # averaged over both orders the preference survives
    assert summary["accuracy_chosen_as_a"] == 1.0 and summary["accuracy_chosen_as_b"] == 0.0  # one order is fooled
    assert summary["position_bias_a"] == 1.0 and summary["consistency"] == 0.0
    assert summary["n"] == 5 and summary["n_judgements"] == 10
    # Pure position bias: exactly 0.5 for each pair, a tie, counted wrong.
    summary, prefs = rlaif_judge(ForcedJudge(bias=2.0, signal=0.0), tok, ITEMS, batch_size=3)
    assert prefs == [0.5] * 5 and summary["accuracy"] == 0.0 and summary["ties"] == 5
    # A judge that prefers the rejected answer is wrong in both orders.
    summary, _ = rlaif_judge(ForcedJudge(bias=0.0, signal=-1.0), tok, ITEMS)
    assert summary["accuracy"] == 0.0 and summary["position_bias_a"] == 0.5


def test_ab_preference_reads_the_last_real_token_under_padding():
    tok = CharTokenizer()
    prompts = [judge_prompt(tok, m, c, r) for m, c, r in ITEMS]
    assert prompts[0].endswith("The better answer is:")  # no chat template: a cue line for base models
    alone = [ab_preference(ForcedJudge(1.0, 1.0), tok, [p])[0] for p in prompts]
    batched = ab_preference(ForcedJudge(1.0, 1.0), tok, prompts, batch_size=5)
    assert alone == pytest.approx([torch.sigmoid(torch.tensor(2.0)).item()] * 5)
    assert batched == pytest.approx(alone)  # prompts of 5 lengths in one right-padded batch


def test_rlaif_summary_known_numbers():
    out = rlaif_summary([0.9, 0.6, 0.2], [0.3, 0.7, 0.1])
    # preferences for y+: 0.8, 0.45, 0.55
    assert out["accuracy"] == pytest.approx(2 / 3) and out["mean_preference_chosen"] == pytest.approx(0.6)
    assert out["position_bias_a"] == 0.5  # says A for 0.9, 0.6 and 0.7: 3 of 6 judgements


def test_real_tokenizer_judge_tokens(tokenizer, tiny_model):
    assert letter_token_ids(tokenizer, "A") == [49, 330] and letter_token_ids(tokenizer, "B") == [50, 389]
    prompt = judge_prompt(tokenizer, [{"role": "user", "content": "hi"}], "hello", "go away")
    assert prompt.endswith("<|im_start|>assistant\n") and "Answer A: hello" in prompt
    p = ab_preference(tiny_model, tokenizer, [prompt, prompt + " "], batch_size=2)
    assert all(0.0 < x < 1.0 for x in p)


# ---------------------------------------------------------------- check_judge and the openai judge

def _cfg(**eval_overrides):
    return load_config(None, [f"eval.{k}={v}" for k, v in eval_overrides.items()])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeEndpoint(BaseHTTPRequestHandler):
    picks = "A"  # "A": always A (position bias); "content": the answer holding "good"
    status = 200

    def log_message(self, *args):
        pass

    def _reply(self, body: dict):
        data = json.dumps(body).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply({"data": [{"id": "judge"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["Authorization"] == "Bearer sekrit-key" and body["model"] == "judge"
        text = body["messages"][0]["content"]
        letter = "A" if self.picks == "A" or "Answer A: good" in text else "B"
        self._reply({"choices": [{"message": {"content": f" {letter}."}}]})


@pytest.fixture
def endpoint():
    server = HTTPServer(("127.0.0.1", 0), FakeEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    FakeEndpoint.picks, FakeEndpoint.status = "A", 200


def test_check_judge_errors(tmp_path, monkeypatch):
    check_judge(_cfg())  # self_reward: nothing external to reach
    with pytest.raises(JudgeError, match="needs eval.judge_model"):
        check_judge(_cfg(judge="reward_model"))
    with pytest.raises(JudgeError, match="no reward model there"):
        check_judge(_cfg(judge="reward_model", judge_model=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(JudgeError, match="no reward model there"):
        check_judge(_cfg(judge="reward_model", judge_model=str(tmp_path / "empty")))
    with pytest.raises(JudgeError, match="eval.judge_url"):
        check_judge(_cfg(judge="openai", judge_model="judge"))
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    monkeypatch.delenv("DLMA_TEST_KEY", raising=False)
    with pytest.raises(JudgeError, match="DLMA_TEST_KEY.*unset"):
        check_judge(_cfg(judge="openai", judge_model="judge", judge_url=url, judge_api_key_env="DLMA_TEST_KEY"))
    monkeypatch.setenv("DLMA_TEST_KEY", "sekrit-key")
    with pytest.raises(JudgeError, match="unreachable") as err:
        check_judge(_cfg(judge="openai", judge_model="judge", judge_url=url, judge_api_key_env="DLMA_TEST_KEY"),
                    timeout=1.0)
    assert "sekrit-key" not in str(err.value)


def test_openai_judge_against_a_local_endpoint(endpoint, monkeypatch):
    monkeypatch.setenv("DLMA_TEST_KEY", "sekrit-key")
    cfg = _cfg(judge="openai", judge_model="judge", judge_url=endpoint, judge_api_key_env="DLMA_TEST_KEY")
    check_judge(cfg)
    chats = [[{"role": "user", "content": "q"}]] * 2
    # Always "A": one win and one loss per prompt -> margin 0, a tie (both orders cancel the bias).
    assert openai_margins(endpoint, "judge", "sekrit-key", chats, ["good", "good"], ["bad", "bad"]) == [0, 0]
    FakeEndpoint.picks = "content"
    assert openai_margins(endpoint, "judge", "sekrit-key", chats, ["good", "bad"], ["bad", "good"]) == [2, -2]
    FakeEndpoint.status = 401
    with pytest.raises(JudgeError, match="rejected the key"):
        check_judge(cfg)


# ---------------------------------------------------------------- the evaluate stage's pieces, in-process

def test_builtin_demo_pairs_and_eval_prompts(tokenizer):
    from dlma_ray.evaluate import load_eval_pairs, load_eval_prompts, pairs_source_path

    rows, info = load_eval_pairs(load_config(None, ["eval.max_pairs=0"]), tokenizer)
    assert len(rows) == 32 and info["n"] == 32 and info["too_long"] == 0 and "kept 32" in info["summary"]
    assert any(len(r["messages"]) == 3 for r in rows)  # multi-turn rows keep their history
    rows8, _ = load_eval_pairs(load_config(None, ["eval.max_pairs=8"]), tokenizer)
    assert len(rows8) == 8 and rows8 == load_eval_pairs(load_config(None, ["eval.max_pairs=8"]), tokenizer)[0]
    prompts = load_eval_prompts(load_config(None, ["eval.max_prompts=6"]), tokenizer)
    assert len(prompts) == 6 and {p["kind"] for p in prompts} <= {"harmful", "borderline"}
    with pytest.raises(ValueError, match="not a built-in"):
        pairs_source_path("builtin:nope")


@pytest.mark.skipif(not PAIRS_FILE.exists(), reason=f"{PAIRS_FILE} not present")
def test_real_hh_pairs_load_and_filter(tokenizer):
    from dlma_ray.evaluate import load_eval_pairs

    cfg = load_config(None, [f"eval.preference_pairs={PAIRS_FILE}", "eval.max_pairs=16"])
    rows, info = load_eval_pairs(cfg, tokenizer)
    assert len(rows) == 16 and info["too_long"] > 0  # long multi-turn dialogues exceed max_prompt_tokens


def test_evaluation_tasks_in_process(tiny_model_dir, tokenizer):
    """The tasks' numbers against direct computations; a policy equal to pi_0 has gain, KL and implicit
    margins of exactly 0."""
    from dlma_ray.eval_tasks import initial_model_scores, policy_scores
    from dlma_ray.evaluate import _read_baseline, load_eval_pairs, load_neutral_text

    cfg = load_config(None, [f"model.path={tiny_model_dir}", "eval.max_pairs=4", "eval.batch_size=4",
                             "eval.rlaif_judge=true"])
    pairs, _ = load_eval_pairs(cfg, tokenizer)
    neutral = load_neutral_text(cfg)[:3]
    eot = eot_ids(tokenizer)
    held = [{"pos_context": "<|im_start|>system\ngood<|im_end|>\n", "neg_context": "<|im_start|>system\nbad<|im_end|>\n",
             "end_of_turn": "<|im_end|>", "chosen": "yes", "rejected": "no", "self_reward": 1.5, "prompt_id": "x",
             "chosen_token_ids": [9, 10], "rejected_token_ids": [11], "chosen_finished": True, "rejected_finished": False}]
    msgs = [{"role": "user", "content": "hi"}]
    answers = [{"messages": msgs, "answer": "Hello!", "prompt_id": "a", "token_ids": [19556, 17], "finished": True,
                "kind": "harmful", "tokens": 2},
               {"messages": msgs, "answer": "Go", "prompt_id": "b", "token_ids": [9019], "finished": False,
                "kind": "borderline", "tokens": 1}]
    init = initial_model_scores(cfg, tiny_model_dir, answers, answers, pairs, neutral)
    pol = policy_scores(cfg, tiny_model_dir, answers, pairs, held, neutral)
    from dlma_ray.models import load_causal_lm

    model, r = load_causal_lm(tiny_model_dir), cfg.pair.renderer(tokenizer)
    ids = [[19556, 17] + eot, [9019]]  # end-of-turn only after the finished answer
    direct = [direct_logprob(model, tokenizer, r.positive(msgs), i) - direct_logprob(model, tokenizer, r.negative(msgs), i)
              for i in ids]
    assert init["contrast_policy"] == pytest.approx(direct, abs=1e-4) and init["tokens_policy"] == [3, 1]
    held_ids = ([9, 10] + eot, [11])
    by_hand = (direct_logprob(model, tokenizer, held[0]["pos_context"], held_ids[0])
               - direct_logprob(model, tokenizer, held[0]["neg_context"], held_ids[0])) \
        - (direct_logprob(model, tokenizer, held[0]["pos_context"], held_ids[1])
           - direct_logprob(model, tokenizer, held[0]["neg_context"], held_ids[1]))
    assert pol["heldout_r"] == pytest.approx([by_hand], abs=1e-3)
    assert len(pol["self_reward_human"]) == 4 and pol["rlaif"]["n"] == 4 and len(pol["neutral"][0]) == 3
    m, _ = assemble_measures(answers, answers, init, pol, None, beta=0.1, seed=0, refusal_rates=refusal_rates)
    assert m["distillation_gain"]["mean"] == 0.0 and m["win_rate"]["ties"] == 2
    assert m["kl_to_initial"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert m["implicit_reward_margin"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert m["perplexity_neutral"]["value"] == pytest.approx(m["perplexity_neutral_initial"]["value"], rel=1e-5)
    from dlma_ray.stages.common import model_for_actor

    assert model_for_actor(tiny_model_dir) == tiny_model_dir and model_for_actor("builtin:x") == "builtin:x"
    assert model_for_actor("org/m") == "org/m"
    assert _read_baseline(str(Path(tiny_model_dir) / "none.jsonl"), [], cfg) is None


def test_job_finds_the_latest_policy(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_job", Path(__file__).resolve().parents[1] / "jobs/evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    with pytest.raises(SystemExit, match="no trained policy"):
        job.latest_round(str(tmp_path))
    for k in (0, 1):
        (tmp_path / f"round_{k}" / "policy").mkdir(parents=True)
        (tmp_path / f"round_{k}" / "policy" / "config.json").write_text("{}")
    (tmp_path / "round_2" / "pairs").mkdir(parents=True)  # round 2 still running: no policy yet
    (tmp_path / "round_2" / "policy").mkdir()  # an incomplete folder is not a policy
    assert job.latest_round(str(tmp_path)) == 1


# ---------------------------------------------------------------- the real stage (slow)

def _hand_made_run(run: Path, model_dir: str, tokenizer) -> None:
    from dlma_ray.prompts import ContrastiveRenderer, pair_from_config
    from dlma_ray.schema import PAIR_SCHEMA

    shutil.copytree(model_dir, run / "round_0" / "policy")
    (run / "round_0" / "policy" / "train_metrics.jsonl").write_text("".join(
        json.dumps({"loss": 0.69 - 0.05 * i, "reward_margin": 0.1 * i, "reward_accuracy": 0.5, "step": i + 1,
                    "rewards_chosen": 0.0, "rewards_rejected": 0.0, "lr": 1e-3}) + "\n" for i in range(3)))
    r = ContrastiveRenderer(tokenizer, pair_from_config("harmless"))
    rows = []
    for i in range(6):
        chat = [{"role": "user", "content": f"Question number {i}?"}]
        rows.append({"prompt_id": f"p{i:02d}", "messages_json": json.dumps(chat), "prompt": chat[0]["content"],
                     "kind": "", "split": "heldout" if i < 4 else "train", "round": 0, "policy": model_dir,
                     "pos_context": r.positive(chat), "neg_context": r.negative(chat), "plain_context": r.plain(chat),
                     "end_of_turn": r.end_of_turn, "chosen": f"A kind answer {i}.", "rejected": f"A rude answer {i}.",
                     "chosen_tokens": 4, "rejected_tokens": 4, "chosen_finished": True, "rejected_finished": True,
                     "logp_pos_chosen": -1.0, "logp_neg_chosen": -2.0, "logp_pos_rejected": -2.0,
                     "logp_neg_rejected": -1.0, "self_reward": 2.0, "ref_logp_chosen": -3.0, "ref_logp_rejected": -3.0})
    (run / "round_0" / "pairs").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), run / "round_0" / "pairs" / "part-0.parquet")


@pytest.mark.slow
def test_run_evaluate_for_real(tmp_path, tiny_model_dir, tokenizer):
    import ray

    from dlma_ray.evaluate import run_round
    from dlma_ray.layout import RunLayout
    from dlma_ray.stages.common import Round
    from dlma_ray.report import write_report

    run = tmp_path / "run"
    _hand_made_run(run, tiny_model_dir, tokenizer)
    cfg = load_config(None, [f"model.path={tiny_model_dir}", f"run.dir={run}", "eval.max_pairs=8",
                             "eval.max_prompts=4", "eval.max_new_tokens=8", "eval.heldout_pairs=4", "eval.rlaif_judge=true",
                             "generation.cpu_kvcache_gb=1", "rounds.count=1"])
    try:
        result = run_round(Round(cfg, RunLayout(str(run)), 0))
        path, rows = result.output, result.rows
    finally:
        ray.shutdown()
    assert path == str(run / "round_0" / "eval.json") and rows == 4
    ev = json.loads(Path(path).read_text())
    m = ev["measures"]
    assert ev["round"] == 0 and m["self_reward_accuracy_human"]["n"] == 8 and m["rlaif_accuracy_human"]["n"] == 8
    assert m["implicit_reward_accuracy"]["n"] == 8 and m["heldout_pairs_r"]["n"] == 4
    assert m["win_rate"]["n"] == 4 and ev["judge"] == "self_reward"
    assert m["distillation_gain"]["n"] == 4 and m["distillation_gain"]["mean"] == 0.0  # same weights, same answers
    assert ev["details"]["refusal_judge"]["n"] >= 80
    answers = [json.loads(x) for x in (run / "round_0" / "answers.jsonl").read_text().splitlines()]
    baseline = [json.loads(x) for x in (run / "baseline_answers.jsonl").read_text().splitlines()]
    assert len(answers) == len(baseline) == 4 and all(0 < a["tokens"] <= 8 for a in answers)
    # Same weights, same per-prompt seeds: the round-0 policy (a copy of the model) answers exactly like round 0.
    assert [a["answer"] for a in answers] == [b["answer"] for b in baseline]
    assert m["win_rate"]["ties"] == 4  # identical answers tie by rule, whatever the judge
    report = Path(write_report(str(run)))
    assert report.exists() and (run / "report" / "eval_metrics.png").stat().st_size > 5000


def test_self_reward_against_a_reward_model_judge(tmp_path, tiny_model_dir, tokenizer):
    """With eval.judge=reward_model, the round's generated pairs are judged by the reward model and R's sign
    is scored against it by |R| range; the margins are the reward model's own scores, computed directly."""
    from transformers import AutoConfig, LlamaForSequenceClassification

    from dlma_ray.eval_tasks import initial_model_scores
    from dlma_ray.judges import reward_model_scores

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 1
    torch.manual_seed(1)
    rm = LlamaForSequenceClassification(config).eval()
    rm.save_pretrained(tmp_path / "rm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "rm")
    cfg = load_config(None, [f"model.path={tiny_model_dir}", "eval.judge=reward_model", f"eval.judge_model={tmp_path / 'rm'}"])
    msgs = [{"role": "user", "content": "Say something."}]
    answers = [{"messages": msgs, "answer": "Hi.", "prompt_id": "a", "token_ids": None, "finished": True,
                "kind": "", "tokens": 2}]
    judged = [{"messages": msgs, "chosen": f"A fine answer {i}.", "rejected": f"No {i}", "self_reward": r}
              for i, r in enumerate([3.0, -0.5, 12.0, 0.2])]
    out = initial_model_scores(cfg, tiny_model_dir, answers, answers, [], [], judged)
    plus = reward_model_scores(rm, tokenizer, [msgs] * 4, [p["chosen"] for p in judged])
    minus = reward_model_scores(rm, tokenizer, [msgs] * 4, [p["rejected"] for p in judged])
    assert out["judge_pair_margins"] == pytest.approx([a - b for a, b in zip(plus, minus)], abs=1e-4)
    initial = {**out, "judged_pair_rewards": [p["self_reward"] for p in judged]}
    scores = {"logp_policy_answers": [0.0], "pairs_chosen": [], "pairs_rejected": [], "neutral": ([], []),
              "heldout_r": [], "rlaif": None}
    m, d = assemble_measures(answers, answers, initial, scores, out["margins"], beta=0.1, seed=0,
                             refusal_rates=refusal_rates)
    agree = sum((r > 0) == (j > 0) for r, j in zip(initial["judged_pair_rewards"], out["judge_pair_margins"]))
    assert m["self_reward_vs_judge"]["n"] == 4 and m["self_reward_vs_judge"]["count"] == agree
    assert sum(b["n"] for b in d["self_reward_vs_judge_bins"]) == 4


def test_pi0_fixed_scores_are_reused_not_recomputed(tiny_model_dir, tokenizer):
    """pi_0's scores of its own answers, the human pairs and the neutral text do not change across rounds:
    handed back (from baseline_scores.json), they are used as they are; the policy's own are always new."""
    from dlma_ray.eval_tasks import FIXED_SCORES, initial_model_scores
    from dlma_ray.evaluate import fixed_scores_key, load_eval_pairs

    cfg = load_config(None, [f"model.path={tiny_model_dir}", "eval.max_pairs=2"])
    pairs, _ = load_eval_pairs(cfg, tokenizer)
    msgs = [{"role": "user", "content": "hi"}]
    answers = [{"messages": msgs, "answer": "Hello", "prompt_id": "a", "token_ids": [19556], "finished": True}]
    first = initial_model_scores(cfg, tiny_model_dir, answers, answers, pairs, [])
    planted = {k: first[k] for k in FIXED_SCORES} | {"contrast_baseline": [123.0]}
    again = initial_model_scores(cfg, tiny_model_dir, answers, answers, pairs, [], None, planted)
    assert again["contrast_baseline"] == [123.0] and again["pairs_chosen"] == first["pairs_chosen"]
    assert again["contrast_policy"] == pytest.approx(first["contrast_policy"], abs=1e-6)
    other = [{**answers[0], "token_ids": [19557]}]
    assert fixed_scores_key(cfg, answers, pairs, []) != fixed_scores_key(cfg, other, pairs, [])
