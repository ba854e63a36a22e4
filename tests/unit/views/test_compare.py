"""The comparison table (dlma_ray/views/compare.py) on hand-made run dirs, without Ray."""

import json
import subprocess
import sys
from pathlib import Path

from dlma_ray.views.compare import discover_methods, write_comparison
from dlma_ray.core.stats import rate_summary

REPO = Path(__file__).resolve().parents[3]


def fake_run(base: Path, method: str, accuracy: float | None, rounds: int = 2) -> None:
    run = base / method
    stages = [{"round": k, "stage": s, "output": "", "rows": 10, "seconds": 1.0,
               **({"metrics": {"loss": 0.5 - 0.1 * k}} if s == "train" else {})}
              for k in range(rounds) for s in ("generate", "score", "train", "evaluate")]
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"config": {"train": {"method": method}}, "stages": stages}))
    for k in range(rounds):
        (run / f"round_{k}").mkdir()
        if accuracy is None:
            continue
        ev = {"round": k, "measures": {
            "distillation_gain": {"n": 16, "mean": accuracy + k / 10, "ci95": [accuracy - 0.5, accuracy + 0.5]},
            "distillation_initial": {"n": 16, "mean": -1.0, "ci95": [-1.5, -0.5]},
            "distillation_policy": {"n": 16, "mean": -0.5, "ci95": [-1.0, 0.0]},
            "win_rate": rate_summary(3, 4), "refusal_harmful": rate_summary(1, 2),
            "refusal_harmful_initial": rate_summary(0, 2), "perplexity_neutral": {"n": 3, "value": 12.5, "ci95": [12, 13]}}}
        (run / f"round_{k}" / "eval.json").write_text(json.dumps(ev))


def test_comparison_side_by_side(tmp_path):
    fake_run(tmp_path, "self_contrast", 0.25)
    fake_run(tmp_path, "dlma", 0.5)
    fake_run(tmp_path, "rlcd", None)  # ran with eval.enabled=false
    (tmp_path / "not_a_run").mkdir()
    assert discover_methods(str(tmp_path)) == ["dlma", "rlcd", "self_contrast"]
    md = Path(write_comparison(str(tmp_path), failures={"dpo": "ValueError: no usable preference pairs"})).read_text()
    assert "| measure | `pi_0` | `dlma` | `rlcd` | `self_contrast` |" in md
    assert "| evaluated round | – | 1 | – | 1 |" in md
    # the LAST round's value, with its interval and n; pi_0's column from the *_initial measures
    assert "| distillation gain vs pi_0 (per answer) ↑ | – | 0.6 [0, 1] (n=16) | – | 0.35 [-0.25, 0.75] (n=16) |" in md
    assert "| C of the policy's answers (per answer) ↑ | -1 [-1.5, -0.5] (n=16) |" in md
    assert "| win rate vs pi_0's answers ↑ | – | 75% [30%, 95%] (n=4) | – | 75% [30%, 95%] (n=4) |" in md
    assert "| refusal rate, harmful prompts ↑ | 0% [0%, 66%] (n=2) | 50% [9%, 91%] (n=2) |" in md
    assert "`rlcd`: no eval.json" in md and "`dpo` failed: ValueError" in md
    assert (tmp_path / "comparison.png").stat().st_size > 5000


def test_module_runs_alone(tmp_path):
    fake_run(tmp_path, "dpo", 0.5, rounds=1)
    out = subprocess.run([sys.executable, "-m", "dlma_ray.views.compare", str(tmp_path), "--methods", "dpo"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "comparison.md")
    assert "`dpo`" in (tmp_path / "comparison.md").read_text()
