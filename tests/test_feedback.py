"""Relevance feedback (issue 26): Rocchio and the linear scorer against hand-computed rankings on a real tiny
index, the logistic regression at its optimum, marks that lift the marked kind of tile, and a session file that
round-trips through the command line."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from core import feedback
from core.cli import main
from core.errors import RsirError
from core.index import BuildOptions, Index, build_index
from core.queries import query_from_tile
from core.search import search
from tests.rasters import mosaic_with_twin, write_raster


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("feedback")
    raster = write_raster(str(folder / "a.tif"), np.concatenate([mosaic_with_twin(seed=0), mosaic_with_twin(seed=1)],
                                                                axis=2))
    out = str(folder / "idx")
    build_index([raster], tiny_model, out, BuildOptions(tile=32))
    return Index(out)


def _assert_ranked_by(hits, scores: np.ndarray, exclude: int) -> None:
    """The hits are the tiles of the highest `scores` (the query tile left out), in that order: their scores
    equal the top of the sorted scores (twin tiles tie, so ids may swap within a tie)."""
    order = [int(i) for i in np.argsort(-scores, kind="stable") if i != exclude][:len(hits)]
    np.testing.assert_allclose(scores[[h.tile_id for h in hits]], scores[order], atol=3e-4)  # float16 storage


def test_rocchio_equals_the_hand_computed_query(index):
    query = query_from_tile(index, 0)
    pos, neg = [5, 9, 17], [3, 40]
    marks = feedback.Marks.from_index(index, pos, neg)
    w = feedback.RocchioWeights(query=0.25, positive=2.0, negative=1.0)
    refined = feedback.refine(index, query, marks, "rocchio", rocchio_weights=w)
    emb = index.embeddings(np.arange(index.n))
    expected = 0.25 * emb[0] + 2.0 * emb[pos].mean(axis=0) - 1.0 * emb[neg].mean(axis=0)
    np.testing.assert_allclose(refined.embedding, expected / np.linalg.norm(expected), atol=1e-6)
    _assert_ranked_by(search(index, refined, k=10), emb @ refined.embedding, exclude=0)
    # codes: the sign of the same sum over +-1 bits, a zero keeping the query's bit
    bits = feedback.pm1(index.codes(np.arange(index.n)))
    total = 0.25 * bits[0] + 2.0 * bits[pos].mean(axis=0) - 1.0 * bits[neg].mean(axis=0)
    expected_bits = np.where(total == 0, bits[0], total) > 0
    np.testing.assert_array_equal(np.unpackbits(refined.code).astype(bool), expected_bits)


def test_logistic_regression_reaches_its_optimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    y = (x[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(float)
    weight = rng.uniform(0.5, 2.0, size=60)
    w, b = feedback.fit_logistic(x, y, weight, l2=0.3)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    grad_w = x.T @ (weight * (p - y)) + 0.3 * w  # the penalised loss's gradient vanishes at its minimum
    grad_b = float(np.sum(weight * (p - y)))
    assert np.abs(grad_w).max() < 1e-6 and abs(grad_b) < 1e-6
    assert w[0] > 1.0 and np.abs(w[1:]).max() < 0.5 * w[0]  # it found the informative direction


def test_linear_scorer_ranks_by_its_weight_vector(index):
    query = query_from_tile(index, 0)
    marks = feedback.Marks.from_index(index, [5, 9, 17], [3, 40])
    options = feedback.LinearOptions(l2=0.1, background=32)
    refined = feedback.refine(index, query, marks, "linear", linear_options=options)
    background = feedback._background(index, options)
    emb, codes = index.embeddings(np.arange(index.n)), index.codes(np.arange(index.n))
    _, _, (w, _) = feedback.linear(emb[0], codes[0], marks, emb[background], codes[background], options)
    np.testing.assert_allclose(refined.embedding, w / np.linalg.norm(w), atol=1e-5)
    scores = emb @ w  # one pass over every tile: the ranking by w.x is the search's
    _assert_ranked_by(search(index, refined, k=10), scores, exclude=0)


def test_marks_lift_the_marked_tiles(index):
    """Tiles far down the query's ranking, marked relevant, and its top hits marked not relevant: after one round
    the marked relevant tiles rank higher and the not relevant ones lower, with either refiner."""
    query = query_from_tile(index, 0)
    emb = index.embeddings(np.arange(index.n))

    def ranks(direction):
        order = np.argsort(-(emb @ direction), kind="stable")
        return np.argsort(order)  # rank of each tile

    before = ranks(query.embedding)
    order = np.argsort(before)
    pos, neg = order[60:66].tolist(), order[1:5].tolist()
    for method in feedback.METHODS:
        refined = feedback.refine(index, query, feedback.Marks.from_index(index, pos, neg), method)
        after = ranks(refined.embedding)
        assert after[pos].mean() < before[pos].mean() - 20, method
        assert after[neg].mean() > before[neg].mean() + 5, method
    with pytest.raises(RsirError, match="marked both relevant and not relevant"):
        feedback.Marks.from_index(index, [1, 2], [2])
    with pytest.raises(RsirError, match="feedback method 'svm'"):
        feedback.refine(index, query, feedback.Marks.from_index(index, [1], []), "svm")


def test_session_file_round_trips_through_the_cli(index, tmp_path, capsys):
    session = str(tmp_path / "s.json")
    assert main(["search", index.dir, "--tile", "0", "-k", "5", "--session", session]) == 0
    first = [int(line.split()[1]) for line in capsys.readouterr().out.splitlines()[2:7]]
    assert main(["search", index.dir, "--session", session, "--positive", f"{first[0]},{first[1]}", "--negative",
                 str(first[4]), "-k", "5"]) == 0
    out = capsys.readouterr().out
    assert "refined (linear) with 2 relevant and 1 not relevant" in out
    assert main(["search", index.dir, "--session", session, "--negative", str(first[1]), "--feedback", "rocchio",
                 "--hash", "-k", "5"]) == 0
    out = capsys.readouterr().out
    assert "refined (rocchio) with 1 relevant and 2 not relevant" in out  # the latest mark of a tile wins
    saved = json.load(open(session))
    assert saved["type"] == "rsir.feedback_session" and saved["index"] == index.dir
    assert [r["positives"] for r in saved["rounds"]] == [sorted(first[:2]), []]
    assert [r["negatives"] for r in saved["rounds"]] == [[first[4]], [first[1]]]
    assert saved["hits"] == first and len(saved["rounds"][1]["hits"]) == 5
    from core.feedback_session import Session

    loaded = Session.load(session)
    np.testing.assert_allclose(loaded.query.embedding, index.embeddings([0])[0], atol=1e-6)
    pos, neg, _ = loaded.marked()
    assert loaded.query.tile_id == 0 and pos == [first[0]] and sorted(neg) == sorted([first[4], first[1]])
    # a session is for its own index and query
    assert main(["search", index.dir, "--session", session, "--tile", "3"]) == 1
    assert "continues the query it holds" in capsys.readouterr().err
    other = str(tmp_path / "other.json")
    with open(other, "w") as f:
        json.dump({**saved, "index": "/elsewhere"}, f)
    assert main(["search", index.dir, "--session", other, "--positive", "1"]) == 1
    assert "is a session on index /elsewhere" in capsys.readouterr().err
    assert main(["search", index.dir, "--positive", "1"]) == 1
    assert "give a query" in capsys.readouterr().err
    assert os.path.exists(session)


def test_find_all_writes_every_tile_above_the_threshold(index, tmp_path):
    from osgeo import ogr

    from core.find_all import all_scores, default_threshold, write_tiles_layer

    query = query_from_tile(index, 0)
    scores = all_scores(index, query.embedding)
    emb = index.embeddings(np.arange(index.n))
    np.testing.assert_allclose(scores, emb @ query.embedding, atol=2e-3)
    assert default_threshold(scores, [5, 9]) == pytest.approx(min(scores[5], scores[9]))
    assert default_threshold(scores, [], k=3) == pytest.approx(np.sort(scores)[-3])
    threshold = float(np.sort(scores)[-12])
    ids = np.flatnonzero(scores >= threshold)
    path = str(tmp_path / "all.gpkg")
    assert write_tiles_layer(path, index, ids, scores, chunk=5) == len(ids) >= 12
    ds = ogr.Open(path)  # kept: a layer outliving its datasource crashes
    layer = ds.GetLayer("tiles")
    rows = [(f.GetField("rank"), f.GetField("tile_id"), f.GetField("score")) for f in layer]
    assert [r[0] for r in rows] == list(range(1, len(ids) + 1)) and {r[1] for r in rows} == set(ids.tolist())
    assert all(a[2] >= b[2] for a, b in zip(rows, rows[1:])) and rows[-1][2] >= threshold - 1e-6
    layer.ResetReading()
    feat = layer.GetNextFeature()
    assert feat.GetGeometryRef().ExportToWkt() == index.tile(feat.GetField("tile_id")).footprint_wkt


def test_marks_become_training_labels_rsir_train_reads(index, tmp_path, capsys):
    """A session's marks written as a label layer (`--labels-out`) are read by `rsir train`'s index loader: the
    marked tiles, with the analyst's class and "other"."""
    from training.datasets import load_index_tiles

    session, labels = str(tmp_path / "s.json"), str(tmp_path / "labels.gpkg")
    assert main(["search", index.dir, "--tile", "0", "-k", "5", "--session", session]) == 0
    capsys.readouterr()
    assert main(["search", index.dir, "--session", session, "--positive", "3,4,5", "--negative", "40,41",
                 "--labels-out", labels, "--label", "beach", "-k", "5"]) == 0
    assert "wrote " + labels + ": 5 labelled tiles" in capsys.readouterr().out
    data = load_index_tiles(index.dir, labels, "class", size=32)
    got = sorted((int(i.split(":")[1]), data.class_names[c]) for i, c in zip(data.ids, data.labels))
    assert got == [(3, "beach"), (4, "beach"), (5, "beach"), (40, "other"), (41, "other")]
    assert main(["search", index.dir, "--session", session, "--labels-out", labels]) == 1
    assert "give --session FILE and --label NAME" in capsys.readouterr().err


