#!/usr/bin/env bash
# Issue 11 on one GPU, a few minutes: torchrun + nccl training and evaluation end to end, then the numbers
# (training benchmark as 1 process and under torchrun, data-loader workers vs one process).
# Needs Fashion-MNIST under $RAMPTOOL_DATA (FashionMNIST/raw/*-ubyte). Logs go to $OUT (default /tmp/gpu-smoke).
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/gpu-smoke}
mkdir -p "$OUT"
PY=${PYTHON:-python}
TORCHRUN="$PY -m torch.distributed.run --standalone --nproc_per_node 1"
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "$name: rc $? in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/summary.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/summary.txt"
step train-nccl 90 $TORCHRUN -m ramptool finetune --ckpt recipes/checkpoints/fmnist-linf-at.safetensors \
  --method ramp --pair linf,l1 --subset 8192 --batch-size 256 --device cuda --no-progress --eval-n 512 \
  --out "$OUT/ramp-ft"
step eval-nccl 60 $TORCHRUN -m ramptool eval union --ckpt "$OUT/ramp-ft" --attack apgd --steps 20 \
  --n-examples 1000 --device cuda --out "$OUT/eval"
step train-syncbn 60 $TORCHRUN -m ramptool train --arch small-cnn-bn --sync-bn --method e-at --pair linf,l1 \
  --subset 4096 --batch-size 256 --optimizer adam --lr 0.001 --device cuda --no-progress --out "$OUT/eat-bn"
step bench-train 120 $PY bench/train.py --device cuda --methods e-at,ramp,ramp-batched --repeats 2
step bench-data 120 $PY bench/data.py --images 1024 --repeats 1
step bench-train-torchrun 120 $TORCHRUN bench/train.py --device cuda --methods e-at,ramp-batched --repeats 2
tail -n 12 "$OUT"/bench-*.log
