"""ONNX export by training/ (parity with torch, metadata contract) and the core encoder that reads it."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core.encoder import Encoder, ModelInfo, available_devices, code_hex, pack_signs
from core.errors import RsirError
from training.models.efficientnet_lite import efficientnet_lite
from training.pretrained import imagenet_lsh_net


def test_lite0_onnx_equals_torch(lite0_model):
    net = imagenet_lsh_net(bits=64)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        emb, logits = net(x)
    sess = ort.InferenceSession(lite0_model, providers=["CPUExecutionProvider"])
    got_emb, got_logits = sess.run(["embedding", "hash_logits"], {"input": x.numpy()})
    assert np.max(np.abs(got_emb - emb.numpy())) < 1e-4
    assert np.max(np.abs(got_logits - logits.numpy())) < 1e-4
    # dynamic batch axis
    assert sess.run(["embedding"], {"input": x[:1].numpy()})[0].shape == (1, 1280)


def test_lite0_metadata_contract(lite0_model):
    meta = ort.InferenceSession(lite0_model, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta["rsir.format"] == "1" and meta["rsir.model_type"] == "embedding+hash"
    assert json.loads(meta["rsir.outputs"]) == {"embedding": "embedding", "code": "hash_logits"}
    assert json.loads(meta["rsir.bands"]) == [1, 2, 3] and meta["rsir.input_size"] == "64"
    assert (meta["rsir.embedding_dim"], meta["rsir.code_bits"], meta["rsir.method"]) == ("1280", "64", "imagenet-lsh")
    assert len(meta["rsir.train_config_sha256"]) == 64


def test_bn_feature_mean_matches_monte_carlo_and_centres_lsh():
    """E[relu6(z)], z ~ N(bn.bias, bn.weight^2), in closed form equals sampling; the LSH head passes through it."""
    model = efficientnet_lite(pretrained=True).eval()
    mean = model.pooled_feature_mean()
    z = model._bn1.bias.detach() + model._bn1.weight.detach() * torch.randn(200_000, 1280,
                                                                           generator=torch.Generator().manual_seed(0))
    sampled = z.clamp(0, 6).mean(0)
    assert torch.allclose(mean, sampled, atol=0.01)
    net = imagenet_lsh_net(bits=64)
    logits_at_mean = net.hash_head(mean[None])
    assert torch.allclose(logits_at_mean, torch.zeros_like(logits_at_mean), atol=1e-4)


def test_pretrained_weights_load_and_classify_deterministically():
    model = efficientnet_lite(pretrained=True).eval()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    with torch.no_grad():
        a = model(torch.zeros(1, 3, 224, 224))
    assert a.shape == (1, 1000) and torch.isfinite(a).all()


def test_encoder_normalises_and_packs(tiny_model):
    enc = Encoder(tiny_model, device="cpu", batch_size=3)
    assert enc.device == "cpu" and "cpu" in available_devices()
    raw = np.random.default_rng(1).uniform(0, 255, (7, 3, 32, 32)).astype(np.float32)
    emb, codes = enc.encode(raw)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sess = ort.InferenceSession(tiny_model, providers=["CPUExecutionProvider"])
    x = ((raw / 255.0 - 0.5) / 0.25).astype(np.float32)
    ref_emb, ref_logits = sess.run(None, {"input": x})
    np.testing.assert_allclose(emb, ref_emb / np.linalg.norm(ref_emb, axis=1, keepdims=True), atol=1e-5)
    assert codes.tolist() == np.packbits(ref_logits > 0, axis=1).tolist()
    # scale override: values 10x larger with scale 2550 encode the same
    emb2, codes2 = enc.encode(raw * 10, scale=2550.0)
    np.testing.assert_allclose(emb2, emb, atol=1e-5)
    with pytest.raises(RsirError, match=r"input must be \(N, 3, 32, 32\)"):
        enc.encode(raw[:, :, :16, :16])


def test_pack_signs_and_hex():
    logits = np.array([[1, -1, 0.5, -2, 3, 3, -1, 1, -1, -1, -1, -1, -1, -1, -1, 2]], np.float32)
    packed = pack_signs(logits)
    assert packed.tolist() == [[0b10101101, 0b00000001]] and code_hex(packed[0]) == "ad01"


def test_cuda_request_without_provider_is_a_clear_error(tiny_model):
    if "cuda" in available_devices():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(RsirError, match="no CUDAExecutionProvider"):
        Encoder(tiny_model, device="cuda")


def test_model_info_rejects_bad_metadata():
    good = {"rsir.format": "1", "rsir.model_type": "embedding", "rsir.outputs": '{"embedding": "e"}',
            "rsir.bands": "[1, 2]", "rsir.input_size": "32", "rsir.scale": "255", "rsir.mean": "[0.5, 0.5]",
            "rsir.std": "[0.2, 0.2]", "rsir.embedding_dim": "8"}
    info = ModelInfo.from_metadata("m.onnx", "0" * 64, good)
    assert (info.channels, info.has_hash, info.effective_code_bits, info.views) == (2, False, 8, 1)
    assert ModelInfo.from_metadata("m.onnx", "", {**good, "rsir.invariance": "d4"}).views == 8
    with pytest.raises(RsirError, match="m.onnx: unknown rsir.invariance 'd8'"):
        ModelInfo.from_metadata("m.onnx", "", {**good, "rsir.invariance": "d8"})
    with pytest.raises(RsirError, match="m.onnx: rsir metadata format 2 is not supported"):
        ModelInfo.from_metadata("m.onnx", "", {**good, "rsir.format": "2"})
    with pytest.raises(RsirError, match="one value per band"):
        ModelInfo.from_metadata("m.onnx", "", {**good, "rsir.mean": "[0.5]"})


class _Noisy(torch.nn.Module):
    """Draws fresh noise on every call, so onnxruntime can never match torch: an export that must fail."""

    def forward(self, x):
        return torch.nn.functional.normalize(x.mean(dim=(2, 3)) + torch.rand(x.shape[0], 3), dim=1)


def test_failed_export_keeps_the_previous_file_and_leaves_no_partial(tmp_path):
    from training.export import ExportSpec, export_onnx

    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous model")
    spec = ExportSpec(bands=[1, 2, 3], input_size=16, scale=255.0, mean=[0.0] * 3, std=[1.0] * 3, method="noisy")
    with pytest.raises(RuntimeError, match="differs from torch"):
        export_onnx(_Noisy(), spec, str(out))
    assert out.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
