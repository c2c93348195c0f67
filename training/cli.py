"""The training-side commands (`rsir train`, `export`, `eval`, `whiten`, `split`, `mosaics`, `spectral-labels`,
`eval-pairs`), registered with core's CLI through the `rsir.commands` entry points (pyproject.toml), so core keeps
working where torch is not installed. Each command parses its arguments into the typed options of the module that
does the work, and prints what that returns."""
from __future__ import annotations

import argparse
import dataclasses
import os

from core.errors import RsirError


def _options(cls, args: argparse.Namespace, **values):
    """`cls` (an options dataclass) from the parsed arguments of the same names, `values` overriding."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in vars(args).items() if k in names}, **values})


def _csv(text: str, kind=str) -> tuple:
    return tuple(kind(v.strip()) for v in text.split(",") if v.strip())


def train_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsir train`."""
    p = subparsers.add_parser(
        "train", help="train a retrieval model from a TOML/YAML config, or run a recipe on a labelled folder",
        description="Train (or resume) a metric-learning retrieval model. Writes OUT_DIR/last.pt (resume point), "
                    "OUT_DIR/best.pt (best validation mAP@100), OUT_DIR/log.csv and OUT_DIR/config.json. "
                    "Rerunning the same command resumes after the last finished epoch. See configs/ for examples. "
                    "With --recipe NAME DATASET --out RUN: the whole chain on a folder of labelled patches (train, "
                    "export, codes, evaluate; configs/recipes/), each step resumed or skipped on a rerun.")
    p.add_argument("config", help="training config (.toml, .yaml or .yml); with --recipe, the DATASET folder "
                                  "(a sub-folder of images per class)")
    p.add_argument("--recipe", help="a recipe name of configs/recipes/ (e.g. patches) or a recipe .toml")
    p.add_argument("--out-dir", "--out", dest="out_dir", help="override the config's out_dir; with --recipe, the "
                                                               "run folder (required)")
    p.add_argument("--epochs", type=int, help="override optim.epochs")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override optim.device")
    p.add_argument("--restart", action="store_true", help="ignore OUT_DIR/last.pt and start again")
    p.add_argument("--export", metavar="ONNX", help="export best.pt to this ONNX file when training ends")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .export import export_checkpoint_files
    from .trainer import fit

    if args.recipe:
        from .recipe import RecipeOptions, run_recipe

        if not args.out_dir:
            raise RsirError("--recipe needs --out RUN: the folder the run's files go to")
        run_recipe(RecipeOptions(args.recipe, args.config, args.out_dir, args.epochs, args.restart, args.quiet))
        return 0
    cfg = load_config(args.config)
    if args.out_dir:
        cfg.out_dir = os.path.abspath(args.out_dir)
    if args.epochs:
        cfg.optim.epochs = args.epochs
    if args.device:
        cfg.optim.device = args.device
    result = fit(cfg, restart=args.restart, quiet=args.quiet)
    print(f"trained {result.epochs_run} epoch(s) in {result.seconds:.0f} s; best val mAP@100 "
          f"{result.best_map:.2f} -> {result.best_checkpoint}")
    if args.export:
        export_checkpoint_files(result.best_checkpoint, args.export)
    return 0


