"""Within-class whitening of a trained model's embedding, fitted on its labelled training split and appended to
its ONNX graph.

A metric-learning embedding still spreads each class more along some directions than others; whitening by the
pooled within-class covariance of the training embeddings (the first step of LDA, keeping every dimension) makes
those directions count less in the cosine. It is the "learned whitening" of Radenovic et al. (TPAMI 2019) with
class labels in place of matching pairs. The result is a new ONNX model whose `embedding` output is
normalise((normalise(e) - mean) @ P); codes and every other output are unchanged, so hash search is unaffected
and `--rerank` / float search use the whitened embedding.

With `code_bits`, the model's codes are replaced too: PCA to that many dimensions and an ITQ rotation (Gong &
Lazebnik 2011, faiss's ITQTransform) of the whitened embedding, the signs of which are the new codes - hashing by
whitening then thresholding, as LDAHash (Strecha et al., TPAMI 2012) does with learned thresholds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from core.adapt.linear_maps import CodeProjection, Whitening, fit_itq, fit_within_class
from core.adapt.onnx_graph import append_to_onnx
from core.encoder import Encoder, l2_normalise, pack_signs
from core.errors import RsirError

from .datasets import ImageSet
from .evaluate import pm1, score

SHRINKAGES = (0.0, 0.01, 0.1)  # tried on the validation split; without one, UNCHECKED_SHRINKAGE is used
UNCHECKED_SHRINKAGE = 0.01
ITQ_RESTARTS = 16  # ITQ starting rotations tried on the validation split
METADATA_KEY = "rsir.whitening"


def choose_itq(white_train: np.ndarray, train_y: np.ndarray, white_val: np.ndarray | None, val_y: np.ndarray | None,
               bits: int, names: list[str], restarts: int = ITQ_RESTARTS, log=None,
               fit_rows: np.ndarray | None = None) -> tuple[CodeProjection, dict]:
    """ITQ converges to a local optimum that depends on its random starting rotation: on EuroSAT, 16 seeds span
    0.5 mAP@100 at 32 bits and 0.2 at 128, and the validation score tracks the test score (docs/results.md). With
    a validation split, fit seeds 0..`restarts`-1 and keep the one whose codes score best val -> train (Hamming
    mAP@100); without one, seed 0. `fit_rows`: the rows of `white_train` the rotations are fitted on (all)."""
    fit_on = white_train if fit_rows is None else white_train[fit_rows]
    if restarts < 1:
        raise ValueError(f"ITQ restarts must be at least 1, got {restarts}")
    if white_val is None:
        return fit_itq(fit_on, bits, 0), {"itq_seed": 0}
    best, by_seed = None, {}
    for seed in range(restarts):
        codes = fit_itq(fit_on, bits, seed)
        train_codes = pack_signs(codes.logits(white_train))
        m = _hamming_map100(pack_signs(codes.logits(white_val)), val_y, train_codes, train_y, bits, names)
        by_seed[str(seed)] = m
        if log is not None:
            log(f"  ITQ seed {seed + 1}/{restarts}: check Hamming mAP@100 {m:.2f}")
        if best is None or m > best[1]:
            best = (codes, m, seed)
    return best[0], {"itq_seed": best[2], "val_hamming_map100_by_itq_seed": by_seed,
                     "val_hamming_map100_after": best[1]}


def _hamming_map100(q_codes: np.ndarray, q_y: np.ndarray, db_codes: np.ndarray, db_y: np.ndarray, bits: int,
                    names: list[str]) -> float:
    return score("hash", "hash", bits, pm1(q_codes, bits), pm1(db_codes, bits), q_y, db_y, names,
                 min(100, len(db_codes))).map_k


def _map100(queries: np.ndarray, q_y: np.ndarray, database: np.ndarray, db_y: np.ndarray, names: list[str]) -> float:
    return score("float", "float", 0, queries, database, q_y, db_y, names, min(100, len(database))).map_k


def choose(train_e: np.ndarray, train: ImageSet, val_e: np.ndarray | None, val: ImageSet | None,
           shrinkages: tuple[float, ...] = SHRINKAGES, weights: np.ndarray | None = None
           ) -> tuple[Whitening, dict]:
    """Fit on the training embeddings; with a validation split, keep the shrinkage of `shrinkages` that scores the
    best val -> train mAP@100 and report it beside the unwhitened score. (The validation split holds the training
    classes: it prefers the least shrinkage, which is not what serves classes nobody trained on - give one.)"""
    names = list(train.class_names)
    if val is None or not len(val):
        s = shrinkages[0] if len(shrinkages) == 1 else UNCHECKED_SHRINKAGE
        return fit_within_class(train_e, train.labels, s, weights), {"checked_on": None}
    report = {"checked_on": "val", "val_items": len(val),
              "val_map100_before": _map100(l2_normalise(val_e), val.labels, l2_normalise(train_e), train.labels,
                                           names),
              "val_map100_by_shrinkage": {}}
    best = None
    for s in shrinkages:
        w = fit_within_class(train_e, train.labels, s, weights)
        m = _map100(w.apply(val_e), val.labels, w.apply(train_e), train.labels, names)
        report["val_map100_by_shrinkage"][str(s)] = m
        if best is None or m > best[1]:
            best = (w, m)
    report["val_map100_after"] = best[1]
    return best[0], report


def check_gain(model_path: str, report: dict) -> None:
    """Raise unless whitening (and the new codes, if any) scored better than the model on the validation split
    (no split: nothing to check)."""
    if not report["checked_on"]:
        return
    for what, key in (("whitening does", "val_map100"), ("the new codes do", "val_hamming_map100")):
        if f"{key}_after" in report and report[f"{key}_after"] <= report[f"{key}_before"]:
            raise RsirError(f"{model_path}: {what} not help on the validation split (mAP@100 "
                            f"{report[f'{key}_before']:.2f} -> {report[f'{key}_after']:.2f}); nothing written "
                            "(--force writes it anyway)")


def _encode_sets(encoder: Encoder, sets: list[ImageSet], what: str = "",
                 quiet: bool = True) -> tuple[np.ndarray, np.ndarray, ImageSet]:
    """(embeddings, codes, a pixel-less ImageSet of their labels) of one or several labelled sets, each encoded at
    its own image size; the sets' class names must differ (multi-dataset training namespaces them)."""
    from core.progress import Progress

    embs, codes, labels, names = [], [], [], []
    bar = Progress(f"encoding the {what} images".replace("  ", " "), sum(len(s) for s in sets), "img", quiet=quiet)
    for s in sets:
        done = bar.done
        e, c = encoder.encode(s.pixels, progress=lambda d, t, b=done: bar.set(b + d))
        embs.append(e)
        codes.append(c)
        labels.append(s.labels + len(names))
        names += s.class_names
    if len(set(names)) != len(names):
        raise RsirError("the labelled sets share class names; namespace them (multi-dataset configs do)")
    bar.close()
    y = np.concatenate(labels)
    return np.concatenate(embs), np.concatenate(codes), ImageSet(np.zeros((len(y), 0, 0, 0), np.uint8), y, names,
                                                                 [str(i) for i in range(len(y))])


