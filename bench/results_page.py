"""The measured results, from one record: bench/results.json -> docs/results.md and the tables of bench/RESULTS.md.

    python bench/results_page.py            # rewrite docs/results.md and RESULTS.md's generated blocks
    python bench/results_page.py --check    # exit 1, naming the file, when either is not what the record gives

**bench/results.json is the source of truth.** It holds the LATEST result of each benchmark (earlier runs stay in
git history, `git log -p bench/RESULTS.md bench/results.json`): `machines` (a key -> the machine in words) and
`entries`, each entry one result:

    id          lower-case words joined by '-', unique: RESULTS.md's markers and the page's order use it
    group       where docs/results.md shows it: demo | speed | judges | methods (speed: only its `speed` rows,
                in the page's one speed table; the others: title, measured line, summary, `page` tables)
    title       the section's heading
    command     what was run (a command line, or the setup in words when no single command reproduces it)
    date        when it was measured (UTC), commit: the commit measured (where the entry does not say
                otherwise, the commit that recorded the result, whose code it measured), machine: a key of
                `machines`, conditions (optional): load, what else ran, anything that qualifies the seconds
    summary     one or two sentences: the result in words. `{name}` or `{name:.2f}` / `{name:.0%}` fills in
                `numbers[name]` (write `{{` and `}}` for a literal brace)
    numbers     (optional) the headline numbers, machine-readable: a number, or {"mean" or "rate": x, "ci95":
                [lo, hi], "n": n} (formatted as "x [lo, hi] (n=N)", the format spec applied to x, lo and hi)
    speed       (optional) rows of the speed table: {what, against, result, goal}; result and goal may use
                `{name}` like the summary
    tables      (optional) [{title (optional), columns, rows, page (optional, default false: RESULTS.md only)}];
                cells are text, shown as written
    sources     (optional) the files an entry was imported from

**Adding or replacing a result.** Edit the entry in bench/results.json (same `id` = replace: only the latest
result of a benchmark is kept), or import it from what the run wrote:

    python bench/results_page.py import-comparison runs/compare-methods --id methods-hh \\
        --title "Every method head to head" --command "python bench/compare_methods.py" [--date D] [--commit C]
    python bench/results_page.py import-judge-accuracy runs/compare-methods/judge_accuracy.json [more files] \\
        --id judge-accuracy --command "..."

An import reads `dlma-ray compare`'s run folders (each method's last eval.json, headtohead/*.json) or
`dlma-ray judge-accuracy`'s judge_accuracy.json, writes the entry (tables and numbers; the date defaults to now,
the commit to `git rev-parse --short HEAD`, the machine to --machine, default `cpu-2core`), keeps an existing
entry's summary and speed rows unless --summary is given (its conditions never: pass --conditions), and
re-renders. Then check the summary says what the new numbers say, plainly, and run `python bench/results_page.py`.

A new entry's section is appended to RESULTS.md between `<!-- results:ID -->` and `<!-- /results:ID -->`:
move the block where it belongs and write prose (how it was measured, caveats) after its end marker; only what
lies between markers is rewritten. Commit results.json, RESULTS.md and docs/results.md together:
tests/unit/test_results_page.py fails when the page or a block is stale, or an entry is malformed."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "bench" / "results.json"
RESULTS_MD = REPO / "bench" / "RESULTS.md"
PAGE = REPO / "docs" / "results.md"
GROUPS = {"demo": "The demo", "speed": "Speed", "judges": "Judges against human labels",
          "methods": "Methods compared"}
REQUIRED = ("id", "group", "title", "command", "date", "commit", "machine", "summary")
SPECIAL = ("machines", "speed-table")  # generated blocks of RESULTS.md that are not entries
MARK = re.compile(r"<!-- results:([a-z0-9-]+) -->\n.*?<!-- /results:\1 -->", re.DOTALL)


# ---------------------------------------------------------------- the record

def load(path: Path = RECORD) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def dumps(obj, indent: int = 0) -> str:
    """JSON with a list of plain values (a table row, an interval) on one line, so the record reads as tables."""
    pad, inner = " " * indent, " " * (indent + 2)
    flat = isinstance(obj, dict) and all(not isinstance(v, dict) for v in obj.values())
    if flat and len(json.dumps(obj, ensure_ascii=False)) <= 100:  # {"mean": x, "ci95": [lo, hi], "n": n}
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 2)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + dumps(v, indent + 2) for v in obj) + f"\n{pad}]"
    return json.dumps(obj, ensure_ascii=False)


class Interval:
    """A measure as `x [lo, hi] (n=N)`, the format spec applied to each number."""

    def __init__(self, d: dict):
        self.x = d["mean"] if "mean" in d else d["rate"]
        self.lo, self.hi = d["ci95"]
        self.n = d.get("n")

    def __format__(self, spec: str) -> str:
        spec = spec or ".3g"
        n = f" (n={self.n})" if self.n is not None else ""
        x, lo, hi = (Number(v) for v in (self.x, self.lo, self.hi))
        return f"{x:{spec}} [{lo:{spec}}, {hi:{spec}}]{n}"


def short(text: str) -> str:
    """2.6e-05 -> 2.6e-5."""
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m.group(1).replace("+", "") + m.group(2), text)


class Number(float):
    def __format__(self, spec: str) -> str:
        return short(super().__format__(spec)) if spec else short(repr(float(self)))


def fill(text: str, numbers: dict) -> str:
    values = {k: Interval(v) if isinstance(v, dict) else Number(v) if isinstance(v, float) else v
              for k, v in numbers.items()}
    return text.format_map(values)


def problems(record: dict) -> list[str]:
    """What is wrong with the record, one line each ([] when it renders)."""
    out, seen = [], set()
    machines = record.get("machines") or {}
    for i, e in enumerate(record.get("entries") or []):
        where = f"entry {i} ({e.get('id', '?')})"
        out += [f"{where}: no {k}" for k in REQUIRED if not e.get(k)]
        if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", str(e.get("id", ""))) or e.get("id") in SPECIAL:
            out.append(f"{where}: id must be lower-case words joined by '-', not {SPECIAL}")
        if e.get("id") in seen:
            out.append(f"{where}: id used twice (only the latest result of a benchmark is kept)")
        seen.add(e.get("id"))
        if e.get("group") not in GROUPS:
            out.append(f"{where}: group must be one of {list(GROUPS)}")
        if e.get("machine") not in machines:
            out.append(f"{where}: machine {e.get('machine')!r} is not a key of `machines`")
        texts = [e.get("summary", "")] + [r.get(k, "") for r in e.get("speed") or [] for k in ("result", "goal")]
        for text in texts:
            try:
                fill(text, e.get("numbers") or {})
            except (KeyError, ValueError, IndexError, TypeError) as err:
                out.append(f"{where}: cannot fill {text[:60]!r}: {err!r}")
        for r in e.get("speed") or []:
            out += [f"{where}: a speed row lacks {k}" for k in ("what", "against", "result", "goal") if not r.get(k)]
        for t in e.get("tables") or []:
            out += [f"{where}: table {t.get('title', '')!r} has a row of {len(r)} cells for {len(t['columns'])} "
                    "columns" for r in t.get("rows", []) if len(r) != len(t["columns"])]
    return out


# ---------------------------------------------------------------- rendering

def md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    def cell(v) -> str:
        return str(v).replace("\n", " ")

    return ["| " + " | ".join(map(cell, columns)) + " |", "| " + " | ".join("---" for _ in columns) + " |",
            *("| " + " | ".join(map(cell, r)) + " |" for r in rows)]


def meta(e: dict) -> list[str]:
    """What ran, when, at which commit, on what machine, under what conditions."""
    return [f"- **measured**: {e['date']}, commit `{e['commit']}`, machine {e['machine']}",
            *([f"- **conditions**: {e['conditions']}"] if e.get("conditions") else []), f"- **command**: {e['command']}"]


def tables(e: dict, page_only: bool) -> list[str]:
    out = []
    for t in e.get("tables") or []:
        if page_only and not t.get("page"):
            continue
        out += ([f"**{t['title']}**", ""] if t.get("title") else []) + md_table(t["columns"], t["rows"]) + [""]
    return out


def speed_rows(record: dict) -> list[list[str]]:
    return [[r["what"], r["against"], fill(r["result"], e.get("numbers") or {}),
             fill(r["goal"], e.get("numbers") or {}), f"{e['date'].split(' ')[0]}, `{e['commit']}`, {e['machine']}"]
            for e in record["entries"] for r in e.get("speed") or []]


SPEED_COLUMNS = ["what", "against", "result (latest)", "goal", "measured"]


def entry_block(e: dict) -> list[str]:
    return [f"## {e['title']}", "", *meta(e), f"- **result**: {fill(e['summary'], e.get('numbers') or {})}", "",
            *tables(e, page_only=False)]


def blocks(record: dict) -> dict[str, str]:
    """RESULTS.md's generated blocks, by id, each with its markers."""
    machines = record["machines"]
    body = {"machines": ["Machines (the `machine` of every result):", "",
                         *(f"- **{k}**: {v}" for k, v in machines.items()), ""],
            "speed-table": ["## At a glance: every speed result", "",
                            "The latest measurement of each; its section below has the tables and the caveats.", "",
                            *md_table(SPEED_COLUMNS, speed_rows(record)), ""]}
    body.update({e["id"]: entry_block(e) for e in record["entries"]})
    return {k: f"<!-- results:{k} -->\n" + "\n".join(v).rstrip("\n") + f"\n<!-- /results:{k} -->"
            for k, v in body.items()}


