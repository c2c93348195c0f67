"""Cross-modal retrieval on tiny co-registered rasters where each tile's partner is known: paired tiles cut at
the same footprint, the loss terms against their formulas, both training families ranking the partner first in
both directions, per-modality ONNX export, and core/ searching an index of one modality with a box drawn on the
other."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.encoder import Encoder
from core.errors import RsirError
from core.index import archive_codes
from core.index.builder import BuildOptions, build_index
from core.index.reader import Index
from core.modality import ModalityChoice
from core.queries import query_from_box
from core.search import search
from tests.rasters import ORIGIN, tile_pattern, write_polygons, write_raster
from training.config import parse_config
from training.crossmodal import (
    cross_modal_infonce,
    inter_modal_pairwise_loss,
    intra_modal_neighbour_loss,
    tuple_angular_loss,
)
from training.paired_data import cut_paired_tiles

GRID, TILE = 6, 32  # raster A: 6 x 6 tiles of 32 px at 10 m; raster B: the same ground at 20 m, 2 px margin
PAD = 2


def _optical() -> np.ndarray:
    img = np.zeros((3, GRID * TILE, GRID * TILE), np.uint8)
    for r in range(GRID):
        for c in range(GRID):
            img[:, r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = tile_pattern(7000 + r * GRID + c, TILE)
    return img


def _radar(optical: np.ndarray) -> np.ndarray:
    """A 2-band 'SAR-like' image of the same ground at half the resolution: inverted brightness and a
    band-ratio texture, nothing a model could match by copying pixel values."""
    a = optical.astype(np.float32)
    half = a.reshape(3, a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean(axis=(2, 4))
    b1 = 255 - half.mean(axis=0)
    b2 = 127 + 100 * (half[0] - half[2]) / (half[0] + half[2] + 1)
    out = np.stack([b1, b2])
    return np.pad(out, ((0, 0), (PAD, PAD), (PAD, PAD)), mode="edge").astype(np.float32)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    base = tmp_path_factory.mktemp("pair")
    opt = _optical()
    a = write_raster(str(base / "optical.tif"), opt)
    b = write_raster(str(base / "sar.tif"), _radar(opt), origin=(ORIGIN[0] - PAD * 20, ORIGIN[1] + PAD * 20), gsd=20.0)
    return a, b


def _west_east_labels(path) -> str:
    """A label layer over the pair: the west half "water", the east half "field"."""
    half = GRID * TILE * 10 / 2
    y0, y1 = ORIGIN[1], ORIGIN[1] - 2 * half
    return write_polygons(path, [f"POLYGON(({x0} {y0},{x0 + half} {y0},{x0 + half} {y1},{x0} {y1},{x0} {y0}))"
                                 for x0 in (ORIGIN[0], ORIGIN[0] + half)], ["water", "field"])


def test_paired_tiles_cover_the_same_ground(pair, tmp_path):
    a, b = pair
    pairs = cut_paired_tiles(a, b, [1, 2, 3], [1, 2], TILE, 16)
    assert len(pairs) == GRID * GRID and not pairs.labelled
    radar = _radar(_optical())
    for n, tid in enumerate(pairs.ids):
        x, y = (int(v) for v in tid.split(","))
        want = radar[:, PAD + y // 2:PAD + y // 2 + 16, PAD + x // 2:PAD + x // 2 + 16]
        assert np.allclose(pairs.b[n], want, atol=1e-3)  # B's window is the same ground, read at 16 px

    # labels from a polygon layer: the west half is "water", the east half "field"
    vec = _west_east_labels(tmp_path / "labels.gpkg")
    labelled = cut_paired_tiles(a, b, [1, 2, 3], [1, 2], TILE, 16, labels=vec)
    assert labelled.class_names == ["field", "water"]
    for n, tid in enumerate(labelled.ids):
        assert labelled.class_names[labelled.labels[n]] == ("water" if int(tid.split(",")[0]) < GRID * TILE / 2
                                                             else "field")
    elsewhere = write_raster(str(tmp_path / "elsewhere.tif"), np.zeros((2, 50, 50), np.float32),
                             origin=(ORIGIN[0] + 100_000, ORIGIN[1]), gsd=20.0)
    with pytest.raises(RsirError, match="no tile of 32 px lies wholly inside both rasters"):
        cut_paired_tiles(a, elsewhere, [1, 2, 3], [1, 2], TILE, 16)


def test_cross_modal_loss_terms_equal_their_formulas():
    za = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.0], [0.0, 0.3, 1.0]]), dim=1)
    zb = F.normalize(torch.tensor([[0.9, 0.0, 0.1], [0.0, 1.0, 0.4], [0.2, 0.0, 1.0]]), dim=1)
    t = 0.5
    s = (za @ zb.t()).tolist()
    ab = -sum(math.log(math.exp(s[i][i] / t) / sum(math.exp(s[i][j] / t) for j in range(3))) for i in range(3)) / 3
    ba = -sum(math.log(math.exp(s[i][i] / t) / sum(math.exp(s[j][i] / t) for j in range(3))) for i in range(3)) / 3
    assert float(cross_modal_infonce(za, zb, t)) == pytest.approx((ab + ba) / 2, rel=1e-5)
    assert float(tuple_angular_loss(za, zb)) == pytest.approx(sum(math.acos(s[i][i]) for i in range(3)) / 3 / math.pi,
                                                              rel=1e-4)
    aa = (za @ za.t()).tolist()
    total = 0.0
    for i in range(3):
        others = [j for j in range(3) if j != i]
        nn_ = max(others, key=lambda j: aa[i][j])
        total += -math.log(math.exp(aa[i][nn_] / t) / sum(math.exp(aa[i][j] / t) for j in others))
    assert float(intra_modal_neighbour_loss(za, t)) == pytest.approx(total / 3, rel=1e-5)
    labels = torch.tensor([0, 0, 1])
    pos, neg = [], []
    for i in range(3):
        for j in range(3):
            theta = s[i][j] * 3 / 2  # D / 2 * cos, D = 3
            same = (labels[i] == labels[j]).item()
            (pos if same else neg).append(math.log(1 + math.exp(theta)) - same * theta)
    assert float(inter_modal_pairwise_loss(za, zb, labels)) == pytest.approx(
        sum(pos) / len(pos) + sum(neg) / len(neg), rel=1e-5)


def _cfg(a: str, b: str, out: str, loss: str, epochs: int, lr: float = 0.003, temperature: float = 0.2):
    return parse_config({
        "out_dir": out, "seed": 0,
        "data": {"kind": "paired", "root": a, "root_b": b, "bands": [1, 2, 3], "bands_b": [1, 2], "scale_b": 255.0,
                 "modality": "optical", "modality_b": "sar", "tile": TILE, "input_size": 16},
        "model": {"backbone": "tiny", "pretrained": False, "embedding_dim": 16},
        "loss": {"name": loss, "temperature": temperature},
        "optim": {"epochs": epochs, "batch_size": 8, "lr": lr, "threads": 1},
        "augment": {"jitter": 0.0},
    })


def _pair_toml(a: str, b: str, path, labels: str = "") -> str:
    """The [data] of `_cfg` as a TOML file, for `rsir eval-pairs`."""
    path.write_text(f"""out_dir = "unused"
