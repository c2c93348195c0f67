#!/bin/sh
# Evaluate the fine-tuned hashing models (test -> train, Hamming and float mAP@100) into
# runs/eurosat-hash-ft-eval/<name>/, and the 96 px model's own features under LSH / PCA-ITQ / KSLSH at the same
# lengths (the shallow baselines of the same backbone). Models already evaluated are skipped.
set -e
cd "$(dirname "$0")/../../.."
for model in models/eurosat-hash-ft/*.onnx; do
    name=$(basename "$model" .onnx)
    [ -f "runs/eurosat-hash-ft-eval/$name/results.json" ] && continue
    .venv/bin/rsir eval "$model" ../shared/data/eurosat_rgb --no-baselines --out "runs/eurosat-hash-ft-eval/$name" | tail -1
done
[ -f runs/eurosat-hash-ft-eval/baselines/results.json ] || .venv/bin/rsir eval \
    models/eurosat/best-triplet-semi-hard-96px-9ep.onnx ../shared/data/eurosat_rgb --bits 16,32,64 \
    --baseline-features model --out runs/eurosat-hash-ft-eval/baselines | tail -1
