"""An OpenAI-compatible chat endpoint as a judge (`eval.judge=openai`, `--judge openai`): it is asked which of two
answers is better, in both orders, and its reply is read for the letter A or B.

    openai_choice    one question: 'A', 'B', or '?' when the reply names neither
    openai_margins   per prompt: +1 for each order in which it picks the new answer, -1 for round 0's (-2..2)
    openai_picks     its pick per prompt in both orders, for head-to-head tables
    api_key          the key from the environment variable the config names (never written anywhere)
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request

from dlma_ray.evaluation.judges.ab import judge_text
from dlma_ray.evaluation.judges.judge import Judge, JudgeError, register


def endpoint_url(url: str, path: str) -> str:
    base = url.rstrip("/")
    base = base[: -len("/chat/completions")] if base.endswith("/chat/completions") else base
    return base + path


def request_json(url: str, key: str, body: dict | None, timeout: float) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode() or "{}")


def openai_choice(url: str, model: str, key: str, text: str, timeout: float = 60.0) -> str:
    """Ask an OpenAI-compatible chat endpoint the judge question; 'A', 'B', or '?' when it answers neither."""
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0}
    reply = request_json(endpoint_url(url, "/chat/completions"), key, body, timeout)
    content = (reply.get("choices") or [{}])[0].get("message", {}).get("content") or ""
    found = re.search(r"\b([AB])\b", content.strip())
    return found.group(1) if found else "?"


def openai_margins(url: str, model: str, key: str, chats, new_answers, base_answers, timeout: float = 60.0):
    """Per prompt: +1 for each order in which the endpoint picks the new answer, -1 for round 0's (-2..2)."""
    margins = []
    for chat, new, base in zip(chats, new_answers, base_answers):
        first = openai_choice(url, model, key, judge_text(chat, new, base), timeout)   # new answer as A
        second = openai_choice(url, model, key, judge_text(chat, base, new), timeout)  # new answer as B
        margins.append({"A": 1, "B": -1}.get(first, 0) + {"B": 1, "A": -1}.get(second, 0))
    return margins


def openai_picks(url: str, model: str, key: str, chats, answers_a, answers_b,
                 timeout: float = 60.0) -> tuple[list[str], list[str]]:
    """The endpoint's pick per prompt in both orders: (A's answer shown first, B's answer shown first); a pick
    is "A" / "B" (the position chosen) or "tie" when the reply names neither (dlma_ray.evaluation.headtohead)."""
    first, second = [], []
    for chat, a, b in zip(chats, answers_a, answers_b):
        first.append({"?": "tie"}.get(c := openai_choice(url, model, key, judge_text(chat, a, b), timeout), c))
        second.append({"?": "tie"}.get(c := openai_choice(url, model, key, judge_text(chat, b, a), timeout), c))
    return first, second


def api_key(env_name: str) -> str:
    key = os.environ.get(env_name, "")
    if not key:
        raise JudgeError(f"eval.judge=openai reads its API key from the environment variable {env_name!r}, "
                         "which is unset or empty; export it (or set eval.judge_api_key_env to the variable "
                         "that holds it)")
    return key


@register
class OpenAiEndpoint(Judge):
    name = "openai"
    summary = "an OpenAI-compatible chat endpoint asked which answer is better, both orders"
    verdict = "prefer"
    runs_on = "endpoint"
    head_to_head = True
    answers_vs_round0 = True
    order = 60

    def check(self, cfg, timeout: float = 5.0) -> None:
        e = cfg.eval
        if not e.judge_url or not e.judge_model:
            raise JudgeError("eval.judge=openai needs eval.judge_url (e.g. http://host:8000/v1) and eval.judge_model "
                             "(the endpoint's model name)")
        key = api_key(e.judge_api_key_env)
        try:
            request_json(endpoint_url(e.judge_url, "/models"), key, None, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise JudgeError(f"judge endpoint {e.judge_url} rejected the key in ${e.judge_api_key_env} "
                                 f"(HTTP {exc.code})") from None
            # Any other HTTP answer (e.g. 404: no /models route) still proves the endpoint is up.
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise JudgeError(f"judge endpoint eval.judge_url={e.judge_url!r} is unreachable within {timeout:g}s: "
                             f"{reason}") from None