def test_labels_become_a_model_and_re_encode_the_index(tmp_path, tiny_model, capsys):
    """`rsir learn-labels`: marks exported as labels fit a model (the index's, with a whitening and new codes
    appended) whose outputs on the tiles' pixels are the index's re-encoded vectors; the index moves to it as its
    next generation, same tiles; the labelled tiles of one class come closer together."""
    from core.archive.gdal_open import open_raster
    from core.archive.pixels import read_window
    from core.archive.tiling import TileWindow
    from core.encoder import Encoder

    raster = write_raster(str(tmp_path / "a.tif"), np.concatenate([mosaic_with_twin(seed=0),
                                                                   mosaic_with_twin(seed=1)], axis=2))
    out = str(tmp_path / "idx")
    build_index([raster], tiny_model, out, BuildOptions(tile=32))
    before = Index(out)
    session, labels = str(tmp_path / "s.json"), str(tmp_path / "labels.gpkg")
    pos, neg = [3, 4, 5, 20, 21, 22], [40, 41, 60, 61, 90, 91]
    assert main(["search", out, "--tile", "3", "--session", session, "--positive", ",".join(map(str, pos)),
                 "--negative", ",".join(map(str, neg)), "--labels-out", labels, "--label", "mine"]) == 0
    model = str(tmp_path / "adapted.onnx")
    assert main(["learn-labels", out, labels, "--out", model]) == 0
    printed = capsys.readouterr().out
    assert "fitted on 12 labelled tiles (mine 6, other 6)" in printed and "re-encoded" in printed
    after = Index(out)
    assert after.model.path == model and after.manifest.generation == before.manifest.generation + 1
    assert after.n == before.n and after.tile(7).footprint_wkt == before.tile(7).footprint_wkt
    # the model's outputs on the pixels are the index's new vectors (within float16 storage)
    enc = Encoder(model)
    ds = open_raster(raster)
    ids = [0, 7, 40, 100]
    pixels = np.stack([read_window(ds, [1, 2, 3], TileWindow(after.tile(t).x, after.tile(t).y, 32, 32), 32)
                       for t in ids])
    emb, codes = enc.encode(pixels)
    np.testing.assert_allclose(emb, after.embeddings(ids), atol=5e-3)
    same_bits = np.unpackbits(codes) == np.unpackbits(after.codes(ids))
    assert same_bits.mean() > 0.95
    # the class the analyst labelled is tighter than before, relative to the tiles marked not it
    def spread(index):
        e = index.embeddings(np.arange(index.n))
        return float((e[pos] @ e[pos].T).mean() - (e[pos] @ e[neg].T).mean())

    assert spread(after) > spread(before)
    # a second adaptation stacks on the first (the model holds the first one's names)
    again = str(tmp_path / "again.onnx")
    assert main(["learn-labels", out, labels, "--out", again, "--no-reencode"]) == 0
    assert Encoder(again).encode(pixels)[0].shape == emb.shape and Index(out).model.path == model


