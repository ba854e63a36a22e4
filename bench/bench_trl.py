"""Against a peer: the train stage's DPO step vs TRL's `DPOTrainer`, same pairs, model, batch, precision.

One process, float32 model, the same N pairs (the demo pairs, rendered and scored by
`dlma_ray.workers.scoring.PairScorer` as in bench_train_step.py), `--batch` pairs per optimizer step
(no gradient accumulation), the same lr, beta, AdamW, weight decay, grad clip and constant schedule,
the same batches in the same order (TRL's sampler is sequential). TRL is installed beside the
project, not as a dependency.

- ours (torch): the loss of the `dpo` method (`Method.loss`: tokenise the rows with `preference_encoded`,
  one forward over chosen + rejected packed as one prefix-tree row (`train.packing`, the default: no padding,
  the shared context once, the output layer at response positions only), DPO against the reference
  log-probs stored by the score stage),
  backward, `clip_grad_norm_`, `torch.optim.AdamW` (`dlma_ray.workers.training.make_optimizer`).
- ours (DeepSpeed): the same loss through the DeepSpeed engine (ZeRO-2, one gloo process) as
  `dlma_ray.workers.training.train_loop_per_worker` runs it (`--no-deepspeed` leaves it out); and again with
  `train.packing=false` (one padded batch, logits at every position; `--no-padded` leaves it out).
- TRL: `DPOTrainer` with `precompute_ref_log_probs=True` (the reference forward runs once in its
  constructor, untimed, so neither side's step contains a reference forward); its step is the Trainer's
  window from `on_step_begin` to `on_step_end` (forward, loss, backward, clip, AdamW, schedule).
  Its batch collation happens before that window and is printed separately.

TRL gets the pairs as plain text (prompt = our plain context, chosen/rejected = response + end of turn),
tokenises them itself; the script counts the sequences whose ids match ours token for token. The
sides alternate step by step (our steps run from a TrainerCallback after each TRL step), one warm-up
step each, then --steps timed. Before training, the summed log-probs of every chosen and rejected
response under the initial weights (eval mode) are computed by our `pair_logprobs` and by TRL's own
`compute_ref_log_probs` on batches from its data collator, and compared; each is also compared with
our fp32 logits of the batch log-softmaxed in float64, which tells which side a gap comes from.

    python bench/bench_trl.py [--pairs 16] [--batch 4] [--steps 4] [--no-deepspeed]
"""

import argparse
import statistics
import tempfile
import time

import common
from bench_train_step import pair_rows


def rows_slice(rows: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in rows.items()}


