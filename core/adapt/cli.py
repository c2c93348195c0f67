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
        with Progress("re-encoding the index", unit="tile") as bar:
            model = undo(args.index, progress=bar.set)
        print(f"index {args.index} is back to {model}, as before it learned from labels")
        return 0
    if not args.labels or not args.out:
        raise RsirError("give LABELS (one or more label layers) and --out M.onnx, or --undo")
    with Progress("re-encoding the index", unit="tile") as bar:
        adapter = learn(args.index, args.out, args.labels, args.field, shrinkage=args.shrinkage,
                        reencode=not args.no_reencode, progress=bar.set, mix=args.mix)
    print(f"fitted on {adapter.describe()}; wrote {args.out}")
    if not args.no_reencode:
        print(f"index {args.index} re-encoded with it (searches use it from now on; `rsir learn-labels "
              f"{args.index} --undo` puts back the model and vectors it had before learning)")
    return 0


def adapt_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsir adapt`."""
    from .self_supervised import DEFAULT_EPOCHS, DEFAULT_PULL, DEFAULT_SAMPLE

    p = subparsers.add_parser(
        "adapt", help="adapt the index's model to the archive without labels (self-supervised) and re-encode it",
        description="Two augmented views of a sample of the index's tiles (crops, rotations, flips, brightness) "
                    "encoded by the index's model train a linear head by contrast (SimCLR's NT-Xent), pulled towards "
                    "the identity; it is appended to the model with new PCA-ITQ codes and the index re-encoded from "
                    "its stored vectors. For archives unlike the model's training data: +1.4 mAP@100 on AID classes "
                    "the default never saw, -0.2 to -0.5 on its own training domains (docs/results.md). "
                    "`rsir learn-labels IDX --undo` goes back.")
    p.add_argument("index", metavar="IDX", help="index folder")
    p.add_argument("--out", default=None, help="the adapted model (default: IDX-adapted.onnx beside the index)")
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                   help="tiles whose views train it (default %(default)s)")
    p.add_argument("--pull", type=float, default=DEFAULT_PULL,
                   help="weight of the pull towards the model as it is (default %(default)s)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="training passes (default %(default)s)")
    p.add_argument("--no-reencode", action="store_true", help="only write the model; leave the index as it is")
    p.set_defaults(func=_run_adapt)


def _run_adapt(args: argparse.Namespace) -> int:
    from ..progress import Progress
    from .self_supervised import adapt, default_out

    out = args.out or default_out(args.index)
    with Progress("encoding views, then re-encoding the index", unit="tile") as bar:
        adapt(args.index, out, sample=args.sample, pull=args.pull, epochs=args.epochs,
              reencode=not args.no_reencode, progress=bar.set)
    print(f"wrote {out}" + ("" if args.no_reencode else
                            f"; index {args.index} re-encoded with it (`rsir learn-labels {args.index} --undo` goes "
                            "back)"))
    return 0