def test_label_polygons_pick_the_tiles_under_them(tmp_path, twin_raster, tiny_model):
    """A label layer in the raster's own CRS (UTM) labels exactly the tiles whose centres it covers, found through
    the tiles' R-tree; a later polygon wins where two overlap; bad files and fields are named."""
    from core.adapt.labels import labelled_ids, labelled_tiles
    from tests.rasters import GSD, ORIGIN, write_polygons

    out = str(tmp_path / "idx")
    build_index([twin_raster], tiny_model, out, BuildOptions(tile=64))  # 4 x 4 tiles of 64 px
    index = Index(out)
    x0, y0, side = ORIGIN[0], ORIGIN[1], 64 * GSD

    def box(col0, row0, col1, row1):  # tiles [col0, col1) x [row0, row1), as a polygon in UTM
        a, b, c, d = x0 + col0 * side, y0 - row0 * side, x0 + col1 * side, y0 - row1 * side
        return f"POLYGON(({a} {b},{c} {b},{c} {d},{a} {d},{a} {b}))"

    labels = write_polygons(str(tmp_path / "l.gpkg"), [box(0, 0, 2, 1), box(1, 0, 3, 1)], ["field", "water"])
    assert labelled_tiles(index, labels) == {0: "field", 1: "water", 2: "water"}
    ids, names = labelled_ids(index, [labels])
    assert ids.tolist() == [0, 1, 2] and names == ["field", "water", "water"]
    with pytest.raises(RsirError, match="no field 'kind'"):
        labelled_tiles(index, labels, "kind")
    with pytest.raises(RsirError, match="no such label file"):
        labelled_ids(index, [str(tmp_path / "none.gpkg")])


