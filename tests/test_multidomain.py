"""Multi-dataset training (`data.kind = multi`): namespaced labels, one image size per dataset, batches that never
mix datasets, the regularisers towards the starting backbone, exact resume, and a resolution-aware export that
core/ encodes at any side in its range."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from core.encoder import Encoder
from core.errors import Cancelled, RsirError
from tests.rasters import write_class_folder
from training.augment import coarser, random_resized_crop
from training.batches import MultiBatches, SetBatches
from training.checkpoint import load as load_checkpoint
from training.checkpoint import model_from_checkpoint
from training.config import parse_config
from training.datasets import ImageSet
from training.export import check_onnx_parity, export_checkpoint
from training.multidata import load_sets, namespaced
from training.regularisers import L2SP, DistanceDistillation, relative_distances
from training.trainer import train


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory) -> tuple[str, str, str]:
    base = tmp_path_factory.mktemp("multi")
    a = write_class_folder(str(base / "a"), n_classes=3, per_class=20, size=24)
    b = write_class_folder(str(base / "b"), n_classes=4, per_class=20, size=48)
    unseen = base / "unseen.txt"
    unseen.write_text("# held out\nclass3\n")
    return a, b, str(unseen)


def _cfg(two_sets, out: str, epochs: int = 2, **loss) -> object:
    a, b, unseen = two_sets
    return parse_config({
        "out_dir": out, "seed": 0,
        "data": {"kind": "multi", "input_size": 32, "input_size_range": [24, 64], "val_database_max": 30,
                 "sets": [{"root": a, "input_size": 24, "max_per_epoch": 32},
                          {"root": b, "input_size": 48, "exclude_classes_file": unseen}]},
        "model": {"backbone": "tiny", "pretrained": False, "embedding_dim": 16, "frozen_blocks": 1},
        "loss": {"name": "triplet-semi-hard", **loss},
        "optim": {"epochs": epochs, "batch_size": 16, "lr": 0.01, "threads": 1},
        "augment": {"crop_scale": 0.5, "resolution": 2.0, "jitter": 0.2},
    })


def test_datasets_keep_their_own_classes_and_sizes(two_sets, tmp_path):
    cfg = _cfg(two_sets, str(tmp_path / "run"))
    assert cfg.data.sets[1].exclude_classes == ["class3"]  # the file's classes go into the config and its hash
    sets = load_sets(cfg.data, None)
    (sa, da), (sb, db) = sets
    assert (sa.name, sb.name) == ("a", "b")
    assert da["train"].class_names == ["a:class0", "a:class1", "a:class2"]
    assert db["train"].class_names == ["b:class0", "b:class1", "b:class2"]  # class3 left out of every split
    assert all(len(np.unique(db[s].labels)) == 3 for s in ("train", "val", "test"))
    assert da["train"].pixels.shape[2:] == (24, 24) and db["train"].pixels.shape[2:] == (48, 48)


def test_namespacing_refuses_unknown_excluded_classes():
    data = {"train": ImageSet(np.zeros((2, 3, 4, 4), np.uint8), np.array([0, 1]), ["x", "y"], ["0", "1"])}
    with pytest.raises(RsirError, match=r"where: exclude_classes names classes it does not have: \['z'\]"):
        namespaced(data, "d", ["z"], "where")
    with pytest.raises(RsirError, match="every class is excluded"):
        namespaced(data, "d", ["x", "y"], "where")


def test_batches_never_mix_datasets_and_respect_the_cap():
    def part(n: int, size: int, first_label: int) -> SetBatches:
        return SetBatches(ImageSet(np.zeros((n, 3, size, size), np.uint8), np.full(n, first_label), ["c"] * 9,
                                   [str(i) for i in range(n)]), 255.0, [0.5] * 3, [0.25] * 3, "cpu")

    multi = MultiBatches([part(40, 24, 0), part(50, 48, 5)], caps=[20, 0])
    batches = multi.epoch_batches(torch.Generator().manual_seed(0), 10)
    assert multi.steps_per_epoch(10) == len(batches) == 2 + 5
    sides = []
    for idx in batches:
        assert len(idx) == 10 and ((idx < 40).all() or (idx >= 40).all())
        sides.append(multi.get(idx).shape[-1])
    assert sorted(sides) == [24, 24, 48, 48, 48, 48, 48]
    again = multi.epoch_batches(torch.Generator().manual_seed(0), 10)
    assert all(torch.equal(x, y) for x, y in zip(batches, again))
    with pytest.raises(ValueError, match="one dataset"):
        multi.get(torch.tensor([0, 45]))


def test_multi_dataset_run_resumes_exactly_and_exports_a_resolution_aware_model(two_sets, tmp_path):
    straight = str(tmp_path / "straight")
    train(_cfg(two_sets, straight, epochs=2, distill_weight=1.0, l2sp_weight=0.01), quiet=True)
    resumed = str(tmp_path / "resumed")
    calls = iter(range(100))  # 2 batches of each dataset an epoch: stop at epoch 2's first step
    with pytest.raises(Cancelled, match="resume from epoch 2"):
        train(_cfg(two_sets, resumed, epochs=2, distill_weight=1.0, l2sp_weight=0.01), quiet=True,
              should_stop=lambda: next(calls) >= 4)
    train(_cfg(two_sets, resumed, epochs=2, distill_weight=1.0, l2sp_weight=0.01), quiet=True)
    a, b = (load_checkpoint(os.path.join(d, "last.pt")) for d in (straight, resumed))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # the frozen stem layer kept its starting weights; later layers moved
    start = a["start_backbone"]
    assert torch.equal(a["model"]["backbone.body.0.weight"], start["body.0.weight"])
    assert not torch.equal(a["model"]["backbone.body.2.weight"], start["body.2.weight"])
    assert a["class_names"] == ["a:class0", "a:class1", "a:class2", "b:class0", "b:class1", "b:class2"]

    onnx_path = str(tmp_path / "multi.onnx")
    meta = export_checkpoint(os.path.join(straight, "best.pt"), onnx_path, invariance="rot4")
    assert meta["rsir.input_size_range"] == "[24, 64]" and meta["rsir.input_size"] == "32"
    net = model_from_checkpoint(load_checkpoint(os.path.join(straight, "best.pt"))).retrieval_net()
    from training.models.invariant import GroupAveraged

    for side in (24, 37, 64):
        assert check_onnx_parity(GroupAveraged(net, "rot4"), onnx_path, 3, side) <= 1e-4
    enc = Encoder(onnx_path)
    assert enc.info.encode_size(48) == 48 and enc.info.encode_size(16) == 24 and enc.info.encode_size(300) == 64
    e24, _ = enc.encode(np.full((2, 3, 24, 24), 100, np.float32))
    e64, _ = enc.encode(np.full((1, 3, 64, 64), 100, np.float32))
    assert e24.shape == (2, 16) and e64.shape == (1, 16)
    with pytest.raises(RsirError, match=r"input must be \(N, 3, S, S\) with 24 <= S <= 64, got \(1, 3, 65, 65\)"):
        enc.encode(np.zeros((1, 3, 65, 65), np.float32))


def test_regularisers_vanish_at_the_starting_point():
    backbone = torch.nn.Sequential(torch.nn.Linear(4, 3))
    model = torch.nn.Module()
    model.backbone = backbone
    reference = torch.nn.Sequential(torch.nn.Linear(4, 3))
    reference.load_state_dict(backbone.state_dict())
    l2sp = L2SP(model, reference, weight=2.0)
    x = torch.zeros(1)
    assert float(l2sp.penalty(model, x, None)[0].detach()) == 0.0
    with torch.no_grad():
        backbone[0].bias += 0.5
    assert float(l2sp.penalty(model, x, None)[0].detach()) == pytest.approx(2.0 * 3 * 0.25)

    class Teacher(torch.nn.Module):
        def features(self, x):
            return x

    feats = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    out = type("Out", (), {"emb": (feats - feats.mean(0)) * 3.0})()  # the same shape of distances, scaled
    distill = DistanceDistillation(Teacher(), weight=1.0)
    assert float(distill.penalty(None, feats, out)[0]) == pytest.approx(0.0, abs=1e-6)
    out.emb = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    assert float(distill.penalty(None, feats, out)[0]) > 0.01
    assert float(relative_distances(feats).mean()) == pytest.approx(1.0)


def test_scale_augmentations_keep_a_flat_image_flat():
    x = torch.full((4, 3, 32, 32), 0.25)
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(random_resized_crop(x, 0.3, gen), x)
    torch.testing.assert_close(coarser(x, 2.5), x)
    ramp = torch.linspace(0, 1, 32).repeat(1, 3, 32, 1)
    assert torch.equal(coarser(ramp, 1.0), ramp)
    assert not torch.allclose(random_resized_crop(ramp, 0.3, gen), ramp)


def test_multi_config_errors_name_the_problem(two_sets, tmp_path):
    a, _, _ = two_sets
    base = {"out_dir": str(tmp_path), "model": {"backbone": "tiny", "pretrained": False},
            "loss": {"name": "triplet-semi-hard"}}
    with pytest.raises(RsirError, match=r"data.kind = multi goes with one \[\[data.sets\]\] table per dataset"):
        parse_config({**base, "data": {"kind": "multi"}}, "c.toml")
    with pytest.raises(RsirError, match="data.sets names must differ"):
        parse_config({**base, "data": {"kind": "multi", "sets": [{"root": a}, {"root": a}]}}, "c.toml")
    with pytest.raises(RsirError, match=r"input_size_range must be \[smallest, largest\] pixels holding"):
        parse_config({**base, "data": {"kind": "multi", "input_size": 32, "input_size_range": [40, 64],
                                       "sets": [{"root": a}]}}, "c.toml")
    with pytest.raises(RsirError, match=r"no-such.txt: no such class list file"):
        parse_config({**base, "data": {"kind": "multi", "sets": [{"root": a, "exclude_classes_file":
                                                                  "no-such.txt"}]}}, "c.toml")


def test_codes_without_whitening_and_an_int8_copy_from_a_multi_dataset_config(two_sets, tmp_path, capsys):
    import json

    from core.cli import main

    a, b, unseen = two_sets
    config = tmp_path / "multi.toml"
    config.write_text(f"""out_dir = "run"