def results_md(text: str, record: dict) -> str:
    """``text`` (RESULTS.md) with every generated block rewritten; an entry without one is appended at the end."""
    new = blocks(record)
    unknown = [m.group(1) for m in MARK.finditer(text) if m.group(1) not in new]
    if unknown:
        raise SystemExit(f"RESULTS.md has blocks for ids not in bench/results.json: {unknown}")
    found = {m.group(1) for m in MARK.finditer(text)}
    text = MARK.sub(lambda m: new[m.group(1)], text)  # a function's return is taken literally
    missing = [k for k in new if k not in found]
    return text.rstrip("\n") + "".join(f"\n\n{new[k]}" for k in missing) + "\n"


def page(record: dict) -> str:
    machines = record["machines"]
    lines = ["# Results", "",
             ("The latest measurement of each result, with the date, the commit and the machine it was measured on; "
              "earlier runs are in the repository's history only. How each was measured, every table and the "
              "caveats: `bench/RESULTS.md` in the repository. This page is generated from `bench/results.json` by "
              "`python bench/results_page.py`: add or change a result there, not here."), "",
             "Machines:", "", *(f"- **{k}**: {v}" for k, v in machines.items()), ""]
    for group, heading in GROUPS.items():
        entries = [e for e in record["entries"] if e["group"] == group]
        if group == "speed":  # every entry's speed rows, a demo's timings included; speed entries show only here
            rows = speed_rows(record)
            if rows:
                lines += [f"## {heading}", "", ("Each benchmark measures a baseline in the same run and reports the "
                                                "ratio: compare ratios, not seconds (the machine's speed varied by up "
                                                "to 2x between days)."), "", *md_table(SPEED_COLUMNS, rows), ""]
            continue
        if entries:
            lines += [f"## {heading}", ""]
        for e in entries:
            lines += [f"### {e['title']}", "", fill(e["summary"], e.get("numbers") or {}), "",
                      *meta(e), "", *tables(e, page_only=True)]
    return "\n".join(lines).rstrip("\n") + "\n"


