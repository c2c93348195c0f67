"""Half-precision weight storage (`rsir export/whiten --half-weights`): half the file, float32 compute, the same
embeddings to within float16 rounding of the weights, and int8 copies still made from float32 initializers."""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from core.cli import main
from core.encoder import Encoder, describe_method
from tests.conftest import export_tiny
from training.quantize import quantize_int8
from training.weight_storage import METADATA_KEY, halve_file, restore_float


def _smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Blurred-noise 0-255 RGB images: closer to imagery than white noise."""
    rng = np.random.default_rng(seed)
    cell = size // 8
    raw = rng.uniform(0, 255, (n, 3, 8, 8)).astype(np.float32)
    return np.kron(raw, np.ones((1, 1, cell, cell), np.float32))


def test_halving_stores_float16_casts_back_and_keeps_the_embeddings(tmp_path):
    path = export_tiny(str(tmp_path / "tiny.onnx"))
    ref_emb, ref_codes = Encoder(path).encode(_smooth_images(32, 32))
    before, after, converted = halve_file(path, min_elements=16)
    assert after < before and converted > 0
    model = onnx.load(path)
    half = [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16]
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert half and len(casts) == len(half) and model.graph.node[0].op_type == "Cast"
    assert {p.key: p.value for p in model.metadata_props}[METADATA_KEY] == "float16"
    enc = Encoder(path)
    emb, codes = enc.encode(_smooth_images(32, 32))
    assert emb.dtype == np.float32 and np.sum(emb * ref_emb, axis=1).min() > 0.9999
    assert np.unpackbits(codes ^ ref_codes).sum() <= 2  # a bit whose projection is within rounding of zero
    assert halve_file(path, min_elements=16) == (after, after, 0)  # already halved: left as it is

    restored = onnx.load(path)
    assert restore_float(restored) == len(half)
    values = {t.name: numpy_helper.to_array(t) for t in restored.graph.initializer}
    for t in half:
        name = t.name[:-len("__float16")]
        assert values[name].dtype == np.float32
        np.testing.assert_array_equal(values[name], numpy_helper.to_array(t).astype(np.float32))
    assert not [n for n in restored.graph.node if n.op_type == "Cast"]


def test_an_int8_copy_of_a_halved_model_quantises_its_float32_weights(tmp_path):
    path = export_tiny(str(tmp_path / "tiny.onnx"))
    float_emb, _ = Encoder(path).encode(_smooth_images(16, 32, seed=1))
    halve_file(path, min_elements=16)
    out = str(tmp_path / "tiny.int8.onnx")
    meta = quantize_int8(path, out, _smooth_images(64, 32, seed=2))
    assert METADATA_KEY not in meta and meta["rsir.quantization"].startswith("int8 weights and activations")
    model = onnx.load(out)
    assert not [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    q_emb, _ = Encoder(out).encode(_smooth_images(16, 32, seed=1))
    assert np.sum(q_emb * float_emb, axis=1).mean() > 0.95


def test_export_half_weights_halves_the_imagenet_model_file(tmp_path, lite0_model):
    out, int8 = str(tmp_path / "lite0.onnx"), str(tmp_path / "lite0.int8.onnx")
    assert main(["export", "--pretrained", "efficientnet_lite0", "--bits", "64", "--input-size", "64",
                 "--out", out, "--int8", int8, "--calibration", "0", "--half-weights"]) == 0
    assert os.path.getsize(out) < 0.55 * os.path.getsize(lite0_model)
    images = _smooth_images(16, 64)
    emb, codes = Encoder(out).encode(images)
    ref_emb, ref_codes = Encoder(lite0_model).encode(images)
    assert np.sum(emb * ref_emb, axis=1).min() > 0.9999
    assert np.unpackbits(codes ^ ref_codes, axis=1).sum(axis=1).max() <= 2
    assert METADATA_KEY not in Encoder(int8).info.metadata  # the int8 copy came from the float32 export
    # listings (rsir info, the plugin's index summary) say which copy a model is
    assert describe_method(Encoder(out).info.metadata).endswith(", float16 weight storage")
    assert describe_method(Encoder(int8).info.metadata).endswith(", int8 weights")
