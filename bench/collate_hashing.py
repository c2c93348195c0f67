"""Collate the hashing reports of `rsir eval --out` into the method x code-length table of docs/results.md.

Deep hashing models are read from EVALS/<method>-<bits>/results.json (their Hamming mAP, with the float mAP of
the same model's relaxed codes in brackets); the shallow baselines (LSH, PCA-ITQ, KSLSH over ImageNet features and
over a trained model's features) from BASELINES/results.json.

    .venv/bin/python bench/collate_hashing.py --evals runs/eurosat-hash-eval \
        --baselines runs/eurosat-hash-eval/baselines-3ep="3 epochs" \
        --baselines runs/eurosat-hash-eval/baselines="10 epochs"
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

NAMES = {"milan": "MiLAN (triplet + quantisation + bit balance)",
         "snca-hash": "quantised SNCA hashing (SNCA + CE + quantisation, CDNE-style)"}


def _load(path: str) -> list[dict]:
    with open(path) as f:
        return json.load(f)["results"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evals", required=True, help="folder with one eval report per <method>-<bits>")
    ap.add_argument("--baselines", action="append", default=[],
                    help="PATH[=TAG]: eval report folder of a run with --baseline-features (repeatable; TAG names "
                         "the model in the rows)")
    ap.add_argument("--bits", default="16,32,64,128")
    args = ap.parse_args()
    bits = [int(b) for b in args.bits.split(",")]
    table: dict[str, dict[int, str]] = {}
    for name in sorted(os.listdir(args.evals)):
        m = re.fullmatch(r"(.+)-(\d+)", name)
        report = os.path.join(args.evals, name, "results.json")
        if not m or not os.path.exists(report):
            continue
        res = _load(report)
        row = table.setdefault(NAMES.get(m.group(1), m.group(1)), {})
        row[int(m.group(2))] = f"**{res[1]['map']:.2f}** ({res[0]['map']:.2f})"
    for spec in args.baselines:
        path, _, tag = spec.partition("=")
        res = _load(os.path.join(path, "results.json"))
        model = res[0]["method"].split(" (")[0]
        name = f"{model} ({tag})" if tag else model
        table[f"{name} float {res[0]['method'].split('float ')[1][:-1]} ({res[0]['map']:.2f}): its sign bits"] = {
            res[1]["bits"]: f"{res[1]['map']:.2f}"}
        for r in res[2:]:
            if r["kind"] != "hash":
                table[r["method"]] = {b: f"{r['map']:.2f}" for b in bits}  # float baseline: same in every column
                continue
            method = re.sub(r"-\d+$", "", r["method"]).replace(model, name, 1)
            table.setdefault(method, {})[r["bits"]] = f"{r['map']:.2f}"
    print("| method | " + " | ".join(f"{b} bits" for b in bits) + " |")
    print("|---|" + "---|" * len(bits))
    for method, row in table.items():
        print(f"| {method} | " + " | ".join(row.get(b, "-") for b in bits) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