def outputs(record: dict) -> dict[Path, str]:
    bad = problems(record)
    if bad:
        raise SystemExit("bench/results.json:\n  " + "\n  ".join(bad))
    return {PAGE: page(record), RESULTS_MD: results_md(RESULTS_MD.read_text(encoding="utf-8"), record)}


# ---------------------------------------------------------------- importers: read what a run wrote

def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def import_comparison(base: str) -> dict:
    """Each method's last eval.json beside pi_0 (dlma_ray.views.compare), and the head-to-head results."""
    from dlma_ray.evaluation.headtohead import TABLE_HEADER, table_rows
    from dlma_ray.views.compare import discover_methods, headtohead_results, load_method, measure_rows

    methods = discover_methods(base)
    runs = {m: load_method(str(Path(base) / m)) for m in methods}
    evals = {m: (runs[m]["eval"] or {}).get("measures") or {} for m in methods}
    rows = measure_rows(runs, methods)
    numbers = {f"{m}_{name}": {k: c[k] for k in ("mean", "rate", "ci95", "n") if k in c}
               for name in ("distillation_gain", "win_rate") for m in methods if (c := evals[m].get(name))}
    out = [{"title": "Every measure at each method's last evaluated round, value [95% interval] (n)",
            "columns": ["measure", "`pi_0`"] + [f"`{m}`" for m in methods], "rows": rows, "page": True}]
    h2h = headtohead_results(str(Path(base) / "headtohead"))
    if h2h:
        out.append({"title": "Head to head: each prompt judged in both answer orders (a split verdict is a tie)",
                    "columns": TABLE_HEADER, "rows": table_rows(h2h), "page": True})
    sources = [str(Path(base) / m / "round_*/eval.json") for m in methods] + [str(Path(base) / "headtohead/*.json")]
    return {"group": "methods", "tables": out, "numbers": numbers, "sources": sources}


