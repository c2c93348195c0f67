"""How much class supervision on top of a trained model's frozen, whitened embedding adds: a linear probe (the
class separability the embedding holds), the embedding concatenated with the probe's class posteriors, and a
supervised 32-bit projection (CSQ-style: each class pulled to a Hadamard hash centre) against ITQ-32.

    .venv/bin/python bench/frozen_heads.py MODEL.onnx ../shared/data/eurosat_rgb [--bits 32]

One encoding of train / val / test; everything is fitted on train, val is printed to choose by, test beside it
(queries -> train, mAP@100). A second table leaves each class in turn out of the whitening and probe fits and
searches with that class's test images: what these supervised steps do to land cover they were not fitted on
(the network itself saw every class). Offline only: nothing here is appended to a model (docs/results.md says
why).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.encoder import Encoder, l2_normalise, pack_signs  # noqa: E402
from training.datasets import load_folder, model_band_indices  # noqa: E402
from training.evaluate import pm1, score  # noqa: E402
from training.whitening import ITQ_RESTARTS, choose, choose_itq, fit_within_class  # noqa: E402

SPLITS = ("train", "val", "test")


def hadamard_centres(classes: int, bits: int) -> np.ndarray:
    """(classes, bits) +-1 rows of a Sylvester Hadamard matrix: any two differ in bits / 2 places."""
    h = np.ones((1, 1))
    while len(h) < max(classes, bits):
        h = np.block([[h, h], [h, -h]])
    return h[:classes, :bits]


def fit_centre_projection(x: np.ndarray, y: np.ndarray, init_matrix: np.ndarray, init_mean: np.ndarray,
                          centres: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Affine map x -> logits trained full-batch with binary cross-entropy of tanh(logits) towards each item's class
    centre (Yuan et al., CVPR 2020), started from the ITQ projection. Returns (matrix (D, bits), bias (bits,))."""
    import torch

    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], centres.shape[1])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(init_matrix.T.copy()))
        lin.bias.copy_(torch.from_numpy(-init_mean @ init_matrix))
    xt, target = torch.from_numpy(x), torch.from_numpy((centres[y] + 1) / 2).float()
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy((torch.tanh(lin(xt)) + 1) / 2, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy()


def fused(white: np.ndarray, posterior: np.ndarray, alpha: float) -> np.ndarray:
    """The whitened embedding with `alpha` x the probe's class posteriors appended, L2-normalised."""
    return l2_normalise(np.hstack([white, alpha * posterior]).astype(np.float32))


def left_out_table(emb: dict, y: dict, names: list[str], alphas=(1.0, 2.0)) -> None:
    """Mean over classes c of test(c) -> train mAP@100 with whitening and probe fitted on train without c."""
    from sklearn.linear_model import LogisticRegression

    rows: dict[str, list[float]] = {}
    for c in range(len(names)):
        keep = y["train"] != c
        whitening = fit_within_class(emb["train"][keep], y["train"][keep], 0.0)
        white = {s: whitening.apply(emb[s]) for s in ("train", "test")}
        probe = LogisticRegression(C=10, max_iter=3000).fit(white["train"][keep], y["train"][keep])
        post = {s: probe.predict_proba(white[s]) for s in white}
        q = y["test"] == c
        variants = {"float, plain": (l2_normalise(emb["test"]), l2_normalise(emb["train"])),
                    "float, whitened": (white["test"], white["train"])}
        for a in alphas:
            variants[f"float, whitened + {a:g} x class posteriors"] = (fused(white["test"], post["test"], a),
                                                                       fused(white["train"], post["train"], a))
        for name, (qv, db) in variants.items():
            r = score(name, "float", 0, qv[q], db, y["test"][q], y["train"], names, 100)
            rows.setdefault(name, []).append(r.map_k)
    print("\nEach class left out of the whitening and probe fits; its test images -> train:")
    print("| search | " + " | ".join(names) + " | mean |")
    print("|---|" + "---|" * (len(names) + 1))
    for name, maps in rows.items():
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in maps) + f" | {np.mean(maps):.2f} |", flush=True)


def main() -> int:
    from sklearn.linear_model import LogisticRegression

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="ONNX model exported by `rsir export` (not yet whitened)")
    ap.add_argument("dataset", help="folder per class with split.csv (e.g. ../shared/data/eurosat_rgb)")
    ap.add_argument("--bits", type=int, default=32, help="code length of the hash rows")
    ap.add_argument("--cache-dir", default="cache/datasets", help="decoded-image cache of training/ ('' = none)")
    args = ap.parse_args()

    enc = Encoder(args.model, batch_size=256)
    sets = load_folder(args.dataset, model_band_indices(enc.info.bands), enc.info.input_size,
                       args.cache_dir or None, splits=SPLITS)
    y = {s: sets[s].labels for s in SPLITS}
    names = sets["train"].class_names
    emb = {s: enc.encode(sets[s].pixels)[0] for s in SPLITS}
    whitening, _ = choose(emb["train"], sets["train"], emb["val"], sets["val"])
    white = {s: whitening.apply(emb[s]) for s in SPLITS}

    def row(name: str, vectors: dict, bits: int = 0) -> None:
        cells = []
        for split in ("val", "test"):
            q, db = vectors[split], vectors["train"]
            if bits:
                q, db = pm1(pack_signs(q), bits), pm1(pack_signs(db), bits)
            r = score(name, "hash" if bits else "float", bits, q, db, y[split], y["train"], names, 100)
            cells += [f"{r.map_k:.2f}", f"{r.precision[1]:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

    print(f"{os.path.basename(args.model)}: queries -> {len(y['train'])} train items, whitening shrinkage "
          f"{whitening.shrinkage:g}")
    for c in (0.1, 1.0, 10.0):
        probe = LogisticRegression(C=c, max_iter=3000).fit(white["train"], y["train"])
        acc = [100 * float((probe.predict(white[s]) == y[s]).mean()) for s in ("val", "test")]
        print(f"linear probe C={c:g}: accuracy val {acc[0]:.2f}, test {acc[1]:.2f}")
    print("| search | val mAP@100 | val P@1 | test mAP@100 | test P@1 |")
    print("|---|---|---|---|---|")
    row("float, whitened", white)
    posterior = {s: probe.predict_proba(white[s]) for s in SPLITS}  # C = 10
    for alpha in (0.3, 1.0, 2.0):
        row(f"float, whitened + {alpha:g} x class posteriors (probe C=10)",
            {s: fused(white[s], posterior[s], alpha) for s in SPLITS})
    itq, report = choose_itq(white["train"], y["train"], white["val"], y["val"], args.bits, names, ITQ_RESTARTS)
    row(f"Hamming, ITQ-{args.bits} (seed {report['itq_seed']} chosen on val)",
        {s: itq.logits(white[s]) for s in SPLITS}, args.bits)
    centres = hadamard_centres(len(names), args.bits)
    for steps in (100, 300, 1000):
        matrix, bias = fit_centre_projection(white["train"], y["train"], itq.matrix, itq.mean, centres, steps)
        row(f"Hamming, {args.bits} bits pulled to class centres, {steps} steps from ITQ",
            {s: white[s] @ matrix + bias for s in SPLITS}, args.bits)
    left_out_table(emb, y, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
