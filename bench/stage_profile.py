"""Where a run's stage time goes, from its state.json: seconds per stage, the wall seconds during which some
process of the stage was starting up (dlma_ray.workers.phases), the phases summed over processes, and the
evaluation's share of the stages' sum. Two run folders: side by side, with the ratio.

    python bench/stage_profile.py /tmp/demo-before /tmp/demo-after
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def stages(run_dir: str) -> list[dict]:
    return json.loads((Path(run_dir) / "state.json").read_text())["stages"]


def phase_text(entry: dict) -> str:
    secs = (entry.get("phases") or {}).get("seconds", {})
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(secs.items(), key=lambda kv: -kv[1]))


def table(run_dirs: list[str]) -> list[str]:
    runs = [{(e["round"], e["stage"]): e for e in stages(d)} for d in run_dirs]
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    head = ["round", "stage"]
    for i, _ in enumerate(run_dirs):
        tag = "" if len(run_dirs) == 1 else f" ({'before' if i == 0 else 'after'})"
        head += [f"s{tag}", f"start-up s{tag}", f"phases, s over processes{tag}"]
    if len(run_dirs) == 2:
        head.append("after / before")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for k in keys:
        row = [str(k[0]), k[1]]
        for r in runs:
            e = r[k]
            row += [f"{e['seconds']:.0f}", f"{(e.get('phases') or {}).get('startup_wall', float('nan')):.0f}",
                    phase_text(e)]
        if len(runs) == 2:
            row.append(f"{runs[1][k]['seconds'] / runs[0][k]['seconds']:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    sums = []
    for r in runs:
        total = sum(r[k]["seconds"] for k in keys)
        ev = sum(r[k]["seconds"] for k in keys if k[1] == "evaluate")
        up = sum((r[k].get("phases") or {}).get("startup_wall", 0.0) for k in keys)
        sums.append((total, ev, up))
    for i, (total, ev, up) in enumerate(sums):
        name = "" if len(runs) == 1 else ("before: " if i == 0 else "after: ")
        lines.append(f"\n{name}stages {total:.0f} s, of which start-up {up:.0f} s ({100 * up / total:.0f}%); "
                     f"evaluate {ev:.0f} s ({100 * ev / total:.0f}% of the stages)")
    if len(sums) == 2:
        lines.append(f"stages after / before: {sums[1][0] / sums[0][0]:.2f}")
    return lines


if __name__ == "__main__":
    print("\n".join(table(sys.argv[1:3])))
