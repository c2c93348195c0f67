"""`rsir eval-pairs`: cross-modal retrieval of two exported encoders (one per modality) on the co-registered
tiles a paired training config cuts, through core/'s encoder, next to untrained ImageNet features and chance."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from core.encoder import Encoder
from core.errors import RsirError
from core.metrics import same_place_ranks, same_place_summary

from .config import load_config
from .crossmodal_trainer import cross_modal_results, imagenet_pair_features, load_pairs
from .evaluate import pm1, results_table, write_report


@dataclass
class PairsEvalOptions:
    """What `rsir eval-pairs` scores: two exported encoders on the paired tiles a config cuts."""

    config: str
    models: tuple[str, str]
    queries: str = "test"
    k: int = 100
    out: str | None = None
    threads: int | None = None
    no_baselines: bool = False


def eval_pairs(opts: PairsEvalOptions, log=print) -> tuple[list, int]:
    """Cross-modal (and, labelled, uni-modal) mAP@k of the encoders, next to untrained ImageNet features and
    chance; prints the table, writes the report folder; returns the results and k."""
    cfg = load_config(opts.config)
    if cfg.data.kind != "paired":
        raise RsirError(f"{opts.config}: data.kind must be paired, got {cfg.data.kind!r}")
    encoders = {}
    for path in opts.models:
        enc = Encoder(path, threads=opts.threads, batch_size=256)
        encoders[enc.info.modality] = enc
    mods = [cfg.data.modality, cfg.data.modality_b]
    if sorted(encoders) != sorted(mods):
        raise RsirError(f"the models are {sorted(encoders)} encoders; {opts.config} pairs {mods}")
    if encoders[mods[0]].info.shared_space != encoders[mods[1]].info.shared_space:
        raise RsirError(f"{opts.models[0]} and {opts.models[1]}: not exported from the same cross-modal model "
                        "(rsir.shared_space differs)")
    sets = load_pairs(cfg)
    queries = sets[opts.queries]
    database = sets["train"] if queries.labelled else queries
    pix = {mods[0]: lambda s: s.a, mods[1]: lambda s: s.b}
    encoded = {m: (encoders[m].encode(pix[m](queries)), encoders[m].encode(pix[m](database))) for m in mods}
    k = min(opts.k, len(database))
    # unlabelled, a query's own tile is its only relevant item: uni-modal search would score the query itself
    results = cross_modal_results({m: (q[0], db[0]) for m, (q, db) in encoded.items()}, queries.labels,
                                  database.labels, queries.class_names, k, uni_modal=queries.labelled)
    if all(encoders[m].info.has_hash for m in mods):
        # hashing models: the binary index ranks by Hamming distance of the codes, so score that too
        bits = encoders[mods[0]].info.code_bits
        codes = {m: (pm1(q[1], bits), pm1(db[1], bits)) for m, (q, db) in encoded.items()}
        for r in cross_modal_results(codes, queries.labels, database.labels, queries.class_names, k,
                                     uni_modal=queries.labelled, bits=bits):
            r.name = f"{r.name} (Hamming, {bits} bits)"
            results.append(r)
    if not opts.no_baselines:
        # same channels and scale as each encoder reads, through the untrained ImageNet network of both
        base = {m: tuple(imagenet_pair_features(pix[m](s), encoders[m].info.scale) for s in (queries, database))
                for m in mods}
        for r in cross_modal_results(base, queries.labels, database.labels, queries.class_names, k,
                                     uni_modal=queries.labelled):
            r.name = f"ImageNet Lite0 (untrained): {r.name}"
            results.append(r)
        # the floor to read the rest against: with unbalanced classes it is far from 1 / classes
        rng = np.random.default_rng(0)
        noise = {m: (rng.normal(size=(len(queries), 16)), rng.normal(size=(len(database), 16))) for m in mods}
        chance = cross_modal_results(noise, queries.labels, database.labels, queries.class_names, k)[0]
        chance.name = "chance (random ranking)"
        results.append(chance)
    log(f"\n{len(queries)} {opts.queries} pairs -> {len(database)} "
          f"{'train pairs (same class relevant)' if queries.labelled else 'the same pairs (partner relevant)'}\n")
    log(results_table(results, k))
    # instance level: does a tile find the other sensor's tile of the same place? (class-level mAP hides hub
    # tiles that answer every query with the right class)
    places = {"model": {m: encoded[m][0][0] for m in mods}}
    if not opts.no_baselines:
        places["ImageNet Lite0 (untrained)"] = {m: base[m][0] for m in mods}  # L2-normalised already
    same_place = same_place_rows(places, mods)
    log(f"\nsame place: each of the {len(queries)} {opts.queries} tiles against the other sensor's "
        f"{len(queries)} {opts.queries} tiles, its own partner relevant\n")
    log(same_place_table(same_place))
    if opts.out:
        write_report(results, opts.out, k, {"models": [os.path.abspath(m) for m in opts.models],
                                            "config": os.path.abspath(opts.config), "queries": opts.queries,
                                            "same_place": same_place})
        log(f"\nwrote {opts.out}/results.json, results.md")
    return results, k


def same_place_rows(features: dict[str, dict[str, np.ndarray]], mods: list[str]) -> list[dict]:
    """Same-place recall@1/@10 and median rank, both directions, of each feature set ({name: {modality: rows}},
    row i of every modality the same place)."""
    rows = []
    for name, emb in features.items():
        for src, dst in ((mods[0], mods[1]), (mods[1], mods[0])):
            rows.append({"features": name, "direction": f"{src} -> {dst}",
                         **same_place_summary(same_place_ranks(emb[src], emb[dst]))})
    return rows


def same_place_table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("features", "direction")]
    lines = ["| features | direction | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    lines += [f"| {r['features']} | {r['direction']} | " + " | ".join(f"{r[k]:.1f}" for k in keys) + " |"
              for r in rows]
    return "\n".join(lines)