def test_learning_again_refits_the_original_and_undo_restores_it(tmp_path, tiny_model, capsys):
    """The first re-encoding keeps the vectors from before learning (IDX/base/); a second learning run fits the
    original model on those with the labels of both runs (no stacking), --undo restores them exactly, and adding
    tiles drops them (they would lack the new tiles)."""
    from core.adapt.base import read_base
    from core.encoder import Encoder
    from core.mark_labels import write_labels

    raster = write_raster(str(tmp_path / "a.tif"), np.concatenate([mosaic_with_twin(seed=0),
                                                                   mosaic_with_twin(seed=1)], axis=2))
    out = str(tmp_path / "idx")
    build_index([raster], tiny_model, out, BuildOptions(tile=32))
    original = Index(out)
    ids = np.arange(original.n)
    first, second = str(tmp_path / "first.gpkg"), str(tmp_path / "second.gpkg")
    write_labels(first, original, {3: True, 4: True, 40: False, 41: False}, "mine")
    write_labels(second, original, {60: True, 61: True, 90: False, 91: False}, "yours")
    m1, m2 = str(tmp_path / "m1.onnx"), str(tmp_path / "m2.onnx")
    assert main(["learn-labels", out, first, "--out", m1]) == 0
    base = read_base(out)
    assert base is not None and base.model.sha256 == original.model.sha256 and len(base.labels) == 4
    assert main(["learn-labels", out, second, "--out", m2]) == 0
    assert "fitted on 8 labelled tiles (mine 2, other 4, yours 2)" in capsys.readouterr().out
    meta = Encoder(m2).info.metadata
    assert meta["rsir.adapted_from"] == original.model.sha256  # built on the original model, not on m1
    assert Index(out).model.path == m2
    assert main(["learn-labels", out, "--undo"]) == 0
    back = Index(out)
    assert back.model.path == original.model.path and read_base(out) is None
    assert np.array_equal(back.embeddings(ids), original.embeddings(ids))
    assert np.array_equal(back.codes(ids), original.codes(ids))
    assert main(["learn-labels", out, "--undo"]) == 1
    assert "nothing to undo" in capsys.readouterr().err
    # learned, then tiles added: the kept vectors are dropped (said), and there is nothing to undo any more
    assert main(["learn-labels", out, first, "--out", str(tmp_path / "m3.onnx")]) == 0
    more = write_raster(str(tmp_path / "b.tif"), mosaic_with_twin(seed=2))
    report = build_index([more], str(tmp_path / "m3.onnx"), out, BuildOptions(tile=32))
    assert any("dropped" in n for n in report.notes) and read_base(out) is None


