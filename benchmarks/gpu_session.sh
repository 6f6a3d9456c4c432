#!/usr/bin/env bash
# The prepared GPU session: every check that needs a GPU, in one device call of about 8 minutes (7 files back).
#
# Run it once, by the lead only (helpers must not use the device), on a lent H100/H200:
#   device run: command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=560
# .whl/ (ignored by git: `echo /.whl/ >> .git/info/exclude`) holds the wheels the device image lacks:
#   pip download --no-deps -d .whl SimpleITK monai      (about 54 MB; the tree limit is 64 MB)
#   and edt for the device's Python 3.12 (3 MB; session 11 made it a dependency):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl edt==3.1.2
# Everything lands in $OUT (the device tool's folder; /tmp/gpu_out elsewhere); copy the tables into
# BENCHMARKS.md with the device named. QUICK=1 DEV=cpu runs tiny versions of each step (a CPU smoke test).
#
# Steps (session 5; session 6 added the flat-filter scoring in step 4):
#  1. One training set (35 rich phantoms, seed 0, 6 of them validate) and 16 standard held-out phantoms
#     (seed 11, the CPU sessions' second held-out set). Caches for the 2D default, the demo and the 3D preset.
#  2. Side by side on the one GPU, each with a fixed number of steps and a hard time limit: the 2D default
#     (UNet-32 depth 4), its width/depth sweep (UNet-16/64 depth 4, UNet-32 depth 3) and lr 1e-3, the demo
#     preset, and the 3D preset (#3 width/depth evidence, #6 3D vs 2D).
#  3. predict_speed with the trained default and demo models on a 512x512x300 CT (#4: <= 1 s on an H100).
#  4. Every run (its best checkpoint) and the 2D+3D ensemble scored on the held-out phantoms (results.jsonl);
#     the 2D default again with the flat-component filter (min_z_extent_ratio 0.4), the demo again without.
set -uo pipefail
unset SCORE_LOG
OUT=${OUT:-/tmp/gpu_out}
PY=${PY:-python3}
QUICK=${QUICK:-0}
DEV=${DEV:-cuda}
TRAIN_LIMIT=${TRAIN_LIMIT:-280}
DATA_SEED=${DATA_SEED:-0}  # training phantoms (rich) and the training seed
HO_SEED=${HO_SEED:-11}     # held-out phantoms (standard)
# SWEEP=1: the 2D width/depth/lr sweep too; SPEED=1: predict_speed (call 1 of session 5 ran with both;
# call 2, a replicate on new seeds, ran SWEEP=0 SPEED=0 DATA_SEED=1 HO_SEED=12 TRAIN_LIMIT=230)
SWEEP=${SWEEP:-1}
SPEED=${SPEED:-1}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
: >"$SUM"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import SimpleITK, monai, edt" 2>/dev/null; then
  $PY -m pip install -q --no-deps --no-compile --target /tmp/lt_site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/lt_site"
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") >"$OUT/gpu.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" >>"$OUT/gpu.txt" 2>&1
nproc >>"$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its log, record its exit status
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc ${limit}s-limit took=$((SECONDS - t0))s" | tee -a "$SUM"
  tail -n 12 "$OUT/$name.log"
}

W=/tmp/lt_gpu
rm -rf "$W"
mkdir -p "$W/logs"
S=(--threads 2 --device "$DEV" --out "$W/sweep")
if [ "$QUICK" = 1 ]; then
  SPEED_ARGS=(--matrix 128 --slices 24)
  TR=(--cases 8 --matrix 96 --slices 32)
  HO=(--test-cases 2 --matrix 96 --slices 32)
  VAL=2
  E2=(--set train.epochs=1 --set train.max_steps_per_epoch=2 --set train.val_every_n_epochs=1)
  E3=(--set train.epochs=1 --set vol3d.steps_per_epoch=2 --set model.base_channels=8 --set model.depth=3
    --set vol3d.memory_budget_gb=0.1 --set train.val_every_n_epochs=1)
  EDEMO=("${E2[@]}" --set nodule.steps=8 --set nodule.batch_size=8 --set nodule.mine_pool=64)  # detector too
else
  SPEED_ARGS=()
  TR=(--cases 35)
  HO=(--test-cases 16)
  VAL=6
  E2=(--set train.epochs=15 --set train.max_steps_per_epoch=200 --set train.val_every_n_epochs=3)
  E3=(--set train.epochs=16 --set vol3d.steps_per_epoch=100 --set train.val_every_n_epochs=4
    --set vol3d.memory_budget_gb=8)
  EDEMO=()
fi

# 1. data and caches
step synth 90 bash -c "$PY -m lungtumor synth $W/tr ${TR[*]} --test-cases 0 --seed $DATA_SEED --train-lesions rich -q &
  $PY -m lungtumor synth $W/ho --cases 0 ${HO[*]} --seed $HO_SEED -q & wait"