def trl_text_dataset(rows: dict):
    """The pairs in TRL's standard (non-conversational) preference format: the text our step scores."""
    import datasets

    eot = [str(e) for e in rows["end_of_turn"]]
    return datasets.Dataset.from_dict({"prompt": [str(c) for c in rows["plain_context"]],
                                       "chosen": [str(y) + e for y, e in zip(rows["chosen"], eot)],
                                       "rejected": [str(y) + e for y, e in zip(rows["rejected"], eot)]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=16, help="pairs in the data set (a multiple of --batch)")
    ap.add_argument("--batch", type=int, default=4, help="pairs per optimizer step (micro = global batch)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side, after one warm-up step")
    ap.add_argument("--no-deepspeed", action="store_true", help="leave out the ours (DeepSpeed) sides")
    ap.add_argument("--no-padded", action="store_true", help="leave out the DeepSpeed side with train.packing=false")
    args = ap.parse_args()
    if args.pairs % args.batch:
        ap.error("--pairs must be a multiple of --batch")
    common.setup()
    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer, __version__ as trl_version

    from dlma_ray import methods
    from dlma_ray.model.logprobs import forward_logits, side_ids, text_ids
    from dlma_ray.methods.base import pair_logprobs, preference_batch
    from dlma_ray.model.loading import load_causal_lm, load_tokenizer
    from dlma_ray.workers.training import deepspeed_config, make_optimizer

    common.header(f"bench_trl: the train stage's DPO step vs TRL {trl_version} DPOTrainer")
    path, dev = common.model_dir(), common.device()
    t = vars(common.bench_config("train.method=dpo", f"train.micro_batch_size={args.batch}",
                                 f"train.global_batch_size={args.batch}").train)
    rows = pair_rows(args.pairs, path)
    n, b = len(rows["chosen"]), args.batch
    batches = [rows_slice(rows, i, i + b) for i in range(0, n, b)]
    tok = load_tokenizer(path)
    method = methods.get("dpo")

    # ---- TRL, built first: its Accelerator must see a plain single process, not our gloo group below.
    torch.manual_seed(t["seed"])
    trl_model = load_causal_lm(path, "float32")
    cfg = DPOConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), max_steps=args.steps + 1,
                    per_device_train_batch_size=b, gradient_accumulation_steps=1, learning_rate=t["lr"],
                    lr_scheduler_type="constant", warmup_steps=0, weight_decay=t["weight_decay"],
                    max_grad_norm=t["grad_clip"], optim="adamw_torch", beta=t["beta"], loss_type=["sigmoid"],
                    max_length=t["max_length"], precompute_ref_log_probs=True, gradient_checkpointing=False,
                    bf16=False, fp16=False, use_cpu=dev == "cpu", train_sampling_strategy="sequential",
                    logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                    dataset_num_proc=None, seed=t["seed"])
    trainer = DPOTrainer(model=trl_model, args=cfg, train_dataset=trl_text_dataset(rows), processing_class=tok)
    ds = trainer.train_dataset

    # ---- the same tokens? ours: plain context ids + response ids (logprobs.side_ids); TRL: its own.
    ctx = [text_ids(tok, str(c)) for c in rows["plain_context"]]
    same = 0
    for side in ("chosen", "rejected"):
        for i, ids in enumerate(side_ids(tok, rows, side)):
            same += (ctx[i], ids) == (ds[i]["prompt_ids"], ds[i][f"{side}_ids"])
    common.say(f"{n} pairs in {n // b} batches of {b}; token ids identical to ours (context and response "
               f"split alike): {same}/{2 * n} sequences; optimizer {t['optimizer']} lr {t['lr']} wd "
               f"{t['weight_decay']} grad_clip {t['grad_clip']} beta {t['beta']}, fp32, constant lr")

    # ---- ours
    torch.manual_seed(t["seed"])
    ours_model = load_causal_lm(path, "float32").to(dev)

    # ---- log-prob agreement at the initial weights, eval mode (no dropout), batch by batch.
    ours_model.eval()
    trainer.model.eval()
    diffs, f64_err = [], {"ours": [], "TRL": []}
    with torch.no_grad():
        for k, rb in enumerate(batches):
            oc, orj = pair_logprobs(ours_model, tok, rb, t["max_length"], dev)
            batch = trainer.data_collator([ds[i] for i in range(k * b, (k + 1) * b)])
            tc, tr = trainer.compute_ref_log_probs(trainer.model, {k2: v.to(dev) for k2, v in batch.items()})
            diffs += (oc - tc).abs().tolist() + (orj - tr).abs().tolist()
            # which side is nearer: our fp32 logits of the same batch, log-softmaxed in float64
            pb = preference_batch(tok, rb, t["max_length"]).to(dev)
            logp = torch.log_softmax(forward_logits(ours_model, pb)[:, :-1].double(), -1)
            f64 = (logp.gather(-1, pb.input_ids[:, 1:, None])[..., 0] * pb.response_mask[:, 1:]).sum(-1)
            del logp
            f64_err["ours"] += (torch.cat([oc, orj]).double() - f64).abs().tolist()
            f64_err["TRL"] += (torch.cat([tc, tr]).double() - f64).abs().tolist()
    ours_model.train()
    ref_vs_stored = max(abs(float(x) - float(y)) for x, y in
                        zip(list(ds["ref_chosen_logps"]) + list(ds["ref_rejected_logps"]),
                            list(rows["ref_logp_chosen"]) + list(rows["ref_logp_rejected"])))

    opt = make_optimizer(ours_model.parameters(), t)

    def torch_step(rb):
        return common.torch_step(ours_model, opt, lambda: method.loss(ours_model, tok, rb, t, dev)[0], t["grad_clip"])

    ours = {"ours (torch)": torch_step}
    if not args.no_deepspeed:
        import deepspeed
        import torch.distributed as dist

        common.init_group()

        def ds_side(tt: dict):
            torch.manual_seed(tt["seed"])
            ds_model = load_causal_lm(path, "float32").train()
            engine, *_ = deepspeed.initialize(model=ds_model, optimizer=make_optimizer(ds_model.parameters(), tt),
                                              config=deepspeed_config(tt, 1), dist_init_required=False)

            def ds_step(rb):
                loss, _ = method.loss(engine, tok, rb, tt, engine.device)
                engine.backward(loss)
                engine.step()
                return loss.item()
            return ds_step

        # the train stage (train.packing, the default) and, in the same run, its padded forward (packing off)
        ours[f"ours (DeepSpeed ZeRO-{t['zero_stage']}, packed: the train stage)"] = ds_side(t)
        if not args.no_padded:
            ours[f"ours (DeepSpeed ZeRO-{t['zero_stage']}, padded: train.packing=false)"] = ds_side(
                dict(t, packing=False))

    # ---- interleaved steps: TRL step k, then each of ours on the same batch k.
    wall = {k: [] for k in ["TRL DPOTrainer", *ours]}
    cpu = {k: [] for k in wall}
    losses = {k: [] for k in wall}
    collate_s = []

    class Interleave(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kw):
            self.w, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, args_, state, control, **kw):
            wall["TRL DPOTrainer"].append(time.perf_counter() - self.w)
            cpu["TRL DPOTrainer"].append(time.process_time() - self.c)
            rb = batches[(state.global_step - 1) % len(batches)]
            for name, fn in ours.items():
                w, c = time.perf_counter(), time.process_time()
                losses[name].append(fn(rb))
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)

        def on_log(self, args_, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses["TRL DPOTrainer"].append(logs["loss"])

    collator = trainer.data_collator

    def timed_collator(examples):
        start = time.perf_counter()
        out = collator(examples)
        collate_s.append(time.perf_counter() - start)
        return out

    trainer.data_collator = timed_collator
    trainer.add_callback(Interleave())
    trainer.train()
    assert trainer.accelerator.distributed_type == "NO", trainer.accelerator.distributed_type

    includes = {"TRL DPOTrainer": "fwd (fused LM head), loss, bwd, clip, AdamW; collation and ref fwd outside",
                "ours (torch)": "tokenise rows, packed fwd (train.packing), loss vs stored ref, bwd, clip, AdamW"}
    for name in ours:
        includes.setdefault(name, "as ours (torch), through the DeepSpeed engine")
    med = {k: statistics.median(v[1:]) for k, v in wall.items()}
    common.say(f"median of {args.steps} interleaved steps after 1 warm-up step each; CPU s = process CPU time "
               f"(all threads); TRL collates a batch outside its step window: median {statistics.median(collate_s):.4f} s")
    common.table(["side", "step includes", "wall s", "all steps", "CPU s", "pairs/s", "loss per step (warm-up first)"],
                 [[k, includes[k], med[k], common.runs(wall[k][1:]), statistics.median(cpu[k][1:]), b / med[k],
                   "/".join(f"{x:.4f}" for x in losses[k])] for k in wall])
    trl_rate = b / med["TRL DPOTrainer"]
    for name in ours:
        common.say(f"ratio {name}/TRL pairs/s: {b / med[name] / trl_rate:.2f} (goal >= 1.2)")
    worst = max(diffs)
    common.say(f"log-prob agreement, initial weights, {len(diffs)} sequences: max |ours pair_logprobs - TRL "
               f"compute_ref_log_probs| = {worst:.2e} nats ({'<=' if worst <= 1e-4 else '>'} 1e-4: "
               f"{'PASS' if worst <= 1e-4 else 'FAIL'}); TRL's precomputed reference vs the score stage's stored "
               f"one: max {ref_vs_stored:.2e} nats")
    common.say(f"vs the same fp32 logits log-softmaxed in float64: ours max {max(f64_err['ours']):.2e}, TRL max "
               f"{max(f64_err['TRL']):.2e} nats")
    if not args.no_deepspeed:
        dist.destroy_process_group()
    common.footer()


if __name__ == "__main__":
    main()