def test_training_data_prior_joins_the_fit(tmp_path, tiny_model, capsys):
    """A model's training-data statistics shipped beside it (<model>.prior.npz, keyed to its sha256) join the
    fit at --mix times the labels' weight: the same whitening as fitting on labels and training rows together
    with those weights; a prior made for another model is ignored."""
    import shutil

    from core.adapt.linear_maps import class_stats, fit_within_class
    from core.adapt.prior import load_prior, save_prior
    from core.encoder import Encoder
    from core.mark_labels import write_labels

    rng = np.random.default_rng(0)
    marks, mark_y = rng.normal(size=(12, 16)), np.repeat([0, 1], 6)
    train, train_y = rng.normal(size=(40, 16)) + 0.3, np.repeat([2, 3, 4, 5], 10)
    stats = class_stats(train, train_y)
    mixed = fit_within_class(marks, mark_y, 0.3, prior=stats, prior_weight=0.5)
    together = fit_within_class(np.concatenate([marks, train]), np.concatenate([mark_y, train_y]), 0.3,
                                np.concatenate([np.ones(12), np.full(40, 0.5 * 12 / 40)]))
    np.testing.assert_allclose(mixed.projection, together.projection, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mixed.mean, together.mean, atol=1e-6)
    # beside a model: used by learn-labels (said, and recorded in the adapted model), unless --mix 0
    model = str(tmp_path / "m.onnx")
    shutil.copyfile(tiny_model, model)
    sha = Encoder(model).info.sha256
    dim = Encoder(model).info.embedding_dim
    save_prior(model, sha, class_stats(rng.normal(size=(30, dim)), np.repeat([0, 1, 2], 10)), {"test": True})
    assert load_prior(model, sha).classes == 3 and load_prior(model, "0" * 64) is None
    raster = write_raster(str(tmp_path / "a.tif"), mosaic_with_twin(seed=0))
    out = str(tmp_path / "idx")
    build_index([raster], model, out, BuildOptions(tile=16))
    labels = str(tmp_path / "l.gpkg")
    write_labels(labels, Index(out), {3: True, 4: True, 40: False, 41: False}, "mine")
    assert main(["learn-labels", out, labels, "--out", str(tmp_path / "a.onnx"), "--no-reencode"]) == 0
    assert "with the model's training data (3 classes)" in capsys.readouterr().out
    meta = json.loads(Encoder(str(tmp_path / "a.onnx")).info.metadata["rsir.adapted_labels"])
    assert meta["prior"] == {"classes": 3, "mix": 0.5}
    assert main(["learn-labels", out, labels, "--out", str(tmp_path / "b.onnx"), "--no-reencode", "--mix", "0"]) == 0
    assert "training data" not in capsys.readouterr().out
