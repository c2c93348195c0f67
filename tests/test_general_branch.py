"""The general branch (training/general_branch.py): the untrained ImageNet features beside the trained embedding,
sharing the frozen first blocks; exported and run by core/ like any model."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.encoder import Encoder, GeneralBranchInfo, ModelInfo, describe_method
from core.errors import RsirError
from tests.rasters import write_class_folder
from training.config import parse_config
from training.export import export_checkpoint  # it checks onnxruntime against torch at every side it tries
from training.general_branch import GeneralAndTrained, GeneralBranch, fit_pca, shared_blocks_match
from training.models.efficientnet_lite import efficientnet_lite
from training.models.factory import TrainNet
from training.trainer import train


def test_the_branches_share_the_prefix_and_concatenate_as_documented():
    torch.manual_seed(0)
    imagenet = efficientnet_lite("efficientnet_lite0", pretrained=False).eval()
    trained = TrainNet(copy.deepcopy(imagenet), 16, frozen_blocks=3).eval()
    with torch.no_grad():
        for p in trained.backbone._blocks[5].parameters():  # training moved a later block
            p.add_(0.05)
    assert shared_blocks_match(trained.backbone, imagenet, 3) and not shared_blocks_match(trained.backbone,
                                                                                          imagenet, 6)
    feats = np.random.default_rng(0).normal(size=(50, 1280)).astype(np.float32)
    mean, proj = fit_pca(feats, 8)
    assert proj.shape == (1280, 8) and np.allclose(proj.T @ proj, np.eye(8), atol=1e-5)
    # weights count rows as if repeated: the first 10 rows weighing 3 each are those rows three times over
    w_mean, w_proj = fit_pca(feats, 8, weights=np.r_[np.full(10, 3.0), np.ones(40)])
    r_mean, r_proj = fit_pca(np.concatenate([feats[:10], feats[:10], feats]), 8)
    np.testing.assert_allclose(w_mean, r_mean, atol=1e-5)
    np.testing.assert_allclose(np.abs(w_proj.T @ r_proj), np.eye(8), atol=1e-3)  # the same axes, up to sign
    assert not np.allclose(np.abs(w_proj.T @ proj), np.eye(8), atol=1e-3)  # and not the unweighted ones
    net = GeneralAndTrained(trained, imagenet, 3, mean, proj, 0.3).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        out = net(x)
        general = F.normalize((imagenet.features(x) - torch.from_numpy(mean)) @ torch.from_numpy(proj), dim=1)
        specific = trained(x).emb
    want = F.normalize(torch.cat([0.3 * general, 0.7 * specific], dim=1), dim=1)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)
    assert out.shape == (2, 24)
    # tap = N: the general part is block N's output, mean-pooled, instead of the head's features
    h = imagenet.act(imagenet._bn0(imagenet._conv_stem(x)))
    with torch.no_grad():
        for block in imagenet._blocks[:10]:
            h = block(h)
        mid = h.mean(dim=(2, 3))
        m_mean, m_proj = fit_pca(np.random.default_rng(1).normal(size=(50, mid.shape[1])).astype(np.float32), 8)
        tapped = GeneralAndTrained(trained, imagenet, 3, m_mean, m_proj, 0.3, tap=10).eval()(x)
        general = F.normalize((mid - torch.from_numpy(m_mean)) @ torch.from_numpy(m_proj), dim=1)
    torch.testing.assert_close(tapped, F.normalize(torch.cat([0.3 * general, 0.7 * specific], dim=1), dim=1),
                               atol=1e-5, rtol=1e-4)
    # scale: the general part sees the input resized (the trained part does not)
    with torch.no_grad():
        scaled = GeneralAndTrained(trained, imagenet, 3, mean, proj, 0.3, scale=1.5).eval()(x)
        big = F.interpolate(x, size=(60, 60), mode="bilinear", align_corners=False)
        general = F.normalize((imagenet.features(big) - torch.from_numpy(mean)) @ torch.from_numpy(proj), dim=1)
    torch.testing.assert_close(scaled, F.normalize(torch.cat([0.3 * general, 0.7 * specific], dim=1), dim=1),
                               atol=1e-5, rtol=1e-4)
    # views: the general part's pooled features averaged over the (resized) input and its quarter turn
    with torch.no_grad():
        two = GeneralAndTrained(trained, imagenet, 3, mean, proj, 0.3, scale=1.5, views=2).eval()(x)
        f = (imagenet.features(big) + imagenet.features(torch.rot90(big, 1, dims=[2, 3]))) / 2
        general = F.normalize((f - torch.from_numpy(mean)) @ torch.from_numpy(proj), dim=1)
    torch.testing.assert_close(two, F.normalize(torch.cat([0.3 * general, 0.7 * specific], dim=1), dim=1),
                               atol=1e-5, rtol=1e-4)
    # a second network: each network's view-averaged block features L2-normalised, concatenated, then the PCA
    second = efficientnet_lite("efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():
        for p in second.parameters():  # another network than the first
            p.mul_(1.1)

        def pooled(net, img, tap):
            return net.pooled_between(net.prefix(img, 0), 0, tap)

        def averaged(net, tap):
            return (pooled(net, big, tap) + pooled(net, torch.rot90(big, 1, dims=[2, 3]), tap)) / 2

        f = torch.cat([F.normalize(averaged(imagenet, 10), dim=1), F.normalize(averaged(second, 8), dim=1)], dim=1)
        j_mean, j_proj = fit_pca(np.random.default_rng(2).normal(size=(50, f.shape[1])).astype(np.float32), 8)
        joint = GeneralAndTrained(trained, imagenet, 3, j_mean, j_proj, 0.3, 10, 1.5, 2, (second, 8, 1.5, 2)).eval()(x)
        general = F.normalize((f - torch.from_numpy(j_mean)) @ torch.from_numpy(j_proj), dim=1)
    assert f.shape[1] == 112 + 80  # lite0: block 10 ends in 112 channels, block 8 in 80
    torch.testing.assert_close(joint, F.normalize(torch.cat([0.3 * general, 0.7 * specific], dim=1), dim=1),
                               atol=1e-5, rtol=1e-4)
    # the second network with its own reading: the input as it is, four quarter turns
    with torch.no_grad():
        own = sum(pooled(second, torch.rot90(x, k, dims=[2, 3]), 8) for k in range(4)) / 4
        f = torch.cat([F.normalize(averaged(imagenet, 10), dim=1), F.normalize(own, dim=1)], dim=1)
        joint = GeneralAndTrained(trained, imagenet, 3, j_mean, j_proj, 0.3, 10, 1.5, 2,
                                  (second, 8, 1.0, 4)).eval()(x)
        general = F.normalize((f - torch.from_numpy(j_mean)) @ torch.from_numpy(j_proj), dim=1)
    torch.testing.assert_close(joint, F.normalize(torch.cat([0.3 * general, 0.7 * specific], dim=1), dim=1),
                               atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("general")
    data = write_class_folder(str(base / "data"), n_classes=3, per_class=12, size=32)
    cfg = parse_config({"out_dir": str(base / "run"), "data": {"root": data, "input_size": 32,
                                                               "input_size_range": [32, 48]},
                        "model": {"backbone": "efficientnet_lite0", "embedding_dim": 16, "frozen_blocks": 4},
                        "loss": {"name": "triplet-semi-hard"}, "optim": {"epochs": 1, "batch_size": 16}})
    train(cfg, quiet=True)
    return str(base / "run")


def test_a_checkpoint_exports_with_its_general_branch(lite0_run, tmp_path):
    out = str(tmp_path / "g.onnx")
    meta = export_checkpoint(os.path.join(lite0_run, "best.pt"), out, general=GeneralBranch(0.5, 8))
    assert meta["rsir.embedding_dim"] == "24" and json.loads(meta["rsir.general_branch"])["shared_blocks"] == 4
    enc = Encoder(out)
    assert "with a general ImageNet branch (PCA-8, weight 0.5)" in describe_method(enc.info.metadata)
    e32, _ = enc.encode(np.random.default_rng(0).uniform(0, 255, (2, 3, 32, 32)).astype(np.float32))
    e48, _ = enc.encode(np.random.default_rng(0).uniform(0, 255, (2, 3, 48, 48)).astype(np.float32))
    assert e32.shape == e48.shape == (2, 24)
    tapped = str(tmp_path / "g10.onnx")
    meta = export_checkpoint(os.path.join(lite0_run, "best.pt"), tapped, general=GeneralBranch(0.5, 8, 10))
    assert json.loads(meta["rsir.general_branch"])["features"] == "block 10"
    assert "PCA-8, weight 0.5, block 10 features" in describe_method(Encoder(tapped).info.metadata)
    # the general part at 1.5x the input inside the graph: exported (parity with torch checked at every side),
    # recorded, and run by core at the model's sides
    scaled = str(tmp_path / "g10s.onnx")
    meta = export_checkpoint(os.path.join(lite0_run, "best.pt"), scaled, general=GeneralBranch(0.5, 8, 10, 1.5, 2))
    assert json.loads(meta["rsir.general_branch"])["input_scale"] == 1.5
    assert json.loads(meta["rsir.general_branch"])["views"] == 2
    assert ("block 10 features at 1.5x the input, averaged over 2 quarter turns"
            in describe_method(Encoder(scaled).info.metadata))
    # parsed once into ModelInfo; its own pass costs 2 views x 1.5^2 the pixels: core shrinks its batches
    # to keep memory flat
    assert Encoder(scaled).info.general_branch == GeneralBranchInfo(0.5, 8, "block 10", 1.5, 2)
    assert Encoder(scaled).info.pass_cost == 5.5 and Encoder(tapped).info.pass_cost == 1.0
    broken = dict(Encoder(scaled).info.metadata, **{"rsir.general_branch": json.dumps({"weight": 0.5})})
    with pytest.raises(RsirError, match="malformed rsir metadata .KeyError: 'dims'"):
        ModelInfo.from_metadata("m.onnx", "0" * 64, broken)
    assert Encoder(scaled, batch_size=64).batch_size == 11 and Encoder(tapped, batch_size=64).batch_size == 64
    px = np.random.default_rng(0).uniform(0, 255, (2, 3, 32, 32)).astype(np.float32)
    s32, t32 = Encoder(scaled).encode(px)[0], Encoder(tapped).encode(px)[0]
    np.testing.assert_allclose(s32[:, 8:], t32[:, 8:], atol=1e-5)  # the trained part saw the input as it was
    assert np.abs(s32[:, :8] - t32[:, :8]).max() > 1e-3
    # a second untrained network joining the branch: exported (parity checked), recorded, described, costed
    joined = str(tmp_path / "g10j.onnx")
    meta = export_checkpoint(os.path.join(lite0_run, "best.pt"), joined,
                             general=GeneralBranch(0.5, 8, 10, 1.5, 2, "efficientnet_lite0:8"))
    assert json.loads(meta["rsir.general_branch"])["also"] == "efficientnet_lite0 block 8"
    info = Encoder(joined).info
    assert "joined by EfficientNet-lite0 block 8 features" in describe_method(info.metadata)
    assert info.general_branch.also == "efficientnet_lite0 block 8" and info.pass_cost == 10.0
    own = str(tmp_path / "g10jo.onnx")  # the second network at the input's own size, over 4 quarter turns
    meta = export_checkpoint(os.path.join(lite0_run, "best.pt"), own,
                             general=GeneralBranch(0.5, 8, 10, 1.5, 2, "efficientnet_lite0:8", 1.0, 4))
    g = json.loads(meta["rsir.general_branch"])
    assert (g["also_input_scale"], g["also_views"]) == (1.0, 4)
    info = Encoder(own).info
    assert "joined by EfficientNet-lite0 block 8 features (at 1x, 4 quarter turns)" in describe_method(info.metadata)
    assert (info.general_branch.also_scale, info.general_branch.also_views, info.pass_cost) == (1.0, 4, 9.5)
    j32 = Encoder(joined).encode(px)[0]
    np.testing.assert_allclose(j32[:, 8:], s32[:, 8:], atol=1e-5)  # the same trained part
    assert np.abs(j32[:, :8] - s32[:, :8]).max() > 1e-3
    ckpt, bad = os.path.join(lite0_run, "best.pt"), str(tmp_path / "x.onnx")
    with pytest.raises(RsirError, match="--general-also: expected BACKBONE:BLOCK"):
        export_checkpoint(ckpt, bad, general=GeneralBranch(0.5, 8, 10, also="efficientnet_lite0"))
    with pytest.raises(RsirError, match="--general-also: resnet50 is not one of"):
        export_checkpoint(ckpt, bad, general=GeneralBranch(0.5, 8, 10, also="resnet50:3"))
    with pytest.raises(RsirError, match="--general-also: efficientnet_lite0 has 16 blocks, not 40"):
        export_checkpoint(ckpt, bad, general=GeneralBranch(0.5, 8, 10, also="efficientnet_lite0:40"))
    with pytest.raises(RsirError, match="--general-also-scale must be in 1..4 and --general-also-views 1, 2 or 4"):
        export_checkpoint(ckpt, bad, general=GeneralBranch(0.5, 8, 10, also="efficientnet_lite0:8", also_views=3))
    with pytest.raises(RsirError, match="give --general-block too"):
        export_checkpoint(ckpt, bad, general=GeneralBranch(0.5, 8, also="efficientnet_lite0:8"))
    with pytest.raises(RsirError, match="--general-block must be after the shared blocks"):
        export_checkpoint(ckpt, bad, general=GeneralBranch(0.5, 8, 4))
    with pytest.raises(RsirError, match="weight must be in"):
        export_checkpoint(ckpt, bad, general=GeneralBranch(1.5, 8))
    with pytest.raises(RsirError, match="--general-scale must be in 1..4"):
        export_checkpoint(ckpt, bad, general=GeneralBranch(0.5, 8, scale=0.5))
    with pytest.raises(RsirError, match="--general-views must be 1, 2 or 4"):
        export_checkpoint(ckpt, bad, general=GeneralBranch(0.5, 8, views=3))
