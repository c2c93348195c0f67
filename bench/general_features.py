"""Probe: which untrained ImageNet features carry best to classes no model trained on (issue 24).

    .venv/bin/python bench/general_features.py --sizes eurosat_rgb:96 aid:150 aid:224 --taps 15 17 19 21 0
    .venv/bin/python bench/general_features.py --sizes eurosat_rgb:96 aid:224 --taps 15 17 19 0 --dims 320 --views 2 \
        --trained models/md/A.onnx --also efficientnet_lite0:13 --only 17-mean+lite0:13-mean   # the default's branch

Reads the generalization suite's images (bench/generalization.py: EuroSAT, AID seen 15, AID unseen 15), runs the
untrained EfficientNet-Lite2 (--backbone) once per dataset and input size, keeps the pooled output of the blocks
named by --taps (0 = the 1280-d head) with mean and max pooling (--also: another network's blocks too, named
"lite0:13-mean", to join with "+"), and scores each feature set as the default model's general branch would use
it: centred and PCA-reduced on the training rows (EuroSAT train and AID seen train, the datasets weighted alike),
then optionally within-class whitened on the same rows (shrinkage 0.3, as `rsir whiten`). Features are cached in
--cache; the table prints mAP@100 (cosine, test -> train).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.generalization import ROOT, UNSEEN_FILE, suite_tasks  # noqa: E402
from core.adapt.linear_maps import fit_within_class  # noqa: E402
from core.encoder import l2_normalise  # noqa: E402
from training.config import read_class_list  # noqa: E402
from training.datasets import _read_images  # noqa: E402
from training.evaluate import score  # noqa: E402
from training.general_branch import fit_pca  # noqa: E402
from training.generalization import Suite, SuiteDataset  # noqa: E402

POOLS = ["mean", "max", "std"]


def extract(paths: list[str], size: int, taps: list[int], cache: str, batch: int = 64,
            turns: int = 0, backbone: str = "efficientnet_lite2") -> dict[str, np.ndarray]:
    """{f"{tap}-{pool}": (N, C)} pooled features of the untrained `backbone` at `size` px, the images turned by
    `turns` quarter turns; cached."""
    import torch

    from training.models.efficientnet_lite import efficientnet_lite

    key = hashlib.sha256(json.dumps({"paths": paths, "size": size, "taps": taps, "pools": POOLS,
                                      **({"turns": turns} if turns else {}),
                                      **({"backbone": backbone} if backbone != "efficientnet_lite2" else {})}
                                     ).encode()).hexdigest()[:20]
    out_path = os.path.join(cache, f"feat-{key}.npz")
    if os.path.exists(out_path):
        with np.load(out_path) as z:
            return dict(z)
    pixels = _read_images(paths, [1, 2, 3], size, os.path.join(cache, "pixels"))
    net = efficientnet_lite(backbone).eval()
    last = max(t for t in taps) if 0 not in taps else len(net._blocks)
    feats: dict[str, list] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(pixels), batch):
            px = np.rot90(pixels[i:i + batch], turns, axes=(2, 3)) if turns else pixels[i:i + batch]
            x = (torch.from_numpy(np.ascontiguousarray(px).astype(np.float32)) / 255.0 - 0.498) / 0.502
            h = net.prefix(x, 0)
            for b in range(last):
                h = net._blocks[b](h)
                if b + 1 in taps:
                    feats.setdefault(f"{b + 1}-mean", []).append(h.mean(dim=(2, 3)).numpy())
                    feats.setdefault(f"{b + 1}-max", []).append(h.amax(dim=(2, 3)).numpy())
                    feats.setdefault(f"{b + 1}-std", []).append(h.std(dim=(2, 3)).numpy())
            if 0 in taps:
                z = net.act(net._bn1(net._conv_head(h)))
                feats.setdefault("0-mean", []).append(z.mean(dim=(2, 3)).numpy())
                feats.setdefault("0-max", []).append(z.amax(dim=(2, 3)).numpy())
    print(f"  {len(paths)} images at {size} px: {time.perf_counter() - t0:.0f} s", flush=True)
    result = {k: np.concatenate(v) for k, v in feats.items()}
    np.savez(out_path, **result)
    return result


def viewed(paths: list[str], size: int, taps: list[int], cache: str, views: int,
           backbone: str) -> dict[str, np.ndarray]:
    """`extract`'s features summed over the first `views` quarter turns."""
    out = extract(paths, size, taps, cache, backbone=backbone)
    for t in range(1, views):
        turned = extract(paths, size, taps, cache, turns=t, backbone=backbone)
        out = {k: v + turned[k] for k, v in out.items()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "cache", "general_features"))
    ap.add_argument("--sizes", nargs="+", default=["eurosat_rgb:96", "aid:150"], help="DATASET:SIZE")
    ap.add_argument("--taps", nargs="+", type=int, default=[15, 17, 19, 21, 0])
    ap.add_argument("--dims", type=int, default=128)
    ap.add_argument("--trained", help="a model (ONNX) whose embeddings join each feature set as the default's "
                    "trained branch")
    ap.add_argument("--weight", type=float, default=0.5, help="the general part's weight beside --trained")
    ap.add_argument("--combine", nargs="*", default=[], help="extra feature sets: TAP-POOL+TAP-POOL (concatenated, "
                    "each part L2-normalised)")
    ap.add_argument("--views", type=int, default=1, help="average the pooled features over this many quarter turns")
    ap.add_argument("--only", nargs="*", default=[], help="score only these feature sets")
    ap.add_argument("--backbone", default="efficientnet_lite2", help="the untrained network (efficientnet_lite0-2)")
    ap.add_argument("--also", nargs="*", default=[], metavar="BACKBONE:TAP[,TAP]",
                    help="features of another untrained network joined to each set (concatenated, each part "
                         "L2-normalised), read at the same sizes and views, e.g. efficientnet_lite0:13")
    ap.add_argument("--also-sizes", nargs="*", default=[], metavar="DATASET:SIZE",
                    help="--also networks read these datasets at this size instead (e.g. aid:150)")
    ap.add_argument("--also-views", type=int, default=0, help="--also networks' quarter turns (default: --views)")
    args = ap.parse_args()
    also_sizes = {n: int(v) for n, v in (a.split(":") for a in args.also_sizes)}
    os.makedirs(args.cache, exist_ok=True)
    datasets = [SuiteDataset("eurosat_rgb", os.path.join(args.data, "eurosat_rgb")),
                SuiteDataset("aid", os.path.join(args.data, "aid"))]
    aid_classes = sorted(d for d in os.listdir(datasets[1].root) if os.path.isdir(os.path.join(datasets[1].root, d)))
    unseen = tuple(read_class_list(UNSEEN_FILE))
    tasks = suite_tasks(aid_classes, unseen, 1000, 5000)
    suite = Suite(datasets, tasks, os.path.join(ROOT, "cache", "generalization"))  # the suite's cached embeddings
    by_ds: dict[str, list[int]] = {}
    for spec in args.sizes:
        name, size = spec.split(":")
        by_ds.setdefault(name, []).append(int(size))
    # one size per dataset per combination: every pairing of the EuroSAT and AID sizes asked for
    feats = {}
    for name, sizes in by_ds.items():
        it = suite.items(name)
        rows = suite._needed(name)
        paths = [it.paths[i] for i in rows]
        for s in sizes:
            feats[(name, s)] = viewed(paths, s, args.taps, args.cache, args.views, args.backbone)
            for extra in args.also:
                other, taps = extra.split(":")
                short = other.removeprefix("efficientnet_")
                more = viewed(paths, also_sizes.get(name, s), [int(t) for t in taps.split(",")], args.cache,
                              args.also_views or args.views, other)
                feats[(name, s)].update({f"{short}:{k}": v for k, v in more.items()})
    keys = list(next(iter(feats.values())).keys()) + args.combine
    if args.only:
        keys = args.only
    trained = None
    if args.trained:
        from core.encoder import Encoder
        from training.generalization import Contender

        enc = Encoder(args.trained, batch_size=64)
        trained = {n: suite._embed(Contender("t", args.trained), enc, n, enc.info.encode_size(suite.native(n)))[0]
                   for n in ("eurosat_rgb", "aid")}
    print("| features | EuroSAT px | AID px | PCA: EuroSAT | AID seen | AID unseen | + whitening: EuroSAT | AID seen "
          "| AID unseen |")
    print("|---|---|---|---|---|---|---|---|---|")
    for es in by_ds["eurosat_rgb"]:
        for asz in by_ds["aid"]:
            for key in keys:
                cells = evaluate(suite, tasks, {"eurosat_rgb": feats[("eurosat_rgb", es)],
                                                "aid": feats[("aid", asz)]}, key, args.dims, unseen,
                                 trained, args.weight)
                print(f"| {key} | {es} | {asz} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)
    return 0


def features_of(f: dict[str, np.ndarray], key: str) -> np.ndarray:
    """A feature set by name: TAP-POOL, "sqrt:" first for signed square roots, "+" to concatenate."""
    parts = []
    for k in key.split("+"):
        root = k.startswith("sqrt:")
        v = f[k.removeprefix("sqrt:")].astype(np.float64)
        parts.append(l2_normalise(np.sign(v) * np.sqrt(np.abs(v)) if root else v))
    return np.concatenate(parts, axis=1)


def evaluate(suite: Suite, tasks, feats: dict[str, dict[str, np.ndarray]], key: str, dims: int,
             unseen: tuple[str, ...], trained: dict[str, np.ndarray] | None = None, weight: float = 0.5) -> list[float]:
    """mAP@100 of EuroSAT, AID seen, AID unseen after PCA, then after PCA + within-class whitening. With `trained`
    (a model's embeddings per dataset, rows as `_needed`), the PCA-reduced features are concatenated to them as the
    default's general branch is (`weight` theirs), before the whitening."""
    x, train_rows, train_y, train_w, picks_of = {}, [], [], [], {}
    offset = 0
    for name in ("eurosat_rgb", "aid"):
        it = suite.items(name)
        needed = suite._needed(name)
        x[name] = features_of(feats[name], key)
        labels = it.labels()
        picks = [i for i, r in enumerate(needed) if it.splits[r] == "train" and
                 (name != "aid" or it.classes[r] not in unseen)]
        picks_of[name] = picks
        train_rows.append(x[name][picks])
        train_y.append(labels[needed[picks]] + offset)
        train_w.append(np.full(len(picks), 1.0 / len(picks)))
        offset += 1000
    train = np.concatenate(train_rows)
    y = np.concatenate(train_y)
    w = np.concatenate(train_w)
    mean, proj = fit_pca(train, dims, weights=w)
    red = {n: l2_normalise((v - mean) @ proj) for n, v in x.items()}
    if trained is not None:
        red = {n: l2_normalise(np.concatenate([weight * v, (1 - weight) * l2_normalise(trained[n])], axis=1))
               for n, v in red.items()}
    white = fit_within_class(np.concatenate([red[n][picks_of[n]] for n in ("eurosat_rgb", "aid")]), y, 0.3,
                             weights=w)
    wred = {n: white.apply(v) for n, v in red.items()}
    out = []
    for emb in (red, wred):
        for t in tasks:
            if t.name == "AID all 30":
                continue
            q, db = suite.picks(t)
            needed = suite._needed(t.dataset)
            where = {r: i for i, r in enumerate(needed)}
            it = suite.items(t.dataset)
            labels = it.labels()
            e = emb[t.dataset].astype(np.float32)
            r = score("float", "float", 0, e[[where[i] for i in q]], e[[where[i] for i in db]], labels[q], labels[db],
                      it.class_names, min(100, len(db)))
            out.append(r.map_k)
    return out


if __name__ == "__main__":
    sys.exit(main())