def _balanced_rows(sizes: list[int], seed: int = 0) -> np.ndarray | None:
    """Rows of the concatenated sets with as many of each set as the smallest has (seeded), or None for one
    set: PCA-ITQ fitted on EuroSAT's 18,900 patches and AID's 3,500 images put its code bits where EuroSAT
    varies."""
    if len(sizes) < 2:
        return None
    rng, n, start, rows = np.random.default_rng(seed), min(sizes), 0, []
    for size in sizes:
        rows.append(start + np.sort(rng.choice(size, size=n, replace=False)))
        start += size
    return np.concatenate(rows)


def whiten_model(model_path: str, out_path: str, train: ImageSet | list[ImageSet],
                 val: ImageSet | list[ImageSet] | None = None, threads: int | None = None, force: bool = False,
                 code_bits: int = 0, itq_restarts: int = ITQ_RESTARTS, whiten: bool = True, log=None,
                 shrinkage: float | None = None) -> dict:
    """Fit within-class whitening on `train` (the model's labelled training split; or the splits of several
    datasets, each at its own size, their classes told apart) and write the whitened model; with `code_bits`,
    its codes become PCA-ITQ codes of the whitened embedding (the best of `itq_restarts` ITQ starting rotations
    on `val`). `whiten` False: only the codes are replaced, fitted on the model's own (unit) embedding.

    Refuses cross-modal encoders (whitening one side of a shared space breaks it), already whitened models,
    multi-label data, and - unless `force` - a whitening or codes that score worse on `val` than the model's.
    `log`: a function to tell each step to (encoding progress, the shrinkages and ITQ seeds tried); None: silent."""
    encoder = Encoder(model_path, threads=threads, batch_size=256)
    info = encoder.info
    if info.shared_space:
        raise RsirError(f"{model_path}: a cross-modal encoder; whitening one modality would break the shared space")
    if METADATA_KEY in info.metadata:
        raise RsirError(f"{model_path}: already whitened ({METADATA_KEY}); whiten the model it was made from")
    trains = train if isinstance(train, list) else [train]
    vals = [v for v in (val if isinstance(val, list) else [val]) if v is not None and len(v)]
    if any(t.multi_label for t in trains):
        raise RsirError(f"{model_path}: within-class whitening needs single-label data, the training split is "
                        "multi-label")
    if not whiten and not code_bits:
        raise RsirError(f"{model_path}: nothing to do: without whitening, ask for codes (--itq-codes BITS)")
    say = log or (lambda _: None)
    train_e, train_c, train = _encode_sets(encoder, trains, "fit", quiet=log is None)
    val_e, val_c, val = _encode_sets(encoder, vals, "check", quiet=log is None) if vals else (None, None, None)
    names = list(train.class_names)
    codes = None
    try:
        if whiten:
            tried = SHRINKAGES if shrinkage is None else (shrinkage,)
            say(f"fitting the within-class whitening ({len(tried)} shrinkage(s) tried on the check split)")
            # each dataset weighs the same, whatever its size: EuroSAT's 18,900 patches beside AID's 3,500
            # images made the whitening EuroSAT's, and unseen AID classes gained 3.3 instead of 5 (docs/results.md)
            weights = np.concatenate([np.full(len(t), 1.0 / len(t)) for t in trains])
            whitening, report = choose(train_e, train, val_e, val, tried, weights)
        else:
            whitening, report = None, {"checked_on": "val" if val is not None else None}
        apply = whitening.apply if whitening is not None else l2_normalise
        if code_bits:
            checked = bool(report["checked_on"])
            say(f"fitting {code_bits}-bit PCA-ITQ codes" + (f" from {itq_restarts} starting rotations, each scored "
                                                           "on the check split" if checked else ""))
            codes, itq_report = choose_itq(apply(train_e), train.labels, apply(val_e) if checked else None,
                                           val.labels if checked else None, code_bits, names, itq_restarts, say,
                                           _balanced_rows([len(t) for t in trains]))
    except ValueError as exc:
        raise RsirError(f"{model_path}: {exc}") from None
    if codes is not None:
        report["codes"] = f"pca-itq-{code_bits}"
        report.update(itq_report)
        if report["checked_on"]:
            report["val_hamming_map100_before"] = _hamming_map100(val_c, val.labels, train_c, train.labels,
                                                                  info.effective_code_bits, names)
    if not force:
        check_gain(model_path, report)
    report.update({"kind": "within-class" if whiten else "none", "train_items": len(train),
                   "classes": len(train.class_names), "shrinkage": whitening.shrinkage if whiten else None,
                   "source_sha256": info.sha256})
    append_to_onnx(model_path, out_path, whitening, {METADATA_KEY: json.dumps(report, sort_keys=True)}, codes)
    return report


