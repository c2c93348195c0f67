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

from core.encoder import Encoder, l2_normalise, pack_signs
from core.errors import RsirError
from core.fileio import atomic_path

from .datasets import ImageSet
from .evaluate import pm1, score
from .onnx_metadata import set_metadata

SHRINKAGES = (0.0, 0.01, 0.1)  # tried on the validation split; without one, UNCHECKED_SHRINKAGE is used
UNCHECKED_SHRINKAGE = 0.01
ITQ_RESTARTS = 16  # ITQ starting rotations tried on the validation split
EIGEN_FLOOR = 1e-6  # relative to the mean eigenvalue: directions with no within-class spread are not blown up
METADATA_KEY = "rsir.whitening"


@dataclass
class Whitening:
    mean: np.ndarray  # (D,) float32, subtracted from the L2-normalised embedding
    projection: np.ndarray  # (D, D) float32, applied after centring
    shrinkage: float

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """What the appended graph computes, in numpy: L2-normalised whitened embeddings."""
        return l2_normalise((l2_normalise(embeddings) - self.mean) @ self.projection)


def fit_within_class(embeddings: np.ndarray, labels: np.ndarray, shrinkage: float = 0.0) -> Whitening:
    """Inverse square root of the pooled within-class covariance of L2-normalised `embeddings` (N, D) with class
    indices `labels` (N,), shrunk towards its mean eigenvalue by `shrinkage` (0..1)."""
    if not 0.0 <= shrinkage < 1.0:
        raise ValueError(f"shrinkage must be in [0, 1), got {shrinkage}")
    x = l2_normalise(np.asarray(embeddings, np.float64))
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(x):
        raise ValueError("within-class whitening needs one class index per embedding (single-label data)")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"within-class whitening needs at least 2 classes, got {len(classes)}")
    dim = x.shape[1]
    scatter = np.zeros((dim, dim))
    for c in classes:
        centred = x[labels == c] - x[labels == c].mean(axis=0)
        scatter += centred.T @ centred
    scatter /= len(x)
    level = np.trace(scatter) / dim
    scatter = (1.0 - shrinkage) * scatter + shrinkage * level * np.eye(dim)
    values, vectors = np.linalg.eigh(scatter)
    values = np.maximum(values, EIGEN_FLOOR * level)
    projection = (vectors / np.sqrt(values)) @ vectors.T
    return Whitening(x.mean(axis=0).astype(np.float32), projection.astype(np.float32), shrinkage)


@dataclass
class CodeProjection:
    """Hash logits of the whitened embedding z: (z - mean) @ matrix, signs = the codes."""
    mean: np.ndarray  # (D,) float32
    matrix: np.ndarray  # (D, bits) float32

    def logits(self, whitened: np.ndarray) -> np.ndarray:
        return (whitened - self.mean) @ self.matrix


def fit_itq(whitened: np.ndarray, bits: int, seed: int = 123) -> CodeProjection:
    """PCA of the whitened training embeddings to `bits` dimensions, then the ITQ rotation (faiss ITQTransform;
    `seed` draws its random starting rotation, 123 = faiss's default), as one affine map."""
    import faiss

    dim = whitened.shape[1]
    if bits <= 0 or bits % 8 or bits > dim:
        raise ValueError(f"code bits must be a positive multiple of 8 up to the embedding size {dim}, got {bits}")
    itq = faiss.ITQTransform(dim, bits, True)
    itq.itq.seed = seed
    itq.train(np.ascontiguousarray(whitened, np.float32))
    lin = itq.pca_then_itq
    matrix = faiss.vector_to_array(lin.A).reshape(lin.d_out, lin.d_in).T
    return CodeProjection(faiss.vector_to_array(itq.mean).astype(np.float32), np.ascontiguousarray(matrix, np.float32))


def choose_itq(white_train: np.ndarray, train_y: np.ndarray, white_val: np.ndarray | None, val_y: np.ndarray | None,
               bits: int, names: list[str], restarts: int = ITQ_RESTARTS) -> tuple[CodeProjection, dict]:
    """ITQ converges to a local optimum that depends on its random starting rotation: on EuroSAT, 16 seeds span
    0.5 mAP@100 at 32 bits and 0.2 at 128, and the validation score tracks the test score (docs/results.md). With
    a validation split, fit seeds 0..`restarts`-1 and keep the one whose codes score best val -> train (Hamming
    mAP@100); without one, seed 0."""
    if restarts < 1:
        raise ValueError(f"ITQ restarts must be at least 1, got {restarts}")
    if white_val is None:
        return fit_itq(white_train, bits, 0), {"itq_seed": 0}
    best, by_seed = None, {}
    for seed in range(restarts):
        codes = fit_itq(white_train, bits, seed)
        train_codes = pack_signs(codes.logits(white_train))
        m = _hamming_map100(pack_signs(codes.logits(white_val)), val_y, train_codes, train_y, bits, names)
        by_seed[str(seed)] = m
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


def choose(train_e: np.ndarray, train: ImageSet, val_e: np.ndarray | None, val: ImageSet | None
           ) -> tuple[Whitening, dict]:
    """Fit on the training embeddings; with a validation split, keep the shrinkage of SHRINKAGES that scores the
    best val -> train mAP@100 and report it beside the unwhitened score."""
    names = list(train.class_names)
    if val is None or not len(val):
        return fit_within_class(train_e, train.labels, UNCHECKED_SHRINKAGE), {"checked_on": None}
    report = {"checked_on": "val", "val_items": len(val),
              "val_map100_before": _map100(l2_normalise(val_e), val.labels, l2_normalise(train_e), train.labels,
                                           names),
              "val_map100_by_shrinkage": {}}
    best = None
    for s in SHRINKAGES:
        w = fit_within_class(train_e, train.labels, s)
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


