"""`rsir eval`: retrieval quality of an exported model on a labelled dataset, next to untrained baselines.

Queries = one split (test), database = another (train); every method ranks the whole database by exact
similarity (cosine for float embeddings, Hamming for codes - as +-1 vectors, where the dot product is
bits - 2 * Hamming), so the numbers are those of exact search in core/. Reports mAP@k (normalised by
min(k, R), as Kang et al.), P@k, per-class AP, a PR-curve PNG and a t-SNE PNG."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from core.archive.values import ValueScaling
from core.encoder import Encoder, l2_normalise
from core.expansion import expand_codes, expand_embeddings
from core.fileio import atomic_path, write_json
from core.metrics import average_precision_at_k, hamming_loss, ndcg_at_k, weighted_average_precision

from .datasets import ImageSet


@dataclass
class MethodResult:
    name: str
    kind: str  # "float" or "hash"
    bits: int
    map_k: float
    precision: dict[int, float]
    per_class_ap: dict[str, float]
    pr: tuple[np.ndarray, np.ndarray] = field(repr=False, default=None)
    extra: dict[str, float] = field(default_factory=dict)  # multi-label: WMAP@k, NDCG@k, HL

    def row(self) -> dict:
        return {"method": self.name, "kind": self.kind, "bits": self.bits, "map": self.map_k,
                "precision": self.precision, "per_class_ap": self.per_class_ap, **self.extra}


def pm1(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packed codes -> +-1 float vectors (dot product = bits - 2 * Hamming distance)."""
    return np.unpackbits(codes, axis=1)[:, :bits].astype(np.float32) * 2 - 1


def _shared_matrix(q_y: np.ndarray, db_y: np.ndarray) -> np.ndarray:
    """(nq, n) labels shared by each query and database item: 0/1 for class indices, counts for multi-hot rows."""
    if q_y.ndim == 2:
        return np.asarray(q_y, np.int32) @ np.asarray(db_y, np.int32).T
    return (db_y[None, :] == q_y[:, None]).astype(np.int32)


def rank(q: np.ndarray, db: np.ndarray, q_y: np.ndarray, db_y: np.ndarray, k: int, pr_points: int = 200,
         chunk: int = 256):
    """Exact ranking of the whole database for every query: (shared labels of the top k (nq, k), the best
    possible top-k shared counts (nq, k; multi-label only, else None), relevant items per query, mean precision
    and recall at `pr_points` ranks spread over the database). Relevant = shares a label (single-label: same
    class). Ties (common in Hamming space) break by database order, as faiss's flat indexes do; `score` shuffles
    the database first so that order is random."""
    n = len(db)
    marks = np.unique(np.geomspace(1, n, pr_points).astype(np.int64)) - 1
    top, ideal, n_rel = [], [], []
    prec, rec = np.zeros(len(marks)), np.zeros(len(marks))
    for i in range(0, len(q), chunk):
        scores = q[i:i + chunk] @ db.T
        order = np.argsort(-scores, axis=1, kind="stable")
        shared = _shared_matrix(q_y[i:i + chunk], db_y)
        ranked = np.take_along_axis(shared, order, axis=1)
        top.append(ranked[:, :k])
        if q_y.ndim == 2:  # NDCG's ideal ranking: only multi-label counts vary
            ideal.append(-np.sort(-shared, axis=1)[:, :k])
        rel_count = (shared > 0).sum(axis=1)
        n_rel.append(rel_count)
        hits = np.cumsum(ranked > 0, axis=1)[:, marks]
        prec += (hits / (marks + 1)).sum(axis=0)
        rec += (hits / np.maximum(rel_count, 1)[:, None]).sum(axis=0)
    return (np.concatenate(top), np.concatenate(ideal) if ideal else None, np.concatenate(n_rel), prec / len(q),
            rec / len(q))


def tie_order(n: int) -> np.ndarray:
    """The seeded shuffle of a database of n items that every ranking here runs over, so ties fall in random but
    reproducible order."""
    return np.random.default_rng(0).permutation(n)


