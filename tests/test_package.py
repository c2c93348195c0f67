"""`make package`: the zip holds the plugin, its own copy of core/ and honest metadata, and the unzipped plugin
imports core from inside itself."""
from __future__ import annotations

import configparser
import json
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
    from core.default_model import default_model_path

    assert out == ["rsir_qgis_plugin.core.search", "False",
                   os.path.join("plugins", "rsir_qgis_plugin", "models", os.path.basename(default_model_path()))]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shipped() -> tuple[str, str, str]:
    """(default, its int8 copy, the fast copy): one file each in default_model/, int8/ and fast/."""
    import glob

    found = [sorted(glob.glob(os.path.join(ROOT, "default_model", sub, "*.onnx"))) for sub in ("", "int8", "fast")]
    assert [len(f) for f in found] == [1, 1, 1], found
    return found[0][0], found[1][0], found[2][0]


def test_the_default_model_ships_with_its_metadata_and_prefills_the_plugin(tmp_path):
    from core.encoder import Encoder
    from rsir_qgis_plugin.engine import default_model_path

    default, int8, fast = _shipped()
    assert default_model_path() == default
    assert os.path.basename(int8) == os.path.basename(default).replace(".onnx", ".int8.onnx")
    info = Encoder(default).info
    # the multi-domain default (issue 24): resolution-aware, a general (untrained ImageNet) branch beside the
    # trained embedding, PCA-ITQ codes, no class-specific whitening, trained on EuroSAT and 15 AID classes only
    assert info.input_size_range == (96, 256) and info.input_size == 96 and info.views == 1
    # block 17 of the input at 1.5x, over 2 quarter turns, joined by untrained Lite0's block 13 of the input as
    # read, over 4 quarter turns
    general = json.loads(info.metadata["rsir.general_branch"])
    assert (general["features"], general["input_scale"], general["views"], general["dims"]) == ("block 17", 1.5, 2, 320)
    also = (general["also"], general["also_input_scale"], general["also_views"])
    assert also == ("efficientnet_lite0 block 13", 1.0, 4)
    whitening = json.loads(info.metadata["rsir.whitening"])  # fitted on both datasets alike, shrunk by 0.3
    assert (whitening["kind"], whitening["shrinkage"], whitening["classes"]) == ("within-class", 0.3, 25)
    assert (info.embedding_dim, info.code_bits) == (448, 256)
    unseen = {line.strip() for line in open(os.path.join(ROOT, "configs", "generalization", "aid_unseen_classes.txt"))
              if line.strip() and not line.startswith("#")}
    trained_on = {name.split(":")[-1] for name in info.class_names}  # "eurosat_rgb:SeaLake", "aid:Airport"
    assert {"SeaLake", "Stadium"} <= trained_on and "Airport" in unseen and not trained_on & unseen
    assert os.path.getsize(default) <= 25e6 and info.metadata["rsir.weight_storage"] == "float16"
    names = build(str(tmp_path / "rsir_qgis_plugin.zip"))
    assert {f"rsir_qgis_plugin/models/{os.path.relpath(p, os.path.join(ROOT, 'default_model'))}"
            for p in (default, int8, fast)} <= set(names)


