"""One scoring call per evaluation task: the (context, response ids) sequences of several measures gathered,
scored by a single `score_ids` call and split back by name (dlma_ray.workers.eval_tasks uses it).

`score_ids` packs the sequences of a call as prefix trees (dlma_ray.model.packing): a context is computed once
for all its responses in that call. One call per measure forwarded a context once per call (the same held-out
prompt under the positive template for pi_k's and pi_0's answers; a human pair's plain context for y+ and again
for y-). Each sequence's sum is still that of a forward of it alone, so the numbers are the separate calls'
(tests/unit/workers/test_eval_batch.py; bench/RESULTS.md "Evaluation's scoring in one call per model").

``threads_per_task``: the torch threads of the evaluate stage's scorer tasks, which run at once.
"""

from __future__ import annotations


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