def score(name: str, kind: str, bits: int, q: np.ndarray, db: np.ndarray, q_y: np.ndarray, db_y: np.ndarray,
          class_names: list[str], k: int) -> MethodResult:
    """mAP@k, P@k and per-class AP (a class's queries: those carrying it); for multi-label sets also WMAP@k and
    NDCG@k (core/metrics.py)."""
    # Rank a seeded shuffle of the database: ties (whole buckets of equal codes at 16-32 bits) then break in random
    # order. In the dataset's own order (EuroSAT's folders are listed class by class) the lowest class would come
    # first in every tie: -3 mAP@100 and P@1 55 % instead of 98 % for a 32-bit model.
    perm = tie_order(len(db))
    shared, ideal, n_rel, prec, rec = rank(q, db[perm], q_y, db_y[perm], k)
    rel = shared > 0
    ap = average_precision_at_k(rel, n_rel, k)
    members = q_y.astype(bool) if q_y.ndim == 2 else q_y[:, None] == np.arange(len(class_names))[None, :]
    per_class = {c: float(100 * ap[members[:, i]].mean()) for i, c in enumerate(class_names) if members[:, i].any()}
    p_at = {p: float(100 * rel[:, :p].mean()) for p in sorted({1, 10, 50, 100, k}) if p <= k}
    extra = {}
    if q_y.ndim == 2:
        # WMAP is in shared labels (ACG counts them), so it can exceed 1: reported as is, not as a percentage
        extra[f"WMAP@{k}"] = float(weighted_average_precision(shared, n_rel, k).mean())
        extra[f"NDCG@{k}"] = float(100 * ndcg_at_k(shared, ideal, k).mean())
    return MethodResult(name, kind, bits, float(100 * ap.mean()), p_at, per_class, (prec, rec), extra)


def nearest(q: np.ndarray, db: np.ndarray, n: int, chunk: int = 256) -> np.ndarray:
    """Indices (nq, n) of each query's n highest-scoring database rows by dot product, ties broken in the seeded
    random order `score` ranks in."""
    perm = tie_order(len(db))
    shuffled = db[perm]
    out = [np.argsort(-(q[i:i + chunk] @ shuffled.T), axis=1, kind="stable")[:, :n] for i in range(0, len(q), chunk)]
    return perm[np.concatenate(out)]


