#!/bin/bash
# Issue 25's table on one GPU, every row side by side with fused Adam(W) in one process:
# whole steps (ResNet-18 fp32 / bf16 / bf16 compiled, GPT-2 bf16 / compiled, the 1.42B decoder
# with and without averages_dtype=torch.bfloat16) and the optimizer alone (100M in 6 tensors;
# 10.5M in 10 tensors, gradients handed over three ways).
#   usage: bash benchmarks/gpu_table.sh OUT [SECONDS]   (from the repository root)
# With ALICE_OLD=DIR (a folder holding a renamed copy of an older alice as the package
# alice_old, see benchmarks/RESULTS.md) the older code is timed in the same processes.
# Each row runs under a timeout and is skipped when fewer seconds are left than it needs;
# results are appended to OUT/bench.jsonl and the log to OUT/log.txt.
set -u
OUT=$1
END=$((SECONDS + ${2:-540}))
mkdir -p "$OUT"
cd "$(dirname "$0")"
export PYTHONPATH=$PWD/../src${ALICE_OLD:+:$ALICE_OLD}
A="--optimizer alice${ALICE_OLD:+ --optimizer alice_old:Alice}"
L=$OUT/log.txt
row() {  # row SECONDS ARGS...: one benchmark process, if SECONDS are left
  local need=$1; shift
  if [ $((END - SECONDS)) -lt "$need" ]; then echo "SKIPPED (left $((END - SECONDS)) s): $*" >> "$L"; return; fi
  echo "=== $(date +%T) $*" >> "$L"
  timeout "$need" python "$@" --log "$OUT/bench.jsonl" >> "$L" 2>&1; echo "rc=$?" >> "$L"
}
row 60 train_step.py --model resnet18 --precision fp32 --optimizer adam,fused=True $A
row 130 train_step.py --model decoder1b --precision bf16 --periods 3 --repeats 2 --optimizer adamw,fused=True \
  --optimizer alice --optimizer alice,averages_dtype=torch.bfloat16
row 45 optimizer_only.py --numel 100000000 --tensors 6 --optimizer adam,fused=True $A
row 70 train_step.py --model gpt2 --precision bf16 --periods 5 --optimizer adamw,fused=True $A
row 50 train_step.py --model resnet18 --precision bf16 --optimizer adam,fused=True $A
for handover in copy assign backward; do
  row 35 optimizer_only.py --numel 10500000 --tensors 10 --handover $handover --optimizer adam,fused=True $A
done
row 70 train_step.py --model resnet18 --precision bf16 --compile --optimizer adam,fused=True --optimizer alice
row 80 train_step.py --model gpt2 --precision bf16 --compile --periods 5 --optimizer adamw,fused=True --optimizer alice
echo "end at $SECONDS s" >> "$L"