def test_the_int8_and_fast_copies_embed_alike():
    import numpy as np

    from core.encoder import Encoder

    default, int8, fast = _shipped()
    float_enc, q_enc, fast_enc = (Encoder(p, threads=1) for p in (default, int8, fast))
    assert q_enc.session.get_modelmeta().custom_metadata_map["rsir.quantization"].startswith(
        "int8 weights and activations")
    assert os.path.getsize(int8) < os.path.getsize(default) * 0.75  # int8 vs float16 storage
    # the same metadata contract: core reads, indexes and searches with it as with the float model
    assert (q_enc.info.input_size_range, q_enc.info.embedding_dim, q_enc.info.class_names) == \
        (float_enc.info.input_size_range, float_enc.info.embedding_dim, float_enc.info.class_names)
    # smooth image-like inputs (blurred noise, 0-255) at two sides: the int8 embedding stays close to the float one
    rng = np.random.default_rng(0)
    for side in (96, 160):
        raw = np.kron(rng.uniform(0, 255, (16, 3, 16, 16)).astype(np.float32),
                      np.ones((1, 1, side // 16, side // 16), np.float32))
        emb_f, _ = float_enc.encode(raw)
        emb_q, _ = q_enc.encode(raw)
        assert np.sum(emb_f * emb_q, axis=1).mean() > 0.9
        assert (np.argmax(emb_q @ emb_f.T, axis=1) == np.arange(len(raw))).mean() >= 0.9
    # the fast copy: the trained branch alone (no general branch), int8, 128-bit codes
    assert "rsir.general_branch" not in fast_enc.info.metadata and fast_enc.info.code_bits == 128
    assert fast_enc.info.class_names == float_enc.info.class_names


def test_two_builds_at_once_each_write_a_whole_zip(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    out = str(tmp_path / "dist" / "rsir_qgis_plugin.zip")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(build, [out, out]))
    assert results[0] == results[1]
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None and sorted(zf.namelist()) == sorted(results[0])
    assert os.listdir(tmp_path / "dist") == ["rsir_qgis_plugin.zip"] and oct(os.stat(out).st_mode)[-3:] == "644"


def test_shipped_models_are_offered_by_name(tmp_path, twin_raster, capsys, qgis_iface):
    """`rsir index --model fast` and the Build index dialog's Model list pick the shipped copies by name; a file of
    that name wins, and another file shows as "another model file"."""
    import hashlib

    from core.cli import main
    from core.default_model import resolve_model, shipped_models
    from core.index.reader import Index

    default, int8, fast = _shipped()
    assert [(m.name, m.path) for m in shipped_models()] == [("default", default), ("int8", int8), ("fast", fast)]
    assert (resolve_model(None), resolve_model("int8"), resolve_model("fast")) == (default, int8, fast)
    own = tmp_path / "fast"
    own.write_bytes(b"")
    assert resolve_model(str(own)) == str(own)  # a file by that name is the user's own
    out = str(tmp_path / "idx")
    assert main(["index", twin_raster, "--model", "fast", "--out", out, "--tile", "64", "-q"]) == 0
    assert f"model: {fast} (shipped as fast; --model picks another)" in capsys.readouterr().out
    index = Index(out)
    with open(fast, "rb") as f:
        assert index.model.sha256 == hashlib.sha256(f.read()).hexdigest()
    assert index.all_embeddings().shape == (16, index.model_info.embedding_dim)  # encoded with it: 128-d
    assert index.model_info.embedding_dim == 128
    index.close()

    from rsir_qgis_plugin.index_dialog import IndexDialog
    from tests.test_plugin import _forget_dialog_settings

    _forget_dialog_settings()
    dialog = IndexDialog(qgis_iface)
    names = [dialog.shipped.itemText(i).split(":")[0] for i in range(dialog.shipped.count())]
    assert names == ["default", "int8", "fast", "another model file…"]
    assert dialog.shipped.currentIndex() == 0 and dialog.model.filePath() == default
    dialog.shipped.setCurrentIndex(1)  # picking a name sets the file
    assert dialog.model.filePath() == int8
    dialog.model.setFilePath(str(own))  # and a file of one's own shows as such
    assert dialog.shipped.currentText() == "another model file…"
    dialog.model.setFilePath(fast)
    assert dialog.shipped.currentText().startswith("fast: ")
    dialog.close()


UPGRADE_IN_PLACE = r"""
import os, shutil, sys, zipfile
plugins_dir, zip_path = sys.argv[1], sys.argv[2]
from qgis.core import QgsApplication
app = QgsApplication([], False); app.initQgis()
import qgis.utils as u  # QGIS's own plugin loading, with the import hook that tracks a plugin's modules
pkg = "rsir_qgis_plugin"
u.available_plugins.append(pkg)
assert u.loadPlugin(pkg)
from rsir_qgis_plugin import engine, plugin  # as classFactory and initGui import them
print("before", hasattr(engine.default_model, "UPGRADED"))
u.plugins[pkg] = plugin.RsirPlugin(None)
u.active_plugins.append(pkg)
assert u.unloadPlugin(pkg)  # what Install from ZIP does: unload, replace the folder, load again
shutil.rmtree(os.path.join(plugins_dir, pkg))
with zipfile.ZipFile(zip_path) as zf:
    zf.extractall(plugins_dir)
with open(os.path.join(plugins_dir, pkg, "core", "default_model.py"), "a") as f:
    f.write("\nUPGRADED = True\n")
assert u.loadPlugin(pkg)
from rsir_qgis_plugin import engine
print("after", hasattr(engine.default_model, "UPGRADED"))
"""


def test_a_new_version_installed_over_the_plugin_loads_its_own_core(tmp_path):
    """QGIS unloads the plugin modules it saw imported; the bundled core's, imported by engine.py through importlib,
    it did not see: after an upgrade from ZIP the old core stayed loaded and the new plugin failed in initGui
    (AttributeError on a function the old core lacked; found in the desktop check)."""
    zip_path = str(tmp_path / "rsir_qgis_plugin.zip")
    build(zip_path)
    plugins = tmp_path / "plugins"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(plugins)
    script = tmp_path / "upgrade.py"
    script.write_text(UPGRADE_IN_PLACE)
    env = dict(os.environ, PYTHONPATH=str(plugins), QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, str(script), str(plugins), zip_path], capture_output=True, text=True,
                         env=env, cwd=str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["before", "False", "after", "True"], out.stdout + out.stderr[-2000:]
