"""`rsir train` for data.kind = paired: trains both modality encoders of a CrossModalNet together.

Same guarantees as trainer.py (seeded order and augmentation per epoch, exact resume from last.pt, log.csv,
best.pt by validation mAP) with the validation metric the mean of the two cross-modal directions. Both tiles of
a pair get the same flips and rotations (the footprint stays aligned)."""
from __future__ import annotations

import time

import numpy as np
import torch

from core.encoder import l2_normalise
from core.errors import RsirError

from . import checkpoint
from .batches import NeighbourBatches, SetBatches
from .config import TrainConfig
from .crossmodal import CrossModalMethod, CrossModalNet
from .datasets import ImageSet
from .evaluate import imagenet_features, score
from .models.factory import TrainNet, build_backbone, default_normalisation
from .paired_data import PairedSet, cut_paired_tiles, split_pairs
from .trainer import TrainResult, end_epoch, make_optimiser, restore_or_begin, run_epoch, run_paths, start_run


def load_pairs(cfg: TrainConfig) -> dict[str, PairedSet]:
    d = cfg.data
    pairs = cut_paired_tiles(d.root, d.root_b, d.bands, d.bands_b, d.tile, d.input_size, d.stride or d.tile,
                             labels=d.labels, label_field=d.label_field)
    return split_pairs(pairs, d.split_seed)


def modality_sets(pairs: PairedSet) -> tuple[ImageSet, ImageSet]:
    return (ImageSet(pairs.a, pairs.labels, pairs.class_names, pairs.ids),
            ImageSet(pairs.b, pairs.labels, pairs.class_names, pairs.ids))


def cross_modal_results(emb: dict[str, tuple[np.ndarray, np.ndarray]], q_y: np.ndarray, db_y: np.ndarray,
                        class_names: list[str], k: int, uni_modal: bool = False, bits: int = 0) -> list:
    """Scores of A -> B and B -> A over the two modalities (and with `uni_modal`, A -> A and B -> B after them,
    the reference the cross-modal ones are read against): `emb[m]` = (query embeddings, database embeddings)
    of modality m; with `bits`, +-1 codes of that length ranked by Hamming distance. Labelled (`class_names`):
    each result also carries the mean of its per-class APs."""
    a, b = emb
    names = class_names or [str(i) for i in range(int(max(q_y.max(), db_y.max())) + 1)]
    directions = [(a, b), (b, a)] + ([(a, a), (b, b)] if uni_modal else [])
    results = [score(f"{src} -> {dst}", "hash" if bits else "float", bits, emb[src][0], emb[dst][1], q_y, db_y,
                     names, k) for src, dst in directions]
    if class_names:  # by class: the mean of the per-class APs, which a dominant class does not decide
        for r in results:
            r.extra[f"class-mean AP@{k}"] = float(np.mean(list(r.per_class_ap.values())))
    return results


def imagenet_pair_features(pixels: np.ndarray, scale: float) -> np.ndarray:
    """Untrained ImageNet Lite0 features of one modality's tiles, L2-normalised: the cross-modal baseline.
    Bands beyond three are dropped and fewer are completed by repeating them (SAR VV, VH -> VV, VH, VV), since the
    ImageNet network takes three."""
    c = pixels.shape[1]
    rgb = pixels[:, [i % c for i in range(3)]]
    return l2_normalise(imagenet_features(rgb, scale))


def _directions(model: CrossModalNet, batches: dict, queries: str, database: str, k: int = 100):
    mods = model.modalities
    emb = {m: (batches[queries][m].embed_all(model.nets[m]).cpu().numpy(),
               batches[database][m].embed_all(model.nets[m]).cpu().numpy()) for m in mods}
    q_y = batches[queries][mods[0]].labels.numpy()
    db_y = batches[database][mods[0]].labels.numpy()
    k = min(k, len(db_y))
    return cross_modal_results(emb, q_y, db_y, [], k)


