"""Peak host memory of train ranks loading their model and starting their DeepSpeed engine.

`--world` rank processes (gloo, as on CPU) each load the model as `dlma_ray.workers.training.train_loop_per_worker`
does (`--load new`: dlma_ray.model.loading.load_for_training, in the training precision and, under ZeRO-3, built
partitioned under deepspeed.zero.Init) or as it did before (`--load old`: the whole model in float32 on every
rank), wrap it with LoRA if `--lora-rank` > 0, then run deepspeed.initialize with the pipeline's config
(dlma_ray.workers.training.deepspeed_config). Per rank and phase (load, initialize) it reports, in MiB above the rank's
memory before loading: the peak RSS (VmHWM, reset per phase through /proc/self/clear_refs) and the peak
anonymous RSS (sampled every 2 ms). Anonymous is what costs: under ZeRO-3 rank 0 reads the memory-mapped
safetensors file, whose pages count in its RSS but are the page cache's, shared by every process on the node.

With `--steps` > 0 the engine trains that many steps of next-token loss on random tokens, and with `--save DIR`
the ranks write the policy as the train loop does at the end of a round (dlma_ray.workers.training.write_policy).

    python bench/bench_train_load.py [--model DIR] [--world 2] [--zero-stage 3] [--precision bf16]
                                     [--load new|old] [--lora-rank 0] [--steps 0] [--save DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import common


def status_mib() -> dict[str, float]:
    text = open("/proc/self/status").read()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) / 1024 for k in ("VmHWM", "VmRSS", "RssAnon")}


class Peaks:
    """Peak anonymous RSS (sampled) and peak RSS (the kernel's high-water mark) over one phase."""

    def __init__(self):
        self.anon, self._stop = 0.0, threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self._stop.is_set():
            self.anon = max(self.anon, status_mib()["RssAnon"])
            time.sleep(0.002)

    def start(self) -> dict:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
        self.anon = status_mib()["RssAnon"]
        return status_mib()

    def end(self, before: dict) -> dict:
        now = status_mib()
        peak_anon = max(self.anon, now["RssAnon"])
        return {"peak_rss_mib": round(now["VmHWM"] - before["VmRSS"], 1),
                "peak_anon_mib": round(peak_anon - before["RssAnon"], 1),
                "after_anon_mib": round(now["RssAnon"] - before["RssAnon"], 1)}


def one_rank(args) -> dict:
    import deepspeed
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from dlma_ray.model import lora
    from dlma_ray.model.loading import load_causal_lm, load_for_training, load_tokenizer
    from dlma_ray.workers.training import deepspeed_config, make_optimizer, write_policy

    torch.set_num_threads(1)
    common.init_group(args.rank, args.world, args.port, "gloo")
    t = {"global_batch_size": args.world, "micro_batch_size": 1, "zero_stage": args.zero_stage,
         "precision": args.precision, "grad_clip": 1.0, "optimizer": "adamw", "lr": args.lr, "weight_decay": 0.0,
         "lora_rank": args.lora_rank, "lora_alpha": 2.0 * args.lora_rank, "lora_dropout": 0.0,
         "lora_target_modules": "q_proj,v_proj", "gradient_checkpointing": False}
    ds = deepspeed_config(t, args.world)
    with torch.device("meta"):  # the modelling code imported before the baseline: its memory is no model's
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model))
    peaks = Peaks()
    torch.manual_seed(0)
    before = peaks.start()
    if args.load == "new":
        model = load_for_training(args.model, args.precision, ds)
    else:  # as train_loop_per_worker loaded it up to c3c3df0
        model = load_causal_lm(args.model, "float32").train()
    load = peaks.end(before)
    before = peaks.start()
    if lora.enabled(t):
        model = lora.wrap(model, t)
    engine, *_ = deepspeed.initialize(model=model, optimizer=make_optimizer(lora.trainable(model), t),
                                      config=ds, dist_init_required=False)
    init = peaks.end(before)
    gen = torch.Generator().manual_seed(1 + args.rank)
    vocab = engine.module.config.vocab_size
    for _ in range(args.steps):
        ids = torch.randint(0, vocab, (1, 32), generator=gen)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
    if args.save:
        out = write_policy(engine, load_tokenizer(args.model), t, args.rank, args.model)
        if out is not None:
            shutil.copytree(out, args.save, dirs_exist_ok=True)
            shutil.rmtree(out, ignore_errors=True)
    import torch.distributed as dist

    dist.barrier()  # a rank that leaves while another still talks to it aborts in gloo's teardown
    dist.destroy_process_group()
    return {"rank": args.rank, "load": load, "initialize": init}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF folder (default: the embedded SmolLM2-135M)")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--zero-stage", type=int, default=3)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--load", default="new", choices=["new", "old"])
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--save", default=None, help="write the policy folder here (rank 0)")
    ap.add_argument("--json", default=None, help="write the per-rank results here")
    ap.add_argument("--file-dtype", default=None, choices=["bfloat16", "float32"],
                    help="first write a copy of the model with weights in this dtype (7B checkpoints ship in bf16)")
    ap.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.model = args.model or common.model_dir()
    if args.rank is not None:
        print("RESULT " + json.dumps(one_rank(args)), flush=True)
        return
    if args.file_dtype:
        args.model = copy_in_dtype(args.model, args.file_dtype)
    port = common.free_port()
    procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--model", args.model, "--rank", str(r),
                               "--port", str(port)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"))
             for r in range(args.world)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        sys.exit(f"a rank failed: exit codes {[p.returncode for p in procs]}")
    ranks = [json.loads(line[len("RESULT "):]) for o in outs for line in o.splitlines() if line.startswith("RESULT ")]
    from safetensors import safe_open

    with safe_open(os.path.join(args.model, "model.safetensors"), "pt") as f:
        params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    if args.file_dtype:
        shutil.rmtree(args.model, ignore_errors=True)
    result = {"model": args.model, "file_dtype": args.file_dtype, "params": params,
              "fp32_copy_mib": round(4 * params / 2 ** 20, 1),
              "world": args.world, "zero_stage": args.zero_stage, "precision": args.precision, "load": args.load,
              "lora_rank": args.lora_rank, "ranks": sorted(ranks, key=lambda r: r["rank"])}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh)


def copy_in_dtype(model: str, dtype: str) -> str:
    import tempfile

    import torch

    from dlma_ray.model.loading import load_causal_lm, load_tokenizer

    out = tempfile.mkdtemp(prefix=f"bench-train-load-{dtype}-")
    load_causal_lm(model, "float32").to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    load_tokenizer(model).save_pretrained(out)
    return out


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    main()