step prepare 120 bash -c "$PY -m lungtumor prepare $W/tr $W/c2 --preset default --val-cases $VAL -q &
  $PY -m lungtumor prepare $W/tr $W/cdemo --preset demo --val-cases $VAL -q &
  $PY -m lungtumor prepare $W/tr $W/c3 --preset 3d --val-cases $VAL -q & wait"

# 2. training, side by side on the one GPU
train() {  # train NAME CACHE PRESET OVERRIDES...
  local name=$1 cache=$2 preset=$3
  shift 3
  timeout "$TRAIN_LIMIT" $PY benchmarks/preset_sweep.py "$name" --cache "$cache" --preset "$preset" \
    --test "$W/ho" "${S[@]}" --train-only --set train.seed="$DATA_SEED" "$@" >"$W/logs/train_$name.log" 2>&1
  echo "train $name rc=$?" >>"$SUM"
}
t0=$SECONDS
RUNS=(d2_u32d4 demo d3)
train d2_u32d4 "$W/c2" default "${E2[@]}" &
train demo "$W/cdemo" demo "${EDEMO[@]}" &
train d3 "$W/c3" 3d "${E3[@]}" &
if [ "$SWEEP" = 1 ]; then
  RUNS+=(d2_u16d4 d2_u64d4 d2_u32d3 d2_u32d4_lr1e3)
  train d2_u16d4 "$W/c2" default "${E2[@]}" --set model.base_channels=16 &
  train d2_u64d4 "$W/c2" default "${E2[@]}" --set model.base_channels=64 &
  train d2_u32d3 "$W/c2" default "${E2[@]}" --set model.depth=3 &
  train d2_u32d4_lr1e3 "$W/c2" default "${E2[@]}" --set train.lr=1e-3 &
fi
wait
echo "training took=$((SECONDS - t0))s" | tee -a "$SUM"

# 3. predict time on a 512x512x300 CT with the trained default and demo models, on a quiet machine
#    (an untrained net marks noise, which makes postprocessing and measuring unrepresentative).
M=()
[ "$SPEED" = 1 ] && for n in d2_u32d4 demo; do
  ck="$W/sweep/$n/run/checkpoints/best.ckpt"
  [ -f "$ck" ] || ck="$W/sweep/$n/run/checkpoints/last.ckpt"
  mkdir -p "$W/speed/$n" && cp "$ck" "$W/speed/$n/$n.ckpt" && M+=(--model "$W/speed/$n/$n.ckpt")
done
[ "$SPEED" = 1 ] && step predict_speed 120 $PY benchmarks/predict_speed.py --device "$DEV" "${M[@]}" "${SPEED_ARGS[@]}"

# 4. scoring, side by side (the best checkpoint of each run; the last one where a killed run has no best)
score() {  # score NAME [--model RUN ...] [--min-z-extent-ratio R]; SCORE_LOG=the log's name (default NAME)
  local name=$1
  shift
  local extra=("$@")
  if [ ! -f "$W/sweep/$name/run/checkpoints/best.ckpt" ] && [[ " ${extra[*]} " != *" --model "* ]]; then
    extra+=(--model "$W/sweep/$name/run/checkpoints/last.ckpt")
  fi
  local log=${SCORE_LOG:-$name}
  timeout 150 $PY benchmarks/preset_sweep.py "$name" --cache "$W/c2" --test "$W/ho" "${S[@]}" --score-only \
    "${extra[@]}" >"$W/logs/score_$log.log" 2>&1
  echo "score $log rc=$?" >>"$SUM"
}
t0=$SECONDS
for n in "${RUNS[@]}"; do score $n & done
score ens_d2_d3 --model "$W/sweep/d2_u32d4/run" --model "$W/sweep/d3/run" &
[ "$SWEEP" = 1 ] && score ens_lr1e3_d3 --model "$W/sweep/d2_u32d4_lr1e3/run" --model "$W/sweep/d3/run" &
# session 6: the flat-component filter (demo preset: on) on the 2D models it was not measured with
SCORE_LOG=d2_u32d4_flat score d2_u32d4 --min-z-extent-ratio 0.4 &
SCORE_LOG=demo_noflat score demo --min-z-extent-ratio 0 &
wait
echo "scoring took=$((SECONDS - t0))s" | tee -a "$SUM"

cp "$W/sweep/results.jsonl" "$OUT/results.jsonl" 2>/dev/null
{  # one details file (the device returns at most 8 files): configs of 3D runs, metrics per epoch, log tails
  for f in "$W"/sweep/*/run/config.yaml; do echo "== $f"; grep -A14 "^vol3d:" "$f"; done
  for f in "$W"/sweep/*/run/metrics.csv; do echo "== $f"; cat "$f"; done
  tail -n 8 "$W"/logs/*.log
} >"$OUT/details.txt" 2>&1
for f in "$W"/sweep/*/pred_0/evaluation_cases.csv; do echo "== $f"; cat "$f"; done >"$OUT/cases.txt" 2>&1
cat "$SUM"
grep -h '^|' "$W"/logs/score_*.log
