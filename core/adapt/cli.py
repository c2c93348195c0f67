"""`rsir learn-labels`: registered through the rsir.commands entry points (pyproject.toml)."""
from __future__ import annotations

import argparse


def learn_labels_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsir learn-labels`."""
    p = subparsers.add_parser(
        "learn-labels", help="fit the index's model to an analyst's label layers and re-encode the index",
        description="Label layers over an index (the plugin's Export labels, `rsir search --labels-out`, or any "
                    "polygons with a class field: a tile takes the class of the polygon under its centre) fit a "
                    "within-class whitening of the index's stored embeddings and new PCA-ITQ codes of the whitened "
                    "embedding. Both are appended to the index's model (written to --out), and the index is "
                    "re-encoded by the same map as its next generation: no image is read again. The vectors from "
                    "before learning are kept (IDX/base/): learning again fits on them with every label so far, "
                    "and --undo puts them back.")
    p.add_argument("index", metavar="IDX", help="index folder")
    p.add_argument("labels", nargs="*", metavar="LABELS", help="label layers (GeoPackage, shapefile, GeoJSON, ...)")
    p.add_argument("--field", default="class", help="the class field of the label layers (default: %(default)s)")
    p.add_argument("--shrinkage", type=float, default=0.3,
                   help="shrink the within-class covariance towards its mean eigenvalue by this share (0-1; "
                        "default %(default)s, chosen in docs/results.md)")
    p.add_argument("--mix", type=float, default=0.5,
                   help="weight of the model's training data (its statistics shipped as <model>.prior.npz), "
                        "relative to all the labels together; 0: the labels alone (default %(default)s, chosen in "
                        "docs/results.md; models without that file: the labels alone)")
    p.add_argument("--out", help="the adapted model (.onnx)")
    p.add_argument("--no-reencode", action="store_true", help="only write the model; leave the index as it is")
    p.add_argument("--undo", action="store_true",
                   help="put back the vectors and model the index had before it learned from labels")
    p.set_defaults(func=_run_learn_labels)


def _run_learn_labels(args: argparse.Namespace) -> int:
    from ..errors import RsirError
    from ..progress import Progress
    from .from_labels import learn, undo

    if args.undo:
        if args.labels or args.out:
            raise RsirError("--undo takes the index alone (no LABELS, no --out)")
        bar = Progress("re-encoding the index", unit="tile")
        try:
            model = undo(args.index, progress=bar.set)
        finally:
            bar.close()
        print(f"index {args.index} is back to {model}, as before it learned from labels")
        return 0
    if not args.labels or not args.out:
        raise RsirError("give LABELS (one or more label layers) and --out M.onnx, or --undo")
    bar = Progress("re-encoding the index", unit="tile")
    try:
        adapter = learn(args.index, args.out, args.labels, args.field, shrinkage=args.shrinkage,
                        reencode=not args.no_reencode, progress=bar.set, mix=args.mix)
    finally:
        bar.close()
    print(f"fitted on {adapter.describe()}; wrote {args.out}")
    if not args.no_reencode:
        print(f"index {args.index} re-encoded with it (searches use it from now on; `rsir learn-labels "
              f"{args.index} --undo` puts back the model and vectors it had before learning)")
    return 0
