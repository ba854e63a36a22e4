"""The evaluation judges: the RLAIF text judge (both orders, position bias, padding) with a forced-logits
model, `check_judge`'s errors, and the OpenAI judge against a local fake OpenAI endpoint.

Fast: a forced-logits judge, a local fake endpoint, and the tiny model in-process.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest
import torch

from dlma_ray.config.tree import load_config
from dlma_ray.evaluation.judges import (
    JudgeError, ab_preference, check_judge, judge_prompt, letter_token_ids, openai_margins, rlaif_judge, rlaif_summary,
)


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
