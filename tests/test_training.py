"""Training end to end on a few dozen synthetic images: every loss trains, the trainer resumes exactly, the
exported model runs in core/ and retrieves its own training images at rank 1, `rsir eval` scores it."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch

from core.encoder import Encoder
from core.errors import Cancelled, RsirError
from core.index.builder import BuildOptions, build_index
from core.index.reader import Index
from core.queries import query_from_image
from core.search import search
from tests.rasters import write_class_folder
from training.checkpoint import init_weights, model_from_checkpoint
from training.checkpoint import load as load_checkpoint
from training.config import LossConfig, load_config, parse_config
from training.datasets import load_folder, load_index_tiles
from training.export import check_onnx_parity, export_checkpoint
from training.models.factory import TrainNet, build_backbone
from training.registry import LOSSES, loss_names
from training.trainer import train


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory) -> str:
    return write_class_folder(str(tmp_path_factory.mktemp("data") / "classes"), n_classes=4, per_class=15, size=32)


def _cfg(root: str, out: str, loss: str = "snca-ce", epochs: int = 2, loss_options: dict | None = None, **optim):
    hash_bits = 16 if LOSSES[loss].hash_bits else 0
    return parse_config({
        "out_dir": out, "seed": 0,
        "data": {"kind": "folder", "root": root, "input_size": 32},
        "model": {"backbone": "tiny", "pretrained": False, "embedding_dim": 16, "hash_bits": hash_bits},
        "loss": {"name": loss, "momentum": 0.9, "sigma": 0.1, **(loss_options or {})},
        "optim": {"epochs": epochs, "batch_size": 16, "lr": 0.01, "threads": 1, **optim},
    })


def _log(out: str) -> list[dict]:
    with open(os.path.join(out, "log.csv")) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(class_folder, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("run") / "snca-ce")
    train(_cfg(class_folder, out, epochs=4), quiet=True)
    return out


def test_training_lowers_the_loss_and_keeps_the_best_epoch(trained):
    rows = _log(trained)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0]
    maps = [float(r["val_map100"]) for r in rows]
    best = load_checkpoint(os.path.join(trained, "best.pt"))
    assert best["val_map100"] == pytest.approx(max(maps), abs=1e-3)
    assert best["epoch"] == 1 + int(np.argmax(maps))
    assert max(maps) > 60  # 4 classes: chance is ~25


def test_exported_model_matches_torch_and_retrieves_its_training_images(trained, class_folder, tmp_path):
    onnx_path = str(tmp_path / "trained.onnx")
    meta = export_checkpoint(os.path.join(trained, "best.pt"), onnx_path)
    assert meta["rsir.method"] == "snca-ce" and meta["rsir.backbone"] == "tiny"
    assert meta["rsir.class_names"] == '["class0", "class1", "class2", "class3"]'
    assert meta["rsir.embedding_dim"] == "16" and meta["rsir.input_size"] == "32"
    ckpt = load_checkpoint(os.path.join(trained, "best.pt"))
    assert meta["rsir.train_config_sha256"] == ckpt["config_sha256"]
    net = model_from_checkpoint(ckpt).retrieval_net()
    assert check_onnx_parity(net, onnx_path, 3, 32) <= 1e-4

    # core/ feeds the model exactly as training did: same embeddings as torch on the raw pixels
    data = load_folder(class_folder, [1, 2, 3], 32)["train"]
    enc = Encoder(onnx_path, threads=1)
    emb, _ = enc.encode(data.pixels[:8])
    x = (torch.from_numpy(data.pixels[:8]).float() / 255 - torch.tensor(ckpt["mean"])[None, :, None, None]) / \
        torch.tensor(ckpt["std"])[None, :, None, None]
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_allclose(emb, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-4)

    index_dir = str(tmp_path / "idx")
    build_index([class_folder], onnx_path, index_dir, BuildOptions())
    index = Index(index_dir)
    for rel in data.ids:
        path = os.path.abspath(os.path.join(class_folder, rel))
        hits = search(index, query_from_image(index, enc, path), k=5)
        sources = [h.source for h in hits]
        # the index stores float16 embeddings: a same-class image within ~1e-4 of the query may tie with it
        assert path in sources and hits[sources.index(path)].score == pytest.approx(1.0, abs=1e-3)
        # rank 1 is the image itself, or ties with it within that precision (same class, same score)
        assert hits[0].label == hits[sources.index(path)].label
        assert hits[0].source == path or hits[0].score == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("loss", loss_names(labels="single") + loss_names(labels="either"))
def test_every_loss_trains_one_epoch(loss, class_folder, tmp_path):
    out = str(tmp_path / loss)
    result = train(_cfg(class_folder, out, loss=loss, epochs=1), quiet=True)
    row = _log(out)[0]
    assert np.isfinite(float(row["loss"])) and float(row["loss"]) > 0
    assert result.best_map == pytest.approx(float(row["val_map100"]), abs=1e-3)
    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt["num_classifier_classes"] == (4 if loss in ("snca-ce", "snca-hash") else 0)


@pytest.mark.parametrize("loss", loss_names(labels="multi"))
def test_multilabel_losses_refuse_single_label_data(loss, class_folder, tmp_path):
    with pytest.raises(RsirError, match=f"loss '{loss}' needs multi-label data"):
        train(_cfg(class_folder, str(tmp_path / loss), loss=loss, epochs=1), quiet=True)


@pytest.mark.parametrize("angles", ["quarter", "any"])
def test_resume_continues_exactly_as_an_uninterrupted_run(angles, class_folder, tmp_path):
    def cfg(out):
        return _cfg(class_folder, out, loss="rotation-snca", epochs=2, loss_options={"rotation_angles": angles})

    straight = str(tmp_path / "straight")
    train(cfg(straight), quiet=True)
    split = str(tmp_path / "split")
    calls = iter(range(100))  # 40 training images / batch 16 = 2 steps per epoch: stop at epoch 2's first step
    with pytest.raises(Cancelled, match="rerun the same command to resume from epoch 2"):
        train(cfg(split), quiet=True, should_stop=lambda: next(calls) >= 2)
    assert [r["epoch"] for r in _log(split)] == ["1"]
    train(cfg(split), quiet=True)  # resumes after epoch 1
    a = load_checkpoint(os.path.join(straight, "last.pt"))
    b = load_checkpoint(os.path.join(split, "last.pt"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["method"]["bank"]["memory"], b["method"]["bank"]["memory"])
    assert [r["loss"] for r in _log(straight)] == [r["loss"] for r in _log(split)]


def test_resume_refuses_a_different_config(class_folder, tmp_path):
    out = str(tmp_path / "run")
    train(_cfg(class_folder, out, epochs=1), quiet=True)
    with pytest.raises(RsirError, match="different config"):
        train(_cfg(class_folder, out, epochs=1, lr=0.02), quiet=True)
    again = train(_cfg(class_folder, out, epochs=1, lr=0.02), restart=True, quiet=True)
    assert again.epochs_run == 1 and len(_log(out)) == 1


def test_a_run_from_before_a_config_key_was_added_still_resumes(class_folder, tmp_path):
    out = str(tmp_path / "run")
    calls = iter(range(100))
    with pytest.raises(Cancelled):  # stopped in epoch 2 of 2
        train(_cfg(class_folder, out, epochs=2), quiet=True, should_stop=lambda: next(calls) >= 2)
    last = os.path.join(out, "last.pt")
    ckpt = load_checkpoint(last)
    del ckpt["config"]["model"]["init_from"]  # as written by a version without the key
    ckpt["config_sha256"] = "hash-of-the-older-version"
    torch.save(ckpt, last)
    assert train(_cfg(class_folder, out, epochs=2), quiet=True).epochs_run == 1
    assert [r["epoch"] for r in _log(out)] == ["1", "2"]


def test_config_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[optim]\nepocs = 3\n')
    with pytest.raises(RsirError, match=r"bad\.toml: unknown key optim\.epocs"):
        load_config(str(bad))
    bad.write_text('[data]\nroot = "x"\n[loss]\nname = "arcface"\n')
    with pytest.raises(RsirError, match="loss.name 'arcface' is not one of"):
        load_config(str(bad))
    bad.write_text('[data]\nroot = "x"\ninput_size = "64"\n')
    with pytest.raises(RsirError, match="data.input_size must be a int"):
        load_config(str(bad))
    bad.write_text('[data]\nroot = "x"\n[loss]\nname = "rotation-snca"\nrotation_angles = "45"\n')
    with pytest.raises(RsirError, match="loss.rotation_angles must be quarter or any, got '45'"):
        load_config(str(bad))
    yml = tmp_path / "ok.yaml"
    yml.write_text("out_dir: runs/x\ndata:\n  root: data\n  bands: [3, 2, 1]\nloss:\n  name: nca\n")
    cfg = load_config(str(yml))
    assert cfg.data.bands == [3, 2, 1] and cfg.loss.name == "nca"
    assert cfg.data.root == str(tmp_path / "data")  # relative to the config file


def test_index_tiles_take_the_label_of_the_polygon_under_their_centre(twin_raster, tiny_model, tmp_path):
    from tests.rasters import ORIGIN, write_polygons

    index_dir = str(tmp_path / "idx")
    build_index([twin_raster], tiny_model, index_dir, BuildOptions(tile=64))
    # two polygons in UTM 18N: the top half of the 256 px raster is "water", the left half of the bottom "field"
    x0, y0 = ORIGIN
    boxes = {"water": (x0, y0 - 1280, x0 + 2560, y0), "field": (x0, y0 - 2560, x0 + 1280, y0 - 1280)}
    path = write_polygons(str(tmp_path / "labels.gpkg"),
                          [f"POLYGON(({a} {b},{c} {b},{c} {d},{a} {d},{a} {b}))" for a, b, c, d in boxes.values()],
                          list(boxes))
    data = load_index_tiles(index_dir, path, "class")
    assert data.class_names == ["field", "water"]
    assert len(data) == 8 + 4  # 8 tiles in the top two rows, 2 x 2 in the bottom-left quarter
    index = Index(index_dir)
    for tid_label, tile_id in zip(data.labels, [int(i.split(":")[1]) for i in data.ids]):
        t = index.tile(tile_id)
        expect = "water" if t.y < 128 else "field"
        assert data.class_names[tid_label] == expect and (t.y < 128 or t.x < 128)
    enc = Encoder(tiny_model)
    assert data.pixels.shape[1:] == (3, enc.info.input_size, enc.info.input_size)
    with pytest.raises(RsirError, match="no field 'kind'"):
        load_index_tiles(index_dir, path, "kind")


def test_init_from_starts_a_hash_model_from_a_trained_float_model(trained, class_folder, tmp_path):
    best = os.path.join(trained, "best.pt")
    src = load_checkpoint(best)
    net = TrainNet(build_backbone("tiny", False, 3), 16, 0, hash_bits=16)
    fresh = init_weights(net, src, best)
    assert sorted({k.split(".")[0] for k in fresh}) == ["embed_head", "hash_head"]  # all the backbone is taken
    for key, value in net.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(value, src["model"][key]), key
    same = TrainNet(build_backbone("tiny", False, 3), 16, 4)  # a classifier of the same shape...
    assert init_weights(same, src, best, src["class_names"]) == []  # ...is taken for the same classes
    other = TrainNet(build_backbone("tiny", False, 3), 16, 4)
    assert init_weights(other, src, best, ["w", "x", "y", "z"]) == ["classifier.weight"]  # not for others

    cfg = _cfg(class_folder, str(tmp_path / "ft"), loss="milan", epochs=1, lr=1e-4)
    cfg.model.init_from = best
    tuned = train(cfg, quiet=True)
    ft = load_checkpoint(tuned.last_checkpoint)
    for key, value in src["model"].items():  # lr 1e-4 for one epoch: the trained backbone moved only a little
        if key.startswith("backbone.") and value.is_floating_point():
            assert torch.allclose(ft["model"][key], value, atol=0.05), key
    assert ft["mean"] == src["mean"] and ft["std"] == src["std"]
    assert tuned.best_map > 90

    cfg.data.bands = [1, 2]
    cfg.out_dir = str(tmp_path / "bad")
    with pytest.raises(RsirError, match=r"best\.pt: model\.init_from is a tiny on 3 bands; .* on 2"):
        train(cfg, quiet=True)


def test_the_registry_names_a_method_for_every_loss():
    from training.methods import make_method

    labels = torch.tensor([0, 1, 0, 1])
    kinds = {}
    for name, spec in LOSSES.items():
        if spec.method == "crossmodal":
            with pytest.raises(ValueError, match="runs in the crossmodal trainer"):
                make_method(LossConfig(name=name), labels, 2, 8, 0)
            continue
        kinds[name] = type(make_method(LossConfig(name=name), labels, 2, 8, 0)).__name__
    assert kinds["triplet-semi-hard"] == "PMLMethod" and kinds["snca-hash"] == "BankMethod"
    assert kinds["milan"] == "MiLANMethod" and kinds["bce"] == "ClassifierMethod"
    assert set(loss_names(hash_bits=True)) == {"milan", "snca-hash"}
    assert set(loss_names(labels="paired")) == {"crossmodal-supervised", "crossmodal-ssl", "crossmodal-supervised-ssl"}
