#!/usr/bin/env bash
# Smoke run of the ResNet-9 classifier recipe on the CPU: 2 short epochs on a 5,000-image subset of
# CIFAR-10, interrupted after epoch 1 and resumed, then evaluated (PyTorch and ONNX) and exported
# through `python -m export`. A few minutes on 2 cores; proves the chain, not the accuracy.
#   scripts/classifier_recipe_smoke.sh [DATA_DIR] [OUT]    (DATA_DIR default ../shared/data)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA="${1:-../shared/data}"
OUT="${2:-runs/recipe-smoke}"
PY="${PYTHON:-.venv/bin/python}"
BLOCK_FORM="${BLOCK_FORM:-projected}"
TRAIN=(-m models.train classifier --config models/classification/configs/resnet9.json
       --data "$DATA/cifar10-train.tar.gz" --val "$DATA/cifar10-val.tar.gz"
       --out "$OUT" --cache-dir runs/cache --block polynl --block-form "$BLOCK_FORM"
       --train-subset 5000 --epochs 2 --warmup-epochs 0.5 --threads 2 --device cpu)
echo "==> epoch 1 of 2, then stop (9 steps of 512)"
"$PY" "${TRAIN[@]}" --max-steps 9
echo "==> the same command again: resumes at epoch 2"
"$PY" "${TRAIN[@]}"
echo "==> evaluate the checkpoint (EMA weights) on the 5,000 validation images"
"$PY" -m models.evaluate classifier --checkpoint "$OUT/final.pt" --data "$DATA/cifar10-val.tar.gz" \
    --json "$OUT/eval-torch.json"
echo "==> export: ONNX, graph check, parity, repository"
"$PY" -m export --only classifier --classifier-checkpoint "$OUT/final.pt" --out "$OUT/repository"
echo "==> evaluate the exported ONNX model"
"$PY" -m models.evaluate classifier --onnx "$OUT/repository/classifier" --data "$DATA/cifar10-val.tar.gz" \
    --json "$OUT/eval-onnx.json"
