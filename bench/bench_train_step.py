"""One training step: DeepSpeed (ZeRO-2, torch AdamW, one gloo process) vs a plain torch step.

Both sides start from the same weights and take identical steps on one batch of pairs built the
way the train stage builds it (`dlma_ray.methods.base.preference_batch`, `dlma_ray.losses.dlma_loss`, the pair's
reference log-probs and R from `dlma_ray.score.PairScorer`). A step is forward, loss, backward,
gradient clipping (train.grad_clip) and the optimizer update. Steps alternate between the two sides
so a change in machine load hits both; the losses of both sides are printed as a check that they
compute the same thing.

    python bench/bench_train_step.py [--pairs 4] [--steps 3] [--zero-stage 2]
"""

import argparse
import os
import socket
import statistics
import time

import common


def pair_rows(n_pairs: int, model_path: str) -> dict:
    """A pairs-table batch (the columns the train loop reads), scored like the score stage does."""
    import numpy as np

    from dlma_ray.models import load_tokenizer
    from dlma_ray.score import PairScorer

    r = common.renderer(load_tokenizer(model_path))
    pairs = common.preference_pairs(n_pairs)
    chats = [p.prompt.as_chat() for p in pairs]
    batch = {"pos_context": [r.positive(c) for c in chats], "neg_context": [r.negative(c) for c in chats],
             "plain_context": [r.plain(c) for c in chats], "end_of_turn": [r.end_of_turn] * len(pairs),
             "chosen": [p.chosen for p in pairs], "rejected": [p.rejected for p in pairs],
             "round": [0] * len(pairs)}
    batch = {k: np.array(v, dtype=object if k != "round" else np.int32) for k, v in batch.items()}
    return PairScorer(model_path, model_path, torch_threads=common.THREADS)(batch)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=4, help="pairs per step (= micro = global batch)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side, after one warm-up step")
    ap.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2, 3))
    args = ap.parse_args()
    common.setup()
    import deepspeed
    import torch
    import torch.distributed as dist

    from dlma_ray.logprobs import sequence_logprobs
    from dlma_ray.losses import dlma_loss
    from dlma_ray.models import load_causal_lm, load_tokenizer
    from dlma_ray.methods.base import preference_batch
    from dlma_ray.train import deepspeed_config, make_optimizer

    common.header(f"bench_train_step: DeepSpeed ZeRO-{args.zero_stage} step vs plain torch step")
    path = common.model_dir()
    t = vars(common.bench_config(f"train.micro_batch_size={args.pairs}",
                                 f"train.global_batch_size={args.pairs}", f"train.zero_stage={args.zero_stage}").train)
    rows = pair_rows(args.pairs, path)
    dev = common.device()
    batch = preference_batch(load_tokenizer(path), rows, t["max_length"]).to(dev)
    n = args.pairs
    ref_c, ref_r, reward = (torch.as_tensor(rows[k], dtype=torch.float32, device=dev)
                            for k in ("ref_logp_chosen", "ref_logp_rejected", "self_reward"))
    common.say(f"batch: {n} pairs = {2 * n} sequences padded to {batch.input_ids.shape[1]} tokens "
          f"({int(batch.attention_mask.sum())} real, {int(batch.response_mask.sum())} response); "
          f"optimizer {t['optimizer']}, lr {t['lr']}, grad_clip {t['grad_clip']}, ZeRO stage {t['zero_stage']}")

    def loss_of(model):
        logp = sequence_logprobs(model, batch)
        return dlma_loss(logp[:n], logp[n:], ref_c, ref_r, reward, beta=t["beta"], gamma=t["gamma"],
                         clip_low=t["clip_low"], clip_high=t["clip_high"])[0]

    torch.manual_seed(t["seed"])
    plain = load_causal_lm(path, "float32").to(dev).train()
    opt = make_optimizer(plain.parameters(), t)

    def torch_step():
        loss = loss_of(plain)
        loss.backward()
        if t["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(plain.parameters(), t["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    # DeepSpeed on one process: our own gloo (CPU) / NCCL (GPU) group; on CPU no shared-memory comm op,
    # as dlma_ray/train.py.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl" if dev == "cuda" else "gloo", rank=0, world_size=1)
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    ds_model = load_causal_lm(path, "float32").train()
    start = time.perf_counter()
    engine, *_ = deepspeed.initialize(model=ds_model, optimizer=make_optimizer(ds_model.parameters(), t),
                                      config=deepspeed_config(t, 1), dist_init_required=False)
    init_s = time.perf_counter() - start

    def ds_step():
        loss = loss_of(engine)
        engine.backward(loss)
        engine.step()
        return loss.item()

    wall, cpu, losses = common.interleaved({"torch": torch_step, "deepspeed": ds_step}, args.steps, warmup=1)
    med = {k: statistics.median(v) for k, v in wall.items()}
    common.say(f"deepspeed.initialize: {init_s:.2f} s (once); median of {args.steps} interleaved steps after 1 "
               "warm-up; CPU s = process CPU time (all threads)")
    common.table(["step", "wall s", "all steps", "CPU s", "pairs/s", "loss per step (warm-up first)",
                  "wall ratio vs torch", "CPU ratio vs torch"],
                 [[k, med[k], common.runs(wall[k]), statistics.median(cpu[k]), n / med[k],
                   "/".join(f"{x:.4f}" for x in losses[k]), med[k] / med["torch"],
                   statistics.median(cpu[k]) / statistics.median(cpu["torch"])] for k in wall])
    diff = max(abs(a - b) for a, b in zip(losses["torch"], losses["deepspeed"]))
    common.say(f"max |loss_torch - loss_deepspeed| over steps: {diff:.2e}")
    dist.destroy_process_group()
    common.footer()


if __name__ == "__main__":
    main()
