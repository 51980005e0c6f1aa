#!/bin/bash
# Regenerate the 1050 direct demonstrations the shipped twin policy (models/twin/pick_cube_overview, round O6-iso)
# was trained on in its last rounds: the same training seeds and placements, replayed by MuJoCo (checked against the
# originals: actions, colour and depth bit-identical, joint states to 5e-11 rad), in the project's episode format:
#   bash scripts/twin_pretraining_data.sh runs/twin_pretrain 2          # OUT, processes (~20 min on 2 cores)
#   posevla benchmark closed-loop --task pick_cube_overview --init models/twin/pick_cube_overview \
#       --co-train-data runs/twin_pretrain/gen*/pick_cube_overview ...   # see docs/closed_loop.md
# Folders OUT/gen0..gen8/pick_cube_overview: seeds 50000+150, 51000+150, 52000..57000 +100 each, 58000+150; gen6-gen8
# with the cube near the table's near edge (x 0.38-0.46 m).
set -eu
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0
fi
OUT=$1; PROCS=${2:-2}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}
export MUJOCO_GL=${MUJOCO_GL:-egl}
gen() {  # gen INDEX FIRST_SEED EPISODES [extra args]
  local g=$1 seed=$2 n=$3; shift 3
  local have; have=$(ls "$OUT/gen$g/pick_cube_overview"/episode_*.h5 2>/dev/null | wc -l)
  if [ "$have" -eq "$n" ]; then echo "[twin-data] gen$g: $n episodes already there"; return; fi
  if [ "$have" -ne 0 ]; then
    echo "twin_pretraining_data.sh: $OUT/gen$g/pick_cube_overview holds $have of $n episodes: remove it and run again" >&2
    exit 2
  fi
  "$PY" -m posevla.sim.direct_demos --out "$OUT/gen$g" --episodes "$n" --first-seed "$seed" \
    --task pick_cube_overview --procs "$PROCS" "$@"
}
gen 0 50000 150
gen 1 51000 150
for g in 2 3 4 5; do gen $g $((50000 + 1000 * g)) 100; done
for g in 6 7; do gen $g $((50000 + 1000 * g)) 100 --x-range 0.38 0.46; done
gen 8 58000 150 --x-range 0.38 0.46
echo "[twin-data] done: $(ls "$OUT"/gen*/pick_cube_overview/episode_*.h5 | wc -l) episodes in $OUT/gen0..gen8"
