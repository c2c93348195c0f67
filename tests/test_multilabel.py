"""Multi-label retrieval: SNDL weights and loss against their formulas, WMAP / NDCG / Hamming loss against hand
computation, label tables, BigEarthNet folders and EuroSAT-style mosaics read back from real files, and an
SNDL-BCE model trained, exported with its classifier and scored by `rsir eval`."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.errors import RsirError
from core.metrics import hamming_loss, ndcg_at_k, shared_labels, shares_a_label, weighted_average_precision
from tests.rasters import class_image, write_class_folder, write_raster
from training.losses import MemoryBank, multilabel_pairs, sndl_loss, sndl_weights
from training.multilabel_data import (
    is_label_table,
    load_bigearthnet,
    load_label_table,
    make_eurosat_mosaics,
    open_patch,
    read_label_table,
)

LABELS = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0]])


def test_sndl_weights_equal_the_formula_on_a_hand_made_label_matrix():
    w = sndl_weights(LABELS, LABELS)
    # rows 0/1 agree on positions 0, 1, 3; rows 0/2 on none; rows 1/2 on position 2; rows 0/3 are equal
    expected = torch.tensor([[1.0, 0.75, 0.0, 1.0], [0.75, 1.0, 0.25, 0.75], [0.0, 0.25, 1.0, 0.0],
                             [1.0, 0.75, 0.0, 1.0]])
    assert torch.allclose(w, expected)


def test_sndl_loss_equals_direct_formula():
    bank = MemoryBank(4, 3, LABELS)
    bank.memory.copy_(F.normalize(torch.tensor([[1.0, 0, 0], [0.8, 0.3, 0], [0, 1, 0.2], [0.9, 0, 0.3]]), dim=1))
    emb = F.normalize(torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.3]]), dim=1)
    idx, sigma = torch.tensor([0, 2]), 0.5
    total = 0.0
    for e, i in zip(emb, idx.tolist()):
        s = [math.exp(float(e @ bank.memory[k]) / sigma) for k in range(4)]
        denom = sum(s[k] for k in range(4) if k != i)
        agree = [float((LABELS[i] == LABELS[j]).float().mean()) for j in range(4)]
        total += -math.log(sum(agree[j] * s[j] / denom for j in range(4) if j != i))
    assert float(sndl_loss(emb, idx, bank, sigma)) == pytest.approx(total / 2, rel=1e-5)


def test_multilabel_pairs_split_by_shared_labels():
    a1, p, a2, n = multilabel_pairs(LABELS)
    assert sorted(zip(a1.tolist(), p.tolist())) == [(0, 1), (0, 3), (1, 3)]
    assert sorted(zip(a2.tolist(), n.tolist())) == [(0, 2), (1, 2), (2, 3)]


def test_wmap_ndcg_and_hamming_loss_equal_hand_computed_values():
    shared = np.array([[2, 0, 1], [0, 1, 1]])
    # query 0: ACG@1..3 = 2, 1, 1 -> (2 + 1) / min(3, 3); query 1: ACG = 0, 1/2, 2/3 -> (1/2 + 2/3) / min(3, 2)
    wap = weighted_average_precision(shared, np.array([3, 2]), 3)
    assert wap == pytest.approx([1.0, (0.5 + 2 / 3) / 2])
    ideal = np.array([[2, 1, 1], [1, 1, 0]])
    dcg0, idcg0 = 3 + 0 + 1 / 2, 3 + 1 / math.log2(3) + 1 / 2
    dcg1, idcg1 = 1 / math.log2(3) + 1 / 2, 1 + 1 / math.log2(3)
    assert ndcg_at_k(shared, ideal, 3) == pytest.approx([dcg0 / idcg0, dcg1 / idcg1])
    assert hamming_loss(np.array([[1, 0, 1], [0, 0, 1]]), np.array([[1, 1, 0], [0, 0, 1]])) == pytest.approx(2 / 6)
    q = np.array([[1, 0, 1]])
    db = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 1]])
    assert shared_labels(q, db, np.array([[2, 1, 0]])).tolist() == [[1, 0, 2]]
    assert shares_a_label(q, db, np.array([[2, 1, 0]])).tolist() == [[True, False, True]]


def _images(root: str, n: int) -> list[str]:
    os.makedirs(root, exist_ok=True)
    return [write_raster(os.path.join(root, f"im{i}.tif"), class_image(i % 3, i, 16), epsg=None) for i in range(n)]


def test_label_tables_csv_and_json_read_real_images(tmp_path):
    paths = _images(str(tmp_path / "img"), 10)
    labels = [["forest"], ["forest", "river"], ["urban"], ["river"], ["urban", "forest"]] * 2
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,labels\n" + "".join(f"img/{os.path.basename(p)},{';'.join(ls)}\n"
                                                   for p, ls in zip(paths, labels)))
    assert is_label_table(str(csv_path))
    sets = load_label_table(str(csv_path), [1, 2, 3], 8)
    assert [len(sets[s]) for s in ("train", "val", "test")] == [7, 1, 2]  # generated 70/10/20
    everything = {i: (s, n) for s, data in sets.items() for n, i in enumerate(data.ids)}
    train = sets["train"]
    assert train.multi_label and train.class_names == ["forest", "river", "urban"]
    for n, rel in enumerate(train.ids):
        want = labels[[f"img/{os.path.basename(p)}" for p in paths].index(rel)]
        assert [train.class_names[c] for c in np.flatnonzero(train.labels[n])] == sorted(want)
    assert train.pixels.shape == (7, 3, 8, 8) and train.pixels.dtype == np.uint8
    assert len(everything) == 10

    js = tmp_path / "labels.json"
    rows = [{"path": f"img/{os.path.basename(p)}", "labels": ls, "split": "train" if i < 8 else "test"}
            for i, (p, ls) in enumerate(zip(paths, labels))]
    js.write_text(json.dumps(rows))
    sets = load_label_table(str(js), [1, 2, 3], 8)
    assert len(sets["train"]) == 8 and len(sets["test"]) == 2 and len(sets["val"]) == 0

    bad = tmp_path / "bad.csv"
    bad.write_text("path,labels\nimg/none.tif,forest\n")
    with pytest.raises(RsirError, match="none.tif: listed in .* but missing"):
        load_label_table(str(bad), [1, 2, 3], 8)
    bad.write_text(f"path,labels\nimg/{os.path.basename(paths[0])},\n")
    with pytest.raises(RsirError, match="has no labels"):
        load_label_table(str(bad), [1, 2, 3], 8)
    assert read_label_table(str(csv_path))[1]["labels"] == ["forest", "river"]


def test_bigearthnet_folders_read_named_bands_at_their_resolutions(tmp_path):
    for i, (labels, value) in enumerate(((["Sea"], 10), (["Forest", "Sea"], 20), (["Forest"], 30)) * 4):
        name = f"S2A_patch_{i}"
        folder = tmp_path / "ben" / name
        folder.mkdir(parents=True)
        write_raster(str(folder / f"{name}_B04.tif"), np.full((1, 12, 12), value, np.uint16))
        write_raster(str(folder / f"{name}_B11.tif"), np.full((1, 6, 6), value + 1, np.uint16), gsd=20.0)
        (folder / f"{name}_labels_metadata.json").write_text(json.dumps({"labels": labels}))
    sets = load_bigearthnet(str(tmp_path / "ben"), ["B04", "B11"], 12)
    data = sets["train"]
    assert len(data) + len(sets["val"]) + len(sets["test"]) == 12
    assert data.class_names == ["Forest", "Sea"] and data.pixels.shape[1:] == (2, 12, 12)
    for n, rel in enumerate(data.ids):
        value = (10, 20, 30)[int(rel.rsplit("_", 1)[1]) % 3]
        assert data.pixels[n, 0].min() == data.pixels[n, 0].max() == value
        assert data.pixels[n, 1].min() == value + 1  # the 20 m band resampled to 12 x 12
    with pytest.raises(RsirError, match="B99.tif: band B99 of patch S2A_patch_0 is missing"):
        load_bigearthnet(str(tmp_path / "ben"), ["B04", "B99"], 12)


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory) -> str:
    from training.splits import make_split, write_split

    base = tmp_path_factory.mktemp("ml")
    root = write_class_folder(str(base / "classes"), n_classes=6, per_class=20, size=16)
    write_split(make_split(root), os.path.join(root, "split.csv"))
    return make_eurosat_mosaics(os.path.join(root, "split.csv"), str(base / "mosaics"),
                                {"train": 96, "val": 16, "test": 24}, seed=1, max_classes=2)


def test_mosaics_hold_four_patches_of_their_label_set(mosaics):
    root = os.path.dirname(mosaics)
    classes_root = os.path.join(os.path.dirname(root), "classes")
    rows = read_label_table(mosaics)
    assert [sum(r["split"] == s for r in rows) for s in ("train", "val", "test")] == [96, 16, 24]
    sizes = {len(r["labels"]) for r in rows}
    assert sizes == {1, 2}
    from training.splits import read_split

    split_of = {os.path.join(classes_root, r["path"]): r for r in read_split(os.path.join(classes_root, "split.csv"))}
    patches = {p: open_patch(p) for p in split_of}
    for r in rows[:20] + rows[-10:]:
        img = open_patch(os.path.join(root, r["path"]))
        assert img.shape == (3, 32, 32)
        found = set()
        for cell in range(4):
            y, x = (cell // 2) * 16, (cell % 2) * 16
            match = [p for p, arr in patches.items() if np.array_equal(arr, img[:, y:y + 16, x:x + 16])]
            assert match, f"cell {cell} of {r['path']} is no source patch"
            assert split_of[match[0]]["split"] == r["split"]  # no patch crosses splits
            found.add(split_of[match[0]]["class"])
        assert found == set(r["labels"])


def _ml_cfg(table: str, out: str, loss: str, epochs: int = 3):
    from training.config import parse_config

    return parse_config({
        "out_dir": out, "seed": 0,
        "data": {"kind": "label_table", "root": table, "input_size": 32},
        "model": {"backbone": "tiny", "pretrained": False, "embedding_dim": 16},
        "loss": {"name": loss, "momentum": 0.9, "sigma": 0.1},
        "optim": {"epochs": epochs, "batch_size": 16, "lr": 0.01, "threads": 1},
    })


def test_sndl_bce_trains_exports_its_classifier_and_eval_reports_multilabel_metrics(mosaics, tmp_path, capsys):
    import csv

    from core.encoder import Encoder
    from training.cli import _run_eval, eval_command
    from training.export import export_checkpoint
    from training.trainer import train

    out = str(tmp_path / "sndl-bce")
    train(_ml_cfg(mosaics, out, "sndl-bce", epochs=8), quiet=True)
    with open(os.path.join(out, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    onnx_path = str(tmp_path / "ml.onnx")
    meta = export_checkpoint(os.path.join(out, "last.pt"), onnx_path)
    assert meta["rsir.label_kind"] == "multi" and json.loads(meta["rsir.outputs"])["class_logits"] == "class_logits"
    enc = Encoder(onnx_path, threads=1)
    assert enc.info.multi_label and enc.info.class_names == [f"class{c}" for c in range(6)]
    train_set = load_label_table(mosaics, [1, 2, 3], 32)["train"]
    emb, _ = enc.encode(train_set.pixels)
    top1 = np.argmax(emb @ emb.T, axis=1)
    assert (top1 == np.arange(len(emb))).mean() == 1.0  # every training mosaic finds itself first
    probs = 1 / (1 + np.exp(-enc.class_logits(train_set.pixels)))
    # the classifier learned the label sets: well below the Hamming loss of answering "no label" everywhere
    assert hamming_loss(probs > 0.5, train_set.labels) < 0.6 * train_set.labels.mean()

    import argparse

    parser = argparse.ArgumentParser()
    eval_command(parser.add_subparsers())
    args = parser.parse_args(["eval", onnx_path, mosaics, "--no-baselines", "--cache-dir", "",
                              "--out", str(tmp_path / "report"), "--threads", "1", "-k", "50"])
    assert _run_eval(args) == 0
    printed = capsys.readouterr().out
    report = json.load(open(tmp_path / "report" / "results.json"))["results"][0]
    for key in ("WMAP@50", "NDCG@50", "HL"):
        assert key in report and f"{key} = {report[key]:.{3 if key.startswith('WMAP') else 2}f}" in printed
    assert report["map"] > 60 and 0 < report["NDCG@50"] <= 100 and report["HL"] < 20
    assert 0 < report["WMAP@50"] <= 2  # in shared labels: at most the largest label set (2 here)
    assert os.path.getsize(tmp_path / "report" / "tsne.png") > 1000


@pytest.mark.parametrize("loss", ["contrastive", "bce", "sndl"])
def test_other_multilabel_losses_train(mosaics, tmp_path, loss):
    from training.trainer import train

    result = train(_ml_cfg(mosaics, str(tmp_path / loss), loss, epochs=2), quiet=True)
    assert result.best_map > 60  # relevance = shares a label; random ranking gives ~40 here


def test_single_label_losses_refuse_multilabel_data_and_back(mosaics, tmp_path):
    from training.trainer import train

    with pytest.raises(RsirError, match="is multi-label; loss.name must be one of"):
        train(_ml_cfg(mosaics, str(tmp_path / "x"), "snca-ce"), quiet=True)
