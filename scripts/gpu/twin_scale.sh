#!/bin/bash
# More data and more training for the twin's pick policy in one device call (~9 min on a 16-core H100/H200 machine):
#   1. scripted demonstrations recorded directly on the twin (`python -m posevla.sim.direct_demos`: the graph's
#      scripted paths, perturbed approaches included, all twin cameras at 10 Hz in the project's episode format) in
#      GEN_PROCS processes for GEN_S seconds, training seeds from SEED0 (1000 apart per process),
#   2. `posevla train` of INIT on those episodes on DEVICE (INIT's config: augmentation; EMA 0.999) for TRAIN_STEPS
#      steps of batch BATCH, loader workers WORKERS (a checkpoint every 500 steps in case the time runs out),
#   3. direct rollouts of the result on the 80 held-out seeds (EVAL_PROCS processes on the CPU, deterministic flow),
#   4. $OUT: ckpt.tar (the newest checkpoint), gen.txt, train.txt, eval.txt, results_*.json packed in eval.tar.
# Needs .whl/ (mujoco, PyOpenGL, PyAV, feetech-servo-sdk, pyserial wheels for the GPU machine's Python) and .gl/
# (EGL loader debs, scripts/gpu/README in docs/closed_loop.md) carried; INIT a checkpoint folder in the tree.
#   usage: bash scripts/gpu/twin_scale.sh INIT [cuda|cpu]
set -u
INIT=$1; DEV=${2:-cuda}
OUT=${OUT:-runs/twin_scale}; mkdir -p "$OUT"
GEN_PROCS=${GEN_PROCS:-14}; GEN_S=${GEN_S:-100}; GEN_EPISODES=${GEN_EPISODES:-400}; SEED0=${SEED0:-20000}
TRAIN_STEPS=${TRAIN_STEPS:-2500}; BATCH=${BATCH:-64}; WORKERS=${WORKERS:-15}; TRAIN_S=${TRAIN_S:-330}
EVAL_PROCS=${EVAL_PROCS:-16}; EVAL_TRIALS=${EVAL_TRIALS:-5}; EVAL_S=${EVAL_S:-100}
WORK=${WORK:-/tmp/twin_scale}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-egl}
if ls .gl/*.deb >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && [ -d /usr/local/nvidia ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
if ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import mujoco, av, scservo_sdk" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | head -1; nproc
$PY -c "import mujoco, torch; print('mujoco', mujoco.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
rm -rf "$WORK"; mkdir -p "$WORK"
t0=$(date +%s)

echo "== 1. $GEN_PROCS generators for $GEN_S s"
for i in $(seq 0 $((GEN_PROCS - 1))); do
  OMP_NUM_THREADS=1 timeout -k 10 -s INT "$GEN_S" $PY -m posevla.sim.direct_demos --out "$WORK/gen/$i" \
    --episodes "$GEN_EPISODES" --first-seed $((SEED0 + i * 1000)) > "$WORK/gen_$i.log" 2>&1 &
done
wait
ls "$WORK"/gen/*/pick_cube/*.h5 > "$WORK/episodes.txt" 2>/dev/null
n_ep=$(wc -l < "$WORK/episodes.txt")
n_ok=$(cat "$WORK"/gen_*.log | grep -c "): success")
{ echo "generated $n_ep episodes ($n_ok succeeded) in $(( $(date +%s) - t0 )) s with $GEN_PROCS processes"
  tail -n 2 "$WORK/gen_0.log"; } | tee "$OUT/gen.txt"
[ "$n_ep" -gt 0 ] || { echo "no episodes"; exit 1; }

echo "== 2. train $TRAIN_STEPS steps of batch $BATCH on $DEV"
t1=$(date +%s)
timeout -k 10 -s INT "$TRAIN_S" $PY -m posevla.cli train --data "$WORK"/gen/*/pick_cube --init "$INIT" --device "$DEV" \
  --train all --lr 2e-4 --warmup 100 --steps "$TRAIN_STEPS" --batch-size "$BATCH" --val-episodes 0 --workers "$WORKERS" \
  --ema-decay 0.999 --save-every 500 --out "$WORK/train" > "$WORK/train.log" 2>&1
echo "train exit $? after $(( $(date +%s) - t1 )) s" >> "$WORK/train.log"
grep -v "^\s*$" "$WORK/train.log" | tail -n 25 | tee "$OUT/train.txt"
CK="$WORK/train/checkpoint"
[ -f "$CK/config.yaml" ] || CK=$(ls -d "$WORK"/train/checkpoint_* 2>/dev/null | sort -t_ -k2 -n | tail -n 1)
[ -n "$CK" ] && [ -f "$CK/config.yaml" ] || { echo "no checkpoint"; exit 1; }
echo "checkpoint: $CK" | tee -a "$OUT/train.txt"
tar -C "$(dirname "$CK")" -cf "$OUT/ckpt.tar" "$(basename "$CK")"
cp "$WORK/train/train_log.csv" "$OUT/" 2>/dev/null

echo "== 3. direct rollouts, $EVAL_PROCS x $EVAL_TRIALS held-out seeds"
for i in $(seq 0 $((EVAL_PROCS - 1))); do
  OMP_NUM_THREADS=1 timeout -k 10 -s INT "$EVAL_S" $PY -m posevla.cli benchmark rollout --checkpoint "$CK" \
    --trials "$EVAL_TRIALS" --first-seed $((i * EVAL_TRIALS)) --trial-s 15 --flow-noise-scale 0 --threads 1 \
    --out "$WORK/eval/e$i" > "$WORK/eval_$i.log" 2>&1 &
done
wait
$PY -m posevla.cli benchmark summary "$WORK"/eval/e*/results.json 2>&1 | tee "$OUT/eval.txt"
tar -C "$WORK" -cf "$OUT/eval.tar" eval $(cd "$WORK" && ls eval_*.log gen_*.log)
echo "total $(( $(date +%s) - t0 )) s"
