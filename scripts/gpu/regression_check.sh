#!/bin/bash
# One device call (~7 min on an H100/H200): after a refactor, do the CUDA paths still run and still measure the same?
#   1. the CUDA-only tests (CUDA-graph capture and replay of the inference engines against eager),
#   2. full-size inference (models/posevla_3b.yaml, 3 views, bf16): eager, torch_graphs, the matmul-attention
#      graph engine (the policy node's default) and the end-to-end runner (sequential and pipelined), parity against eager,
#   3. full-size training steps (the CUDA defaults: lora or expert with gradient checkpointing) under bf16 autocast: step time, peak memory and the
#      "weights changed at lr 1e-5" check of fp32 master weights.
#   usage: bash scripts/gpu/regression_check.sh [cuda|cpu]    (cpu: tiny config, to test the script here)
set -u
DEV=${1:-cuda}
OUT=${OUT:-runs/gpu_regression}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
PY=${PY:-python3}
CFG=models/posevla_3b.yaml; [ "$DEV" = cpu ] && CFG=models/tiny.yaml
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tail -n 1
  $PY -c "import torch,transformers;print('torch',torch.__version__,'transformers',transformers.__version__,'cuda',torch.cuda.is_available())"
} | tee "$OUT/machine.txt"
echo "== 1. CUDA-only tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_engines.py 2>&1 | tail -n 6 | tee "$OUT/tests.txt"
echo "== 2. inference, $CFG"
timeout 200 $PY scripts/gpu/infer_check.py --device "$DEV" --config $CFG --views 3 --no-compile --no-fp32-parity \
  --engines torch,torch_graphs,torch_graphs_matmul,e2e --budget-s 170 --out "$OUT/infer" 2>&1 | tail -n 30
echo "== 3. training steps, $CFG"
timeout 150 $PY scripts/gpu/train_check.py --device "$DEV" --config $CFG --rows "lora + ckpt (default on CUDA),expert + ckpt" \
  --budget-s 130 --out "$OUT/train" 2>&1 | tail -n 20
ls -la "$OUT" "$OUT"/*/
