"""Write a model's training-data prior for learning from labels (core/adapt/prior.py): the within-class statistics
of its training data's embeddings, beside the model as <model>.prior.npz.

    .venv/bin/python tools/label_prior.py default_model/lite2_multidomain_general448v2.onnx

The training data: the train-split rows of the generalization suite's EuroSAT and AID seen-15 tasks (the shipped
default's two training domains; bench/generalization.py, embeddings cached in cache/generalization/), classes
namespaced by dataset, each dataset weighing the same.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.feedback import ROOT, suite_for, training_data  # noqa: E402
from core.adapt.linear_maps import class_stats  # noqa: E402
from core.adapt.prior import save_prior  # noqa: E402
from core.encoder import Encoder  # noqa: E402
from training.generalization import Contender  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "cache", "generalization"))
    args = ap.parse_args()
    suite, tasks = suite_for(args.data, args.cache)
    enc = Encoder(args.model)
    parts = training_data(suite, Contender(os.path.basename(args.model), args.model), enc, tasks)
    emb = np.concatenate([e for e, _ in parts])
    labels = [lab for _, labs in parts for lab in labs]
    weights = np.concatenate([np.full(len(e), 1.0 / len(parts) / len(e)) for e, _ in parts])
    names = sorted(set(labels))
    stats = class_stats(emb, np.array([names.index(v) for v in labels]), weights)
    about = {"datasets": {labs[0].split(":")[0]: len(e) for e, labs in parts}, "classes": len(names)}
    path = save_prior(args.model, enc.info.sha256, stats, about)
    print(f"wrote {path}: {len(emb)} training embeddings of {len(names)} classes ({about['datasets']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
