"""Unlabelled adaptation by self-supervision (issue 26, `rsir adapt`'s last candidate): a SimCLR-style contrast of
two augmented views of each archive image, learning a linear map on the default model's frozen embedding (a head,
what a CPU can fit in minutes), then every query and archive embedding mapped by it. Measured on AID's 15 classes
no shipped model trains on, the archive being their train images (no labels used), queries their test images.

    .venv/bin/python bench/adapt_ssl.py [MODEL.onnx] [--views 2] [--epochs 40]

Views: a random crop of 40-100 % of the image's area resized to the model's input, a random 90-degree rotation and
flip, brightness x U(0.8, 1.2); encoded once (cached in cache/adapt_ssl/), the head trained on them with NT-Xent
(temperature 0.1) plus an L2 pull towards the identity (`--pulls`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.feedback import ROOT, suite_for  # noqa: E402
from core.default_model import default_model_path  # noqa: E402
from core.encoder import Encoder, l2_normalise  # noqa: E402
from core.metrics import map_at_k  # noqa: E402
from training.generalization import Contender  # noqa: E402


def views(paths: list[str], size: int, n_views: int, seed: int) -> np.ndarray:
    """(len(paths) * n_views, 3, size, size) float32 augmented views, raw 0-255, image-major."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((len(paths) * n_views, 3, size, size), np.float32)
    for i, p in enumerate(paths):
        img = Image.open(p).convert("RGB")
        w, h = img.size
        for v in range(n_views):
            area = rng.uniform(0.4, 1.0) * w * h
            side = int(min(w, h, np.sqrt(area)))
            x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
            crop = np.asarray(img.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR), np.float32)
            crop = np.rot90(crop, rng.integers(4))
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            out[i * n_views + v] = np.clip(crop * rng.uniform(0.8, 1.2), 0, 255).transpose(2, 0, 1)
    return out


def train_head(view_emb: np.ndarray, n_views: int, pull: float, epochs: int, temperature: float = 0.1,
               seed: int = 0) -> np.ndarray:
    """A (D, D) map trained with NT-Xent between the views of each image, pulled towards the identity."""
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(l2_normalise(view_emb).reshape(-1, n_views, view_emb.shape[1]))
    d = x.shape[2]
    w = torch.nn.Parameter(torch.eye(d))
    opt = torch.optim.Adam([w], lr=1e-3)
    n = len(x)
    for _ in range(epochs):
        for idx in torch.randperm(n).split(256):
            a, b = torch.nn.functional.normalize(x[idx, 0] @ w, dim=1), torch.nn.functional.normalize(x[idx, 1] @ w,
                                                                                                          dim=1)
            z = torch.cat([a, b])
            sim = z @ z.T / temperature
            sim.fill_diagonal_(-1e9)
            target = torch.cat([torch.arange(len(a)) + len(a), torch.arange(len(a))])
            loss = torch.nn.functional.cross_entropy(sim, target) + pull * ((w - torch.eye(d)) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w.detach().numpy()


def score(q: np.ndarray, q_y: np.ndarray, db: np.ndarray, db_y: np.ndarray) -> float:
    sims = l2_normalise(q) @ l2_normalise(db).T
    order = np.argsort(-sims, axis=1)[:, :100]
    rel = (db_y[order] == q_y[:, None])
    return 100 * map_at_k(rel, np.bincount(db_y)[q_y], 100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=default_model_path())
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "cache", "generalization"))
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--pulls", default="0.01,0.1,1")
    ap.add_argument("--task", default="AID unseen 15", help="a generalization-suite task (its database = archive)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    suite, tasks = suite_for(args.data, args.cache)
    task = next(t for t in tasks if t.name == args.task)
    enc = Encoder(args.model)
    size = enc.info.encode_size(suite.native(task.dataset))
    emb, _ = suite._embed(Contender(os.path.basename(args.model), args.model), enc, task.dataset, size)
    where = {row: i for i, row in enumerate(suite._needed(task.dataset))}
    it = suite.items(task.dataset)
    labels = it.labels()
    q_rows, db_rows = suite.picks(task)
    q, db = emb[[where[r] for r in q_rows]], emb[[where[r] for r in db_rows]]
    q_y, db_y = labels[q_rows], labels[db_rows]
    cache = os.path.join(ROOT, "cache", "adapt_ssl",
                         f"views-{enc.info.sha256[:12]}-{task.name.replace(' ', '_')}-{size}-{args.views}.npy")
    if os.path.exists(cache):
        view_emb = np.load(cache)
    else:
        paths = [it.paths[r] for r in db_rows]
        print(f"encoding {args.views} views of {len(paths)} archive images at {size} px ...", flush=True)
        parts = []
        for start in range(0, len(paths), 256):
            parts.append(enc.encode(views(paths[start:start + 256], size, args.views, start))[0])
        view_emb = np.concatenate(parts)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        np.save(cache, view_emb)
    print(f"model {os.path.basename(args.model)}; {task.name}: {len(q)} queries, {len(db)} archive images; "
          f"{args.views} views each ({time.perf_counter() - t0:.0f} s so far)\n")
    print("| embedding | mAP@100 test -> train |")
    print("|---|---|")
    print(f"| as shipped | {score(q, q_y, db, db_y):.2f} |")
    for pull in (float(p) for p in args.pulls.split(",")):
        w = train_head(view_emb, args.views, pull, args.epochs)
        print(f"| SimCLR head, pull {pull:g}, {args.epochs} epochs | {score(q @ w, q_y, db @ w, db_y):.2f} |",
              flush=True)
    print(f"\n({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