def train_crossmodal(cfg: TrainConfig, restart: bool = False, quiet: bool = False, should_stop=None) -> TrainResult:
    """Train (or resume) a cross-modal run in cfg.out_dir."""
    t_start = time.perf_counter()
    out = cfg.out_dir
    last_path, best_path, log_path = run_paths(out)
    device, resume = start_run(cfg, restart)
    sets = load_pairs(cfg)
    train_set = sets["train"]
    if len(train_set) < cfg.optim.batch_size:
        raise RsirError(f"{cfg.data.root}: only {len(train_set)} training pairs, fewer than one batch "
                        f"({cfg.optim.batch_size}); lower optim.batch_size or data.tile")
    d = cfg.data
    mods = [d.modality, d.modality_b]
    channels = {d.modality: len(d.bands), d.modality_b: len(d.bands_b)}
    scales = {d.modality: d.scale, d.modality_b: d.scale_b}
    norm = {}
    for m in mods:
        mean, std = default_normalisation(cfg.model.backbone, cfg.model.pretrained, channels[m])
        norm[m] = (cfg.model.mean or mean, cfg.model.std or std) if m == d.modality else (mean, std)
    method = CrossModalMethod(cfg.loss)
    n_cls = len(train_set.class_names) if method.needs_classifier and train_set.labelled else 0
    nets = {}
    for m in mods:
        try:
            backbone = build_backbone(cfg.model.backbone, cfg.model.pretrained and resume is None, channels[m])
        except ValueError as exc:
            raise RsirError(f"{cfg.source}: {exc}") from None
        nets[m] = TrainNet(backbone, cfg.model.embedding_dim, n_cls, cfg.model.hash_bits,
                           classifier_dims=cfg.loss.class_dims)
    model = CrossModalNet(nets).to(device)
    batches = {}
    for split, pairs in sets.items():
        if len(pairs):
            a_set, b_set = modality_sets(pairs)
            batches[split] = {m: SetBatches(s, scales[m], *norm[m], device) for m, s in zip(mods, (a_set, b_set))}
    labelled = train_set.labelled
    val_q, val_db = ("val", "train") if labelled else ("val", "val")

    backbone_params = [p for m in mods for p in model.nets[m].backbone.parameters()]
    ids = {id(p) for p in backbone_params}
    head_params = [p for p in model.parameters() if id(p) not in ids]
    opt, sched = make_optimiser(cfg, backbone_params, head_params, len(train_set) // cfg.optim.batch_size)
    start_epoch, best_map = restore_or_begin(cfg, resume, model, opt, sched)
    common = {"config": cfg.to_dict(), "config_sha256": cfg.sha256(), "config_source": cfg.source,
              "kind": "crossmodal", "modalities": mods, "class_names": train_set.class_names,
              "norm": {m: [list(norm[m][0]), list(norm[m][1])] for m in mods}, "num_classifier_classes": n_cls}
    labels = torch.from_numpy(train_set.labels)
    plan = (NeighbourBatches(train_set.positions(), cfg.data.neighbour_batches) if cfg.data.neighbour_batches
            else len(train_set))
    model.train()

    def step(idx: torch.Tensor, gen: torch.Generator):
        state = gen.get_state()  # the same draws for both modalities: identical flips and rotations
        xa = batches["train"][mods[0]].get(idx, cfg.augment, gen)
        gen_b = torch.Generator().manual_seed(0)
        gen_b.set_state(state)
        xb = batches["train"][mods[1]].get(idx, cfg.augment, gen_b)
        loss, stats = method.loss(model, xa, xb, labels[idx].to(device))
        return loss, stats, None

    for epoch in range(start_epoch, cfg.optim.epochs):
        t0 = time.perf_counter()
        losses = run_epoch(cfg, epoch, plan, step, opt, sched, quiet, should_stop)
        val_map = float("nan")
        if "val" in batches:
            res = _directions(model, batches, val_q, val_db)
            val_map = (res[0].map_k + res[1].map_k) / 2
        best_map, improved, secs = end_epoch((last_path, best_path, log_path), common, model, opt, sched, epoch,
                                             losses, val_map, best_map, t0)
        if not quiet:
            print(f"epoch {epoch + 1}/{cfg.optim.epochs}: loss {np.mean(losses):.4f}  val cross-modal mAP@100 "
                  f"{val_map:.2f}{'  (best)' if improved else ''}  {secs:.0f} s")
    return TrainResult(best_path, last_path, best_map, cfg.optim.epochs - start_epoch, time.perf_counter() - t_start)


def model_from_crossmodal_checkpoint(ckpt: dict) -> CrossModalNet:
    """Rebuild the trained pair of encoders (every weight comes from the checkpoint)."""
    cfg = checkpoint.config_of(ckpt)
    d = cfg.data
    channels = {d.modality: len(d.bands), d.modality_b: len(d.bands_b)}
    nets = {m: TrainNet(build_backbone(cfg.model.backbone, False, channels[m]), cfg.model.embedding_dim,
                        ckpt["num_classifier_classes"], cfg.model.hash_bits, classifier_dims=cfg.loss.class_dims)
            for m in ckpt["modalities"]}
    model = CrossModalNet(nets)
    model.load_state_dict(ckpt["model"])
    return model.eval()
