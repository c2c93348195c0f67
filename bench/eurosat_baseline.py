"""Untrained baseline on EuroSAT RGB (../shared/data/eurosat_rgb): ImageNet EfficientNet-Lite0 features at 64 px.

Protocol of Kang et al.: queries = test split, database = train split, mAP@100 normalised by min(100, R).
Prints float cosine and the default model's 64-bit LSH codes. Needs the shared data; not part of the tests.

    .venv/bin/python bench/eurosat_baseline.py --model models/efficientnet_lite0_imagenet_lsh64.onnx
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.archive.gdal_open import open_raster
from core.archive.pixels import read_window
from core.archive.tiling import TileWindow
from core.encoder import Encoder
from core.metrics import map_at_k, relevance


def encode_split(enc: Encoder, root: str, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    size = enc.info.input_size
    pixels = np.stack([read_window(open_raster(os.path.join(root, r["path"])), [1, 2, 3], TileWindow(0, 0, 64, 64),
                                   size) for r in rows])
    return enc.encode(pixels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                   "eurosat_rgb"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with open(os.path.join(args.data, "split.csv")) as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    classes = sorted({r["class"] for r in rows})
    enc = Encoder(args.model, threads=args.threads, batch_size=256)
    t0 = time.perf_counter()
    db_emb, db_codes = encode_split(enc, args.data, train)
    q_emb, q_codes = encode_split(enc, args.data, test)
    secs = time.perf_counter() - t0
    db_y = np.array([classes.index(r["class"]) for r in train])
    q_y = np.array([classes.index(r["class"]) for r in test])
    n_rel = np.bincount(db_y, minlength=len(classes))[q_y]

    flat = faiss.IndexFlatIP(db_emb.shape[1])
    flat.add(db_emb)
    _, ids = flat.search(q_emb, 100)
    binary = faiss.IndexBinaryFlat(db_codes.shape[1] * 8)
    binary.add(db_codes)
    _, hids = binary.search(q_codes, 100)
    print(f"EuroSAT RGB, {len(test)} queries -> {len(train)} database, encoded in {secs:.0f} s")
    print("| features | mAP@100 (min(100,R)) | mAP@100 (retrieved) |")
    print("|---|---|---|")
    for name, ranked in (("float cosine (1280-d)", ids), (f"LSH {db_codes.shape[1] * 8} bits (default model)", hids)):
        rel = relevance(q_y, db_y, ranked)
        print(f"| {name} | {100 * map_at_k(rel, n_rel, 100):.2f} | "
              f"{100 * map_at_k(rel, n_rel, 100, 'retrieved'):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
