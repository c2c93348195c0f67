"""`make package`: the zip holds the plugin, its own copy of core/ and honest metadata, and the unzipped plugin
imports core from inside itself."""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile

from tools.package_plugin import build


def test_plugin_zip_is_self_contained(tmp_path):
    out = str(tmp_path / "rsir_qgis_plugin.zip")
    names = build(out)
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(names)
        meta = configparser.ConfigParser()
        meta.read_string(zf.read("rsir_qgis_plugin/metadata.txt").decode())
        zf.extractall(tmp_path / "plugins")
    for required in ("rsir_qgis_plugin/__init__.py", "rsir_qgis_plugin/icon.png", "rsir_qgis_plugin/core/search.py",
                     "rsir_qgis_plugin/core/queries.py", "rsir_qgis_plugin/core/archive/vectors.py",
                     "rsir_qgis_plugin/core/index/builder.py", "rsir_qgis_plugin/processing_provider.py"):
        assert required in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "training" in n]
    general = meta["general"]
    assert general["qgisMinimumVersion"] == "3.22" and general["version"] == "0.1.0"
    assert general["hasProcessingProvider"] == "yes" and general["icon"] == "icon.png"
    for key in ("name", "description", "about", "author", "email", "repository"):
        assert general[key].strip()
    # the unzipped plugin uses its bundled core and float model (not the checkout's, nor the int8 copy beside it);
    # and never imports torch
    code = ("import os, sys; import rsir_qgis_plugin.engine as e, rsir_qgis_plugin.controller; "
            "print(e.search.__name__, 'torch' in sys.modules, os.path.relpath(e.default_model_path()))")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "plugins"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path), check=True).stdout.split()
    assert out == ["rsir_qgis_plugin.core.search", "False",
                   os.path.join("plugins", "rsir_qgis_plugin", "models", "eurosat_rgb_lite2_milan128_rot4_wcw.onnx")]


def test_the_default_model_ships_with_its_metadata_and_prefills_the_plugin(tmp_path):
    from core.encoder import Encoder
    from rsir_qgis_plugin.engine import default_model_path

    path = default_model_path()
    assert os.path.basename(path) == "eurosat_rgb_lite2_milan128_rot4_wcw.onnx"
    info = Encoder(path).info
    assert info.method == "milan" and info.input_size == 96 and info.embedding_dim == 128 and info.code_bits == 128
    assert info.views == 4 and info.metadata["rsir.invariance"] == "rot4"
    assert len(info.class_names) == 10 and "SeaLake" in info.class_names
    assert os.path.getsize(path) <= 20e6 and info.metadata["rsir.weight_storage"] == "float16"  # --half-weights
    out = str(tmp_path / "rsir_qgis_plugin.zip")
    names = build(out)
    assert {"rsir_qgis_plugin/models/eurosat_rgb_lite2_milan128_rot4_wcw.onnx",
            "rsir_qgis_plugin/models/int8/eurosat_rgb_lite2_milan128_rot4_wcw.int8.onnx",
            "rsir_qgis_plugin/models/fast/eurosat_rgb_lite2_milan128_wcw.int8.onnx"} <= set(names)


def test_the_int8_default_model_ships_beside_it_and_embeds_alike():
    import numpy as np

    from core.encoder import Encoder
    from rsir_qgis_plugin.engine import default_model_path

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "default_model")
    float_enc = Encoder(default_model_path(), threads=1)
    q_enc = Encoder(os.path.join(root, "int8", "eurosat_rgb_lite2_milan128_rot4_wcw.int8.onnx"), threads=1)
    assert q_enc.session.get_modelmeta().custom_metadata_map["rsir.quantization"].startswith(
        "int8 weights and activations")
    assert os.path.getsize(q_enc.info.path) < os.path.getsize(float_enc.info.path) * 0.6  # int8 vs float16 storage
    # the same metadata contract: core reads, indexes and searches with it as with the float model
    assert (q_enc.info.input_size, q_enc.info.embedding_dim, q_enc.info.class_names) == \
        (float_enc.info.input_size, float_enc.info.embedding_dim, float_enc.info.class_names)
    # smooth image-like inputs (blurred noise, 0-255): the int8 embedding stays close to the float one
    rng = np.random.default_rng(0)
    cell = float_enc.info.input_size // 16
    raw = rng.uniform(0, 255, (16, 3, 16, 16)).astype(np.float32)
    raw = np.kron(raw, np.ones((1, 1, cell, cell), np.float32))
    emb_f, _ = float_enc.encode(raw)
    emb_q, _ = q_enc.encode(raw)
    # (0.96 here; 0.98 on 512 EuroSAT test images, where int8 costs 0.15 mAP@100: default_model/README.md)
    assert np.sum(emb_f * emb_q, axis=1).mean() > 0.95
    assert (np.argmax(emb_q @ emb_f.T, axis=1) == np.arange(len(raw))).all()  # each nearest its own float
    assert q_enc.info.views == 4  # the int8 copy averages over quarter turns too
    emb_turned, codes_turned = q_enc.encode(np.ascontiguousarray(np.rot90(raw, 1, axes=(2, 3))))
    np.testing.assert_allclose(emb_turned, emb_q, atol=1e-4)
    # the same codes but for the odd bit whose logit is within int8 rounding of zero on these synthetic tiles
    flipped = np.unpackbits(codes_turned ^ q_enc.encode(raw)[1], axis=1).sum(axis=1)
    assert flipped.max() <= 2 and flipped.sum() <= 4

    # the fast model: the same checkpoint, int8, without view averaging (4x faster): close, but not invariant
    fast = Encoder(os.path.join(root, "fast", "eurosat_rgb_lite2_milan128_wcw.int8.onnx"), threads=1)
    assert fast.info.views == 1 and "rsir.invariance" not in fast.info.metadata
    # all three shipped copies whiten their embedding (rsir whiten), each fitted on its own training embeddings
    assert all("rsir.whitening" in e.info.metadata for e in (float_enc, q_enc, fast))
    emb_fast, _ = fast.encode(raw)
    turned, _ = fast.encode(np.ascontiguousarray(np.rot90(raw, 1, axes=(2, 3))))
    assert np.sum(emb_fast * emb_f, axis=1).mean() > 0.8
    assert np.abs(turned - emb_fast).max() > 1e-2


def test_two_builds_at_once_each_write_a_whole_zip(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    out = str(tmp_path / "dist" / "rsir_qgis_plugin.zip")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(build, [out, out]))
    assert results[0] == results[1]
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None and sorted(zf.namelist()) == sorted(results[0])
    assert os.listdir(tmp_path / "dist") == ["rsir_qgis_plugin.zip"] and oct(os.stat(out).st_mode)[-3:] == "644"
