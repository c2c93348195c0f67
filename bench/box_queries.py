"""Query boxes larger than a tile, read the two ways `rsir search --bbox` can: as index-sized tiles whose embeddings
are averaged (the default) or as one image resampled to the model input (`--whole-box`).

    .venv/bin/python bench/box_queries.py [MODEL.onnx] [../shared/data/eurosat_rgb] [--sides 2,3]

Boxes: n x n mosaics of EuroSAT test patches of one class (each patch is one 64 px tile, the index's tile size),
searched against the 18,900 train patches (mAP@100, P@1; relevant = same class). The mosaics are stitched from
different patches, so they have seams a real region lacks; the whole-box read also sees them. Both reads use the
product's own code: `cover_windows` and `read_window` over the mosaic as a GDAL dataset.

With `--scene-index IDX --scene-raster R --scene-labels L.gpkg` (an index of one scene, the scene as a raster,
and a label layer of it such as `rsir spectral-labels` writes), a table instead searches that index with every
n x n block of its tiles that share one label, through `query_from_box` itself (seamless boxes of real ground):
P@10 of the labelled hits outside the box.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.archive.gdal_open import open_raster  # noqa: E402
from core.archive.pixels import read_window  # noqa: E402
from core.archive.tiling import TileWindow, cover_windows  # noqa: E402
from core.encoder import Encoder, l2_normalise  # noqa: E402
from training.datasets import load_folder, model_band_indices  # noqa: E402
from training.evaluate import score  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TILE = 64


def mosaics(pixels: np.ndarray, labels: np.ndarray, side: int, seed: int = 0):
    """(boxes (M, C, side*64, side*64), their class): the test patches of each class in random groups of side^2."""
    rng = np.random.default_rng(seed)
    boxes, classes = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        for g in range(len(members) // side ** 2):
            p = pixels[members[g * side ** 2:(g + 1) * side ** 2]]
            rows = [np.concatenate(list(p[r * side:(r + 1) * side]), axis=2) for r in range(side)]
            boxes.append(np.concatenate(rows, axis=1))
            classes.append(c)
    return np.stack(boxes), np.asarray(classes)


def scene_table(index_dir: str, raster: str, labels: str, sides: list[int]) -> None:
    """P@10 (labelled hits outside the box, same label) of box queries over n x n blocks of one-label tiles."""
    from osgeo import ogr

    from core.index import Index
    from core.queries import query_from_box

    index = Index(index_dir)
    enc = Encoder(index.model.path)
    source = ogr.Open(labels)  # kept: the layer dies with it
    layer = source.GetLayer(0)
    label_of, where = {}, {}
    for t in range(index.n):
        tile = index.tile(t)
        layer.SetSpatialFilter(ogr.CreateGeometryFromWkt(tile.src_wkt).Buffer(-1.0))
        names = [f["class"] for f in layer]
        if len(names) >= 3 and len(set(names)) == 1:  # at least 3 of its label squares, all one class
            label_of[t] = names[0]
        where[(tile.x, tile.y)] = t
    size = index.tile(0).w
    emb = index.embeddings(list(range(index.n)))
    gt = open_raster(raster).GetGeoTransform()
    print(f"\n{os.path.basename(index_dir)}: {len(label_of)} one-label tiles of {index.n}")
    print("| box | boxes | read | P@10 by label ... | P@10 |")
    print("|---|---|---|---|---|")
    for side in sides:
        rows = {False: [], True: []}
        for (x, y), t in where.items():
            block = [where.get((x + size * i, y + size * j)) for i in range(side) for j in range(side)]
            if t not in label_of or any(b not in label_of or label_of[b] != label_of[t] for b in block):
                continue
            box = (gt[0] + x * gt[1], gt[3] + (y + side * size) * gt[5], gt[0] + (x + side * size) * gt[1],
                   gt[3] + y * gt[5])
            for whole in (False, True):
                q = query_from_box(index, enc, raster, box, whole=whole)
                scores = emb @ q.embedding
                scores[block] = -np.inf
                top = [i for i in np.argsort(-scores) if i in label_of][:10]
                rows[whole].append((label_of[t], np.mean([label_of[i] == label_of[t] for i in top])))
        for whole, got in rows.items():
            by = {}
            for c, p in got:
                by.setdefault(c, []).append(p)
            print(f"| {side} x {side} tiles | {len(got)} | {'whole box resampled' if whole else 'tiles averaged'} | "
                  + ", ".join(f"{c} {100 * np.mean(v):.1f} ({len(v)})" for c, v in sorted(by.items()))
                  + f" | {100 * np.mean([p for _, p in got]):.1f} |", flush=True)


def main() -> int:
    from osgeo import gdal_array

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from core.default_model import default_model_path

    ap.add_argument("model", nargs="?", default=default_model_path())
    ap.add_argument("dataset", nargs="?", default=os.path.join(ROOT, "..", "shared", "data", "eurosat_rgb"))
    ap.add_argument("--sides", default="2,3", help="box sides in tiles")
    ap.add_argument("--cache-dir", default="cache/datasets", help="decoded-image cache of training/ ('' = none)")
    ap.add_argument("--scene-index", help="index of one scene (e.g. the demo's)")
    ap.add_argument("--scene-raster", help="that scene as a raster QGIS shows (e.g. demo_out/s2_rgb.vrt)")
    ap.add_argument("--scene-labels", help="label layer of the scene (class field; e.g. rsir spectral-labels)")
    args = ap.parse_args()
    if args.scene_index:  # the scene's index names its own model
        scene_table(args.scene_index, args.scene_raster, args.scene_labels, [int(s) for s in args.sides.split(",")])
        return 0
    enc = Encoder(args.model, batch_size=128)
    size, bands = enc.info.input_size, model_band_indices(enc.info.bands)
    sets = load_folder(args.dataset, bands, size, args.cache_dir or None, splits=("train",))
    native = load_folder(args.dataset, bands, TILE, args.cache_dir or None, splits=("test",))["test"]
    train = sets["train"]
    database = enc.encode(train.pixels)[0]
    names = train.class_names
    print(f"{os.path.basename(args.model)}: n x n mosaics of same-class EuroSAT test patches -> "
          f"{len(database)} train patches")
    print("| box | boxes | read | mAP@100 | P@1 | encodings per box | s |")
    print("|---|---|---|---|---|---|---|")
    for side in [int(s) for s in args.sides.split(",")]:
        boxes, classes = mosaics(native.pixels, native.labels, side)
        whole_win = TileWindow(0, 0, side * TILE, side * TILE)
        parts = cover_windows(whole_win, TILE)
        for read in ("tiles averaged", "whole box resampled"):
            t0 = time.perf_counter()
            queries = []
            for box in boxes:
                ds = gdal_array.OpenArray(np.ascontiguousarray(box, np.float32))
                wins = parts if read == "tiles averaged" else [whole_win]
                emb = enc.encode(np.stack([read_window(ds, list(range(1, len(bands) + 1)), w, size) for w in wins]))[0]
                queries.append(l2_normalise(emb.mean(axis=0, keepdims=True))[0])
            r = score(read, "float", 0, np.stack(queries), database, classes, train.labels, names, 100)
            print(f"| {side} x {side} tiles ({side * 640} m) | {len(boxes)} | {read} | {r.map_k:.2f} | "
                  f"{r.precision[1]:.2f} | {len(wins)} | {time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