JUDGE_LABELS = {"self_reward": "`self_reward` (R under pi_0)", "ab": "`ab` (RLAIF's A/B, a CAI principle per pair)",
                "five_point": "`five_point` (Self-Rewarding's rubric)"}


def import_judge_accuracy(paths: list[str]) -> dict:
    rows, numbers = [], {}
    for path in paths:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        pair = (doc.get("settings") or {}).get("pair", "?")
        for j in doc["judges"]:
            lo, hi = j["ci95"]
            known = j.get("rate") is not None and lo is not None
            rows.append([JUDGE_LABELS.get(j["judge"], f"`{j['judge']}`"),
                         f"`{pair}`" if j["judge"] == "self_reward" else "–",
                         f"{100 * j['rate']:.1f}% ({j['count']}/{j['n']})" if known else "n/a (n=0)",
                         f"[{100 * lo:.1f}, {100 * hi:.1f}]" if known else "n/a", str(j.get("ties", 0))])
            if known:
                key = j["judge"] + (f"_{pair}" if j["judge"] == "self_reward" else "")
                numbers[key] = {"rate": j["rate"], "ci95": j["ci95"], "n": j["n"]}
    columns = ["judge", "pair", "agrees with the human label", "95% interval (%)", "ties"]
    return {"group": "judges", "tables": [{"columns": columns, "rows": rows, "page": True}], "numbers": numbers,
            "sources": list(paths)}


def git_head() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def upsert(record: dict, args, imported: dict) -> dict:
    old = next((e for e in record["entries"] if e["id"] == args.id), None)
    entry = {"id": args.id, "group": imported["group"], "title": args.title or (old or {}).get("title") or args.id,
             "command": args.command or (old or {}).get("command", ""),
             "date": args.date or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "commit": args.commit or git_head(), "machine": args.machine}
    if args.conditions:  # they describe the run imported, never the one it replaces
        entry["conditions"] = args.conditions
    for key in ("summary", "speed"):
        value = getattr(args, key, None) or (old or {}).get(key)
        if value:
            entry[key] = value
    entry.setdefault("summary", "(write what the numbers say)")
    entry.update({k: imported[k] for k in ("numbers", "tables", "sources")})
    if old:
        record["entries"][record["entries"].index(old)] = entry
    else:
        record["entries"].append(entry)
    return record


# ---------------------------------------------------------------- command line

def write_all(record: dict, check: bool) -> int:
    stale = []
    for path, text in outputs(record).items():
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        if check:
            stale.append(str(path.relative_to(REPO)))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print(f"stale (run `python bench/results_page.py`): {', '.join(stale)}", file=sys.stderr)
    return 1 if stale else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when an output is stale")
    sub = ap.add_subparsers(dest="cmd")
    imports = {"import-comparison": "BASE_DIR of `dlma-ray compare` (one run folder per method)",
               "import-judge-accuracy": "judge_accuracy.json files of `dlma-ray judge-accuracy`, one per pair"}
    for name, what in imports.items():
        p = sub.add_parser(name, help=f"write an entry from {what}")
        p.add_argument("paths", nargs="+", help=what)
        p.add_argument("--id", required=True)
        for opt in ("title", "command", "date", "commit", "conditions", "summary"):
            p.add_argument(f"--{opt}", default="")
        p.add_argument("--machine", default="cpu-2core")
    args = ap.parse_args(argv)
    record = load()
    if args.cmd:
        imported = (import_comparison(args.paths[0]) if args.cmd == "import-comparison"
                    else import_judge_accuracy(args.paths))
        record = upsert(record, args, imported)
        bad = problems(record)
        if bad:
            raise SystemExit("not written (a summary kept from the old entry may name numbers the import does not "
                             "give: pass --summary):\n  " + "\n  ".join(bad))
        RECORD.write_text(dumps(record) + "\n", encoding="utf-8")
        print(f"wrote {RECORD.relative_to(REPO)} (entry {args.id})")
    return write_all(record, args.check)


if __name__ == "__main__":
    sys.exit(main())
