"""`rsir train --recipe`: the whole chain (train, export, codes, evaluate) on a tiny synthetic folder, resumed and
skipped step by step on a rerun; the shipped recipes parse."""
from __future__ import annotations

import json
import os

from core.cli import main
from core.encoder import Encoder
from tests.rasters import write_class_folder
from training.recipe import RecipeOptions, recipe_config

TINY = """seed = 0
[data]
kind = "folder"
input_size = 0
input_size_range = [24, 40]
[model]
backbone = "tiny"
pretrained = false
embedding_dim = 16
[loss]
name = "triplet-semi-hard"
[optim]
epochs = 2
batch_size = 16
threads = 1
[recipe]
itq_codes = 16
"""


def test_a_recipe_runs_end_to_end_and_a_rerun_redoes_nothing(tmp_path, capsys):
    data = write_class_folder(str(tmp_path / "patches"), n_classes=3, per_class=20, size=48)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY)
    run = tmp_path / "run"
    assert main(["train", "--recipe", str(recipe), data, "--out", str(run), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"{data} at 40 px" in out and "test -> train mAP@42: float " in out
    summary = json.loads((run / "recipe.json").read_text())
    assert summary["input_size"] == 40 and summary["test_map42_float"] > 90  # 48 px patches, clamped to 24-40
    final = Encoder(str(run / "model-final.onnx")).info
    assert final.code_bits == 16 and final.input_size == 40 and final.input_size_range == (24, 40)
    assert (run / "eval" / "results.md").exists() and (run / "train" / "best.pt").exists()
    stamps = {p: os.path.getmtime(run / p) for p in ("model.onnx", "model-final.onnx", "train/best.pt")}
    assert main(["train", "--recipe", str(recipe), data, "--out", str(run), "-q"]) == 0
    assert {p: os.path.getmtime(run / p) for p in stamps} == stamps  # trained, exported, coded: all kept
    assert main(["train", "--recipe", "no-such-recipe", data, "--out", str(run)]) == 1
    assert "no-such-recipe: no such recipe (a .toml file, or one of: patches)" in capsys.readouterr().err
    assert main(["train", "--recipe", str(recipe), data]) == 1
    assert "--recipe needs --out RUN" in capsys.readouterr().err


def test_the_shipped_recipes_parse_with_a_dataset(tmp_path):
    data = write_class_folder(str(tmp_path / "patches"), n_classes=2, per_class=3, size=300)
    cfg, steps = recipe_config(RecipeOptions("patches", data, str(tmp_path / "run")))
    assert cfg.data.root == data and cfg.out_dir == str(tmp_path / "run" / "train")
    assert cfg.data.input_size == 256  # 300 px patches, clamped to the recipe's 96-256
    assert steps.itq_codes == 128 and not steps.whiten