def expand_query_set(q_e: np.ndarray, q_c: np.ndarray, db_e: np.ndarray, db_c: np.ndarray, n: int, bits: int,
                     chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Query expansion as `rsir search --expand n` does it (core/expansion.py): embeddings from their n nearest
    database embeddings (cosine), codes from their n nearest database codes (Hamming)."""
    near_f = nearest(q_e, db_e, n)
    near_h = nearest(pm1(q_c, bits), pm1(db_c, bits), n)
    e = [expand_embeddings(q_e[i:i + chunk], db_e[near_f[i:i + chunk]]) for i in range(0, len(q_e), chunk)]
    c = [expand_codes(q_c[i:i + chunk], db_c[near_h[i:i + chunk]]) for i in range(0, len(q_c), chunk)]
    return np.concatenate(e), np.concatenate(c)


def imagenet_features(images: np.ndarray, scale: float, batch: int = 256) -> np.ndarray:
    """Pooled ImageNet EfficientNet-Lite0 features (1280-d) of RGB pixels, the untrained baseline."""
    import torch

    from .models.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD, efficientnet_lite

    net = efficientnet_lite("efficientnet_lite0", pretrained=True).eval()
    mean = torch.tensor(IMAGENET_MEAN)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD)[None, :, None, None]
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(ValueScaling(scale).apply(images[i:i + batch]))
            out.append(net.features((x - mean) / std).numpy())
    return np.concatenate(out)


def baseline_codes(db_f: np.ndarray, q_f: np.ndarray, bits: int, db_y: np.ndarray | None = None) -> dict[str, tuple]:
    """LSH, PCA-ITQ and, given database labels, supervised KSLSH codes (training/hash_baselines.py) of float
    features, as +-1 vectors. Every method is fitted on the database features only."""
    from .hash_baselines import KSLSH, itq_codes, lsh_codes

    out = {}
    for name, fn in ((f"LSH-{bits}", lsh_codes), (f"PCA-ITQ-{bits}", itq_codes)):
        if name.startswith("PCA") and bits > db_f.shape[1]:
            continue  # PCA cannot give more dimensions than the features have
        db_c, q_c = fn(db_f, db_f, q_f, bits=bits)
        out[name] = (pm1(db_c, bits), pm1(q_c, bits))
    if db_y is not None:
        kslsh = KSLSH(bits).fit(db_f, db_y)
        # supervised with the database's own labels: not an untrained baseline, and named so
        out[f"KSLSH-{bits} (supervised by the database labels)"] = (pm1(kslsh.encode(db_f), bits),
                                                                    pm1(kslsh.encode(q_f), bits))
    return out


BASELINE_FEATURES = ("imagenet", "model")


def evaluate(model_path: str, queries: ImageSet, database: ImageSet, k: int = 100, baselines: bool = True,
             baseline_bits=(32, 64), threads: int | None = None, log=print,
             baseline_features=("imagenet",), expand: int = 0) -> list[MethodResult]:
    """Score the model (float and its sign codes) and, with `baselines`, shallow hashing (LSH, PCA-ITQ, KSLSH)
    of the untrained ImageNet features ("imagenet", plus their cosine ranking) and/or of the model's own float
    embeddings ("model"). `expand` > 0: the model's queries are expanded with that many nearest database items
    first (the baselines are not)."""
    enc = Encoder(model_path, threads=threads, batch_size=256)
    info = enc.info
    if database.pixels.shape[1:] != (info.channels, info.input_size, info.input_size):
        raise ValueError(f"dataset pixels {database.pixels.shape[1:]} do not fit {model_path} "
                         f"({info.channels} bands at {info.input_size} px)")
    unknown = set(baseline_features) - set(BASELINE_FEATURES)
    if unknown:
        raise ValueError(f"unknown baseline features {sorted(unknown)}; choose from {BASELINE_FEATURES}")
    classes, q_y, db_y = database.class_names, queries.labels, database.labels
    k = min(k, len(database))
    t0 = time.perf_counter()
    db_e, db_c = enc.encode(database.pixels)
    q_e, q_c = enc.encode(queries.pixels)
    log(f"encoded {len(database)} + {len(queries)} images with {os.path.basename(model_path)} "
        f"in {time.perf_counter() - t0:.1f} s")
    bits = info.effective_code_bits
    label = info.method or "model"
    q_ex, q_cx, qe_note = q_e, q_c, ""
    if expand:
        q_ex, q_cx = expand_query_set(q_e, q_c, db_e, db_c, expand, bits)
        qe_note = f", query expansion {expand}"
    results = [score(f"{label} (float {info.embedding_dim}-d{qe_note})", "float", 0, q_ex, db_e, q_y, db_y,
                     classes, k),
               score(f"{label} (hash {bits} bits{qe_note})", "hash", bits, pm1(q_cx, bits), pm1(db_c, bits),
                     q_y, db_y, classes, k)]
    if q_y.ndim == 2 and "class_logits" in info.outputs:
        if info.class_names != classes:
            log(f"Hamming loss skipped: the model's classes {info.class_names} are not the dataset's {classes}")
        else:  # sigmoid > 0.5 <=> logit > 0
            results[0].extra["HL"] = 100 * hamming_loss(enc.class_logits(queries.pixels) > 0, q_y)
    if not baselines:
        return results
    features = {}
    # the untrained baseline reads the images at the size the model does: say it, it moves the score a lot
    imagenet = f"ImageNet Lite0 untrained, {database.pixels.shape[-1]} px"
    if "imagenet" in baseline_features and info.channels == 3:
        t0 = time.perf_counter()
        db_f = imagenet_features(database.pixels, info.scale)
        q_f = imagenet_features(queries.pixels, info.scale)
        log(f"ImageNet baseline features in {time.perf_counter() - t0:.1f} s")
        results.append(score(f"{imagenet} (float 1280-d)", "float", 0, l2_normalise(q_f), l2_normalise(db_f),
                             q_y, db_y, classes, k))
        features[imagenet] = (db_f, q_f)
    elif "imagenet" in baseline_features:
        log(f"ImageNet baselines skipped: they need 3 bands, {model_path} takes {info.channels}")
    if "model" in baseline_features:
        features[f"{label} features +"] = (db_e, q_e)
    for prefix, (db_f, q_f) in features.items():
        for b in baseline_bits:
            supervised = db_y if db_y.ndim == 1 else None  # KSLSH learns from single labels
            for name, (db_b, q_b) in baseline_codes(db_f, q_f, b, supervised).items():
                results.append(score(f"{prefix} {name}", "hash", b, q_b, db_b, q_y, db_y, classes, k))
    return results


def format_extra(key: str, value: float) -> str:
    """WMAP (in shared labels) with 3 decimals; NDCG and HL are percentages."""
    return f"{value:.3f}" if key.startswith("WMAP") else f"{value:.2f}"


def results_table(results: list[MethodResult], k: int) -> str:
    extras = list(dict.fromkeys(key for r in results for key in r.extra))  # multi-label columns
    head = (f"| method | mAP@{k} | " + "".join(f"{e} | " for e in extras)
            + f"P@1 | P@10 | P@{k} |\n|---|---|---|---|---|"
            + "---|" * len(extras))
    lines = [f"| {r.name} | {r.map_k:.2f} | " + "".join(f"{format_extra(e, r.extra[e])} | " if e in r.extra else "- | "
                                                     for e in extras)
             + f"{r.precision.get(1, float('nan')):.2f} | {r.precision.get(10, float('nan')):.2f} | "
               f"{r.precision.get(k, float('nan')):.2f} |" for r in results]
    return "\n".join([head] + lines)


def per_class_table(result: MethodResult, k: int) -> str:
    lines = [f"| class | AP@{k} |", "|---|---|"]
    lines += [f"| {c} | {v:.2f} |" for c, v in result.per_class_ap.items()]
    return "\n".join(lines)


def plot_pr(results: list[MethodResult], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for r in results:
        prec, rec = r.pr
        ax.plot(rec, prec, label=f"{r.name} ({r.map_k:.1f})", linestyle="-" if r.kind == "float" else "--")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_tsne(embeddings: np.ndarray, labels: np.ndarray, class_names: list[str], path: str, title: str,
              max_points: int = 2000, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(labels), min(max_points, len(labels)), replace=False))
    xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, max(2, len(pick) // 4))
              ).fit_transform(embeddings[pick])
    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    cmap = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
    for i, c in enumerate(class_names):
        sel = labels[pick] == i
        ax.scatter(xy[sel, 0], xy[sel, 1], s=4, color=cmap(i % cmap.N), label=c)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, markerscale=3, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(results: list[MethodResult], out_dir: str, k: int, meta: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "results.json"), {**meta, "k": k, "results": [r.row() for r in results]})
    with atomic_path(os.path.join(out_dir, "results.md")) as tmp, open(tmp, "w") as f:
        f.write(results_table(results, k) + "\n\n" + per_class_table(results[0], k) + "\n")


@dataclass
class EvalOptions:
    """What `rsir eval` scores: a model on a labelled dataset's queries against its database."""

    model: str
    dataset: str
    split: str | None = None
    bigearthnet: bool = False
    split_seed: int = 42
    queries: str = "test"
    database: str = "train"
    k: int = 100
    bits: tuple[int, ...] = (32, 64)
    baseline_features: tuple[str, ...] = ("imagenet",)
    no_baselines: bool = False
    rotate_queries: float | None = None
    expand: int = 0
    out: str | None = None
    cache_dir: str = "cache/datasets"
    threads: int | None = None


def run_eval(opts: EvalOptions, log=print) -> tuple[list[MethodResult], int]:
    """Score `opts.model` (and the baselines), print the tables, write the report folder; returns the results and
    the k they were cut at."""
    from core.errors import RsirError

    from .labelled_data import labelled_sets

    info = Encoder(opts.model).info
    sets = labelled_sets(opts.dataset, info, (opts.queries, opts.database), opts.split, opts.split_seed,
                         opts.cache_dir or None, opts.bigearthnet)
    queries, database = sets[opts.queries], sets[opts.database]
    if not len(queries) or not len(database):
        raise RsirError(f"{opts.dataset}: split {opts.queries!r} has {len(queries)} images and "
                        f"{opts.database!r} {len(database)}; both must be non-empty")
    if opts.rotate_queries:
        import dataclasses

        from .augment import rotate_pixels

        queries = dataclasses.replace(queries, pixels=rotate_pixels(queries.pixels, opts.rotate_queries))
    try:
        results = evaluate(opts.model, queries, database, opts.k, not opts.no_baselines, opts.bits, opts.threads,
                           log=log, baseline_features=opts.baseline_features, expand=opts.expand)
    except ValueError as exc:
        raise RsirError(f"{opts.model}: {exc}") from None
    k = min(opts.k, len(database))
    turned = f", turned {opts.rotate_queries:g} degrees" if opts.rotate_queries else ""
    log(f"\n{len(queries)} queries ({opts.queries}{turned}) -> {len(database)} database ({opts.database})\n")
    log(results_table(results, k))
    log("\n" + per_class_table(results[0], k))
    if opts.out:
        title = f"{os.path.basename(opts.model)} on {os.path.basename(os.path.normpath(opts.dataset))}"
        write_report(results, opts.out, k, {"model": os.path.abspath(opts.model), "dataset": opts.dataset,
                                            "queries": opts.queries, "database": opts.database,
                                            "rotate_queries": opts.rotate_queries or 0.0, "expand": opts.expand})
        plot_pr(results, os.path.join(opts.out, "pr.png"), f"PR curves, {title}")
        emb, _ = Encoder(opts.model, threads=opts.threads, batch_size=256).encode(queries.pixels)
        colour = queries.labels.argmax(axis=1) if queries.multi_label else queries.labels  # first label
        plot_tsne(emb, colour, queries.class_names, os.path.join(opts.out, "tsne.png"),
                  f"t-SNE of {opts.queries} embeddings, {title}"
                  + (" (colour: first label)" if queries.multi_label else ""))
        log(f"\nwrote {opts.out}/results.json, results.md, pr.png, tsne.png")
    return results, k