[data]
kind = "paired"
root = "{a}"
root_b = "{b}"
bands = [1, 2, 3]
bands_b = [1, 2]
scale_b = 255.0
modality = "optical"
modality_b = "sar"
labels = "{labels}"
tile = {TILE}
input_size = 16
[model]
backbone = "tiny"
pretrained = false
embedding_dim = 16
[loss]
name = "crossmodal-ssl"
""")
    return str(path)


def _partner_rank1(za: np.ndarray, zb: np.ndarray) -> tuple[float, float]:
    s = za @ zb.T
    n = np.arange(len(za))
    return float((s.argmax(axis=1) == n).mean()), float((s.argmax(axis=0) == n).mean())


@pytest.fixture(scope="module")
def ssl_models(pair, tmp_path_factory) -> tuple[dict, str]:
    from training.crossmodal_trainer import train_crossmodal
    from training.export import crossmodal_paths, export_crossmodal_checkpoint

    base = tmp_path_factory.mktemp("xm")
    cfg = _cfg(*pair, str(base / "ssl"), "crossmodal-ssl", epochs=150)  # 25 pairs: 3 steps an epoch
    train_crossmodal(cfg, quiet=True)
    metas = export_crossmodal_checkpoint(str(base / "ssl" / "last.pt"), str(base / "pair.onnx"))
    return metas, crossmodal_paths(str(base / "pair.onnx"), ["optical", "sar"])


def test_self_supervised_pair_ranks_partners_first_in_both_directions(pair, ssl_models):
    from training.crossmodal_trainer import load_pairs

    metas, paths = ssl_models
    assert metas["optical"]["rsir.shared_space"] == metas["sar"]["rsir.shared_space"]
    assert metas["optical"]["rsir.modality"] == "optical" and metas["sar"]["rsir.modality"] == "sar"
    assert metas["sar"]["rsir.bands"] == "[1, 2]"
    cfg = _cfg(*pair, "unused", "crossmodal-ssl", 1)
    train = load_pairs(cfg)["train"]
    za, _ = Encoder(paths["optical"], threads=1).encode(train.a)
    zb, _ = Encoder(paths["sar"], threads=1).encode(train.b)
    assert _partner_rank1(za, zb) == (1.0, 1.0)


def test_eval_pairs_scores_both_directions_next_to_the_untrained_baseline(pair, ssl_models, tmp_path, capsys):
    import json

    from core.cli import main

    a, b = pair
    _, paths = ssl_models
    cfg = _pair_toml(a, b, tmp_path / "pair.toml")
    out = tmp_path / "report"
    assert main(["eval-pairs", str(cfg), paths["sar"], paths["optical"], "--queries", "train", "-k", "10",
                 "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "25 train pairs -> 25 the same pairs (partner relevant)" in printed
    rows = {r["method"]: r for r in json.load(open(out / "results.json"))["results"]}
    # unlabelled: the uni-modal directions would find the query itself, so only the two cross-modal ones are scored
    assert list(rows) == ["optical -> sar", "sar -> optical", "ImageNet Lite0 (untrained): optical -> sar",
                          "ImageNet Lite0 (untrained): sar -> optical", "chance (random ranking)"]
    assert rows["optical -> sar"]["map"] == rows["sar -> optical"]["map"] == 100.0  # partners ranked first
    # a random ranking finds the partner in the top 10 of 25 with probability 0.4: expected mAP@10 about 11.7
    assert 2 < rows["chance (random ranking)"]["map"] < 30
    assert rows["ImageNet Lite0 (untrained): optical -> sar"]["map"] < 60
    assert "mAP@10 (optical -> sar) = 100.00" in printed
    # the instance-level table: partners ranked first, so R@1 100 and median rank 1 both ways
    same = json.load(open(out / "results.json"))["same_place"]
    assert [(r["features"], r["direction"]) for r in same][:2] == [("model", "optical -> sar"),
                                                                    ("model", "sar -> optical")]
    assert all(r["same-place R@1"] == 100.0 and r["median rank"] == 1.0 for r in same[:2])
    assert "| model | sar -> optical | 100.0 | 100.0 | 1.0 |" in printed
    assert same[2]["features"] == "ImageNet Lite0 (untrained)" and same[2]["same-place R@1"] < 100


def test_eval_pairs_with_labels_scores_all_four_directions_by_class(pair, ssl_models, tmp_path, capsys):
    import json

    from core.cli import main
    from core.encoder import Encoder
    from training.config import load_config
    from training.crossmodal_trainer import load_pairs
    from training.evaluate import score

    a, b = pair
    _, paths = ssl_models
    cfg = _pair_toml(a, b, tmp_path / "pair.toml", labels=_west_east_labels(tmp_path / "labels.gpkg"))
    out = tmp_path / "report"
    assert main(["eval-pairs", cfg, paths["optical"], paths["sar"], "-k", "5", "--out", str(out),
                 "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    sets = load_pairs(load_config(cfg))
    q, db = sets["test"], sets["train"]
    assert f"{len(q)} test pairs -> {len(db)} train pairs (same class relevant)" in printed
    rows = {r["method"]: r for r in json.load(open(out / "results.json"))["results"]}
    directions = ["optical -> sar", "sar -> optical", "optical -> optical", "sar -> sar"]
    assert list(rows) == (directions + [f"ImageNet Lite0 (untrained): {d}" for d in directions]
                          + ["chance (random ranking)"])
    enc = {m: Encoder(paths[m], threads=1) for m in ("optical", "sar")}
    emb = {"optical": (enc["optical"].encode(q.a)[0], enc["optical"].encode(db.a)[0]),
           "sar": (enc["sar"].encode(q.b)[0], enc["sar"].encode(db.b)[0])}
    for d in directions:  # each direction: the query modality's test tiles against the other's training tiles
        src, dst = d.split(" -> ")
        want = score(d, "float", 0, emb[src][0], emb[dst][1], q.labels, db.labels, q.class_names, 5)
        assert rows[d]["map"] == pytest.approx(want.map_k, abs=1e-6)
        assert set(rows[d]["per_class_ap"]) == {"field", "water"}
        assert rows[d]["class-mean AP@5"] == pytest.approx(np.mean(list(want.per_class_ap.values())), abs=1e-6)
    assert "class-mean AP@5" in printed


def test_supervised_cross_modal_hashing_ranks_partners_first(pair, tmp_path):
    from training import checkpoint
    from training.crossmodal_trainer import load_pairs, model_from_crossmodal_checkpoint, train_crossmodal

    cfg = _cfg(*pair, str(tmp_path / "sup"), "crossmodal-supervised", epochs=300, lr=0.005, temperature=0.1)
    cfg.model.hash_bits = 16
    # all 25 training pairs in every step: with batches of 8 the last epoch's ranking depended on the seed and the
    # CPU's float rounding (2 of 25 partners at rank 2 on one machine); whole-set steps converged for seeds 0-5
    cfg.optim.batch_size = 25
    train_crossmodal(cfg, quiet=True)
    model = model_from_crossmodal_checkpoint(checkpoint.load(str(tmp_path / "sup" / "last.pt")))
    train = load_pairs(cfg)["train"]
    with torch.no_grad():
        xa = (torch.from_numpy(train.a).float() / 255 - 0.5) / 0.25
        xb = (torch.from_numpy(train.b).float() / 255 - 0.5) / 0.25
        oa, ob = model(xa, xb)
    ca, cb = torch.sign(oa.codes).numpy(), torch.sign(ob.codes).numpy()
    assert _partner_rank1(oa.emb.numpy(), ob.emb.numpy()) == (1.0, 1.0)
    hamming = (16 - ca @ cb.T) / 2  # the partner's code is the nearest in Hamming space too
    assert (np.diag(hamming)[:, None] <= hamming).all(axis=1).mean() >= 0.8

    # rsir eval-pairs scores a hashing model's codes by Hamming distance as well, through the exported encoders
    import json

    from core.cli import main
    from training.evaluate import score
    from training.export import crossmodal_paths, export_crossmodal_checkpoint

    export_crossmodal_checkpoint(str(tmp_path / "sup" / "last.pt"), str(tmp_path / "sup.onnx"))
    paths = crossmodal_paths(str(tmp_path / "sup.onnx"), ["optical", "sar"])
    out = tmp_path / "report"
    assert main(["eval-pairs", _pair_toml(*pair, tmp_path / "pair.toml"), paths["optical"], paths["sar"],
                 "--queries", "train", "-k", "10", "--out", str(out), "--threads", "1", "--no-baselines"]) == 0
    rows = {r["method"]: r for r in json.load(open(out / "results.json"))["results"]}
    assert list(rows) == ["optical -> sar", "sar -> optical", "optical -> sar (Hamming, 16 bits)",
                          "sar -> optical (Hamming, 16 bits)"]
    assert rows["optical -> sar"]["map"] == rows["sar -> optical"]["map"] == 100.0
    ids = np.arange(len(ca))  # unlabelled: each pair is its own class
    for (src, dst), (q, db) in {("optical", "sar"): (ca, cb), ("sar", "optical"): (cb, ca)}.items():
        row = rows[f"{src} -> {dst} (Hamming, 16 bits)"]
        assert row["kind"] == "hash" and row["bits"] == 16
        want = score("", "hash", 16, q, db, ids, ids, [str(i) for i in ids], 10)  # the torch model's signs
        assert row["map"] == pytest.approx(want.map_k, abs=1e-6)


def test_index_of_one_modality_searched_with_a_box_on_the_other(pair, ssl_models, tmp_path):
    from training.crossmodal_trainer import load_pairs

    a, _ = pair
    _, paths = ssl_models
    radar = _radar(_optical())[:, PAD:-PAD, PAD:-PAD]  # the same SAR image without the margin: the index grid
    sar = write_raster(str(tmp_path / "sar.tif"), radar, gsd=20.0)  # then falls on the training footprints
    out = str(tmp_path / "sar-index")
    build_index([sar], paths["sar"], out, BuildOptions(tile=16, stride=16, threads=1))
    index = Index(out)
    assert index.n == GRID * GRID and index.model_info.modality == "sar"
    # its codes stay the model's, trained across modalities (codes fitted on the radar tiles alone lose optical
    # queries), though the index is large enough for fitted ones
    assert archive_codes.applies(index.n, index.code_bits, index.embedding_dim)
    assert index.manifest.code_source == "embedding-signs" and index.archive_codes is None  # its own sign bits
    with pytest.raises(RsirError, match="cross-modal model; its .*-bit codes are trained across modalities"):
        build_index([sar], paths["sar"], str(tmp_path / "fitted"), BuildOptions(tile=16, threads=1, code_bits=8))
    enc_opt = Encoder(paths["optical"], threads=1)
    train_ids = load_pairs(_cfg(*pair, "unused", "crossmodal-ssl", 1))["train"].ids
    for tid in train_ids[:8]:
        x, y = (int(v) for v in tid.split(","))
        x0, y1 = ORIGIN[0] + x * 10, ORIGIN[1] - y * 10
        query = query_from_box(index, enc_opt, a, (x0, y1 - TILE * 10, x0 + TILE * 10, y1))
        assert query.pixels.shape == (3, 16, 16)  # read with the optical encoder's own bands
        top = search(index, query, k=1)[0]
        assert (top.x, top.y) == (x // 2, y // 2)  # the SAR tile over the same ground
    other = str(tmp_path / "other.onnx")
    _unrelated_model(other)
    with pytest.raises(RsirError, match="cross-modal query needs an encoder of its shared space"):
        query_from_box(index, Encoder(other, threads=1), a, (ORIGIN[0], ORIGIN[1] - 320, ORIGIN[0] + 320, ORIGIN[1]))


def _unrelated_model(path: str) -> None:
    from training.export import ExportSpec, export_onnx
    from training.models.factory import TrainNet
    from training.models.tiny import TinyConvNet

    net = TrainNet(TinyConvNet(3, seed=1), 16).retrieval_net()
    export_onnx(net, ExportSpec([1, 2, 3], 16, 255.0, [0.5] * 3, [0.25] * 3, "tiny"), path)


@pytest.fixture()
def sar_index(pair, ssl_models, tmp_path) -> str:
    _, paths = ssl_models
    radar = _radar(_optical())[:, PAD:-PAD, PAD:-PAD]
    sar = write_raster(str(tmp_path / "sar_grid.tif"), radar, gsd=20.0)
    out = str(tmp_path / "sar-index-plugin")
    build_index([sar], paths["sar"], out, BuildOptions(tile=16, stride=16, threads=1))
    return out


def test_query_modality_from_what_is_known_and_said_when_guessed(pair, sar_index, tmp_path):
    """Band count cannot tell a Pauli RGB radar composite from an RGB photo: the index's sources, a modality tag or
    sensor metadata decide; a guess between encoders that take the same bands is said, with how to change it."""
    import dataclasses

    from osgeo import gdal

    from core.modality import choose_for_path, modality_models

    index = Index(sar_index)
    encoders = modality_models(index.model_info)
    # both encoders take 3 bands here, as for a Pauli RGB radar index queried from an RGB orthophoto
    same = dict(encoders, sar=dataclasses.replace(encoders["sar"], bands=[1, 2, 3]))
    a, _ = pair
    guess = choose_for_path(index, same, a, how_to_choose="pass --modality")
    assert (guess.modality, guess.reason) == ("sar", "guessed")
    assert guess.warning.startswith("optical.tif is not a source of this index and its 3 bands fit the optical and "
                                    "sar encoders: read as sar (the index's own); if it is optical, pass --modality")
    own = choose_for_path(index, same, os.path.join(os.path.dirname(sar_index), "sar_grid.tif"))
    assert (own.modality, own.warning) == ("sar", None)  # an indexed source: the index's encoder, no doubt
    tagged = write_raster(str(tmp_path / "tagged.tif"), gdal.Open(a).ReadAsArray())
    ds = gdal.Open(tagged, gdal.GA_Update)
    ds.SetMetadataItem("RSIR_MODALITY", "optical")
    ds = None
    assert choose_for_path(index, same, tagged) == ModalityChoice("optical", "its RSIR_MODALITY tag")
    ds = gdal.Open(tagged, gdal.GA_Update)
    ds.SetMetadata({"MISSION": "SENTINEL-1A", "POLARISATION": "VV"})  # the tag replaced by sensor metadata
    ds = None
    assert choose_for_path(index, same, tagged) == ModalityChoice("sar", "its metadata")
    assert choose_for_path(index, same, tagged, "optical").modality == "optical"  # the user's choice wins
    ds = gdal.Open(tagged, gdal.GA_Update)
    ds.SetMetadata({"RSIR_MODALITY": "lidar"})
    ds = None
    with pytest.raises(RsirError, match="tagged.tif: its RSIR_MODALITY tag says lidar, but this index has encoders "
                                        "for optical, sar"):
        choose_for_path(index, same, tagged)



def test_cli_box_on_the_optical_raster_uses_the_optical_encoder(pair, sar_index, capsys):
    """Without --model the optical box over a SAR index was read with the SAR encoder, silently."""
    from core.cli import main

    a, _ = pair
    box = f"{ORIGIN[0]},{ORIGIN[1] - 320},{ORIGIN[0] + 320},{ORIGIN[1]}"
    assert main(["search", sar_index, "--bbox", box, "--raster", a, "-k", "3"]) == 0
    assert "query read with the optical encoder (its 3 band(s))" in capsys.readouterr().out
    assert main(["search", sar_index, "--bbox", box, "--raster", a, "-k", "3", "--modality", "sar"]) == 0
    assert "query read with the sar encoder (chosen)" in capsys.readouterr().out  # the user's word wins


def test_plugin_box_on_an_optical_layer_searches_the_sar_index(pair, sar_index, qgis_iface, qgis_new_project):
    from qgis.core import QgsProject, QgsRasterLayer, QgsRectangle
    from qgis.PyQt import sip

    from rsir_qgis_plugin.controller import RetrievalSession, SearchRequest
    from rsir_qgis_plugin.dock import RsirDock
    from training.crossmodal_trainer import load_pairs

    a, _ = pair
    session = RetrievalSession(sar_index)
    assert session.modalities == ["sar", "optical"]
    # 3 bands: only the optical encoder takes them, so nothing to say
    assert session.query_modality(a, SearchRequest()) == ModalityChoice("optical", "its 3 band(s)")
    assert session.query_modality(sar_index + "/../sar_grid.tif", SearchRequest()).modality == "sar"
    with pytest.raises(RsirError, match="no lidar encoder"):
        session.query_modality(a, SearchRequest(query_modality="lidar"))

    dock = RsirDock(qgis_iface)
    try:
        layer = QgsRasterLayer(a, "optical")
        QgsProject.instance().addMapLayer(layer)
        qgis_iface.mapCanvas().setDestinationCrs(layer.crs())
        assert dock.open_index(sar_index) and "cross-modal: queries from sar, optical" in dock.info.text()
        assert [dock.modality_combo.itemText(i) for i in range(dock.modality_combo.count())] == [
            "auto", "sar", "optical"]
        dock.raster_combo.setLayer(layer)
        dock.k_spin.setValue(3)
        dock.tiles_spin.setValue(2)
        x, y = (int(v) for v in load_pairs(_cfg(*pair, "unused", "crossmodal-ssl", 1))["train"].ids[0].split(","))
        x0, y1 = ORIGIN[0] + x * 10, ORIGIN[1] - y * 10
        dock.box_tool.set_box(QgsRectangle(x0, y1 - TILE * 10, x0 + TILE * 10, y1))
        dock.wait()
        hits = dock.last_result.hits
        assert (hits[0].x, hits[0].y) == (x // 2, y // 2)  # the SAR tile under the box drawn on the optical layer
        hits_layer = dock.last_group.children()[1].layer()
        assert hits_layer.featureCount() == 3
        assert all(child.layer().isValid() for child in dock.last_group.children())  # SAR tiles included
    finally:
        dock.wait()
        dock.release()
        for obj in (dock.box_tool, dock.pick_tool, dock.mark_tool, dock):
            sip.delete(obj)


def test_supervised_ssl_loss_has_both_term_families():
    """crossmodal-supervised-ssl: the class terms of the supervised loss and the same-place terms of the
    self-supervised one (class terms alone let hub tiles answer every query of a class)."""
    from training.config import LossConfig
    from training.crossmodal import CrossModalMethod, CrossModalNet
    from training.models.factory import TrainNet
    from training.models.tiny import TinyConvNet

    torch.manual_seed(0)
    nets = {m: TrainNet(TinyConvNet(3, seed=i), 16) for i, m in enumerate(("optical", "sar"))}
    model = CrossModalNet(nets)
    xa, xb, y = torch.rand(8, 3, 16, 16), torch.rand(8, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    got = {}
    for name in ("crossmodal-supervised", "crossmodal-ssl", "crossmodal-supervised-ssl"):
        total, stats = CrossModalMethod(LossConfig(name=name, ce_weight=0.0)).loss(model, xa, xb, y)
        got[name] = {k: v for k, v in stats.items() if k != "loss"}  # the terms, without their weighted sum
        assert torch.isfinite(total)
    assert set(got["crossmodal-supervised"]) == {"triplet", "pairwise"}
    assert set(got["crossmodal-ssl"]) == {"infonce", "angular", "intra"}
    both = got["crossmodal-supervised-ssl"]
    assert set(both) == {"triplet", "pairwise", "infonce", "angular", "intra"}
    for key in both:  # the same terms, computed the same way
        other = got["crossmodal-supervised"] if key in ("triplet", "pairwise") else got["crossmodal-ssl"]
        assert both[key] == pytest.approx(other[key])


def test_class_dims_split_the_embedding_between_the_term_families():
    """loss.class_dims = N: the class terms see only the first N dims (and the classifier reads them), the
    same-place terms only the rest, each part renormalised: the terms equal those of the two parts alone."""
    from training.config import LossConfig
    from training.crossmodal import (
        CrossModalMethod,
        CrossModalNet,
        cross_modal_infonce,
        inter_modal_pairwise_loss,
        split_embedding,
    )
    from training.models.factory import TrainNet
    from training.models.tiny import TinyConvNet

    torch.manual_seed(0)
    nets = {m: TrainNet(TinyConvNet(3, seed=i), 16, num_classes=4, classifier_dims=6)
            for i, m in enumerate(("optical", "sar"))}
    model = CrossModalNet(nets)
    assert model.nets["optical"].classifier.weight.shape == (4, 6)
    xa, xb, y = torch.rand(8, 3, 16, 16), torch.rand(8, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    cfg = LossConfig(name="crossmodal-supervised-ssl", class_dims=6, temperature=0.1)
    _, stats = CrossModalMethod(cfg).loss(model, xa, xb, y)
    with torch.no_grad():
        oa, ob = model(xa, xb)
    (ca, cb), (pa, pb) = split_embedding(oa.emb, ob.emb, 6)
    assert ca.shape == (8, 6) and pa.shape == (8, 10)
    assert torch.allclose(ca, F.normalize(oa.emb[:, :6], dim=1))
    assert torch.allclose(pb, F.normalize(ob.emb[:, 6:], dim=1))
    assert stats["pairwise"] == pytest.approx(float(inter_modal_pairwise_loss(ca, cb, y)), rel=1e-5)
    assert stats["infonce"] == pytest.approx(float(cross_modal_infonce(pa, pb, 0.1)), rel=1e-5)
    assert torch.allclose(oa.logits, model.nets["optical"].classifier(ca), atol=1e-6)
    # the place part gets no gradient from the class terms and the class part none from the place terms
    emb = oa.emb.detach().requires_grad_(True)
    _, (place_a, place_b) = split_embedding(emb, ob.emb.detach(), 6)
    cross_modal_infonce(place_a, place_b, 0.1).backward()
    assert emb.grad[:, :6].abs().max() == 0 and emb.grad[:, 6:].abs().max() > 0
    with pytest.raises(RsirError, match="class_dims must be between 1 and 15"):
        parse_config({"out_dir": "o", "data": {"kind": "paired", "root": "a", "root_b": "b", "bands": [1],
                                                "bands_b": [1], "modality": "optical", "modality_b": "sar"},
                      "model": {"backbone": "tiny", "pretrained": False, "embedding_dim": 16},
                      "loss": {"name": "crossmodal-supervised-ssl", "class_dims": 16}})


def test_neighbour_batches_put_a_tiles_nearest_places_in_its_batch():
    """data.neighbour_batches: a share of each batch is one tile's nearest tiles on the ground, the rest random;
    batches are full, without repeats, one per seed tile, and the same for the same seed."""
    from training.batches import NeighbourBatches

    xy = np.array([[x * 32, y * 32] for y in range(6) for x in range(6)])  # a 6 x 6 grid of 32 px tiles
    plan = NeighbourBatches(xy, 0.5)
    batches = plan.epoch_batches(torch.Generator().manual_seed(3), 8)
    assert len(batches) == 36 // 8
    for b in batches:
        ids = b.tolist()
        assert len(ids) == 8 == len(set(ids))
        seed, near = ids[0], ids[:4]
        d = np.abs(xy[near] - xy[seed]).max(axis=1)
        assert d.max() <= 32  # the seed and three of its 8-neighbours (ties broken by position order)
        assert sorted(np.hypot(*(xy - xy[seed]).T)[near]) == sorted(np.sort(np.hypot(*(xy - xy[seed]).T))[:4])
    again = plan.epoch_batches(torch.Generator().manual_seed(3), 8)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    with pytest.raises(RsirError, match="neighbour_batches must be a share between 0 and 1"):
        parse_config({"out_dir": "o", "data": {"kind": "paired", "root": "a", "root_b": "b", "bands": [1],
                                                "bands_b": [1], "neighbour_batches": 2.0},
                      "loss": {"name": "crossmodal-ssl"}})


def test_onnx_metadata_read_without_a_session(tiny_model, tmp_path):
    """core/onnx_metadata.py reads metadata_props straight from the protobuf, as onnx does, and refuses a file that
    is not one."""
    import onnx

    from core.onnx_metadata import read_metadata_props

    expected = {e.key: e.value for e in onnx.load(tiny_model).metadata_props}
    assert read_metadata_props(tiny_model) == expected and "rsir.format" in expected
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff" * 20)
    with pytest.raises(ValueError):
        read_metadata_props(str(bad))
