"""Within-class whitening and PCA-ITQ codes of the whitened embedding (what `rsir whiten [--itq-codes B]` builds
into a model) against the model's own float search and codes, at several code lengths, on a labelled dataset.

    .venv/bin/python bench/whiten_codes.py MODEL.onnx ../shared/data/eurosat_rgb [--bits 16,32,64,128]

One encoding of the train / val / test splits; every row is scored on the same embeddings (queries -> train,
mAP@100 and P@1). The whitening and the ITQ rotations are fitted on train only; val is what `rsir whiten` uses to
choose the shrinkage and the ITQ starting rotation and to check the gain, test is reported beside it.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core.encoder import Encoder, pack_signs  # noqa: E402
from training.datasets import load_folder, model_band_indices  # noqa: E402
from training.evaluate import pm1, score  # noqa: E402
from training.whitening import ITQ_RESTARTS, choose, choose_itq  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="ONNX model exported by `rsir export` (not yet whitened)")
    ap.add_argument("dataset", help="folder per class with split.csv (e.g. ../shared/data/eurosat_rgb)")
    ap.add_argument("--bits", default="16,32,64,128", help="ITQ code lengths")
    ap.add_argument("--cache-dir", default="cache/datasets", help="decoded-image cache of training/ ('' = none)")
    ap.add_argument("--itq-restarts", type=int, default=ITQ_RESTARTS,
                    help="ITQ starting rotations, the best on val kept, as `rsir whiten` does (default: %(default)s)")
    args = ap.parse_args()

    enc = Encoder(args.model, batch_size=256)
    info = enc.info
    bands = model_band_indices(info.bands)
    sets = load_folder(args.dataset, bands, info.input_size, args.cache_dir or None, splits=("train", "val", "test"))
    emb = {s: enc.encode(sets[s].pixels) for s in sets}
    y = {s: sets[s].labels for s in sets}
    names = sets["train"].class_names
    whitening, report = choose(emb["train"][0], sets["train"], emb["val"][0], sets["val"])
    white = {s: whitening.apply(emb[s][0]) for s in sets}

    def row(name: str, kind: str, bits: int, vectors: dict) -> None:
        cells = []
        for split in ("val", "test"):
            q, db = vectors[split], vectors["train"]
            if kind == "hash":
                q, db = pm1(q, bits), pm1(db, bits)
            r = score(name, kind, bits, q, db, y[split], y["train"], names, 100)
            cells += [f"{r.map_k:.2f}", f"{r.precision[1]:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

    print(f"{os.path.basename(args.model)}: queries -> {len(y['train'])} train items; whitening shrinkage "
          f"{whitening.shrinkage:g} (chosen on val)")
    print("| search | val mAP@100 | val P@1 | test mAP@100 | test P@1 |")
    print("|---|---|---|---|---|")
    row(f"float {info.embedding_dim}-d", "float", 0, {s: emb[s][0] for s in sets})
    row(f"float {info.embedding_dim}-d, whitened", "float", 0, white)
    own = "hash head" if info.has_hash else "embedding signs"
    row(f"Hamming, the model's {info.effective_code_bits}-bit codes ({own})", "hash", info.effective_code_bits,
        {s: emb[s][1] for s in sets})
    row(f"Hamming, signs of the whitened embedding ({info.embedding_dim} bits)", "hash", info.embedding_dim,
        {s: pack_signs(white[s]) for s in sets})
    for bits in [int(b) for b in args.bits.split(",") if b.strip()]:
        if bits > info.embedding_dim:
            continue
        for kind, vectors in (("whitened", white), ("plain", {s: emb[s][0] for s in sets})):
            codes, report = choose_itq(vectors["train"], y["train"], vectors["val"], y["val"], bits, names,
                                       args.itq_restarts)
            row(f"Hamming, PCA-ITQ-{bits} of the {kind} embedding (ITQ seed {report['itq_seed']})", "hash", bits,
                {s: pack_signs(codes.logits(vectors[s])) for s in sets})
    return 0


if __name__ == "__main__":
    sys.exit(main())
