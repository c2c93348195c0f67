"""`rsir export --invariance`: the exported encoder averages over quarter turns (and mirror images), so a tile and
its turned or flipped copy get the same embedding and the same code through core/, and the plain export does not."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch

from core.cli import main
from core.encoder import Encoder
from core.index.builder import BuildOptions, build_index
from core.index.reader import Index
from core.queries import query_from_image
from core.search import search
from tests.rasters import class_image, write_class_folder, write_raster
from training.config import parse_config
from training.datasets import load_folder
from training.models.invariant import GroupAveraged, group_views
from training.trainer import train


def test_group_views_are_the_dihedral_group():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    for group, n in (("rot4", 4), ("d4", 8)):
        views = group_views(x, group)
        assert len(views) == n
        assert len({v.numpy().tobytes() for v in views}) == n  # all distinct
        # the views of a turned (or, for d4, mirrored) input are the same set: the group is closed
        for moved in [torch.rot90(x, 1, dims=[2, 3])] + ([torch.flip(x, dims=[2])] if group == "d4" else []):
            assert {v.numpy().tobytes() for v in group_views(moved, group)} == {v.numpy().tobytes() for v in views}
    with pytest.raises(ValueError, match="unknown invariance group 'rot8'"):
        group_views(x, "rot8")


@pytest.fixture(scope="module")
def hash_run(tmp_path_factory) -> tuple[str, str]:
    root = write_class_folder(str(tmp_path_factory.mktemp("inv") / "classes"), n_classes=3, per_class=10, size=32)
    out = str(tmp_path_factory.mktemp("inv-run"))
    train(parse_config({
        "out_dir": out, "seed": 0, "data": {"root": root, "input_size": 32},
        "model": {"backbone": "tiny", "pretrained": False, "embedding_dim": 16, "hash_bits": 16},
        "loss": {"name": "milan"}, "optim": {"epochs": 1, "batch_size": 8, "lr": 0.01, "threads": 1},
    }), quiet=True)
    return root, out + "/best.pt"


def _encode_moved(model: str, pixels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    enc = Encoder(model, threads=1)
    moved = [pixels, np.rot90(pixels, 1, axes=(2, 3)), np.rot90(pixels, 3, axes=(2, 3)), pixels[:, :, ::-1, :],
             pixels[:, :, :, ::-1]]
    return [enc.encode(np.ascontiguousarray(p)) for p in moved]


def test_d4_export_is_invariant_to_turns_and_flips(hash_run, tmp_path, capsys):
    root, ckpt = hash_run
    pixels = load_folder(root, [1, 2, 3], 32)["train"].pixels[:12]
    plain, d4 = str(tmp_path / "plain.onnx"), str(tmp_path / "d4.onnx")
    assert main(["export", ckpt, "--out", plain]) == 0
    assert main(["export", ckpt, "--out", d4, "--invariance", "d4"]) == 0
    assert "averaged over d4" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(d4).metadata_props}
    assert meta["rsir.invariance"] == "d4" and meta["rsir.code_bits"] == "16"
    assert "rsir.invariance" not in {p.key for p in onnx.load(plain).metadata_props}

    assert Encoder(d4, threads=1, batch_size=64).batch_size == 8  # 8 views inside: same peak memory as plain
    (e0, c0), *others = _encode_moved(d4, pixels)
    for e, c in others:
        np.testing.assert_allclose(e, e0, atol=1e-5)
        np.testing.assert_array_equal(c, c0)
    # without it a quarter turn moves the embedding: the test above is not passing trivially
    (p0, _), (p1, _), *_ = _encode_moved(plain, pixels)
    assert np.abs(p1 - p0).max() > 1e-2
    # averaging over views keeps the model's own notion of similarity: neighbours mostly agree
    agree = np.mean(np.argsort(-(e0 @ e0.T), axis=1)[:, 1] == np.argsort(-(p0 @ p0.T), axis=1)[:, 1])
    assert agree >= 0.5


def test_rot4_export_is_invariant_to_turns_not_flips(hash_run, tmp_path):
    root, ckpt = hash_run
    pixels = load_folder(root, [1, 2, 3], 32)["train"].pixels[:12]
    rot4 = str(tmp_path / "rot4.onnx")
    assert main(["export", ckpt, "--out", rot4, "--invariance", "rot4"]) == 0
    (e0, _), (e90, _), (e270, _), (eflip, _), _ = _encode_moved(rot4, pixels)
    np.testing.assert_allclose(e90, e0, atol=1e-5)
    np.testing.assert_allclose(e270, e0, atol=1e-5)
    assert np.abs(eflip - e0).max() > 1e-3


def test_invariance_refused_where_it_does_not_apply(hash_run, tmp_path, capsys):
    assert main(["export", "--pretrained", "efficientnet_lite0", "--invariance", "d4",
                 "--out", str(tmp_path / "x.onnx")]) == 1
    assert "--invariance applies to trained checkpoints" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown invariance group"):
        GroupAveraged(torch.nn.Identity(), "d8")


def test_index_of_a_d4_model_finds_turned_copies(hash_run, tmp_path, capsys):
    """An archive holding patches and their turned / mirrored copies: each patch's copy comes back at similarity 1
    with the d4 encoder, and `rsir info` says the model averages over d4."""
    _, ckpt = hash_run
    model = str(tmp_path / "d4.onnx")
    assert main(["export", ckpt, "--out", model, "--invariance", "d4"]) == 0
    folder = tmp_path / "patches" / "a"
    os.makedirs(folder)
    originals = []
    for i in range(4):
        img = class_image(i % 3, 500 + i, 32)
        originals.append(write_raster(str(folder / f"p{i}.tif"), img, epsg=None))
        moved = np.rot90(img, i + 1, axes=(1, 2)) if i < 3 else img[:, :, ::-1]
        write_raster(str(folder / f"p{i}_moved.tif"), np.ascontiguousarray(moved), epsg=None)
    index_dir = str(tmp_path / "idx")
    build_index([str(tmp_path / "patches")], model, index_dir, BuildOptions())
    index = Index(index_dir)
    enc = Encoder(model, threads=1)
    for path in originals:
        hits = search(index, query_from_image(index, enc, path), k=2)
        assert {os.path.basename(h.source) for h in hits} == {os.path.basename(path),
                                                             os.path.basename(path)[:-4] + "_moved.tif"}
        assert min(h.score for h in hits) == pytest.approx(1.0, abs=1e-3)  # float16 storage
    capsys.readouterr()
    assert main(["info", index_dir]) == 0
    assert "averaged over d4" in capsys.readouterr().out
