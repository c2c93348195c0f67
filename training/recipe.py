"""`rsir train --recipe NAME DATASET --out RUN`: the whole chain from labelled patches to a model to index with -
train, export, codes (and whitening if the recipe asks), evaluate - each step resumed or skipped when a rerun
finds it done.

A recipe is a training config (`configs/recipes/NAME.toml`, or any path) whose `data.root` and `out_dir` the
command fills in, plus a `[recipe]` table for the steps after training. `data.input_size = 0` reads the dataset at
its own image size, clamped to `data.input_size_range`.

RUN/ gets: train/ (the checkpoints and log of `rsir train`), model.onnx (the export), model-final.onnx (with codes
or whitening; the file to index with), eval/ (`rsir eval` report), recipe.json (what was done, with the figures).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from core.errors import RsirError
from core.fileio import write_json

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "recipes")


@dataclass
class RecipeSteps:
    """The `[recipe]` table: what follows training."""

    invariance: str = "none"  # rsir export --invariance
    itq_codes: int = 128  # PCA-ITQ codes of this many bits (0 = the model's own sign codes)
    whiten: bool = False  # within-class whitening (fitted to your classes: it costs on others)
    eval: bool = True  # score the final model on the dataset's test split (with untrained baselines)


@dataclass
class RecipeOptions:
    recipe: str
    dataset: str
    out: str
    epochs: int | None = None
    restart: bool = False
    quiet: bool = False


def recipe_path(name: str) -> str:
    """A recipe file: a path as given, or a name in configs/recipes/."""
    if os.path.isfile(name):
        return name
    path = os.path.join(RECIPES, f"{name}.toml")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(RECIPES) if f.endswith(".toml")) if os.path.isdir(RECIPES) else []
        raise RsirError(f"{name}: no such recipe (a .toml file, or one of: {', '.join(known) or 'none'})")
    return path


def _native_side(dataset: str) -> int:
    from .generalization import native_size
    from .splits import IMAGE_EXTENSIONS

    for folder, _, names in sorted(os.walk(dataset)):
        for n in sorted(names):
            if n.lower().endswith(IMAGE_EXTENSIONS):
                return native_size(os.path.join(folder, n))
    raise RsirError(f"{dataset}: no images (.jpg .png .tif) below it")


def recipe_config(opts: RecipeOptions):
    """(the training config with the dataset and run folder filled in, the steps after training)."""
    import tomllib

    from .config import _fill, parse_config

    path = recipe_path(opts.recipe)
    with open(path, "rb") as f:
        values = tomllib.load(f)
    steps = _fill(RecipeSteps, values.pop("recipe", {}), "recipe", path)
    if not os.path.isdir(opts.dataset):
        raise RsirError(f"{opts.dataset}: no such dataset folder (a folder per class, as EuroSAT)")
    data = values.setdefault("data", {})
    data["root"] = os.path.abspath(opts.dataset)
    data.setdefault("cache_dir", os.path.join(os.path.abspath(opts.out), "cache"))
    values["out_dir"] = os.path.join(os.path.abspath(opts.out), "train")
    if data.get("input_size", 64) == 0:
        lo, hi = data.get("input_size_range") or (1, 1 << 16)
        data["input_size"] = min(max(_native_side(opts.dataset), lo), hi)
    if opts.epochs:
        values.setdefault("optim", {})["epochs"] = opts.epochs
    return parse_config(values, path), steps


def run_recipe(opts: RecipeOptions, log=print) -> dict:
    """Run (or resume) every step; returns the summary written to RUN/recipe.json."""
    from .evaluate import EvalOptions, run_eval
    from .export import export_checkpoint
    from .trainer import fit
    from .whitening import whiten_model

    cfg, steps = recipe_config(opts)
    log(f"recipe {recipe_path(opts.recipe)}: {cfg.data.root} at {cfg.data.input_size} px -> {opts.out}")
    result = fit(cfg, restart=opts.restart, quiet=opts.quiet)
    log(f"trained: best val mAP@100 {result.best_map:.2f} ({result.best_checkpoint})")
    model = os.path.join(opts.out, "model.onnx")
    if _stale(model, result.best_checkpoint):
        meta = export_checkpoint(result.best_checkpoint, model, steps.invariance)
        log(f"exported {model}: input {meta['rsir.input_size']} px, {meta['rsir.embedding_dim']}-d")
    final = model
    if steps.itq_codes or steps.whiten:
        final = os.path.join(opts.out, "model-final.onnx")
        if _stale(final, model):
            from .labelled_data import config_sets

            sets = config_sets(cfg, ("train", "val"))
            whiten_model(model, final, [s["train"] for s in sets], [s["val"] for s in sets], force=True,
                         code_bits=steps.itq_codes, whiten=steps.whiten, log=None if opts.quiet else log)
            log(f"wrote {final}: " + ("whitened, " if steps.whiten else "")
                + (f"{steps.itq_codes}-bit PCA-ITQ codes" if steps.itq_codes else "the model's codes"))
    summary = {"recipe": recipe_path(opts.recipe), "dataset": cfg.data.root, "input_size": cfg.data.input_size,
               "checkpoint": result.best_checkpoint, "val_map100": result.best_map, "model": final}
    if steps.eval:
        results, k = run_eval(EvalOptions(model=final, dataset=cfg.data.root, cache_dir=cfg.data.cache_dir,
                                          bits=(steps.itq_codes or 64,), out=os.path.join(opts.out, "eval")),
                              log=(lambda _: None) if opts.quiet else log)
        summary.update({f"test_map{k}_float": results[0].map_k, f"test_map{k}_hash": results[1].map_k,
                        "eval": os.path.join(opts.out, "eval")})
        log(f"test -> train mAP@{k}: float {results[0].map_k:.2f}, hash {results[1].map_k:.2f}")
    write_json(os.path.join(opts.out, "recipe.json"), summary)
    log(f"index with: rsir index ARCHIVE --model {final} --out IDX")
    return summary


def _stale(target: str, source: str) -> bool:
    """True when `target` is missing or older than the file it is made from."""
    return not os.path.exists(target) or os.path.getmtime(target) < os.path.getmtime(source)
