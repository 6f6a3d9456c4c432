#!/usr/bin/env bash
# The prepared GPU session: every check that needs a GPU, in one device call of about 9 minutes.
#
# Run it once, by the lead only (helpers must not use the device), on a lent H100/H200:
#   device run: command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=560
# .whl/ (ignored by git: `echo /.whl/ >> .git/info/exclude`) holds the wheels the device image lacks:
#   pip download --no-deps -d .whl SimpleITK monai      (about 54 MB; the tree limit is 64 MB)
# Everything lands in $OUT (the device tool's folder; /tmp/gpu_out elsewhere); copy the tables into
# BENCHMARKS.md with the device named. QUICK=1 DEV=cpu runs tiny versions of each step (a CPU smoke test).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
PY=${PY:-python3}
QUICK=${QUICK:-0}
DEV=${DEV:-cuda}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
: >"$SUM"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import SimpleITK, monai" 2>/dev/null; then
  $PY -m pip install -q --no-deps --target /tmp/lt_site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/lt_site"
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") >"$OUT/gpu.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" >>"$OUT/gpu.txt" 2>&1

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
mkdir -p "$W"
if [ "$QUICK" = 1 ]; then
  DEMO=(--cases 4 --val-cases 1 --test-cases 1 --epochs 1)
  SPEED=(--matrix 128 --slices 24)
  CMP=(--quick)
  SYN=(--cases 4 --test-cases 1 --matrix 96 --slices 24)
else
  DEMO=()
  SPEED=()
  CMP=(--epochs2d 30 --epochs3d 60)
  SYN=(--cases 40 --test-cases 8)
fi

# 1. The demo on the GPU: its time, its held-out Dice, and a trained model for step 2.
step demo 150 $PY -m lungtumor demo --out "$W/demo" -q "${DEMO[@]}"
# 2. predict on a 512x512x300 CT with that model (goal <= 1 s on an H100), TTA on and off.
step predict_speed 90 $PY benchmarks/predict_speed.py --device "$DEV" --model "$W/demo/run/checkpoints/best.ckpt" \
  --out "$OUT/predict_speed" "${SPEED[@]}"
# 3. 3D preset vs 2D default on the same held-out phantoms (#6), with budgets a GPU allows.
step synth 60 $PY -m lungtumor synth "$W/ph" --seed 5 "${SYN[@]}"
step compare_3d_2d 240 $PY benchmarks/compare_3d_2d.py "$W/ph" "$W/cmp" "${CMP[@]}"
cat "$SUM"