[data]
kind = "multi"
input_size = 32
input_size_range = [24, 64]
[[data.sets]]
root = "{a}"
input_size = 24
[[data.sets]]
root = "{b}"
input_size = 48
exclude_classes_file = "{unseen}"
[model]
backbone = "tiny"
pretrained = false
embedding_dim = 16
[loss]
name = "triplet-semi-hard"
[optim]
epochs = 1
batch_size = 16
threads = 1
""")
    assert main(["train", str(config), "-q"]) == 0
    model, int8 = str(tmp_path / "m.onnx"), str(tmp_path / "m.int8.onnx")
    assert main(["export", str(tmp_path / "run" / "best.pt"), "--out", model, "--int8", int8,
                 "--calibration", "16"]) == 0
    assert "calibrated on 16 images" in Encoder(int8).info.metadata["rsir.quantization"]
    capsys.readouterr()
    coded = str(tmp_path / "coded.onnx")
    assert main(["whiten", model, "--config", str(config), "--no-whitening", "--itq-codes", "16", "--out", coded,
                 "--cache-dir", "", "--force"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {coded}: codes fitted on 84 train items of 6 classes" in out, out
    info = Encoder(coded).info
    report = json.loads(info.metadata["rsir.whitening"])
    assert report["kind"] == "none" and report["codes"] == "pca-itq-16" and info.code_bits == 16
    assert info.input_size_range == (24, 64)
    # the embedding is the model's own (normalised); only the codes changed
    x = np.random.default_rng(0).uniform(0, 255, (3, 3, 40, 40)).astype(np.float32)
    e0, _ = Encoder(model).encode(x)
    e1, c1 = Encoder(coded).encode(x)
    np.testing.assert_allclose(e0, e1, atol=1e-5)
    assert c1.shape == (3, 2)
    assert main(["whiten", model, "--no-whitening", "--config", str(config), "--out", coded]) == 1
    assert "nothing to do: without whitening, ask for codes" in capsys.readouterr().err
    assert main(["whiten", model, "--out", coded]) == 1
    assert "give either a DATASET or --config" in capsys.readouterr().err
