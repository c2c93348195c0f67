"""Cross-modal search through the product path: index raster B of a paired config with its encoder (`rsir index`),
then search it with a box over each test tile of raster A, encoded with A's encoder (`rsir search --bbox
--raster A --model M-A.onnx`, or the plugin's box on a layer of the other sensor).

Labelled configs: the share of the top-k hits whose tile centre carries the query's class in the label layer
(hits on unlabelled, mixed tiles count as misses, and their share is printed). Every config: how often the query
box's own place (the B tile at the same pixel position) is the first hit or in the top k - the instance level,
which class-level scores hide when a few "hub" tiles answer every query of a class. Both rasters must
share one pixel grid (as the example configs do), so tile ids line up.

    M=models/crossmodal/gefolki-hr-labelled-supervised
    .venv/bin/python bench/crossmodal_search.py configs/crossmodal/gefolki-hr-labelled-supervised.toml \\
        $M-optical.onnx $M-sar.onnx --mode hash
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
from osgeo import gdal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.encoder import Encoder  # noqa: E402
from core.index.builder import BuildOptions, build_index  # noqa: E402
from core.index.reader import Index  # noqa: E402
from core.queries import query_from_box  # noqa: E402
from core.search import search  # noqa: E402
from training.config import load_config  # noqa: E402
from training.crossmodal_trainer import load_pairs  # noqa: E402
from training.paired_data import label_lookup, open_georeferenced  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="a paired training config (data.kind = paired)")
    ap.add_argument("model_a", help="encoder of raster A's modality (the query side)")
    ap.add_argument("model_b", help="encoder of raster B's modality (the indexed side)")
    ap.add_argument("--queries", default="test", help="split whose A tiles are the query boxes (default: %(default)s)")
    ap.add_argument("-k", type=int, default=10, help="hits per query (default: %(default)s)")
    ap.add_argument("--mode", choices=["float", "hash"], default="hash", help="search mode (default: %(default)s)")
    ap.add_argument("--rerank", type=int, default=0, help="hash mode: re-rank this many candidates by cosine")
    ap.add_argument("--max-invalid", type=float, default=0.5,
                    help="index tiles with up to this share of nodata, as `rsir index` (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-codes", action="store_true",
                    help="index with the model's own codes instead of codes fitted on the archive (`rsir index "
                         "--model-codes`)")
    args = ap.parse_args()

    cfg = load_config(args.config)
    d = cfg.data
    queries = load_pairs(cfg)[args.queries]
    enc_a = Encoder(args.model_a, threads=args.threads)
    ds_a, _ = open_georeferenced(d.root)
    gt_a = ds_a.GetGeoTransform()
    with tempfile.TemporaryDirectory() as tmp:
        report = build_index([d.root_b], args.model_b, os.path.join(tmp, "index"),
                             BuildOptions(tile=d.tile, threads=args.threads, max_invalid=args.max_invalid,
                                          model_codes=args.model_codes))
        index = Index(report.index_dir)
        ds_b, _ = open_georeferenced(d.root_b)
        gt_b = ds_b.GetGeoTransform()
        label_at = None
        if d.labels:
            _keep, label_at = label_lookup(d.labels, d.label_field, ds_b.GetProjection())
        first, in_top, same, found_all = [], [], [], []
        for tid, y in zip(queries.ids, queries.labels):
            x0, y0 = (int(v) for v in tid.split(","))
            xa, ya = gdal.ApplyGeoTransform(gt_a, x0, y0)
            xb, yb = gdal.ApplyGeoTransform(gt_a, x0 + d.tile, y0 + d.tile)
            bbox = (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))
            hits = search(index, query_from_box(index, enc_a, d.root, bbox), args.k, args.mode,
                          rerank=args.rerank)
            if label_at:
                want = queries.class_names[y]
                found = [label_at(*gdal.ApplyGeoTransform(gt_b, h.x + h.w / 2, h.y + h.h / 2)) for h in hits]
                same.append([f == want for f in found])
                found_all.append(found)
            own = [(h.x, h.y) == (x0, y0) for h in hits]
            first.append(bool(own and own[0]))
            in_top.append(any(own))
    print(f"\n{os.path.basename(args.config)}: {len(queries)} {args.queries} boxes on {os.path.basename(d.root)} -> "
          f"index of {report.total_tiles} tiles of {os.path.basename(d.root_b)}, {args.mode} search"
          f"{f' re-ranking {args.rerank}' if args.rerank else ''}, k = {args.k}\n")
    if label_at:
        same = np.array(same, dtype=float)
        labelled = np.array([[f is not None for f in row] for row in found_all])
        print("| P@1 (same class) | P@5 | P@k | hits on unlabelled (mixed) tiles | P@k among labelled hits |\n"
              "|---|---|---|---|---|")
        print(f"| {100 * same[:, 0].mean():.1f} | {100 * same[:, :5].mean():.1f} | {100 * same.mean():.1f} | "
              f"{100 * (1 - labelled.mean()):.1f} % | {100 * same[labelled].mean():.1f} |\n")
    print("| own place first | own place in top k |\n|---|---|")
    print(f"| {100 * np.mean(first):.1f} % | {100 * np.mean(in_top):.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
