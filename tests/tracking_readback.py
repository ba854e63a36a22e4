"""What the tracking tests log (a run config, one step's metrics) and readers for what the trackers wrote
(TensorBoard's scalars, the jsonl lines). Used by tests/unit/workers/test_trainlog.py and
tests/unit/run/test_tracking.py."""

import json

CONFIG = {"train": {"beta": 0.1, "method": "dlma"}, "run": {"trackers": ["console", "jsonl"]}}
STEP = {"loss": 0.69, "rewards/chosen": 0.02, "rewards/margins": 0.05, "grad_norm": 1.5, "num_tokens": 400.0}


def scalars(tb_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]
