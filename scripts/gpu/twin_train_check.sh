#!/bin/bash
# GPU check of the closed-loop (twin) workflow, one device call (~6 min on an H100/H200):
#   1. the CUDA-only tests (CUDA-graph capture and replay of the inference engines),
#   2. the twin policy's latency per engine on the GPU (random weights at models/closed_loop.yaml's size, 2 views),
#   3. `posevla train` of the twin recipe on the GPU (augmentation + EMA, init from a checkpoint) for STEPS steps
#      at batch 16 and 64, samples/s and the loss, from episodes carried in .gpudata/.
# Needs: .whl/ (PyAV for the episodes' video-encoded colour) and .gpudata/{data/pick_cube,e17} carried.
#   usage: bash scripts/gpu/twin_train_check.sh [cuda|cpu] [STEPS] | tee $OUT/log.txt
#   ($OUT: summary.txt, infer/infer_check.json and .png; default runs/gpu_check)
set -u
DEV=${1:-cuda}; STEPS=${2:-300}
OUT=${OUT:-runs/gpu_check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import av" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
PY=${PY:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; $PY -c "import torch,transformers;print('torch',torch.__version__,'transformers',transformers.__version__,'cuda',torch.cuda.is_available())"; }
ONLY=${ONLY:-all}
[ "$ONLY" = train ] || { echo "== 1. CUDA-only tests"; timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_engines.py 2>&1 | tail -n 15
echo "== 2. twin policy latency"; timeout 120 $PY scripts/gpu/infer_check.py --device $DEV --config models/closed_loop.yaml --views 2 \
  --no-compile --budget-s 60 --iters 50 --out "$OUT/infer" 2>&1 | tail -n 30; }
for BS in 16 64; do
  echo "== 3. train batch $BS"; rm -rf /tmp/twin_train_$BS
  timeout 200 $PY -m posevla.cli train --data .gpudata/data/pick_cube --init .gpudata/e17 \
    --device $DEV --train all --lr 2e-4 --warmup 20 --steps $STEPS --batch-size $BS --val-episodes 0 --workers ${WORKERS:-12} \
    --ema-decay 0.999 --out /tmp/twin_train_$BS 2>&1 | tail -n 12
  $PY - /tmp/twin_train_$BS/train_log.csv $BS <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]))); bs = int(sys.argv[2]); n = len(rows)
late = rows[n // 4:]
step = sorted(float(r["step_s"]) for r in late)[len(late) // 2]; wait = sorted(float(r["data_wait_s"]) for r in late)[len(late) // 2]
loss0 = sum(float(r["loss"]) for r in rows[:20]) / 20; loss1 = sum(float(r["loss"]) for r in rows[-20:]) / 20
print(f"batch {bs}: {n} steps, step p50 {step*1e3:.1f} ms, data wait p50 {wait*1e3:.1f} ms, {bs/(step+wait):.0f} samples/s; loss first 20 {loss0:.4f} last 20 {loss1:.4f}")
PY
done
ls -la "$OUT"
