"""Deep hashing: the hash losses against their formulas, and hash models trained end to end whose exported
codes are balanced and retrieve by Hamming distance through core/."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.encoder import Encoder
from core.metrics import map_at_k, relevance
from tests.rasters import write_class_folder
from training.config import parse_config
from training.datasets import load_folder
from training.export import export_checkpoint
from training.losses import bit_balance_loss, quantization_loss
from training.trainer import train


def test_quantization_and_bit_balance_losses_equal_their_formulas():
    b = torch.tensor([[0.5, -1.0, 0.9], [-0.2, 1.0, -0.9]])
    expect_q = np.mean([(0.5 - 1) ** 2, 0, 0.1 ** 2, 0.8 ** 2, 0, 0.1 ** 2])
    assert quantization_loss(b).item() == pytest.approx(expect_q)
    expect_b = np.mean([0.15 ** 2, 0.0, 0.0])
    assert bit_balance_loss(b).item() == pytest.approx(expect_b)
    assert quantization_loss(torch.tensor([[1.0, -1.0]])).item() == 0.0


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return write_class_folder(str(tmp_path_factory.mktemp("hashdata") / "classes"), n_classes=6, per_class=15,
                              size=32)


@pytest.mark.parametrize("loss", ["milan", "snca-hash"])
def test_hash_model_codes_are_balanced_and_retrieve_by_class(loss, data_root, tmp_path):
    cfg = parse_config({
        "out_dir": str(tmp_path / "run"), "seed": 0,
        "data": {"root": data_root, "input_size": 32},
        "model": {"backbone": "tiny", "pretrained": False, "hash_bits": 16},
        "loss": {"name": loss, "momentum": 0.5, "sigma": 0.1, "quant_weight": 0.1, "balance_weight": 1.0},
        "optim": {"epochs": 6, "batch_size": 8, "lr": 0.01, "threads": 1},
    })
    result = train(cfg, quiet=True)
    onnx_path = str(tmp_path / "hash.onnx")
    meta = export_checkpoint(result.last_checkpoint, onnx_path)  # the end of training, not an early best
    assert meta["rsir.code_bits"] == "16" and meta["rsir.model_type"] == "embedding+hash"
    assert meta["rsir.method"] == loss

    sets = load_folder(data_root, [1, 2, 3], 32)
    enc = Encoder(onnx_path, threads=1)
    db_e, db_c = enc.encode(sets["train"].pixels)
    _, q_c = enc.encode(sets["test"].pixels)
    bits = np.unpackbits(db_c, axis=1)
    share = bits.mean(axis=0)
    assert ((share >= 0.3) & (share <= 0.7)).mean() >= 0.75, share  # most bits split the database evenly
    # Hamming ranking of the exported codes beats chance (1/6) by far
    ham = np.unpackbits(q_c, axis=1)[:, None, :] != bits[None]
    ids = np.argsort(ham.sum(axis=2), axis=1, kind="stable")
    rel = relevance(sets["test"].labels, sets["train"].labels, ids)
    n_rel = np.bincount(sets["train"].labels)[sets["test"].labels]
    assert map_at_k(rel, n_rel, 10) > 0.6
    # the float embedding is the normalised relaxed code: its signs are the codes
    np.testing.assert_array_equal(np.packbits(db_e > 0, axis=1), db_c)
