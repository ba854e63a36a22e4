"""Run every benchmark in sequence, each in its own process (`make bench`).

    python bench/run_all.py                    # all of them
    python bench/run_all.py score train_step   # a subset, by name
    python bench/run_all.py --log-dir DIR      # where each benchmark's full output goes (default: a temp dir)
    python bench/run_all.py --wait-load 1.5    # on a shared machine: before each benchmark, wait (up to
                                               # --max-wait s) for the 1-minute load average to drop below 1.5

The results (tables, ratios) of every benchmark are echoed here and collected in
<log-dir>/results.md, after a header with the machine, its load and the library versions; library
logs stay in <log-dir>/<name>.log. A benchmark that fails is reported and the others still run.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import common

BENCHES = ["generate", "handover", "score", "train_step", "trl", "lora_step", "round"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {' '.join(BENCHES)}")
    ap.add_argument("--log-dir", default=None)
    ap.add_argument("--wait-load", type=float, default=0.0, help="wait for a 1-min load average below this")
    ap.add_argument("--max-wait", type=float, default=900.0)
    args = ap.parse_args()
    unknown = set(args.names) - set(BENCHES)
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(BENCHES)}")
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="dlma-bench-")
    os.makedirs(log_dir, exist_ok=True)
    results = os.path.join(log_dir, "results.md")
    with open(results, "w") as fh:
        fh.write(common.machine_info() + "\n")
    print(open(results).read(), end="", flush=True)
    env = dict(os.environ, BENCH_RESULTS=results)
    failed = []
    for name in args.names or BENCHES:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"bench_{name}.py")
        log_path = os.path.join(log_dir, f"{name}.log")
        deadline = time.time() + args.max_wait
        while args.wait_load and os.getloadavg()[0] >= args.wait_load and time.time() < deadline:
            time.sleep(10)
        size, start = os.path.getsize(results), time.time()
        with open(log_path, "w") as log:
            rc = subprocess.run([sys.executable, script], stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        with open(results) as fh:
            fh.seek(size)
            print(fh.read(), end="")
        print(f"[{name}: exit {rc}, {time.time() - start:.0f} s; full output in {log_path}]", flush=True)
        if rc:
            failed.append(name)
            print(f"  last lines of {log_path}:\n    " + "\n    ".join(open(log_path).read().splitlines()[-8:]))
    print(f"results: {results}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
