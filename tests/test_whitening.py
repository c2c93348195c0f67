"""`rsir whiten`: within-class whitening fitted on labelled training embeddings and appended to the ONNX graph."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

from core.cli import main
from core.encoder import Encoder, l2_normalise
from core.errors import RsirError
from tests.rasters import write_class_folder
from training.datasets import ImageSet
from training.evaluate import score
from training.whitening import METADATA_KEY, check_gain, choose, choose_itq, fit_itq, fit_within_class, whiten_model


def _nuisance_set(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes apart along dim 0 by a little; dims 1-3 carry large class-blind variation, so plain cosine
    mostly ranks by the nuisance and whitening by the within-class spread removes it."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n_per_class)
    x = np.zeros((len(y), 8))
    x[:, 0] = np.where(y == 0, -0.3, 0.3) + rng.normal(0, 0.05, len(y))
    x[:, 1:4] = rng.normal(0, 3.0, (len(y), 3))
    x[:, 4:] = 5.0 + rng.normal(0, 0.05, (len(y), 4))
    return x.astype(np.float32), y


def _images(x: np.ndarray, y: np.ndarray) -> ImageSet:
    return ImageSet(np.zeros((len(y), 1, 2, 2), np.uint8), y, ["a", "b"], [str(i) for i in range(len(y))])


def test_fit_whitens_the_pooled_within_class_covariance():
    x, y = _nuisance_set(200, 0)
    w = fit_within_class(x, y)
    z = (l2_normalise(x) - w.mean) @ w.projection
    pooled = sum(np.cov(z[y == c].T, bias=True) * (y == c).sum() for c in (0, 1)) / len(y)
    assert np.allclose(pooled, np.eye(8), atol=1e-3)
    assert np.allclose(w.projection, w.projection.T, atol=1e-5)  # symmetric inverse square root
    shrunk = fit_within_class(x, y, 0.5)
    assert shrunk.shrinkage == 0.5 and not np.allclose(shrunk.projection, w.projection)
    # a weight of 2 is the item counted twice (datasets of different sizes are weighed the same this way)
    twice = np.arange(len(x)) < 50
    weighted = fit_within_class(x, y, 0.1, weights=np.where(twice, 2.0, 1.0))
    doubled = fit_within_class(np.concatenate([x, x[twice]]), np.concatenate([y, y[twice]]), 0.1)
    assert np.allclose(weighted.projection, doubled.projection, atol=1e-4)
    assert np.allclose(weighted.mean, doubled.mean, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_within_class(x, np.zeros(len(x), int))
    with pytest.raises(ValueError, match="shrinkage"):
        fit_within_class(x, y, 1.0)


def test_choose_picks_a_shrinkage_on_val_and_lifts_map():
    x, y = _nuisance_set(150, 1)
    xv, yv = _nuisance_set(40, 2)
    w, report = choose(x, _images(x, y), xv, _images(xv, yv))
    names = ["a", "b"]
    plain = score("float", "float", 0, l2_normalise(xv), l2_normalise(x), yv, y, names, 100).map_k
    assert report["val_map100_before"] == pytest.approx(plain)
    assert set(report["val_map100_by_shrinkage"]) == {"0.0", "0.01", "0.1"}
    assert report["val_map100_after"] == max(report["val_map100_by_shrinkage"].values())
    assert report["val_map100_before"] < 75 and report["val_map100_after"] > 95  # the nuisance is gone
    w3, report3 = choose(x, _images(x, y), xv, _images(xv, yv), (0.3,))  # a shrinkage given: that one, checked
    assert w3.shrinkage == 0.3 and set(report3["val_map100_by_shrinkage"]) == {"0.3"}
    w2, report2 = choose(x, _images(x, y), None, None)  # no val: the fixed shrinkage, unchecked
    assert report2 == {"checked_on": None} and w2.shrinkage == 0.01
    with pytest.raises(RsirError, match=r"m\.onnx: whitening does not help .*90\.00 -> 89\.00.*nothing written"):
        check_gain("m.onnx", {"checked_on": "val", "val_map100_before": 90.0, "val_map100_after": 89.0})
    check_gain("m.onnx", {"checked_on": None})


def test_whitened_model_equals_numpy_and_keeps_codes(tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (60, 3, 32, 32), dtype=np.uint8)
    labels = (pixels.reshape(60, -1).mean(axis=1) > np.median(pixels.reshape(60, -1).mean(axis=1))).astype(int)
    train = ImageSet(pixels[:40], labels[:40], ["dark", "bright"], [str(i) for i in range(40)])
    val = ImageSet(pixels[40:], labels[40:], ["dark", "bright"], [str(i) for i in range(20)])
    out = str(tmp_path / "w.onnx")
    before = open(tiny_model, "rb").read()
    report = whiten_model(tiny_model, out, train, val, force=True)
    assert open(tiny_model, "rb").read() == before  # the source model is untouched
    src, dst = Encoder(tiny_model), Encoder(out)
    e0, c0 = src.encode(pixels)
    e1, c1 = dst.encode(pixels)
    w = fit_within_class(src.encode(train.pixels)[0], train.labels, report["shrinkage"])
    assert np.abs(e1 - w.apply(e0)).max() < 1e-4
    assert np.array_equal(c0, c1)  # hash codes are not whitened
    assert np.allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)
    meta = json.loads(dst.info.metadata[METADATA_KEY])
    assert meta["kind"] == "within-class" and meta["train_items"] == 40 and meta["classes"] == 2
    assert meta["source_sha256"] == src.info.sha256 and meta["checked_on"] == "val"
    assert dst.info.embedding_dim == src.info.embedding_dim and dst.info.outputs == src.info.outputs
    assert [o.name for o in onnx.load(out).graph.output] == [o.name for o in onnx.load(tiny_model).graph.output]
    with pytest.raises(RsirError, match="already whitened"):
        whiten_model(out, str(tmp_path / "ww.onnx"), train, val, force=True)
    multi = ImageSet(pixels[:40], np.eye(2, dtype=np.uint8)[labels[:40]], ["dark", "bright"], train.ids)
    with pytest.raises(RsirError, match="single-label"):
        whiten_model(tiny_model, str(tmp_path / "m.onnx"), multi)
    assert not os.path.exists(tmp_path / "ww.onnx") and not os.path.exists(tmp_path / "m.onnx")


def test_itq_codes_replace_the_hash_head(tiny_model, tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (80, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(80) % 3
    train = ImageSet(pixels[:60], labels[:60], ["a", "b", "c"], [str(i) for i in range(60)])
    val = ImageSet(pixels[60:], labels[60:], ["a", "b", "c"], [str(i) for i in range(20)])
    out = str(tmp_path / "itq.onnx")
    report = whiten_model(tiny_model, out, train, val, force=True, code_bits=8)
    src, dst = Encoder(tiny_model), Encoder(out)
    assert src.info.code_bits == 64 and dst.info.code_bits == 8 and dst.info.has_hash
    assert report["codes"] == "pca-itq-8" and {"val_hamming_map100_before", "val_hamming_map100_after"} <= set(report)
    e0, _ = src.encode(pixels)
    e1, c1 = dst.encode(pixels)
    w = fit_within_class(e0[:60], labels[:60], report["shrinkage"])
    # the ITQ rotation is the best of 16 starting rotations on val
    by_seed = report["val_hamming_map100_by_itq_seed"]
    assert len(by_seed) == 16 and report["val_hamming_map100_after"] == by_seed[str(report["itq_seed"])] \
        == max(by_seed.values())
    proj = fit_itq(w.apply(e0[:60]), 8, report["itq_seed"])
    logits = proj.logits(w.apply(e0))
    decided = np.abs(logits) > 1e-4  # signs of logits within float rounding of zero may differ
    assert np.array_equal(np.unpackbits(c1, axis=1)[decided], (logits > 0)[decided])
    assert np.abs(e1 - w.apply(e0)).max() < 1e-4
    # the ITQ projection: orthogonal columns after PCA (rotation), codes use every bit
    gram = proj.matrix.T @ proj.matrix
    assert np.allclose(gram, np.diag(np.diag(gram)), atol=1e-3 * gram.max())
    bits = np.unpackbits(c1, axis=1)
    assert ((bits.mean(axis=0) > 0.15) & (bits.mean(axis=0) < 0.85)).all()
    # the replaced hash head is gone from the graph: no node or weight left that no output needs
    graph = onnx.load(out).graph
    assert [o.name for o in graph.output] == ["embedding", "hash_logits"]
    assert not any(o.endswith("_replaced") for n in graph.node for o in n.output)
    assert len(onnx.load(out).graph.initializer) < len(onnx.load(tiny_model).graph.initializer) + 4
    with pytest.raises(RsirError, match="multiple of 8 up to the embedding size"):
        whiten_model(tiny_model, str(tmp_path / "bad.onnx"), train, val, force=True, code_bits=12)
    with pytest.raises(RsirError, match="the new codes do not help"):
        check_gain(out, {"checked_on": "val", "val_map100_before": 1.0, "val_map100_after": 2.0,
                         "val_hamming_map100_before": 50.0, "val_hamming_map100_after": 40.0})


def test_choose_itq_keeps_the_starting_rotation_that_scores_best_on_val():
    x, y = _nuisance_set(150, 3)
    xv, yv = _nuisance_set(40, 4)
    w = fit_within_class(x, y)
    codes, report = choose_itq(w.apply(x), y, w.apply(xv), yv, 8, ["a", "b"], restarts=6)
    by_seed = report["val_hamming_map100_by_itq_seed"]
    assert sorted(by_seed) == [str(i) for i in range(6)]
    assert report["val_hamming_map100_after"] == by_seed[str(report["itq_seed"])] == max(by_seed.values())
    np.testing.assert_array_equal(codes.matrix, fit_itq(w.apply(x), 8, report["itq_seed"]).matrix)
    # different seeds start from different rotations and end at different ones
    assert not np.allclose(fit_itq(w.apply(x), 8, 0).matrix, fit_itq(w.apply(x), 8, 1).matrix)
    unchecked, report = choose_itq(w.apply(x), y, None, None, 8, ["a", "b"])
    assert report == {"itq_seed": 0}
    np.testing.assert_array_equal(unchecked.matrix, fit_itq(w.apply(x), 8, 0).matrix)
    with pytest.raises(ValueError, match="at least 1"):
        choose_itq(w.apply(x), y, w.apply(xv), yv, 8, ["a", "b"], restarts=0)


def test_cross_modal_encoders_are_refused(tiny_model, tmp_path):
    model = onnx.load(tiny_model)
    entry = model.metadata_props.add()
    entry.key, entry.value = "rsir.shared_space", "abc"
    path = str(tmp_path / "sar.onnx")
    onnx.save(model, path)
    train = ImageSet(np.zeros((4, 3, 32, 32), np.uint8), np.array([0, 0, 1, 1]), ["a", "b"], list("abcd"))
    with pytest.raises(RsirError, match="sar.onnx: a cross-modal encoder"):
        whiten_model(path, str(tmp_path / "out.onnx"), train)


def test_whiten_command_writes_float_and_int8(tiny_model, tmp_path, capsys, twin_raster):
    data = write_class_folder(str(tmp_path / "data"), n_classes=3, per_class=14, size=32)
    out, int8 = tmp_path / "w.onnx", tmp_path / "w.int8.onnx"
    code = main(["whiten", tiny_model, data, "--out", str(out), "--int8", str(int8), "--cache-dir", "", "--force"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "within-class whitening fitted on 27 train items of 3 classes" in printed.out
    assert "val mAP@100" in printed.out and f"wrote {int8}: within-class whitening fitted on 27" in printed.out
    # the int8 copy is the model quantised, then whitened on its own embeddings
    q_meta = Encoder(str(int8)).info.metadata
    assert q_meta["rsir.quantization"].startswith("int8 weights and activations")
    q_report, report = json.loads(q_meta[METADATA_KEY]), json.loads(Encoder(str(out)).info.metadata[METADATA_KEY])
    assert q_report["train_items"] == report["train_items"] == 27
    assert q_report["source_sha256"] != report["source_sha256"] == Encoder(tiny_model).info.sha256
    itq = tmp_path / "itq.onnx"
    code = main(["whiten", tiny_model, data, "--out", str(itq), "--itq-codes", "8", "--cache-dir", "", "--force",
                 "--half-weights"])
    printed = capsys.readouterr()
    assert code == 0 and "pca-itq-8 codes (ITQ seed " in printed.out and "val Hamming mAP@100 " in printed.out, \
        printed.err
    # the tiny CNN's weights are below 1024 values each; the whitening and ITQ matrices are not
    assert f"wrote {itq}: 3 weight tensors stored in float16" in printed.out
    assert Encoder(str(itq)).info.code_bits == 8 and Encoder(str(itq)).info.metadata["rsir.weight_storage"]
    shrunk = tmp_path / "shrunk.onnx"
    assert main(["whiten", tiny_model, data, "--out", str(shrunk), "--shrinkage", "0.3", "--cache-dir", "",
                 "--force"]) == 0
    assert "shrinkage 0.3" in capsys.readouterr().out
    assert json.loads(Encoder(str(shrunk)).info.metadata[METADATA_KEY])["shrinkage"] == 0.3
    code = main(["whiten", tiny_model, data, "--out", tiny_model, "--cache-dir", ""])
    assert code == 1 and "--out must differ" in capsys.readouterr().err
    code = main(["whiten", tiny_model, str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.onnx")])
    assert code == 1 and "nowhere: no such dataset folder" in capsys.readouterr().err
    index_dir = str(tmp_path / "index")  # an index of the whitened model says so
    assert main(["index", twin_raster, "--model", str(out), "--out", index_dir, "-q"]) == 0
    capsys.readouterr()
    assert main(["info", index_dir]) == 0
    assert "test-tiny, within-class whitened, input 32 px" in capsys.readouterr().out
