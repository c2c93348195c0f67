"""`rsir train`, `rsir export CHECKPOINT` and `rsir eval` through the real command line."""
from __future__ import annotations

import json
import os
import re

import numpy as np
from osgeo import gdal

from core.cli import main
from tests.rasters import write_class_folder

CONFIG = """
out_dir = "run"
seed = 1
[data]
root = "data"
input_size = 32
[model]
backbone = "tiny"
pretrained = false
embedding_dim = 16
[loss]
name = "{loss}"
sigma = 0.1
momentum = 0.9
[optim]
epochs = 2
batch_size = 16
lr = 0.01
threads = 1
"""


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_export_eval(tmp_path, capsys):
    write_class_folder(str(tmp_path / "data"), n_classes=3, per_class=14, size=32)
    cfg = tmp_path / "triplet.toml"
    cfg.write_text(CONFIG.format(loss="triplet-batch-hard"))
    code, out, err = run(capsys, "train", cfg, "-q")
    assert code == 0, err
    assert re.search(r"trained 2 epoch\(s\) in \d+ s; best val mAP@100 \d+\.\d\d -> .*run/best\.pt", out)
    code, out, _ = run(capsys, "train", cfg, "-q")  # finished: resuming trains nothing more
    assert code == 0 and "trained 0 epoch(s)" in out

    model = tmp_path / "m.onnx"
    code, out, err = run(capsys, "export", tmp_path / "run" / "best.pt", "--out", model)
    assert code == 0, err
    assert "triplet-batch-hard on tiny, embedding 16-d, input 32 px, 3 classes" in out

    ev = tmp_path / "eval"
    code, out, err = run(capsys, "eval", model, tmp_path / "data", "--out", ev, "--cache-dir", "", "--bits", "16",
                         "--baseline-features", "imagenet,model")
    assert code == 0, err
    m = re.search(r"^mAP@(\d+) = (\d+\.\d\d)$", out, re.MULTILINE)
    assert m and int(m.group(1)) == 27  # 3 classes x int(14 * 0.7) = 27 database images (k = min(100, 27))
    results = json.loads((ev / "results.json").read_text())
    names = [r["method"] for r in results["results"]]
    assert names[:2] == ["triplet-batch-hard (float 16-d)", "triplet-batch-hard (hash 16 bits)"]
    # baselines say the size they read the images at, and which of them learnt from the labels
    untrained = "ImageNet Lite0 untrained, 32 px"
    assert {f"{untrained} (float 1280-d)", f"{untrained} LSH-16", f"{untrained} PCA-ITQ-16",
            f"{untrained} KSLSH-16 (supervised by the database labels)", "triplet-batch-hard features + LSH-16",
            "triplet-batch-hard features + PCA-ITQ-16",
            "triplet-batch-hard features + KSLSH-16 (supervised by the database labels)"} <= set(names)
    assert abs(results["results"][0]["map"] - float(m.group(2))) < 0.006
    assert set(results["results"][0]["per_class_ap"]) == {"class0", "class1", "class2"}
    for png in ("pr.png", "tsne.png"):
        ds = gdal.Open(str(ev / png))
        assert ds is not None and ds.RasterXSize > 300
        assert np.std(ds.ReadAsArray()) > 10  # a drawn plot, not a blank image
    code, _, err = run(capsys, "eval", model, tmp_path / "data", "--cache-dir", "", "--baseline-features", "sift")
    assert code == 1 and f"{model}: unknown baseline features ['sift']" in err

    turned = tmp_path / "turned"  # a full turn is the identity: the same score; 45 degrees is recorded
    code, out, err = run(capsys, "eval", model, tmp_path / "data", "--cache-dir", "", "--no-baselines",
                         "--rotate-queries", "360")
    assert code == 0 and "turned 360 degrees" in out and f"mAP@27 = {m.group(2)}" in out, err
    code, out, err = run(capsys, "eval", model, tmp_path / "data", "--cache-dir", "", "--no-baselines",
                         "--rotate-queries", "45", "--out", turned)
    assert code == 0 and "turned 45 degrees" in out, err
    assert json.loads((turned / "results.json").read_text())["rotate_queries"] == 45.0
    expanded = tmp_path / "expanded"
    code, out, err = run(capsys, "eval", model, tmp_path / "data", "--cache-dir", "", "--no-baselines",
                         "--expand", "3", "--out", expanded)
    assert code == 0, err
    results = json.loads((expanded / "results.json").read_text())
    assert results["expand"] == 3 and [r["method"] for r in results["results"]] == [
        "triplet-batch-hard (float 16-d, query expansion 3)", "triplet-batch-hard (hash 16 bits, query expansion 3)"]


