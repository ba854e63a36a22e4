"""The comparison table (dlma_ray/compare.py) on hand-made run dirs, without Ray."""

import json
import subprocess
import sys
from pathlib import Path

from dlma_ray.compare import discover_methods, write_comparison

REPO = Path(__file__).resolve().parents[1]


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
        ev = {"round": k, "self_reward": {"n": 8, "accuracy": accuracy + k / 10},
              "rlaif_judge": {"n": 8, "accuracy": 0.5}, "implicit_reward": {"n": 8, "accuracy": 0.75, "mean_margin": 0.1},
              "answers": {"policy": {"n": 4, "mean_tokens": 7.0, "refusal": {"harmful": {"n": 2, "rate": 0.5},
                                                                             "ordinary": {"n": 2, "rate": 0.0}},
                                     "perplexity": {"value": 12.5}}},
              "win_rate": {"n": 4, "win": 3, "tie": 1, "lose": 0, "win_rate": 0.75}}
        (run / f"round_{k}" / "eval.json").write_text(json.dumps(ev))


def test_comparison_side_by_side(tmp_path):
    fake_run(tmp_path, "self_contrast", 0.25)
    fake_run(tmp_path, "dlma", 0.5)
    fake_run(tmp_path, "rlcd", None)  # ran with eval.enabled=false
    (tmp_path / "not_a_run").mkdir()
    assert discover_methods(str(tmp_path)) == ["dlma", "rlcd", "self_contrast"]
    md = Path(write_comparison(str(tmp_path), failures={"dpo": "ValueError: no usable preference pairs"})).read_text()
    assert "| metric | `dlma` | `rlcd` | `self_contrast` |" in md
    assert "| evaluated round | 1 | – | 1 |" in md
    assert "| self-reward accuracy (human pairs) | 60% (n=8) | – | 35% (n=8) |" in md  # the LAST round's value
    assert "| win / tie / lose | 3/1/0 | – | 3/1/0 |" in md
    assert "| perplexity under round 0's model | 12.50 | – | 12.50 |" in md
    assert "`rlcd`: no eval.json" in md and "`dpo` failed: ValueError" in md
    assert (tmp_path / "comparison.png").stat().st_size > 5000


def test_module_runs_alone(tmp_path):
    fake_run(tmp_path, "dpo", 0.5, rounds=1)
    out = subprocess.run([sys.executable, "-m", "dlma_ray.compare", str(tmp_path), "--methods", "dpo"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "comparison.md")
    assert "`dpo`" in (tmp_path / "comparison.md").read_text()
