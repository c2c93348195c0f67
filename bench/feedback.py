"""Relevance feedback with a simulated analyst (issue 26): for each query, the analyst marks the top 20 hits of
the current ranking relevant or not (from the labels), the query is refined with every mark so far, and the
next ranking is scored; rounds 0 (no feedback) to 3.

    .venv/bin/python bench/feedback.py [MODEL.onnx] [--queries 300] [--grid]

Tasks: the generalization suite's (bench/generalization.py: EuroSAT test -> train, AID test -> train, AID's 15
classes no shipped model trains on), embeddings cached in cache/generalization/. Rankings are exact (a flat scan,
as the product's Flat indexes are): float by cosine, hash by Hamming distance with ties in cosine order (as
`core.search` orders them). The refiners are the product's own (core/feedback.py); the linear refiner's weak
negatives are a fixed sample of the database, as the product samples the index. P@20 counts the marked relevant
hits that stay in the top 20 (the analyst's result list), mAP@100 as everywhere in docs/results.md.

`--learn-mix W1,W2,...` (with `--learn-shrinkage S1,...`) also fits --learn's marks together with the default's
training data (EuroSAT and AID seen 15 train rows, classes namespaced by dataset), weighing W times the marks.

`--grid` also scores other Rocchio weights and linear options on AID unseen (the defaults were chosen there).
`--timing N` instead times one round of each refiner through the product path (`feedback.refine` + `search`) on
a synthetic N-tile index (bench/synthetic_index.py) of the demo scene.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.generalization import UNSEEN_FILE, suite_tasks  # noqa: E402
from core import feedback  # noqa: E402
from core.default_model import default_model_path  # noqa: E402
from core.encoder import Encoder  # noqa: E402
from core.metrics import average_precision_at_k  # noqa: E402
from training.config import read_class_list  # noqa: E402
from training.generalization import Contender, Suite, SuiteDataset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK_TOP = 20
ROUNDS = 3


def rank(emb: np.ndarray, code: np.ndarray, db_emb: np.ndarray, db_bits: np.ndarray, mode: str,
         k: int = 100) -> np.ndarray:
    """Top-k database rows: float by cosine; hash by Hamming distance, ties by cosine."""
    cos = db_emb @ emb
    if mode == "float":
        top = np.argpartition(-cos, k)[:k]
        return top[np.argsort(-cos[top], kind="stable")]
    hamming = (db_bits.shape[1] - db_bits @ feedback.pm1(code[None])[0]) / 2
    order = np.lexsort((-cos, hamming))
    return order[:k]


class Analyst:
    """Marks hits by their labels and runs rounds of one refiner over one task's queries."""

    def __init__(self, q_emb, q_codes, q_labels, db_emb, db_codes, db_labels, mode: str, seed: int = 0):
        self.q_emb, self.q_codes, self.q_labels = q_emb, q_codes, q_labels
        self.db_emb, self.db_codes, self.db_labels = db_emb, db_codes, db_labels
        self.db_bits = feedback.pm1(db_codes)
        self.mode = mode
        self.n_rel = np.bincount(db_labels, minlength=q_labels.max() + 1)[q_labels]
        rng = np.random.default_rng(seed)
        self.background = np.sort(rng.choice(len(db_emb), size=min(256, len(db_emb)), replace=False))

    def rounds(self, i: int, method: str, weights=feedback.RocchioWeights(), options=feedback.LinearOptions(),
               rounds: int = ROUNDS):
        """Query `i`'s rankings, round 0 (no feedback) to `rounds`, each yielded with the marks so far; between
        rounds the analyst marks the top MARK_TOP hits not marked yet, right or wrong by their labels."""
        q, c, label = self.q_emb[i], self.q_codes[i], self.q_labels[i]
        emb, code = q, c
        marked: dict[int, bool] = {}
        for r in range(rounds + 1):
            if r:
                pos = [j for j, ok in marked.items() if ok]
                neg = [j for j, ok in marked.items() if not ok]
                marks = feedback.Marks(self.db_emb[pos], self.db_codes[pos], self.db_emb[neg], self.db_codes[neg])
                if method == "rocchio":
                    emb, code = feedback.rocchio(q, c, marks, weights)
                else:
                    emb, code, _ = feedback.linear(q, c, marks, self.db_emb[self.background],
                                                   self.db_codes[self.background], options)
            ranked = rank(emb, code, self.db_emb, self.db_bits, self.mode)
            yield ranked, dict(marked)
            for j in [j for j in ranked if j not in marked][:MARK_TOP]:  # the analyst marks what is new on top
                marked[int(j)] = bool(self.db_labels[j] == label)

    def run(self, method: str, weights=feedback.RocchioWeights(), options=feedback.LinearOptions(),
            rounds: int = ROUNDS) -> np.ndarray:
        """(rounds + 1, 2) mean P@20 and mAP@100 per round."""
        out = np.zeros((rounds + 1, 2))
        for i in range(len(self.q_emb)):
            for r, (ranked, _) in enumerate(self.rounds(i, method, weights, options, rounds)):
                rel = (self.db_labels[ranked] == self.q_labels[i])[None]
                out[r, 0] += rel[0, :MARK_TOP].mean()
                out[r, 1] += average_precision_at_k(rel, self.n_rel[i:i + 1], 100)[0]
        return 100 * out / len(self.q_emb)