def export_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsir export`."""
    p = subparsers.add_parser(
        "export", help="export a trained checkpoint (or the ImageNet default) to ONNX with rsir metadata",
        description="Export to ONNX with the metadata core/ needs (bands, input size, normalisation, embedding "
                    "size, code bits, class names, training-config hash); onnxruntime is checked against torch "
                    "within 1e-4. Give a checkpoint from `rsir train`, or --pretrained for the untrained "
                    "ImageNet EfficientNet-Lite0 + LSH model.")
    p.add_argument("checkpoint", nargs="?", help="best.pt / last.pt written by `rsir train`")
    p.add_argument("--pretrained", choices=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
                   help="export untrained ImageNet features with a fixed LSH head instead of a checkpoint")
    p.add_argument("--bits", type=int, default=64, help="--pretrained: code length in bits (default: %(default)s)")
    p.add_argument("--input-size", type=int, default=64,
                   help="--pretrained: input side in pixels (default: %(default)s)")
    p.add_argument("--scale", type=float, default=255.0,
                   help="--pretrained: raw values are divided by this before normalisation (default: %(default)s)")
    p.add_argument("--out", required=True, help="output .onnx path (a cross-modal checkpoint writes one file per "
                                                "modality: OUT-<modality>.onnx)")
    p.add_argument("--invariance", choices=["none", "rot4", "d4"], default="none",
                   help="average the outputs over the input's 4 quarter turns (rot4) or those and their mirror "
                        "images (d4) inside the model: tiles and their rotated/flipped copies get the same "
                        "embedding and code, at 4x / 8x the encoding time (default: %(default)s)")
    p.add_argument("--general-branch", type=float, default=0.0, metavar="WEIGHT",
                   help="concatenate the untrained ImageNet network's features (PCA-reduced, fitted on the training "
                        "images) to the trained embedding with this weight (0-1): keeps what training narrowed away, "
                        "for land uses no training set named; the checkpoint must have model.frozen_blocks, whose "
                        "blocks both branches share (default: off)")
    p.add_argument("--general-dims", type=int, default=128, help="--general-branch: PCA dimensions (default: "
                                                                 "%(default)s)")
    p.add_argument("--general-block", type=int, default=0, metavar="N",
                   help="--general-branch: pool block N's output instead of the network's head (mid-level features "
                        "carry better to unseen land uses; default: the head)")
    p.add_argument("--general-scale", type=float, default=1.0, metavar="FACTOR",
                   help="--general-branch: the branch sees the input resized by FACTOR (bilinear, inside the model; "
                        "1.5 gains on unseen aerial land uses at ~2x the encoding time; default: %(default)s)")
    p.add_argument("--general-views", type=int, choices=[1, 2, 4], default=1,
                   help="--general-branch: average its pooled features over this many quarter turns of the input "
                        "(default: %(default)s)")
    p.add_argument("--general-also", default="", metavar="BACKBONE:BLOCK",
                   help="--general-branch: a second untrained ImageNet network's pooled block features join the "
                        "branch's before its PCA, read from the same input (e.g. efficientnet_lite0:13; needs "
                        "--general-block)")
    p.add_argument("--general-also-scale", type=float, default=0.0, metavar="FACTOR",
                   help="--general-also: the second network's input scale (default: --general-scale)")
    p.add_argument("--general-also-views", type=int, choices=[1, 2, 4], default=0,
                   help="--general-also: the second network's quarter turns (default: --general-views)")
    p.add_argument("--int8", metavar="ONNX", help="also write an int8 copy here (check it with rsir eval)")
    p.add_argument("--calibration", type=int, default=256, metavar="N",
                   help="--int8: calibrate activation ranges on N images of the checkpoint's training split "
                        "(static quantisation, faster on CPU); 0 = weights only (dynamic), the only choice with "
                        "--pretrained (default: %(default)s)")
    _half_weights_option(p)
    p.set_defaults(func=_run_export)


def _half_weights_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--half-weights", action="store_true",
                   help="store the float model's weights in float16 (half the file; it still computes in float32, "
                        "as fast, embeddings within 4e-5 cosine); the --int8 copy is made from float32 first")


def _run_export(args: argparse.Namespace) -> int:
    from .export import ExportOptions, export_files

    export_files(_options(ExportOptions, args))
    return 0


def eval_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsir eval`."""
    p = subparsers.add_parser(
        "eval", help="mAP@k, P@k, per-class AP, PR and t-SNE plots of a model on a labelled dataset",
        description="Evaluate an ONNX model: queries = --queries split, database = --database split, exact "
                    "ranking. Also scores baselines in the same run: cosine on untrained ImageNet Lite0 features and "
                    "shallow hashing (LSH, PCA-ITQ, supervised KSLSH) of those and/or of the model's own features. "
                    "DATASET is a folder per class (its split.csv is used when present, else "
                    "the per-class 70/10/20 split with --split-seed), a split CSV (path,class,split), or a "
                    "multi-label table (CSV path,labels[,split] with ';' between labels, or JSON): multi-label sets "
                    "also report WMAP@k, NDCG@k (relevant = shares a label) and the classifier's Hamming loss (HL).")
    p.add_argument("model", help="ONNX model exported by `rsir export`")
    p.add_argument("dataset", help="folder per class, or a split CSV")
    p.add_argument("--split", help="split CSV (path,class,split) or multi-label table (path,labels[,split] CSV, "
                                   "or JSON) to use instead of DATASET/split.csv; its paths are relative to DATASET "
                                   "(as `rsir split DATASET --out CSV` writes them) or absolute")
    p.add_argument("--bigearthnet", action="store_true",
                   help="DATASET is a folder of BigEarthNet patches (bands named by the model's rsir.bands)")
    p.add_argument("--split-seed", type=int, default=42, help="seed of the generated split (default: %(default)s)")
    p.add_argument("--queries", default="test", help="query split (default: %(default)s)")
    p.add_argument("--database", default="train", help="database split (default: %(default)s)")
    p.add_argument("-k", type=int, default=100, help="mAP@k cut-off (default: %(default)s)")
    p.add_argument("--bits", default="32,64", help="baseline code lengths (default: %(default)s)")
    p.add_argument("--baseline-features", default="imagenet",
                   help="features the hashing baselines encode: imagenet, model or imagenet,model "
                        "(default: %(default)s)")
    p.add_argument("--no-baselines", action="store_true", help="score the model only")
    p.add_argument("--rotate-queries", type=float, metavar="DEGREES",
                   help="turn every query image by this angle (counter-clockwise; corners filled by reflection) "
                        "before encoding, to measure rotation invariance")
    p.add_argument("--expand", type=int, default=0, metavar="N",
                   help="score the model with query expansion over its N nearest database items, as "
                        "`rsir search --expand N` (default: off)")
    p.add_argument("--out", help="folder for results.json, results.md, pr.png, tsne.png")
    p.add_argument("--cache-dir", default="cache/datasets", help="decoded-image cache ('' = none)")
    p.add_argument("--threads", type=int, help="onnxruntime threads")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalOptions, format_extra, run_eval

    results, k = run_eval(_options(EvalOptions, args, bits=_csv(args.bits, int),
                                   baseline_features=_csv(args.baseline_features)))
    for key, value in results[0].extra.items():
        print(f"{key} = {format_extra(key, value)}")
    print(f"\nmAP@{k} = {results[0].map_k:.2f}")
    return 0


def whiten_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsir whiten`."""
    p = subparsers.add_parser(
        "whiten", help="append within-class whitening, fitted on the labelled training split, to a model",
        description="Encode the model's labelled training split, fit the inverse square root of the pooled "
                    "within-class covariance of its embeddings (LDA's whitening step, every dimension kept) and "
                    "write a copy of the model whose embedding output is whitened and renormalised. The shrinkage "
                    "is chosen on the validation split, and nothing is written if whitening scores worse there. "
                    "Hash codes are unchanged unless --itq-codes replaces them. Not for cross-modal encoders or "
                    "multi-label data.")
    p.add_argument("model", help="ONNX model exported by `rsir export`")
    p.add_argument("dataset", nargs="?",
                   help="the labelled dataset it was trained on: folder per class, or a split CSV (or --config)")
    p.add_argument("--config", help="instead of DATASET: the training config whose data to fit on (a multi-dataset "
                                    "config: every dataset at its own size, classes kept apart)")
    p.add_argument("--no-whitening", action="store_true",
                   help="leave the embedding as it is and only replace the codes (with --itq-codes): PCA-ITQ codes "
                        "of the model's own embedding")
    p.add_argument("--split", help="split CSV (path,class,split) when DATASET is a folder without split.csv; its "
                                   "paths are relative to DATASET (as `rsir split DATASET --out CSV` writes them) or "
                                   "absolute")
    p.add_argument("--split-seed", type=int, default=42, help="seed of the generated split (default: %(default)s)")
    p.add_argument("--fit", default="train", help="split to fit on (default: %(default)s)")
    p.add_argument("--check", default="val", help="split that picks the shrinkage and checks the gain, against "
                                                  "the fit split as database ('' = none; default: %(default)s)")
    p.add_argument("--itq-codes", type=int, default=0, metavar="BITS",
                   help="also replace the model's codes with BITS-bit codes of the whitened embedding: PCA to BITS "
                        "dimensions and an ITQ rotation fitted on the fit split, signs (0 = keep the model's codes; "
                        "default: %(default)s)")
    p.add_argument("--itq-restarts", type=int, default=16, metavar="N",
                   help="--itq-codes: fit ITQ from N random starting rotations and keep the one that scores best on "
                        "--check (default: %(default)s)")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--int8", metavar="ONNX", help="also write an int8 copy here: the model quantised (activation "
                                                  "ranges calibrated on 256 fit-split images), then whitened on its "
                                                  "own embeddings the same way")
    p.add_argument("--force", action="store_true", help="write the model even if whitening scores worse on --check")
    p.add_argument("--shrinkage", type=float, default=None, metavar="S",
                   help="shrink the within-class covariance towards its mean eigenvalue by S (0-1) instead of "
                        "choosing among 0, 0.01, 0.1 on --check: the check split holds the training classes and "
                        "prefers the least, while classes nobody trained on gain from more (docs/results.md)")
    p.add_argument("--cache-dir", default="cache/datasets", help="decoded-image cache ('' = none)")
    p.add_argument("--threads", type=int, help="onnxruntime threads")
    _half_weights_option(p)
    p.set_defaults(func=_run_whiten)