@dataclass
class WhitenOptions:
    """What `rsir whiten` writes: a whitened copy of `model` (and/or new codes), fitted on the `fit` split of a
    labelled dataset or of a training config's data, checked on `check`, with an optional int8 copy."""

    model: str
    out: str
    dataset: str | None = None
    config: str | None = None  # a training config: its data (every dataset of a multi-dataset run, at its size)
    split: str | None = None
    split_seed: int = 42
    fit: str = "train"
    check: str = "val"
    itq_codes: int = 0
    itq_restarts: int = ITQ_RESTARTS
    whiten: bool = True
    int8: str | None = None
    force: bool = False
    half_weights: bool = False
    cache_dir: str = "cache/datasets"
    threads: int | None = None
    shrinkage: float | None = None  # None: the best of SHRINKAGES on the check split


def _fit_sets(opts: WhitenOptions) -> tuple[list[ImageSet], list[ImageSet]]:
    """(fit splits, check splits) of the dataset or the config's datasets."""
    from .labelled_data import config_sets, labelled_sets

    if bool(opts.dataset) == bool(opts.config):
        raise RsirError("give either a DATASET or --config (the training config whose data to fit on)")
    splits = (opts.fit, opts.check) if opts.check else (opts.fit,)
    if opts.config:
        from .config import load_config

        sets = config_sets(load_config(opts.config), splits, opts.cache_dir or None)
    else:
        sets = [labelled_sets(opts.dataset, Encoder(opts.model).info, splits, opts.split, opts.split_seed,
                              opts.cache_dir or None)]
    fit = [s[opts.fit] for s in sets]
    if not sum(len(s) for s in fit):
        raise RsirError(f"{opts.dataset or opts.config}: split {opts.fit!r} is empty")
    return fit, [s[opts.check] for s in sets] if opts.check else []


