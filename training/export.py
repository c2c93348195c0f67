"""Export a RetrievalNet to ONNX with the `rsir.*` metadata contract (docs/contracts.md) and check parity."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from core.adapt.onnx_graph import set_metadata
from core.fileio import atomic_path

from .general_branch import GeneralBranch

FORMAT_VERSION = "1"
PARITY_ATOL = 1e-4


@dataclass
class ExportSpec:
    """What core/ needs to know to feed the model and read its outputs."""

    bands: list  # band names (str) or 1-based band indices (int), in input order
    input_size: int
    scale: float
    mean: list[float]
    std: list[float]
    method: str
    modality: str = "optical"
    class_names: list[str] = field(default_factory=list)
    train_config: dict | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # (smallest, largest) square input side: the graph gets dynamic spatial axes and core encodes each source
    # near its own size within this range; None = `input_size` only
    input_size_range: tuple[int, int] | None = None

    def parity_sizes(self) -> list[int]:
        """Input sides the ONNX graph is checked against torch at: the default, and for a resolution-aware model
        also both ends of its range and an odd side in between (strided convolutions round it)."""
        if not self.input_size_range:
            return [self.input_size]
        lo, hi = self.input_size_range
        odd = (lo + hi) // 2 | 1
        return sorted({lo, self.input_size, min(max(odd, lo), hi), hi})


def _metadata(net, spec: ExportSpec, embedding_dim: int, code_bits: int, names: list[str]) -> dict[str, str]:
    outputs = {"embedding": "embedding"}
    if code_bits:
        outputs["code"] = "hash_logits"
    if "class_logits" in names:
        outputs["class_logits"] = "class_logits"
    config_json = json.dumps(spec.train_config or {}, sort_keys=True)
    meta = {
        "rsir.format": FORMAT_VERSION,
        "rsir.model_type": "embedding+hash" if code_bits else "embedding",
        "rsir.outputs": json.dumps(outputs),
        "rsir.modality": spec.modality,
        "rsir.bands": json.dumps(spec.bands),
        "rsir.input_size": str(spec.input_size),
        **({"rsir.input_size_range": json.dumps(list(spec.input_size_range))} if spec.input_size_range else {}),
        "rsir.scale": repr(float(spec.scale)),
        "rsir.mean": json.dumps([float(v) for v in spec.mean]),
        "rsir.std": json.dumps([float(v) for v in spec.std]),
        "rsir.embedding_dim": str(embedding_dim),
        "rsir.code_bits": str(code_bits),
        "rsir.method": spec.method,
        "rsir.class_names": json.dumps(spec.class_names),
        "rsir.train_config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
    }
    meta.update(spec.extra)
    return meta


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs torchvision-op warnings and a torch-internal FutureWarning on every export;
    neither concerns our models, and they drown the CLI's own output."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            # one Dim for both spatial axes: torch says it will name just one of them
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(net: torch.nn.Module, spec: ExportSpec, out_path: str, opset: int = 18,
                check_parity: bool = True) -> dict[str, str]:
    """Write `net` to `out_path` (atomically) with a dynamic batch axis and the rsir metadata; return the metadata.

    With `check_parity`, onnxruntime's outputs on random input must equal torch's within 1e-4 or this raises.
    """
    import onnx  # export-time only

    net = net.eval()
    channels = len(spec.bands)
    if len(spec.mean) != channels or len(spec.std) != channels:
        raise ValueError(f"mean/std need one value per band ({channels}), got {spec.mean} / {spec.std}")
    if spec.input_size_range and not 0 < spec.input_size_range[0] <= spec.input_size <= spec.input_size_range[1]:
        raise ValueError(f"input_size_range {spec.input_size_range} must hold input_size {spec.input_size}")
    dummy = torch.randn(2, channels, spec.input_size, spec.input_size)
    with torch.no_grad():
        ref = net(dummy)
    ref = ref if isinstance(ref, tuple) else (ref,)
    names = list(getattr(net, "output_names", ["embedding", "hash_logits"][: len(ref)]))
    embedding_dim = int(ref[0].shape[1])
    code_bits = int(ref[names.index("hash_logits")].shape[1]) if "hash_logits" in names else 0

    with atomic_path(out_path) as tmp:
        axes = {0: torch.export.Dim("batch", min=1, max=1 << 16)}
        if spec.input_size_range:  # one Dim for both axes: square inputs (view averaging turns them)
            side = torch.export.Dim("side", min=spec.input_size_range[0], max=spec.input_size_range[1])
            axes.update({2: side, 3: side})
        with _quiet_exporter():
            torch.onnx.export(net, (dummy,), tmp, input_names=["input"], output_names=names,
                              dynamic_shapes=(axes,), opset_version=opset, dynamo=True, external_data=False,
                              verbose=False)
        model = onnx.load(tmp)
        meta = _metadata(net, spec, embedding_dim, code_bits, names)
        set_metadata(model, meta)
        model.doc_string = f"rsir retrieval model ({spec.method})"
        onnx.checker.check_model(model)
        onnx.save(model, tmp)
        if check_parity:
            for size in spec.parity_sizes():
                check_onnx_parity(net, tmp, channels, size)
    return meta


def check_onnx_parity(net: torch.nn.Module, onnx_path: str, channels: int, input_size: int,
                      batch: int = 3, atol: float = PARITY_ATOL) -> float:
    """Largest absolute difference between torch and onnxruntime outputs on random input; raises above `atol`."""
    import onnxruntime as ort

    x = torch.randn(batch, channels, input_size, input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net.eval()(x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})
    worst = max(float(np.max(np.abs(g - r.numpy()))) for g, r in zip(got, ref))
    if worst > atol:
        raise RuntimeError(f"{onnx_path}: onnxruntime differs from torch by {worst:.2e} (> {atol:.0e})")
    return worst


def _trained_metadata(ckpt: dict, cfg) -> dict[str, str]:
    """The metadata every model exported from a training checkpoint carries: backbone, config hash, epoch and its
    validation mAP."""
    return {"rsir.backbone": cfg.model.backbone, "rsir.train_config_sha256": ckpt["config_sha256"],
            "rsir.train_epoch": str(ckpt["epoch"]),
            "rsir.val_map100": f"{ckpt.get('val_map100', ckpt.get('best_map', float('nan'))):.3f}"}


def export_checkpoint(checkpoint_path: str, out_path: str, invariance: str = "none",
                      general: GeneralBranch | None = None, log=None) -> dict[str, str]:
    """Export a `rsir train` checkpoint (best.pt or last.pt): its embedding, with the metadata core/ needs.

    `invariance` "rot4" / "d4" averages the outputs over the input's quarter turns (and mirror images) inside the
    exported graph (training/models/invariant.py): orientation-invariant, at 4x / 8x the encoding cost.
    `general`: concatenate the untrained ImageNet network's PCA-reduced features to the trained
    embedding (training/general_branch.py)."""
    from . import checkpoint
    from .models.invariant import GroupAveraged

    ckpt = checkpoint.load(checkpoint_path)
    cfg = checkpoint.config_of(ckpt)
    multi = bool(ckpt.get("multi_label", False))
    extra = {}
    if general:
        net, extra = _with_general_branch(ckpt, cfg, general, log=log)
    else:
        # multi-label models also export their classifier: its per-label scores are the query's predicted labels
        net = checkpoint.model_from_checkpoint(ckpt).retrieval_net(with_classifier=multi)
    if invariance != "none":
        net = GroupAveraged(net, invariance)
    spec = ExportSpec(
        bands=list(cfg.data.bands), input_size=cfg.data.input_size, scale=cfg.data.scale,
        mean=list(ckpt["mean"]), std=list(ckpt["std"]), method=cfg.loss.name, class_names=list(ckpt["class_names"]),
        train_config=ckpt["config"], input_size_range=tuple(cfg.data.input_size_range) or None,
        extra={**_trained_metadata(ckpt, cfg), "rsir.label_kind": "multi" if multi else "single",
               **({"rsir.invariance": invariance} if invariance != "none" else {}), **extra},
    )
    return export_onnx(net, spec, out_path)


FIT_IMAGES_PER_SET = 4000  # training images per dataset the general branch's PCA is fitted on (stratified)


def _with_general_branch(ckpt: dict, cfg, spec: GeneralBranch, log=None):
    """(the trained network with the general branch beside it, its metadata)."""
    from core.errors import RsirError

    from . import checkpoint
    from .general_branch import GeneralAndTrained, fit_pca, pooled_features, shared_blocks_match
    from .labelled_data import config_sets
    from .models.efficientnet_lite import LITE_VARIANTS, efficientnet_lite

    if cfg.model.backbone not in LITE_VARIANTS or len(cfg.data.bands) != 3:
        raise RsirError(f"a general branch needs an RGB EfficientNet-Lite checkpoint, not {cfg.model.backbone} on "
                        f"{len(cfg.data.bands)} bands")
    weight, dims, tap = spec.weight, spec.dims, spec.block
    if not 0 < weight < 1 or dims <= 0:
        raise RsirError(f"general branch weight must be in (0, 1) and its dims positive, got {weight}, {dims}")
    if not 1 <= spec.scale <= 4:
        raise RsirError(f"--general-scale must be in 1..4, got {spec.scale}")
    if spec.views not in (1, 2, 4):
        raise RsirError(f"--general-views must be 1, 2 or 4, got {spec.views}")
    trained = checkpoint.model_from_checkpoint(ckpt)
    imagenet = efficientnet_lite(cfg.model.backbone, pretrained=True).eval()
    shared = cfg.model.frozen_blocks
    if tap and not shared < tap <= len(imagenet._blocks):
        raise RsirError(f"--general-block must be after the shared blocks and at most {len(imagenet._blocks)} "
                        f"({cfg.model.backbone}), got {tap}")
    try:
        also = spec.second()
    except ValueError as e:
        raise RsirError(f"--general-also: {e}") from None
    joined = None  # the second network's Reading
    if also:
        backbone2, block2, scale2, views2 = also
        if backbone2 not in LITE_VARIANTS:
            raise RsirError(f"--general-also: {backbone2} is not one of {sorted(LITE_VARIANTS)}")
        if not 1 <= scale2 <= 4 or views2 not in (1, 2, 4):
            raise RsirError(f"--general-also-scale must be in 1..4 and --general-also-views 1, 2 or 4, got {scale2}, "
                            f"{views2}")
        second = efficientnet_lite(backbone2, pretrained=True).eval()
        if block2 > len(second._blocks):
            raise RsirError(f"--general-also: {backbone2} has {len(second._blocks)} blocks, not {block2}")
        if not tap:
            raise RsirError("--general-also joins block features: give --general-block too")
        joined = (second, block2, scale2, views2)
    if not shared_blocks_match(trained.backbone, imagenet, shared):
        raise RsirError("the checkpoint's first blocks are not ImageNet's: train with model.frozen_blocks for a "
                        "general branch that shares them")
    mean_px = torch.tensor(ckpt["mean"], dtype=torch.float32)[None, :, None, None]
    std_px = torch.tensor(ckpt["std"], dtype=torch.float32)[None, :, None, None]
    sets = [data["train"].sample(FIT_IMAGES_PER_SET) for data in config_sets(cfg, ("train",))]
    n = sum(len(s) for s in sets)
    if log:
        log(f"fitting the general branch's PCA-{dims} on the ImageNet features of {n} training images")

    def batches():
        for s in sets:
            for i in range(0, len(s), 128):
                x = torch.from_numpy(s.pixels[i:i + 128]).float() / float(cfg.data.scale)
                yield (x - mean_px) / std_px

    mean, projection = fit_pca(pooled_features(imagenet, batches(), tap, spec.scale, spec.views, joined), dims)
    net = GeneralAndTrained(trained, imagenet, shared, mean, projection, weight, tap, spec.scale, spec.views,
                            joined).eval()
    meta = {"rsir.general_branch": json.dumps({"weight": weight, "dims": dims, "backbone": cfg.model.backbone,
                                               "features": f"block {tap}" if tap else "head",
                                               "weights": "imagenet, untrained", "shared_blocks": shared,
                                               "fit_images": n,
                                               **({"input_scale": spec.scale} if spec.scale != 1 else {}),
                                               **({"views": spec.views} if spec.views != 1 else {}),
                                               **({"also": f"{backbone2} block {block2}"} if also else {}),
                                               **({"also_input_scale": scale2} if also and scale2 != spec.scale
                                                  else {}),
                                               **({"also_views": views2} if also and views2 != spec.views else {})},
                                              sort_keys=True)}
    return net, meta


def crossmodal_paths(out_path: str, modalities: list[str]) -> dict[str, str]:
    """`models/pair.onnx` -> {"optical": "models/pair-optical.onnx", "sar": "models/pair-sar.onnx"}."""
    stem = out_path[:-5] if out_path.lower().endswith(".onnx") else out_path
    return {m: f"{stem}-{m}.onnx" for m in modalities}


def export_crossmodal_checkpoint(checkpoint_path: str, out_path: str) -> dict[str, dict[str, str]]:
    """Export each modality's encoder of a cross-modal checkpoint to its own ONNX file (`crossmodal_paths`).
    Both carry `rsir.modality`, the same `rsir.shared_space` (a hash of the trained weights of the pair) and
    `rsir.modalities`, so core/ accepts a query encoded by one against an index built with the other."""
    from . import checkpoint
    from .crossmodal_trainer import model_from_crossmodal_checkpoint

    ckpt = checkpoint.load(checkpoint_path)
    if ckpt.get("kind") != "crossmodal":
        raise ValueError(f"{checkpoint_path}: not a cross-modal checkpoint")
    cfg = checkpoint.config_of(ckpt)
    model = model_from_crossmodal_checkpoint(ckpt)
    digest = hashlib.sha256()
    for key, value in sorted(ckpt["model"].items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    space = digest.hexdigest()[:32]
    d = cfg.data
    bands = {d.modality: list(d.bands), d.modality_b: list(d.bands_b)}
    scales = {d.modality: d.scale, d.modality_b: d.scale_b}
    metas = {}
    for m, path in crossmodal_paths(out_path, ckpt["modalities"]).items():
        mean, std = ckpt["norm"][m]
        spec = ExportSpec(
            bands=bands[m], input_size=d.input_size, scale=scales[m], mean=mean, std=std, method=cfg.loss.name,
            modality=m, class_names=list(ckpt["class_names"]), train_config=ckpt["config"],
            extra={**_trained_metadata(ckpt, cfg), "rsir.shared_space": space,
                   "rsir.modalities": json.dumps(ckpt["modalities"])})
        metas[m] = export_onnx(model.nets[m].retrieval_net(), spec, path)
    return metas


@dataclass
class ExportOptions:
    """What `rsir export` writes: a checkpoint's model (or, with `pretrained`, untrained ImageNet features with an
    LSH head), an optional int8 copy and half-precision weight storage."""

    out: str
    checkpoint: str | None = None
    pretrained: str | None = None
    bits: int = 64  # pretrained: LSH code bits
    input_size: int = 64  # pretrained: input side
    scale: float = 255.0  # pretrained: value scale
    invariance: str = "none"
    int8: str | None = None
    calibration: int = 256  # int8: images to calibrate activation ranges on (0: weights only)
    half_weights: bool = False
    general_branch: float = 0.0  # > 0: the weight of a general branch beside the trained embedding
    general_dims: int = 128
    general_block: int = 0  # > 0: the general branch pools this block's output instead of the head's
    general_scale: float = 1.0  # > 1: the general branch sees the input resized by this factor
    general_views: int = 1  # 2 / 4: the general branch averages over this many quarter turns
    general_also: str = ""  # "BACKBONE:BLOCK": a second untrained network's block features join the branch
    general_also_scale: float = 0.0  # its input scale (0: general_scale)
    general_also_views: int = 0  # its quarter turns (0: general_views)


def export_files(opts: ExportOptions, log=print) -> list[str]:
    """Carry out `opts`; returns the float files written (one per modality for a cross-modal checkpoint)."""
    from core.errors import RsirError

    from . import checkpoint

    if bool(opts.checkpoint) == bool(opts.pretrained):
        raise RsirError("give either a CHECKPOINT or --pretrained efficientnet_lite0")
    ckpt = checkpoint.load(opts.checkpoint) if opts.checkpoint else None
    if opts.int8 and ckpt is not None and ckpt.get("kind") == "crossmodal":
        raise RsirError(f"{opts.checkpoint}: --int8 is for single-model exports, not cross-modal encoders")
    if opts.int8 and opts.pretrained and opts.calibration:
        raise RsirError("--pretrained has no training images to calibrate on: add --calibration 0 (weights only)")
    if opts.invariance != "none" and opts.pretrained:
        raise RsirError("--invariance applies to trained checkpoints, not --pretrained")
    if opts.pretrained:
        written = [_export_pretrained(opts, log)]
    else:
        if opts.general_branch and ckpt.get("kind") == "crossmodal":
            raise RsirError(f"{opts.checkpoint}: --general-branch is for single-model exports")
        general = (GeneralBranch(opts.general_branch, opts.general_dims, opts.general_block, opts.general_scale,
                                 opts.general_views, opts.general_also, opts.general_also_scale,
                                 opts.general_also_views) if opts.general_branch else None)
        written = export_checkpoint_files(opts.checkpoint, opts.out, opts.invariance, log, general)
    if opts.int8:
        import os

        from .quantize import quantize_int8

        images = _calibration(opts.checkpoint, opts.calibration, opts.out) if opts.calibration > 0 else None
        meta = quantize_int8(opts.out, opts.int8, images)
        log(f"wrote {opts.int8}: {meta['rsir.quantization']}, {os.path.getsize(opts.int8) / 1e6:.1f} MB "
            f"(float: {os.path.getsize(opts.out) / 1e6:.1f} MB)")
    if opts.half_weights:
        from .weight_storage import halve_files

        halve_files(written, log)
    return written


def _calibration(checkpoint_path: str, n: int, model_path: str) -> np.ndarray:
    """`n` random images (seed 0) of the training data the checkpoint was trained on, at the exported model's
    input size (a multi-dataset run: spread over its datasets)."""
    from core.encoder import Encoder

    from . import checkpoint
    from .labelled_data import calibration_images, config_sets

    cfg = checkpoint.config_of(checkpoint.load(checkpoint_path))
    sets = [data["train"] for data in config_sets(cfg, ("train",))]
    return calibration_images(sets, n, Encoder(model_path).info.input_size)


def _export_pretrained(opts: ExportOptions, log) -> str:
    from core.errors import RsirError

    from .pretrained import export_imagenet_lsh

    if opts.bits <= 0 or opts.bits % 8:
        raise RsirError(f"--bits must be a positive multiple of 8, got {opts.bits}")
    meta = export_imagenet_lsh(opts.out, bits=opts.bits, input_size=opts.input_size, scale=opts.scale,
                               backbone=opts.pretrained)
    log(f"wrote {opts.out}: {meta['rsir.method']} ({opts.pretrained}), embedding {meta['rsir.embedding_dim']}-d, "
        f"{meta['rsir.code_bits']}-bit codes, input {meta['rsir.input_size']} px")
    return opts.out


def export_checkpoint_files(path: str, out: str, invariance: str = "none", log=print,
                            general: GeneralBranch | None = None) -> list[str]:
    """Export `path` to `out` (a cross-modal checkpoint: one file per modality); returns the files written."""
    from core.errors import RsirError

    from . import checkpoint

    if checkpoint.load(path).get("kind") == "crossmodal":
        if invariance != "none":
            raise RsirError(f"{path}: --invariance is for single-model exports, not cross-modal encoders")
        metas = export_crossmodal_checkpoint(path, out)
        paths = crossmodal_paths(out, list(metas))
        for m, meta in metas.items():
            log(f"wrote {paths[m]}: {m} encoder ({meta['rsir.method']}, bands {meta['rsir.bands']}, "
                f"{meta['rsir.embedding_dim']}-d, shared space {meta['rsir.shared_space'][:12]})")
        return [paths[m] for m in metas]
    meta = export_checkpoint(path, out, invariance, general, log)
    sizes = (f"input {meta['rsir.input_size']} px" + (f" (any of {json.loads(meta['rsir.input_size_range'])[0]}-"
                                                       f"{json.loads(meta['rsir.input_size_range'])[1]})"
                                                       if "rsir.input_size_range" in meta else ""))
    log(f"wrote {out}: {meta['rsir.method']} on {meta['rsir.backbone']}, embedding {meta['rsir.embedding_dim']}-d, "
        f"{sizes}, {len(json.loads(meta['rsir.class_names']))} classes, val mAP@100 {meta['rsir.val_map100']}"
        + (f", averaged over {meta['rsir.invariance']}" if "rsir.invariance" in meta else ""))
    return [out]
