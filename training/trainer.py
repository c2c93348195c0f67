"""`rsir train CONFIG`: deterministic, resumable metric-learning training with validation mAP each epoch.

Each epoch's order and augmentation come from generators seeded by (seed, epoch), so a run resumed from
`last.pt` continues exactly as if it had not stopped. `log.csv` gets one row per epoch; `best.pt` keeps the
epoch with the best validation mAP@100 (queries = val, database = train)."""
from __future__ import annotations

import csv
import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import Cancelled, RsirError
from core.fileio import write_json
from core.metrics import map_at_k, relevance, shares_a_label
from core.progress import Progress

from . import checkpoint
from .batches import MultiBatches, SetBatches
from .config import TrainConfig
from .datasets import ImageSet, load_folder, load_index_tiles, load_split_csv, split_image_set
from .methods import make_method
from .models.factory import TrainNet, build_backbone, default_normalisation
from .multidata import combined_classes, global_labels, load_sets
from .registry import loss_names, loss_spec
from .regularisers import OutputRecorder, make_regularisers

LOG_FIELDS = ["epoch", "loss", "val_map100", "lr", "seconds", "best"]


@dataclass
class TrainResult:
    best_checkpoint: str
    last_checkpoint: str
    best_map: float
    epochs_run: int
    seconds: float


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RsirError("optim.device = cuda, but torch sees no CUDA GPU here; use auto or cpu")
    if name not in ("auto", "cpu", "cuda"):
        raise RsirError(f"optim.device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def load_data(cfg: TrainConfig, progress=None) -> dict[str, ImageSet]:
    """The splits of a single-dataset config (`prepare_data` loads multi-dataset ones)."""
    d = cfg.data
    if d.kind == "multi":
        raise RsirError(f"{cfg.source}: a multi-dataset config has one image set per dataset, each its own size")
    if d.kind == "folder":
        return load_folder(d.root, d.bands, d.input_size, d.cache_dir or None, d.split_seed, progress=progress)
    if d.kind == "split_csv":
        return load_split_csv(d.root, d.bands, d.input_size, d.cache_dir or None, progress=progress)
    if d.kind == "label_table":
        from .multilabel_data import load_label_table

        return load_label_table(d.root, d.bands, d.input_size, d.cache_dir or None, d.split_seed, progress=progress)
    if d.kind == "bigearthnet":
        from .multilabel_data import load_bigearthnet

        return load_bigearthnet(d.root, [str(b) for b in d.bands], d.input_size, d.split_seed)
    return split_image_set(load_index_tiles(d.root, d.labels, d.label_field, d.input_size, progress),
                           d.split_seed)


def validation_map(model, val: SetBatches, train: SetBatches, k: int = 100) -> float:
    """mAP@k (min(k, R) normalisation), queries = val, database = train, as the test protocol; multi-label:
    relevant = shares at least one label."""
    q = val.embed_all(model)
    db = train.embed_all(model)
    k = min(k, len(db))
    ids = torch.topk(q @ db.t(), k, dim=1).indices.cpu().numpy()
    q_y, db_y = val.labels.numpy(), train.labels.numpy()
    if q_y.ndim == 2:
        rel = shares_a_label(q_y, db_y, ids)
        n_rel = ((q_y.astype(np.float32) @ db_y.T.astype(np.float32)) > 0).sum(axis=1)
        return 100 * map_at_k(rel, n_rel, k)
    n_rel = np.bincount(db_y, minlength=int(max(db_y.max(), q_y.max())) + 1)[q_y]
    return 100 * map_at_k(relevance(q_y, db_y, ids), n_rel, k)


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def run_paths(out_dir: str) -> tuple[str, str, str]:
    """last.pt, best.pt and log.csv of a run folder."""
    return tuple(os.path.join(out_dir, n) for n in ("last.pt", "best.pt", "log.csv"))


def start_run(cfg: TrainConfig, restart: bool) -> tuple[torch.device, dict | None]:
    """Seed every generator, set the thread count, pick the device and load last.pt to resume from, refusing a
    run folder that holds another config's run (unless `restart`)."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.optim.threads:
        torch.set_num_threads(cfg.optim.threads)
    last_path = run_paths(cfg.out_dir)[0]
    resume = None
    if os.path.exists(last_path) and not restart:
        resume = checkpoint.load(last_path)
        # re-hash the stored config as this version reads it: keys added since then take their defaults, so a
        # newer rsir resumes an older run of the same config
        if checkpoint.config_of(resume).sha256() != cfg.sha256():
            raise RsirError(f"{cfg.out_dir}: holds a run of a different config ({resume['config_source']}); use "
                            "another out_dir, or --restart to overwrite it")
    return pick_device(cfg.optim.device), resume


def make_optimiser(cfg: TrainConfig, backbone_params: list, head_params: list, steps_per_epoch: int):
    """AdamW with the backbone at optim.backbone_lr and the heads (and loss parameters) at optim.lr, under a
    linear warm-up then cosine schedule stepped once per batch."""
    opt = torch.optim.AdamW([{"params": backbone_params, "lr": cfg.optim.backbone_lr or cfg.optim.lr},
                             {"params": head_params, "lr": cfg.optim.lr}], weight_decay=cfg.optim.weight_decay)
    total = steps_per_epoch * cfg.optim.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(total, max(1, int(cfg.optim.warmup_epochs * steps_per_epoch))))
    return opt, sched


def restore_or_begin(cfg: TrainConfig, resume: dict | None, model, opt, sched) -> tuple[int, float]:
    """Resume: load the model, optimiser, schedule and global RNG of last.pt. Fresh: create the run folder, the
    log header and config.json. Returns (first epoch to run, best validation mAP so far)."""
    if resume is not None:
        model.load_state_dict(resume["model"])
        torch.set_rng_state(resume["torch_rng"])  # drop-connect draws from the global generator
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        return resume["epoch"], resume["best_map"]
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(run_paths(cfg.out_dir)[2], "w", newline="") as f:
        csv.writer(f).writerow(LOG_FIELDS)
    write_json(os.path.join(cfg.out_dir, "config.json"), cfg.to_dict())
    return 0, -1.0


def run_epoch(cfg: TrainConfig, epoch: int, batches, step, opt, sched, quiet: bool,
              should_stop=None) -> list[float]:
    """One epoch over the training items in a seeded order (the same on resume): `batches` is an item count (a
    permutation cut into full batches) or an object whose `epoch_batches(gen, batch_size)` gives the batches.
    `step(idx, gen)` returns (loss, stats, after) for the batch `idx`, drawing augmentations from `gen`; `after()`
    (or None) runs after the optimiser step. Returns the batch losses."""
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    batch = cfg.optim.batch_size
    if isinstance(batches, int):
        order = torch.randperm(batches, generator=gen)
        plan = [order[i * batch:(i + 1) * batch] for i in range(batches // batch)]
    else:
        plan = batches.epoch_batches(gen, batch)
    losses = []
    bar = Progress(f"epoch {epoch + 1}/{cfg.optim.epochs}", len(plan), "batch", quiet=quiet, leave=False)
    for i in range(len(plan)):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped during epoch {epoch + 1}; rerun the same command to resume "
                            f"from epoch {epoch + 1}")
        loss, stats, after = step(plan[i], gen)
        if not torch.isfinite(loss):
            raise RsirError(f"loss became {float(loss)} at epoch {epoch + 1} step {i}; lower optim.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if after is not None:
            after()
        losses.append(stats["loss"])
        bar.postfix(**stats)
        bar.update()
    bar.close()
    return losses


def end_epoch(paths: tuple[str, str, str], common: dict, model, opt, sched, epoch: int, losses: list[float],
              val_map: float, best_map: float, t0: float, extra: dict | None = None) -> tuple[float, bool, float]:
    """Save best.pt when the validation mAP improved (every epoch when there is no validation set: val_map NaN),
    then last.pt (with the optimiser, schedule, RNG and `extra` state to resume from) and the log row.
    Returns (best mAP so far, improved, epoch seconds)."""
    last_path, best_path, log_path = paths
    has_val = not math.isnan(val_map)
    improved = not has_val or val_map > best_map
    if improved:
        best_map = val_map if has_val else best_map
        checkpoint.save(best_path, {**common, "model": model.state_dict(), "epoch": epoch + 1, "val_map100": val_map})
    checkpoint.save(last_path, {**common, "model": model.state_dict(), "epoch": epoch + 1, "best_map": best_map,
                                **(extra or {}), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                "torch_rng": torch.get_rng_state()})
    secs = time.perf_counter() - t0
    with open(log_path, "a", newline="") as f:
        csv.writer(f).writerow([epoch + 1, f"{np.mean(losses):.5f}", f"{val_map:.3f}",
                                f"{sched.get_last_lr()[-1]:.3e}", f"{secs:.1f}", int(improved)])
    return best_map, improved, secs


@dataclass
class TrainingData:
    """What a run trains and validates on, whatever the data kind."""

    train: SetBatches | MultiBatches
    val: list[tuple[SetBatches, SetBatches]]  # per dataset: (validation queries, the database they search)
    class_names: list[str]
    multi_label: bool

    @property
    def labels(self) -> torch.Tensor:
        return self.train.labels


def prepare_data(cfg: TrainConfig, mean, std, device, progress=None) -> TrainingData:
    """Load the config's data (one dataset, or every `[[data.sets]]` dataset at its own size) into batches."""
    d = cfg.data

    def batches(data: ImageSet) -> SetBatches:
        return SetBatches(data, d.scale, mean, std, device)

    if d.kind == "multi":
        sets = load_sets(d, d.cache_dir or None, progress)
        names, starts = combined_classes(sets)
        parts, val = [], []
        for (s, data), start in zip(sets, starts):
            if len(data["train"]) < cfg.optim.batch_size:
                raise RsirError(f"{s.root}: only {len(data['train'])} training images, fewer than one batch "
                                f"({cfg.optim.batch_size}); lower optim.batch_size")
            train_set = global_labels(data["train"], start, names)
            parts.append(batches(train_set))
            if len(data["val"]):
                val.append((batches(global_labels(data["val"], start, names)),
                            batches(train_set.sample(d.val_database_max, cfg.seed))))
        return TrainingData(MultiBatches(parts, [s.max_per_epoch for s, _ in sets]), val, names, False)
    sets = load_data(cfg, progress)
    train_set, val_set = sets["train"], sets.get("val")
    if len(train_set) < cfg.optim.batch_size:
        raise RsirError(f"{d.root}: only {len(train_set)} training images, fewer than one batch "
                        f"({cfg.optim.batch_size}); lower optim.batch_size")
    database = train_set if train_set.multi_label else train_set.sample(d.val_database_max, cfg.seed)
    val = [(batches(val_set), batches(database))] if val_set is not None and len(val_set) else []
    return TrainingData(batches(train_set), val, train_set.class_names, train_set.multi_label)


def validation_maps(model, data: TrainingData) -> list[float]:
    """Validation mAP@100 of each dataset (none without a validation split); their mean picks best.pt."""
    return [validation_map(model, v, db) for v, db in data.val]


def train(cfg: TrainConfig, restart: bool = False, quiet: bool = False, should_stop=None) -> TrainResult:
    """Train (or resume) the run in `cfg.out_dir`. `should_stop()` is polled between batches; on True the
    epoch in progress is dropped and Cancelled raised (the last finished epoch is kept in last.pt)."""
    t_start = time.perf_counter()
    out = cfg.out_dir
    last_path, best_path, log_path = run_paths(out)
    device, resume = start_run(cfg, restart)

    channels = len(cfg.data.bands)
    init = checkpoint.init_source(cfg) if resume is None else None
    mean, std = ((init["mean"], init["std"]) if init is not None
                 else default_normalisation(cfg.model.backbone, cfg.model.pretrained, channels))
    mean, std = cfg.model.mean or mean, cfg.model.std or std
    bar = Progress("loading data", unit="img", quiet=quiet, leave=False)
    data = prepare_data(cfg, mean, std, device, progress=lambda done, total: bar.set(done, total))
    bar.close()
    classes, labels = data.class_names, data.labels
    spec = loss_spec(cfg.loss.name, cfg.source)
    if data.multi_label and not spec.multi_label_ok:
        raise RsirError(f"{cfg.source}: {cfg.data.root} is multi-label; loss.name must be one of "
                        f"{', '.join(loss_names(labels='multi') + loss_names(labels='either'))} "
                        f"(got {cfg.loss.name!r})")
    if not data.multi_label and spec.labels == "multi":
        raise RsirError(f"{cfg.source}: loss {cfg.loss.name!r} needs multi-label data (data.kind = label_table "
                        f"or bigearthnet); {cfg.data.root} has one class per image")

    dim = cfg.model.hash_bits or cfg.model.embedding_dim  # a hash head's relaxed code is the embedding
    method = make_method(cfg.loss, labels, len(classes), dim, cfg.seed)
    n_cls = len(classes) if (cfg.model.classifier or method.needs_classifier) else 0
    try:
        backbone = build_backbone(cfg.model.backbone, cfg.model.pretrained and resume is None and init is None,
                                  channels)
        model = TrainNet(backbone, cfg.model.embedding_dim, n_cls, cfg.model.hash_bits,
                         multi_label=data.multi_label, frozen_blocks=cfg.model.frozen_blocks)
    except ValueError as exc:
        raise RsirError(f"{cfg.source}: {exc}") from None
    if init is not None:
        fresh = checkpoint.init_weights(model, init, cfg.model.init_from, classes)
        if not quiet:
            print(f"started from {cfg.model.init_from} (epoch {init.get('epoch')}); new: "
                  f"{', '.join(sorted({k.rsplit('.', 1)[0] for k in fresh})) or 'nothing'}")
    # the weights this run started from, which the regularisers pull towards (kept in last.pt for a resume)
    start_backbone = (resume["start_backbone"] if resume is not None and "start_backbone" in resume
                      else {k: v.detach().clone() for k, v in model.backbone.state_dict().items()})
    model = model.to(device)
    method.to(device)
    regularisers = make_regularisers(cfg, start_backbone, model, device)

    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    opt, sched = make_optimiser(cfg, [p for p in model.backbone.parameters() if p.requires_grad],
                                head_params + method.parameters(), data.train.steps_per_epoch(cfg.optim.batch_size))
    start_epoch, best_map = restore_or_begin(cfg, resume, model, opt, sched)
    if resume is not None:
        method.prepare(model)
        method.load_state_dict(resume["method"])
        if not quiet:
            print(f"resuming {out} after epoch {start_epoch} (best val mAP@100 {best_map:.2f})")
    else:
        method.prepare(model, data.train.embed_all)

    def step(idx: torch.Tensor, gen: torch.Generator):
        x = data.train.get(idx, cfg.augment, gen)
        recorder = OutputRecorder(model)
        loss, stats = method.loss(recorder, x, labels[idx].to(device), idx.to(device))
        for reg in regularisers:
            term, more = reg.penalty(model, x, recorder.first)
            loss = loss + term
            stats.update(more)
        stats["loss"] = float(loss.detach())
        return loss, stats, lambda: method.after_step(model, x, idx.to(device))

    common = {"config": cfg.to_dict(), "config_sha256": cfg.sha256(), "config_source": cfg.source,
              "class_names": classes, "mean": list(mean), "std": list(std), "num_classifier_classes": n_cls,
              "multi_label": data.multi_label}
    extra = {"start_backbone": start_backbone} if regularisers else {}
    model.train()
    for epoch in range(start_epoch, cfg.optim.epochs):
        t0 = time.perf_counter()
        losses = run_epoch(cfg, epoch, data.train, step, opt, sched, quiet, should_stop)
        per_set = validation_maps(model, data)
        val_map = float(np.mean(per_set)) if per_set else float("nan")
        best_map, improved, secs = end_epoch((last_path, best_path, log_path), common, model, opt, sched, epoch,
                                             losses, val_map, best_map, t0, {"method": method.state_dict(), **extra})
        if not quiet:
            each = f" ({' / '.join(f'{m:.2f}' for m in per_set)})" if len(per_set) > 1 else ""
            print(f"epoch {epoch + 1}/{cfg.optim.epochs}: loss {np.mean(losses):.4f}  val mAP@100 {val_map:.2f}"
                  f"{each}{'  (best)' if improved else ''}  {secs:.0f} s")
    return TrainResult(best_path, last_path, best_map, cfg.optim.epochs - start_epoch,
                       time.perf_counter() - t_start)


def fit(cfg: TrainConfig, restart: bool = False, quiet: bool = False, should_stop=None) -> TrainResult:
    """Train (or resume) `cfg` with the trainer its data needs: paired data trains a cross-modal encoder pair."""
    if cfg.data.kind == "paired":
        from .crossmodal_trainer import train_crossmodal

        return train_crossmodal(cfg, restart=restart, quiet=quiet, should_stop=should_stop)
    return train(cfg, restart=restart, quiet=quiet, should_stop=should_stop)