def learned_from_marks(analyst: Analyst, n_queries: int = 10, rounds: int = 2, shrinkage: float = 0.3,
                       seed: int = 0):
    """The analyst refines `n_queries` queries (one per class, the first classes) for `rounds` rounds with the
    linear refiner, exports every mark as labels (relevant: the query's class; not relevant: "other"), and the
    index's vectors are adapted to them (core/adapt/from_labels.py, what `rsir learn-labels` does). Returns
    (a new Analyst over the adapted vectors, the classes that were marked)."""
    from core.adapt.from_labels import fit

    ids, labels, classes = analyst_marks(analyst, n_queries, rounds, seed)
    bits = 8 * analyst.db_codes.shape[1]
    adapter = fit(analyst.db_emb[ids], labels, analyst.db_emb, bits, shrinkage)
    return adapted_analyst(analyst, adapter, analyst.mode), classes, len(ids)


def analyst_marks(analyst: Analyst, n_queries: int = 10, rounds: int = 2, seed: int = 0
                  ) -> tuple[np.ndarray, list[str], list[int]]:
    """(database rows marked, their labels, the classes queried) of `learned_from_marks`' analyst: `n_queries`
    queries (one per class, the first classes) refined `rounds` rounds with the linear refiner in float search;
    relevant marks are labelled with the query's class, the rest "other"."""
    rng = np.random.default_rng(seed)
    classes = list(range(min(n_queries, analyst.q_labels.max() + 1)))
    labels: dict[int, str] = {}
    float_analyst = Analyst(analyst.q_emb, analyst.q_codes, analyst.q_labels, analyst.db_emb, analyst.db_codes,
                            analyst.db_labels, "float")  # the marks come from float search, in either mode
    for k in classes:
        i = int(rng.choice(np.flatnonzero(analyst.q_labels == k)))
        *_, (_, marked) = float_analyst.rounds(i, "linear", rounds=rounds)
        labels.update({j: (f"class {k}" if ok else "other") for j, ok in marked.items()})
    ids = np.array(sorted(labels))
    return ids, [labels[int(j)] for j in ids], classes


def adapted_analyst(analyst: Analyst, adapter, mode: str) -> Analyst:
    """The analyst over the adapter's vectors (queries and database), as the re-encoded index gives them."""
    q_emb, q_codes = adapter.transform(analyst.q_emb)
    db_emb, db_codes = adapter.transform(analyst.db_emb)
    return Analyst(q_emb, q_codes, analyst.q_labels, db_emb, db_codes, analyst.db_labels, mode)


def training_data(suite: Suite, contender: Contender, enc: Encoder, tasks,
                  names: tuple[str, ...] = ("EuroSAT", "AID seen 15")) -> list[tuple[np.ndarray, list[str]]]:
    """The default's training data as labelled embeddings, one (embeddings, labels) per dataset: the database
    (train split) rows of the suite tasks `names`, their classes namespaced by dataset ("aid:Beach") as
    multi-dataset training names them. From the suite's embedding cache (the same rows its tasks read)."""
    out = []
    for name in names:
        task = next(t for t in tasks if t.name == name)
        size = contender.size or enc.info.encode_size(suite.native(task.dataset))
        emb, _ = suite._embed(contender, enc, task.dataset, size)
        where = {row: i for i, row in enumerate(suite._needed(task.dataset))}
        classes = suite.items(task.dataset).classes
        _, db_rows = suite.picks(task)
        out.append((emb[[where[r] for r in db_rows]], [f"{task.dataset}:{classes[r]}" for r in db_rows]))
    return out