def _run_whiten(args: argparse.Namespace) -> int:
    from .whitening import WhitenOptions, whiten_files

    whiten_files(_options(WhitenOptions, args, whiten=not args.no_whitening))
    return 0


def split_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsir split`."""
    p = subparsers.add_parser(
        "split", help="write a train/val/test split.csv for a folder-per-class dataset",
        description="Per class: file names sorted, shuffled with random.Random(SEED), first 70 %% train, next 10 %% "
                    "val, the rest test (the protocol of Kang et al. and ../shared/data/eurosat_rgb/split.csv).")
    p.add_argument("root", help="dataset folder with one sub-folder per class")
    p.add_argument("--seed", type=int, default=42, help="shuffle seed (default: %(default)s)")
    p.add_argument("--out", help="CSV to write (default: ROOT/split.csv); its paths are relative to ROOT wherever it "
                                 "is written: give ROOT with --split to rsir eval / rsir whiten")
    p.set_defaults(func=_run_split)


def _run_split(args: argparse.Namespace) -> int:
    from collections import Counter

    from .splits import write_dataset_split

    out, rows = write_dataset_split(args.root, args.seed, args.out)
    counts = Counter(r["split"] for r in rows)
    print(f"wrote {out}: {len({r['class'] for r in rows})} classes, {counts['train']} train / {counts['val']} val / "
          f"{counts['test']} test")
    return 0


def mosaics_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsir mosaics`."""
    p = subparsers.add_parser(
        "mosaics", help="make a multi-label dataset of 2x2 mosaics from a single-label split CSV (EuroSAT)",
        description="Each mosaic holds four patches of 1..--max-classes distinct classes drawn from one split of "
                    "SPLIT_CSV; its label set is those classes. Writes OUT/<split>/NNNNNN.png and OUT/labels.csv "
                    "(path,labels,split), the table `rsir train` (data.kind = label_table) and `rsir eval` read.")
    p.add_argument("split_csv",
                   help="single-label split CSV (path,class,split), e.g. ../shared/data/eurosat_rgb/split.csv")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=8000, help="mosaics from the train split (default: %(default)s)")
    p.add_argument("--val", type=int, default=1000, help="mosaics from the val split (default: %(default)s)")
    p.add_argument("--test", type=int, default=2000, help="mosaics from the test split (default: %(default)s)")
    p.add_argument("--max-classes", type=int, default=3, help="most distinct classes per mosaic (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    p.set_defaults(func=_run_mosaics)


def _run_mosaics(args: argparse.Namespace) -> int:
    from core.progress import Progress

    from .multilabel_data import make_eurosat_mosaics

    if not os.path.isfile(args.split_csv):
        raise RsirError(f"{args.split_csv}: no such split CSV")
    if not 1 <= args.max_classes <= 4:
        raise RsirError(f"--max-classes must be 1 to 4 (a mosaic has four cells), got {args.max_classes}")
    counts = {s: n for s, n in (("train", args.train), ("val", args.val), ("test", args.test)) if n > 0}
    bar = Progress("mosaics", sum(counts.values()), "mosaic")
    table = make_eurosat_mosaics(args.split_csv, args.out, counts, args.seed, args.max_classes,
                                 progress=lambda done, total: bar.update(1))
    bar.close()
    print(f"wrote {table}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def spectral_labels_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsir spectral-labels`."""
    p = subparsers.add_parser(
        "spectral-labels", help="a rule-based land-cover label layer (water / vegetation / bare) per tile of a scene",
        description="Classify each pixel by rules on its bands and write one square per tile of the --tile grid "
                    "(from the raster's origin, as `rsir train` cuts it) whose majority class covers --min-share of "
                    "it: a label layer (data.labels, field `class`) for scenes without a land-cover map. Mixed "
                    "tiles get none. --rules ndvi (green, red, NIR bands): water by NDWI, then dense vegetation, "
                    "sparse vegetation, bare or built by NDVI. --rules rgb (red, green, blue; orthophotos): "
                    "vegetation by the green share G/(R+G+B), split into dark and light by brightness, else "
                    "non-vegetation.")
    p.add_argument("raster", help="raster or band-stack spec (.json) holding the rule set's bands")
    p.add_argument("--bands", required=True,
                   help="the three bands, names or 1-based numbers: ndvi: green,red,NIR (e.g. B03,B04,B08); "
                        "rgb: red,green,blue (e.g. 1,2,3)")
    p.add_argument("--rules", choices=["ndvi", "rgb"], default="ndvi", help="rule set (default: %(default)s)")
    p.add_argument("--tile", type=int, required=True, help="tile side in pixels of the raster (data.tile)")
    p.add_argument("--min-share", type=float, default=0.6,
                   help="least share of a tile's pixels its class must cover (default: %(default)s)")
    p.add_argument("--water-ndwi", type=float, default=0.0, help="ndvi: water above this NDWI (default: %(default)s)")
    p.add_argument("--dense-ndvi", type=float, default=0.5,
                   help="ndvi: dense vegetation above this NDVI (default: %(default)s)")
    p.add_argument("--sparse-ndvi", type=float, default=0.2,
                   help="ndvi: sparse vegetation above this NDVI, bare or built below (default: %(default)s)")
    p.add_argument("--green-share", type=float, default=0.37,
                   help="rgb: vegetation where G/(R+G+B) exceeds this (default: %(default)s)")
    p.add_argument("--dark", type=float, default=0.49,
                   help="rgb: dark vegetation below this mean brightness, as a fraction of --scale "
                        "(default: %(default)s)")
    p.add_argument("--scale", type=float, default=255.0,
                   help="rgb: the raw value of full brightness (default: %(default)s)")
    p.add_argument("--out", required=True, help="output GeoPackage (layer `labels`, fields class, share)")
    p.set_defaults(func=_run_spectral_labels)