def test_bad_training_inputs_exit_1_with_the_file_named(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(CONFIG.format(loss="snca") + "\n[extra]\nx = 1\n")
    code, _, err = run(capsys, "train", cfg)
    assert code == 1 and f"{cfg}: unknown key extra" in err
    cfg.write_text(CONFIG.format(loss="snca"))
    code, _, err = run(capsys, "train", cfg)
    assert code == 1 and f"{tmp_path / 'data'}: no such dataset folder" in err
    code, _, err = run(capsys, "export", tmp_path / "nope.pt", "--out", tmp_path / "x.onnx")
    assert code == 1 and "nope.pt: no such checkpoint" in err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "export", tmp_path / "junk.pt", "--out", tmp_path / "x.onnx")
    assert code == 1 and "junk.pt: not a readable checkpoint" in err and not os.path.exists(tmp_path / "x.onnx")


def test_split_command_writes_the_protocol_split(tmp_path, capsys):
    from training.splits import make_split, read_split

    root = write_class_folder(str(tmp_path / "data"), n_classes=2, per_class=20, size=8)
    code, out, _ = run(capsys, "split", root)
    assert code == 0 and "2 classes, 28 train / 4 val / 8 test" in out
    assert read_split(os.path.join(root, "split.csv")) == make_split(root, seed=42)
    code, _, err = run(capsys, "split", tmp_path / "missing")
    assert code == 1 and "missing: no such dataset folder" in err


def test_int8_export_is_calibrated_on_training_images_and_keeps_the_embeddings(tmp_path, capsys):
    import onnx

    from core.encoder import Encoder
    from training.datasets import load_folder

    write_class_folder(str(tmp_path / "data"), n_classes=3, per_class=14, size=32)
    cfg = tmp_path / "snca.toml"
    cfg.write_text(CONFIG.format(loss="snca"))
    assert run(capsys, "train", cfg, "-q")[0] == 0
    model, q = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    code, out, err = run(capsys, "export", tmp_path / "run" / "best.pt", "--out", model, "--int8", q,
                         "--calibration", "20")
    assert code == 0, err
    assert f"wrote {q}: int8 weights and activations (onnxruntime static QDQ, per channel, calibrated on 20 " \
           "images)" in out
    graph = onnx.load(str(q))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.graph.initializer)  # int8 conv weights
    meta_f = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    meta_q = {p.key: p.value for p in graph.metadata_props}
    assert {k: v for k, v in meta_q.items() if k != "rsir.quantization"} == meta_f  # core/ reads it alike

    images = load_folder(str(tmp_path / "data"), [1, 2, 3], 32)["test"].pixels
    emb_f, _ = Encoder(str(model), threads=1).encode(images)
    emb_q, _ = Encoder(str(q), threads=1).encode(images)
    assert np.sum(emb_f * emb_q, axis=1).min() > 0.98
    assert np.array_equal(np.argsort(-emb_f @ emb_f.T, axis=1)[:, 1], np.argsort(-emb_q @ emb_f.T, axis=1)[:, 1])

    code, _, err = run(capsys, "export", "--pretrained", "efficientnet_lite0", "--out", tmp_path / "p.onnx",
                       "--int8", tmp_path / "p8.onnx")
    assert code == 1 and "add --calibration 0" in err and not os.path.exists(tmp_path / "p.onnx")