def whiten_files(opts: WhitenOptions, log=print) -> dict:
    """Carry out `opts`; returns the float model's report."""
    import os

    if os.path.abspath(opts.out) == os.path.abspath(opts.model):
        raise RsirError(f"{opts.out}: --out must differ from the model it whitens")
    fit, check = _fit_sets(opts)

    def one(source: str, out: str) -> dict:
        report = whiten_model(source, out, fit, check or None, opts.threads, opts.force, opts.itq_codes,
                              opts.itq_restarts, opts.whiten, log, opts.shrinkage)
        checked = (f"{opts.check} mAP@100 {report['val_map100_before']:.2f} -> {report['val_map100_after']:.2f}"
                   if report["checked_on"] and opts.whiten else
                   "" if report["checked_on"] else "not checked on a validation split")
        if "codes" in report:
            checked += ("; " if checked else "") + f"{report['codes']} codes (ITQ seed {report['itq_seed']})" + (
                f", {opts.check} Hamming mAP@100 {report['val_hamming_map100_before']:.2f} -> "
                f"{report['val_hamming_map100_after']:.2f}" if report["checked_on"] else "")
        what = (f"within-class whitening fitted on {report['train_items']} {opts.fit} items of "
                f"{report['classes']} classes, shrinkage {report['shrinkage']:g}" if opts.whiten else
                f"codes fitted on {report['train_items']} {opts.fit} items of {report['classes']} classes")
        log(f"wrote {out}: {what}; {checked}")
        return report

    report = one(opts.model, opts.out)
    if opts.int8:
        import tempfile

        from .labelled_data import calibration_images
        from .quantize import quantize_int8

        # quantise first, then whiten the int8 model on its own embeddings: whitening and ITQ fitted to the
        # float embeddings fit the quantised ones less well (docs/results.md, "ITQ starting rotations")
        with tempfile.TemporaryDirectory() as tmp:
            quantised = os.path.join(tmp, "int8.onnx")
            meta = quantize_int8(opts.model, quantised,
                                 calibration_images(fit, 256, Encoder(opts.model).info.input_size))
            log(f"{opts.model}: quantised, {meta['rsir.quantization']}")
            try:
                one(quantised, opts.int8)
            except RsirError as exc:
                raise RsirError(f"{opts.int8} (the int8 copy of {opts.model}): {exc}") from None
    if opts.half_weights:
        from .weight_storage import halve_files

        halve_files([opts.out], log)
    return report
