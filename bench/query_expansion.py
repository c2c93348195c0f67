"""Query expansion (core/expansion.py) on a labelled dataset: mAP@100 and P@1 against N, float and Hamming search,
on the whole database and with each class cut down to a few database items (where expansion can hurt).

    .venv/bin/python bench/query_expansion.py default_model/eurosat_rgb_lite0_milan128_rot4_wcw.onnx \
        ../shared/data/eurosat_rgb

N = 0 (no expansion) is the baseline of the same run. The rare-class table cuts the database's items of one class
at a time to --rare items (seeded), runs that class's queries, and averages over classes; mAP@100 then divides by
min(100, rare), as everywhere.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.encoder import Encoder  # noqa: E402
from training.datasets import load_folder, model_band_indices  # noqa: E402
from training.evaluate import expand_query_set, pm1, score  # noqa: E402


def _scores(q_e, q_c, q_y, db_e, db_c, db_y, n, bits, names) -> tuple:
    e, c = (q_e, q_c) if n == 0 else expand_query_set(q_e, q_c, db_e, db_c, n, bits)
    f = score("float", "float", 0, e, db_e, q_y, db_y, names, 100)
    h = score("hash", "hash", bits, pm1(c, bits), pm1(db_c, bits), q_y, db_y, names, 100)
    return f.map_k, f.precision[1], h.map_k, h.precision[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="ONNX model exported by `rsir export`")
    ap.add_argument("dataset", help="folder per class with split.csv (e.g. ../shared/data/eurosat_rgb)")
    ap.add_argument("--n", default="0,5,10,20,50,100", help="expansion sizes (0 = none, the baseline)")
    ap.add_argument("--queries", default="val,test", help="query splits; the database is train")
    ap.add_argument("--rare", default="20,100", help="database items per class in the rare-class table ('' = skip)")
    ap.add_argument("--cache-dir", default="cache/datasets", help="decoded-image cache of training/ ('' = none)")
    args = ap.parse_args()

    enc = Encoder(args.model, batch_size=256)
    info = enc.info
    bands = model_band_indices(info.bands)
    splits = [s.strip() for s in args.queries.split(",") if s.strip()]
    sets = load_folder(args.dataset, bands, info.input_size, args.cache_dir or None, splits=tuple(splits) + ("train",))
    db = sets["train"]
    db_e, db_c = enc.encode(db.pixels)
    bits, names = info.effective_code_bits, db.class_names
    ns = [int(v) for v in args.n.split(",")]
    encoded = {s: enc.encode(sets[s].pixels) + (sets[s].labels,) for s in splits}

    print(f"{os.path.basename(args.model)}: queries -> {len(db)} train items; mAP@100 / P@1 (%)")
    print("| queries | N | float mAP@100 | float P@1 | Hamming mAP@100 | Hamming P@1 |")
    print("|---|---|---|---|---|---|")
    for s in splits:
        for n in ns:
            row = _scores(*encoded[s], db_e, db_c, db.labels, n, bits, names)
            print(f"| {s} | {n} | " + " | ".join(f"{v:.2f}" for v in row) + " |", flush=True)

    rare = [int(v) for v in args.rare.split(",") if v.strip()]
    if rare:
        q_e, q_c, q_y = encoded[splits[-1]]
        rng = np.random.default_rng(1)
        print(f"\nrare classes: {splits[-1]} queries of one class, that class cut to R train items (mean over classes)")
        print("| R | N | float mAP@100 | float P@1 | Hamming mAP@100 | Hamming P@1 |")
        print("|---|---|---|---|---|---|")
        for r in rare:
            rows = {n: [] for n in ns}
            for c in range(len(names)):
                keep = np.concatenate([np.flatnonzero(db.labels != c),
                                       rng.choice(np.flatnonzero(db.labels == c), r, replace=False)])
                sel = q_y == c
                for n in ns:
                    rows[n].append(_scores(q_e[sel], q_c[sel], q_y[sel], db_e[keep], db_c[keep], db.labels[keep], n,
                                           bits, names))
            for n in ns:
                print(f"| {r} | {n} | " + " | ".join(f"{v:.2f}" for v in np.mean(rows[n], axis=0)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