def mixed_fit(mark_emb: np.ndarray, mark_labels: list[str], parts: list[tuple[np.ndarray, list[str]]],
              mix: float, background: np.ndarray, bits: int, shrinkage: float):
    """core/adapt/from_labels.py `fit` on the marks plus labelled training data `parts` (one per dataset): the
    training data weighs `mix` times the marks in all (every mark 1; each dataset alike within the training part,
    each of its items alike), `mix` 0 being `fit` itself. Codes: PCA-ITQ of the whitened `background`."""
    from core.adapt.from_labels import LabelAdapter
    from core.adapt.linear_maps import fit_itq, fit_within_class

    emb, labels, weights = [mark_emb], list(mark_labels), [np.ones(len(mark_emb))]
    if mix > 0:
        for e, lab in parts:
            emb.append(e)
            labels += lab
            weights.append(np.full(len(e), mix * len(mark_emb) / len(parts) / len(e)))
    names = sorted(set(labels))
    y = np.array([names.index(v) for v in labels])
    whitening = fit_within_class(np.concatenate(emb), y, shrinkage, np.concatenate(weights))
    white = whitening.apply(background)
    bits = min(bits, white.shape[1] // 8 * 8)
    return LabelAdapter(whitening, fit_itq(white, bits), {n: int(np.sum(y == i)) for i, n in enumerate(names)})


def learn_mix(analysts: dict, parts: list[tuple[np.ndarray, list[str]]], mixes: list[float],
              shrinkages: list[float]) -> None:
    """--learn-mix: `learned_from_marks`' marks (AID unseen 15) fitted together with the default's training data
    `parts` at each weight and shrinkage; the linear refiner's rounds 0-2 on the adapted vectors, the marked
    classes' queries and the others apart."""
    base = analysts[("AID unseen 15", "float")]
    ids, labels, classes = analyst_marks(base)
    sizes = ", ".join(f"{len(e)} {lab[0].split(':')[0]} ({len(set(lab))} classes)" for e, lab in parts)
    print(f"\n--learn's {len(ids)} marks (AID unseen 15) fitted together with the default's training data ({sizes}; "
          "each dataset alike), weighing w times the marks in all; w = 0: the marks alone (rsir learn-labels). "
          "Linear refiner; the 10 marked classes' queries and the 5 others apart")
    print("| vectors | shrinkage | w | mode | queries | P@20 round 0 | 1 | 2 | mAP@100 round 0 | 1 | 2 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    bits = 8 * base.db_codes.shape[1]
    adapters = {}
    for s in shrinkages:
        for w in mixes:
            t0 = time.perf_counter()
            adapters[(s, w)] = mixed_fit(base.db_emb[ids], labels, parts, w, base.db_emb, bits, s)
            print(f"  fit shrinkage {s} w {w}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    for mode in ("float", "hash"):
        shipped = analysts[("AID unseen 15", mode)]
        marked = np.isin(shipped.q_labels, classes)
        runs = [("as shipped", "-", "-", shipped)] + [
            ("adapted", f"{s}", f"{w:g}", adapted_analyst(shipped, adapters[(s, w)], mode))
            for s in shrinkages for w in mixes]
        for name, s, w, a in runs:
            for subset, rows in (("10 marked classes", marked), ("5 other classes", ~marked)):
                sub = Analyst(a.q_emb[rows], a.q_codes[rows], a.q_labels[rows], a.db_emb, a.db_codes, a.db_labels,
                              mode)
                res = sub.run("linear", rounds=2)
                print(f"| {name} | {s} | {w} | {mode} | {subset} | " + " | ".join(f"{v:.1f}" for v in res[:, 0])
                      + " | " + " | ".join(f"{v:.2f}" for v in res[:, 1]) + " |", flush=True)


def task_vectors(suite: Suite, contender: Contender, enc: Encoder, task, queries: int, seed: int = 0):
    """(query emb, codes, labels, database emb, codes, labels) of a suite task, at most `queries` queries."""
    size = contender.size or enc.info.encode_size(suite.native(task.dataset))
    emb, codes = suite._embed(contender, enc, task.dataset, size)
    where = {row: i for i, row in enumerate(suite._needed(task.dataset))}
    labels = suite.items(task.dataset).labels()
    q_rows, db_rows = suite.picks(task)
    if queries and len(q_rows) > queries:
        q_rows = np.sort(np.random.default_rng(seed).choice(q_rows, size=queries, replace=False))
    qi, di = [where[r] for r in q_rows], [where[r] for r in db_rows]
    _, q_lab = np.unique(labels[q_rows], return_inverse=True)
    classes = np.unique(labels[np.concatenate([q_rows, db_rows])])
    remap = {c: i for i, c in enumerate(classes)}
    return (emb[qi], codes[qi], np.array([remap[v] for v in labels[q_rows]]), emb[di], codes[di],
            np.array([remap[v] for v in labels[db_rows]]))


def timing(n: int, model: str) -> None:
    """One round of each refiner through the product path on a synthetic n-tile index."""
    import tempfile

    from bench.synthetic_index import build_synthetic
    from core.index.reader import Index
    from core.queries import query_from_tile
    from core.search import search

    scene = os.path.join(ROOT, "demo", "s2_rgb.json")
    with tempfile.TemporaryDirectory() as tmp:
        build_synthetic(scene, os.path.join(tmp, "idx"), n, model)
        index = Index(os.path.join(tmp, "idx"))
        query = query_from_tile(index, 0)
        hits = search(index, query, k=20)
        rng = np.random.default_rng(0)
        pos = [h.tile_id for h in hits[:8]]
        neg = [h.tile_id for h in hits[8:]] + rng.choice(index.n, 20, replace=False).tolist()
        print(f"| refiner | mode | one round, ms (index of {index.n} tiles; refine + top-20 search) |")
        print("|---|---|---|")
        for method in feedback.METHODS:
            for mode in ("float", "hash"):
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    marks = feedback.Marks.from_index(index, pos, neg)
                    refined = feedback.refine(index, query, marks, method)
                    search(index, refined, k=20, mode=mode)
                    times.append(time.perf_counter() - t0)
                print(f"| {method} | {mode} | {1000 * np.median(times):.0f} |")


def suite_for(data: str, cache: str):
    """(Suite, its tasks): the generalization suite's EuroSAT and AID tasks over `data`, embeddings in `cache`."""
    datasets = [SuiteDataset("eurosat_rgb", os.path.join(data, "eurosat_rgb")),
                SuiteDataset("aid", os.path.join(data, "aid"))]
    aid_classes = sorted(d for d in os.listdir(datasets[1].root) if os.path.isdir(os.path.join(datasets[1].root, d)))
    tasks = suite_tasks(aid_classes, tuple(read_class_list(UNSEEN_FILE)), 1000, 5000)
    return Suite(datasets, tasks, os.path.abspath(cache), log=lambda m: print(m, file=sys.stderr)), tasks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=default_model_path())
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "cache", "generalization"))
    ap.add_argument("--queries", type=int, default=300, help="queries per task (a seeded sample; 0 = all)")
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--hash-grid", action="store_true", help="only the hash refiner's grid")
    ap.add_argument("--learn", action="store_true",
                    help="also: the vectors adapted to the marks of 10 queries (rsir learn-labels), AID unseen")
    ap.add_argument("--learn-mix", default="", metavar="W1,W2,...",
                    help="also: --learn's fit on the marks plus the default's training data (EuroSAT and AID seen "
                         "15 train rows, classes namespaced), weighing W times the marks (0 = the marks alone)")
    ap.add_argument("--learn-shrinkage", default="0.3", metavar="S1,S2,...",
                    help="shrinkages of the --learn-mix fits (default 0.3, rsir learn-labels')")
    ap.add_argument("--tasks", default="", help="comma-separated task names to run (default: all)")
    ap.add_argument("--timing", type=int, default=0, metavar="N")
    args = ap.parse_args()
    if args.timing:
        timing(args.timing, args.model)
        return 0
    t0 = time.perf_counter()
    suite, tasks = suite_for(args.data, args.cache)
    contender = Contender(os.path.basename(args.model), args.model)
    enc = Encoder(args.model)
    print(f"model {args.model}; {args.queries or 'all'} queries per task; the analyst marks the top {MARK_TOP} "
          f"new hits each round\n")
    print("| task | refiner | mode | P@20 round 0 | 1 | 2 | 3 | mAP@100 round 0 | 1 | 2 | 3 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    analysts = {}
    grids = args.grid or args.hash_grid
    for task in tasks:
        if args.tasks and task.name not in args.tasks.split(",") and not (
                (grids or args.learn or args.learn_mix) and task.unseen):
            continue
        vectors = task_vectors(suite, contender, enc, task, args.queries)
        for mode in ("float", "hash"):
            analyst = analysts[(task.name, mode)] = Analyst(*vectors, mode=mode)
            for method in feedback.METHODS:
                res = analyst.run(method)
                print(f"| {task.name} | {method} | {mode} | " + " | ".join(f"{v:.1f}" for v in res[:, 0]) + " | "
                      + " | ".join(f"{v:.2f}" for v in res[:, 1]) + " |", flush=True)
    if args.learn:
        print("\nAfter `rsir learn-labels` on the marks of 10 refined queries (2 rounds each, one query per class of "
              "the first 10), AID unseen 15: the same analyst on the adapted vectors; the 10 marked classes' queries "
              "and the 5 others apart")
        print("| vectors | refiner | mode | queries | P@20 round 0 | 1 | 2 | mAP@100 round 0 | 1 | 2 |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for mode in ("float", "hash"):
            base = analysts[("AID unseen 15", mode)]
            adapted, classes, n_marked = learned_from_marks(base)
            marked = np.isin(base.q_labels, classes)
            for name, a in (("as shipped", base), (f"learned from {n_marked} marks", adapted)):
                for method in feedback.METHODS if name != "as shipped" else ("linear",):
                    for subset, rows in (("10 marked classes", marked), ("5 other classes", ~marked)):
                        sub = Analyst(a.q_emb[rows], a.q_codes[rows], a.q_labels[rows], a.db_emb, a.db_codes,
                                      a.db_labels, mode)
                        res = sub.run(method)
                        print(f"| {name} | {method} | {mode} | {subset} | "
                              + " | ".join(f"{v:.1f}" for v in res[:3, 0]) + " | "
                              + " | ".join(f"{v:.2f}" for v in res[:3, 1]) + " |", flush=True)
    if args.learn_mix:
        learn_mix(analysts, training_data(suite, contender, enc, tasks),
                  [float(w) for w in args.learn_mix.split(",")], [float(v) for v in args.learn_shrinkage.split(",")])
    if args.grid and not args.hash_grid:
        print("\nAID unseen 15, float: P@20 / mAP@100 after 2 rounds")
        analyst = analysts[("AID unseen 15", "float")]
        for a, b, c in ((1, 1, 0.5), (1, 0.75, 0.15), (1, 1, 1), (0, 2, 1), (0.5, 1, 0.5), (0.25, 2, 1),
                        (0.5, 2, 1), (0, 2, 0.5), (0, 2, 1.5)):
            res = analyst.run("rocchio", feedback.RocchioWeights(a, b, c))
            print(f"rocchio a={a} b={b} c={c}: {res[2, 0]:.1f} / {res[2, 1]:.2f}", flush=True)
        for l2 in (0.03, 0.1, 1.0):
            for bw in (0.5, 2.0, 4.0, 8.0):
                res = analyst.run("linear", options=feedback.LinearOptions(l2=l2, background_weight=bw))
                print(f"linear l2={l2} background_weight={bw}: {res[2, 0]:.1f} / {res[2, 1]:.2f}", flush=True)
    if args.grid or args.hash_grid:
        print("\nAID unseen 15, hash: P@20 / mAP@100 after 2 rounds")
        analyst = analysts[("AID unseen 15", "hash")]
        for l2 in (0.1, 1.0, 3.0, 10.0, 30.0):
            res = analyst.run("linear", options=feedback.LinearOptions(l2_codes=l2))
            print(f"linear l2_codes={l2}: {res[2, 0]:.1f} / {res[2, 1]:.2f}", flush=True)
    print(f"\n({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