def _rename(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]


def _prune(graph) -> None:
    """Drop the nodes and initializers no graph output depends on (a replaced hash head)."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    if len(keep) < len(graph.node):
        del graph.node[:]
        graph.node.extend(reversed(keep))
    unused = [t for t in graph.initializer if t.name not in needed]
    for t in unused:
        graph.initializer.remove(t)


def _replace_codes(graph, outputs: dict, projection: CodeProjection) -> None:
    """Point the code output at (embedding - mean) @ matrix; the model's own hash head is dropped unless the
    embedding is computed from it (MiLAN's is: normalise(tanh(hash logits)))."""
    from onnx import TensorProto, helper, numpy_helper

    code = outputs.get("code", "hash_logits")
    batch = graph.output[[o.name for o in graph.output].index(outputs["embedding"])].type.tensor_type.shape.dim[0]
    if code in [o.name for o in graph.output]:
        _rename(graph, code, f"{code}_replaced")
        graph.output.remove(graph.output[[o.name for o in graph.output].index(code)])
    graph.initializer.extend([numpy_helper.from_array(projection.mean, "rsir_codes_mean"),
                              numpy_helper.from_array(projection.matrix, "rsir_codes_matrix")])
    graph.node.extend([
        helper.make_node("Sub", [outputs["embedding"], "rsir_codes_mean"], ["rsir_codes_centred"]),
        helper.make_node("MatMul", ["rsir_codes_centred", "rsir_codes_matrix"], [code]),
    ])
    out = helper.make_tensor_value_info(code, TensorProto.FLOAT, [None, projection.matrix.shape[1]])
    out.type.tensor_type.shape.dim[0].CopyFrom(batch)
    graph.output.append(out)
    outputs["code"] = code
    _prune(graph)


def append_to_onnx(model_path: str, out_path: str, whitening: Whitening, metadata: dict[str, str],
                   codes: CodeProjection | None = None) -> None:
    """Write `model_path` with the whitening appended to its embedding output (same output name), its code output
    replaced by `codes` if given, and `metadata` added, atomically: a failed write leaves no file at `out_path`."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(model_path)
    meta = {p.key: p.value for p in model.metadata_props}
    outputs = json.loads(meta["rsir.outputs"])
    name = outputs["embedding"]
    raw = f"{name}_unwhitened"
    graph = model.graph
    _rename(graph, name, raw)
    graph.initializer.extend([numpy_helper.from_array(whitening.mean, "rsir_whiten_mean"),
                              numpy_helper.from_array(whitening.projection, "rsir_whiten_projection")])
    graph.node.extend([
        helper.make_node("LpNormalization", [raw], ["rsir_whiten_unit"], axis=1, p=2),
        helper.make_node("Sub", ["rsir_whiten_unit", "rsir_whiten_mean"], ["rsir_whiten_centred"]),
        helper.make_node("MatMul", ["rsir_whiten_centred", "rsir_whiten_projection"], ["rsir_whiten_projected"]),
        helper.make_node("LpNormalization", ["rsir_whiten_projected"], [name], axis=1, p=2),
    ])
    if codes is not None:
        _replace_codes(graph, outputs, codes)
        meta.update({"rsir.outputs": json.dumps(outputs), "rsir.code_bits": str(codes.matrix.shape[1]),
                     "rsir.model_type": "embedding+hash"})
    meta.update(metadata)
    set_metadata(model, meta)
    onnx.checker.check_model(model)
    with atomic_path(out_path) as tmp:
        onnx.save(model, tmp)


def whiten_model(model_path: str, out_path: str, train: ImageSet, val: ImageSet | None = None,
                 threads: int | None = None, force: bool = False, code_bits: int = 0,
                 itq_restarts: int = ITQ_RESTARTS) -> dict:
    """Fit within-class whitening on `train` (the model's labelled training split) and write the whitened model;
    with `code_bits`, its codes become PCA-ITQ codes of the whitened embedding (the best of `itq_restarts` ITQ
    starting rotations on `val`).

    Refuses cross-modal encoders (whitening one side of a shared space breaks it), already whitened models,
    multi-label data, and - unless `force` - a whitening or codes that score worse on `val` than the model's."""
    encoder = Encoder(model_path, threads=threads, batch_size=256)
    info = encoder.info
    if info.shared_space:
        raise RsirError(f"{model_path}: a cross-modal encoder; whitening one modality would break the shared space")
    if METADATA_KEY in info.metadata:
        raise RsirError(f"{model_path}: already whitened ({METADATA_KEY}); whiten the model it was made from")
    if train.multi_label:
        raise RsirError(f"{model_path}: within-class whitening needs single-label data, the training split is "
                        "multi-label")
    train_e, train_c = encoder.encode(train.pixels)
    val_e, val_c = encoder.encode(val.pixels) if val is not None and len(val) else (None, None)
    names = list(train.class_names)
    codes = None
    try:
        whitening, report = choose(train_e, train, val_e, val)
        if code_bits:
            checked = bool(report["checked_on"])
            codes, itq_report = choose_itq(whitening.apply(train_e), train.labels,
                                           whitening.apply(val_e) if checked else None,
                                           val.labels if checked else None, code_bits, names, itq_restarts)
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
    report.update({"kind": "within-class", "train_items": len(train), "classes": len(train.class_names),
                   "shrinkage": whitening.shrinkage, "source_sha256": info.sha256})
    append_to_onnx(model_path, out_path, whitening, {METADATA_KEY: json.dumps(report, sort_keys=True)}, codes)
    return report