def _run_spectral_labels(args: argparse.Namespace) -> int:
    from core.archive.sources import parse_band_list
    from core.progress import Progress

    from .spectral_labels import SpectralRules, write_spectral_labels

    if args.tile < 1:
        raise RsirError(f"--tile must be at least 1 px, got {args.tile}")
    rules = SpectralRules(args.rules, args.water_ndwi, args.dense_ndvi, args.sparse_ndvi, args.green_share,
                          args.dark, args.scale)
    bar = Progress("labelling", unit="tile")
    counts = write_spectral_labels(args.raster, parse_band_list(args.bands), args.out, args.tile, args.min_share,
                                   rules, bar.set)
    bar.close()
    print(f"wrote {args.out}: {sum(counts.values())} labelled tiles (" +
          ", ".join(f"{c} {n}" for c, n in counts.items()) + ")")
    return 0


def eval_pairs_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsir eval-pairs`."""
    p = subparsers.add_parser(
        "eval-pairs", help="cross-modal mAP@k (A->B, B->A) of exported encoders on the paired tiles of a config",
        description="Cut the paired tiles of CONFIG's [data] (data.kind = paired), encode each modality with its "
                    "ONNX encoder through core/ and rank A->B and B->A (cross-modal), next to the untrained "
                    "ImageNet features of both. Labelled pairs: queries = --queries split, database = train, "
                    "relevant = same class, and A->A and B->B (uni-modal) as well. Unlabelled pairs: queries and "
                    "database = the --queries split, the relevant item is the query's own partner.")
    p.add_argument("config", help="the training config whose [data] cuts the pairs")
    p.add_argument("models", nargs=2, help="the two exported encoders (any order; matched by rsir.modality)")
    p.add_argument("--queries", default="test", help="query split (default: %(default)s)")
    p.add_argument("-k", type=int, default=100, help="mAP@k cut-off (default: %(default)s)")
    p.add_argument("--out", help="folder for results.json and results.md")
    p.add_argument("--threads", type=int, help="onnxruntime threads")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the untrained baseline (ImageNet Lite0 features of both modalities, cosine)")
    p.set_defaults(func=_run_eval_pairs)


def _run_eval_pairs(args: argparse.Namespace) -> int:
    from .crossmodal_eval import PairsEvalOptions, eval_pairs

    results, k = eval_pairs(_options(PairsEvalOptions, args, models=tuple(args.models)))
    for r in results[:2]:
        print(f"mAP@{k} ({r.name}) = {r.map_k:.2f}")
    return 0
