#!/usr/bin/env bash
# Issue 30 on one GPU, under 10 minutes: the CUDA checks (no host sync in APGD's loop, bf16 training), then
# bench/scale.py on PreAct ResNet-18 (training, profile of a RAMP step, union evaluation against pyautoattack),
# on PRN-18 with torch.compile, and on WideResNet-28-10. Logs go to $OUT (default /tmp/gpu-scale).
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/gpu-scale}
mkdir -p "$OUT"
PY=${PYTHON:-python}
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "$name: rc $? in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/summary.txt"
step cuda-tests 90 $PY -m pytest -q tests/test_attacks_sync.py tests/test_precision.py
step scale-prn18 200 $PY bench/scale.py --arch preact-resnet18 --profile ramp,ramp-reference
step scale-prn18-compile 120 $PY bench/scale.py --arch preact-resnet18 --compile default --methods e-at,ramp \
  --steps 10 --rounds 2 --eval-points 0
step scale-wrn 150 $PY bench/scale.py --arch wrn-28-10 --steps 10 --rounds 2 --eval-points 0
grep -h -A 12 "^method" "$OUT"/scale-*.log
grep -h "e-at s/epoch\|reference throughput\|pyautoattack points/s" "$OUT"/scale-*.log
