"""Collate `rsir eval --out` reports and training logs into the markdown table of docs/results.md.

    .venv/bin/python bench/collate_results.py --runs runs/eurosat --evals runs/eurosat-eval
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="folder of training runs (one sub-folder per loss)")
    ap.add_argument("--evals", required=True, help="folder of eval reports (one sub-folder per loss)")
    args = ap.parse_args()
    print("| method | float mAP@100 | P@10 | sign-bit codes mAP@100 (bits) | best epoch / epochs | train time (CPU) |")
    print("|---|---|---|---|---|---|")
    baselines = None
    for name in sorted(os.listdir(args.evals)):
        report = os.path.join(args.evals, name, "results.json")
        log = os.path.join(args.runs, name, "log.csv")
        if not (os.path.exists(report) and os.path.exists(log)):
            continue
        with open(report) as f:
            res = json.load(f)["results"]
        with open(log) as f:
            rows = list(csv.DictReader(f))
        best = max(rows, key=lambda r: float(r["val_map100"]))
        minutes = sum(float(r["seconds"]) for r in rows) / 60
        fl, hs = res[0], res[1]
        print(f"| {name} | {fl['map']:.2f} | {fl['precision']['10']:.2f} | {hs['map']:.2f} ({hs['bits']}) | "
              f"{best['epoch']} / {len(rows)} | {minutes:.0f} min |")
        baselines = baselines or (res[2:] or None)
    if baselines:
        print("\nUntrained baselines (ImageNet EfficientNet-Lite0 features, same run):\n")
        print("| baseline | mAP@100 | P@10 |\n|---|---|---|")
        for r in baselines:
            print(f"| {r['method']} | {r['map']:.2f} | {r['precision']['10']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
