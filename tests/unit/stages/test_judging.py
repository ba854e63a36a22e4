"""`dlma-ray compare`'s head to head scores each answer set once for all its pairs (stages.judging.ScoresOnce);
the rest of head-to-head judging: tests/unit/evaluation/test_headtohead.py."""

from dlma_ray.config.tree import Config
from dlma_ray.stages.judging import ScoresOnce


def answers(tag: str, n: int = 3) -> list[dict]:
    return [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"q{i}"}], "answer": f"{tag} {i}"}
            for i in range(n)]


def test_each_answer_set_is_scored_once_across_pairs():
    asked = []

    def score_fn(cfg, judge, model_ref, sets):  # a score that depends on the text alone, as a judge's does
        asked.append([rows[0]["answer"] for rows in sets])
        return [[float(len(r["answer"])) + i for i, r in enumerate(rows)] for rows in sets]

    cfg, once = Config(), ScoresOnce(score_fn)
    a, b, c, chosen, rejected = answers("a"), answers("bb"), answers("ccc"), answers("yes"), answers("no!!")
    first = once(cfg, "distillation", "pi0", [a, b, chosen, rejected])
    second = once(cfg, "distillation", "pi0", [a, c, chosen, rejected])
    third = once(cfg, "distillation", "pi0", [b, c, chosen, rejected])
    assert asked == [["a 0", "bb 0", "yes 0", "no!! 0"], ["ccc 0"]], "each set once; the third pair asked nothing"
    assert once.calls == 2
    direct = lambda rows: score_fn(cfg, "", "", [rows])[0]  # noqa: E731
    assert first == [direct(a), direct(b), direct(chosen), direct(rejected)]
    assert second[1] == third[1] == direct(c) and third[0] == direct(b)
    # another judge or judge model is another score: asked again
    once(cfg, "reward_model", "/rm", [a])
    assert once.calls == 3 and asked[-1] == ["a 0"]
