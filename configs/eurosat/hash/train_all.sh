#!/bin/sh
# Train every hashing config of configs/eurosat/hash/ in turn (CPU: ~7 min each on 2 cores) and export each best.pt
# to models/eurosat-hash/<name>.onnx. Rerunning resumes unfinished runs and skips finished ones.
set -e
cd "$(dirname "$0")/../../.."
for name in ${RUNS:-milan-64 snca-hash-64 milan-32 snca-hash-32 milan-16 snca-hash-16 milan-128 snca-hash-128}; do
    if [ -f "models/eurosat-hash/$name.onnx" ]; then echo "== $name: done"; continue; fi
    echo "== $name"
    .venv/bin/rsir train "configs/eurosat/hash/$name.toml" --export "models/eurosat-hash/$name.onnx"
done
