"""Training configuration: a TOML or YAML file of sections [data], [model], [loss], [optim], [augment].

Every key has a default; unknown keys and wrong types are errors naming the file and the key, so a typo
never silently trains the wrong model. Relative paths are relative to the config file's folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field

from core.errors import RsirError

from .augment import AugmentConfig
from .registry import loss_names, loss_spec

DATA_KINDS = ("folder", "split_csv", "label_table", "bigearthnet", "index", "paired", "multi")
SET_KINDS = ("folder", "split_csv")  # what a [[data.sets]] entry of a multi-dataset run may be


@dataclass
class DataSetConfig:
    """One labelled dataset of a multi-dataset run (`data.kind = multi`, a `[[data.sets]]` table each)."""

    root: str = ""  # a folder per class (its split.csv if present) or a split CSV
    kind: str = "folder"  # folder | split_csv
    name: str = ""  # its classes are namespaced "name:class" ("aid:River" is not "eurosat_rgb:River"); default:
    # the folder's name
    input_size: int = 0  # side its images are read and trained at; 0 = data.input_size
    exclude_classes: list = field(default_factory=list)  # classes left out of training (and validation)
    exclude_classes_file: str = ""  # the same, one a line (# comments): e.g. a benchmark's unseen classes
    max_per_epoch: int = 0  # at most this many of its training images per epoch (a fresh draw each epoch); 0 = all


@dataclass
class DataConfig:
    kind: str = "folder"  # folder | split_csv | label_table | bigearthnet | index | paired
    root: str = ""  # dataset folder, split CSV, multi-label table (CSV/JSON), BigEarthNet folder or index folder
    bands: list = field(default_factory=lambda: [1, 2, 3])  # 1-based indices; BigEarthNet: names ("B04", "VV")
    input_size: int = 64
    scale: float = 255.0  # raw values / scale, then the model's mean/std
    split_seed: int = 42
    labels: str = ""  # kind = index: vector file of labelled polygons
    label_field: str = "class"
    cache_dir: str = ""  # decoded images as .npz; "" = no cache
    # kind = paired (cross-modal): root = raster A, root_b = raster B (co-registered; rasters or band-stack specs)
    root_b: str = ""
    bands_b: list = field(default_factory=list)
    scale_b: float = 255.0
    modality: str = "optical"
    modality_b: str = "sar"
    tile: int = 64  # tile side in raster A pixels (read at input_size)
    stride: int = 0  # 0 = tile (no overlap)
    neighbour_batches: float = 0.0  # paired: this share of each batch is one tile's nearest tiles on the ground
    # (hard negatives for the same-place terms: what a place must beat in an index are the places around it)
    # kind = multi: the datasets, each its own labels, input size and batches
    sets: list = field(default_factory=list)
    # [smallest, largest] input side of the exported model (dynamic spatial axes: core encodes each source near
    # its own pixel size within it); [] = input_size only
    input_size_range: list = field(default_factory=list)
    val_database_max: int = 0  # validation searches at most this many training images per set (0 = all)


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    embedding_dim: int = 128
    classifier: bool = False  # a cosine classifier head (forced on by losses that need it)
    hash_bits: int = 0  # K > 0: a hash head (tanh-relaxed in training, sign bits at export) replaces the embedding
    init_from: str = ""  # a training checkpoint (best.pt) to start from instead of ImageNet: its backbone, and the
    # heads whose shapes match (fine-tune a trained float model into a hash model, or continue a run)
    frozen_blocks: int = 0  # EfficientNet-Lite: keep the stem and the first N blocks as they start (weights and
    # batch-norm statistics): the high-resolution layers cost most of a CPU step's backward pass
    mean: list = field(default_factory=list)  # default: the backbone's
    std: list = field(default_factory=list)


@dataclass
class LossConfig:
    name: str = "snca-ce"
    sigma: float = 0.05  # SNCA temperature
    momentum: float = 0.999  # momentum encoder EMA (Kang et al. 2020)
    ce_weight: float = 1.0
    rotation_weight: float = 1.0
    rotation_angles: str = "quarter"  # rotation term's copies: "quarter" turns, or "any" angle (bilinear)
    margin: float = 0.2  # triplet margin
    temperature: float = 0.05  # normalized softmax
    quant_weight: float = 0.1  # hashing: push relaxed codes towards +-1
    balance_weight: float = 0.1  # hashing: each bit +1 on half of the batch
    # cross-modal (training/crossmodal.py); temperature above is their t
    triplet_weight: float = 1.0
    pairwise_weight: float = 0.2  # a supporting term: at 1.0 it slowed the triplet term's alignment in our runs
    infonce_weight: float = 1.0
    angular_weight: float = 1.0
    intra_weight: float = 0.5
    class_dims: int = 0  # crossmodal-supervised-ssl: the class terms on the first N embedding dims (or code bits),
    # the same-place terms on the rest (0 = both on all of it); the whole vector ranks class first, place within it
    # regularisers towards the backbone training started from (training/regularisers.py), with any loss
    l2sp_weight: float = 0.0  # L2-SP: squared distance of the backbone weights from their starting values
    distill_weight: float = 0.0  # the batch's cosine similarities kept close to the starting backbone's


@dataclass
class OptimConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    backbone_lr: float = 0.0  # 0 = same as lr
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 = torch's default


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    source: str = ""  # the file it was read from

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    def sha256(self) -> str:
        """Hash of everything that shapes the model (not where it is written)."""
        d = self.to_dict()
        d.pop("out_dir")
        d["optim"].pop("device")
        d["optim"].pop("threads")
        d["data"].pop("cache_dir")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _fill(cls, values: dict, where: str, path: str):
    if not isinstance(values, dict):
        raise RsirError(f"{path}: [{where}] must be a table of keys, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known or key == "source":
            raise RsirError(f"{path}: unknown key {where + '.' if where else ''}{key} (known: "
                            f"{', '.join(k for k in known if k != 'source')})")
        default = known[key].default if known[key].default is not dataclasses.MISSING else known[key].default_factory()
        if dataclasses.is_dataclass(default):
            kwargs[key] = _fill(type(default), value, key, path)
            continue
        if isinstance(default, bool) and not isinstance(value, bool):
            raise RsirError(f"{path}: {where}.{key} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(default, int) and not isinstance(value, int)):
                raise RsirError(f"{path}: {where}.{key} must be a {type(default).__name__}, got {value!r}")
            value = type(default)(value)
        if isinstance(default, str) and not isinstance(value, str):
            raise RsirError(f"{path}: {where}.{key} must be a string, got {value!r}")
        if isinstance(default, list) and not isinstance(value, list):
            raise RsirError(f"{path}: {where}.{key} must be a list, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def parse_config(values: dict, path: str = "<config>") -> TrainConfig:
    """Validate a config mapping; relative paths resolve against `path`'s folder."""
    cfg = _fill(TrainConfig, values, "", path)
    cfg.source = path
    base = os.path.dirname(os.path.abspath(path)) if os.path.exists(path) else os.getcwd()

    def resolve(p: str) -> str:
        return p if not p or os.path.isabs(p) else os.path.normpath(os.path.join(base, p))

    cfg.out_dir = resolve(cfg.out_dir)
    cfg.data.root, cfg.data.labels, cfg.data.cache_dir = (resolve(cfg.data.root), resolve(cfg.data.labels),
                                                          resolve(cfg.data.cache_dir))
    cfg.data.root_b = resolve(cfg.data.root_b)
    cfg.data.sets = [_fill(DataSetConfig, s, "data.sets", path) if isinstance(s, dict) else s
                     for s in cfg.data.sets]
    for s in cfg.data.sets:
        if not isinstance(s, DataSetConfig):
            raise RsirError(f"{path}: each data.sets entry must be a table ([[data.sets]]), got {s!r}")
        s.root, s.exclude_classes_file = resolve(s.root), resolve(s.exclude_classes_file)
        s.name = s.name or os.path.splitext(os.path.basename(s.root.rstrip("/")))[0]
        if s.exclude_classes_file:  # the classes themselves go into the config (and its hash), not just the path
            s.exclude_classes = list(dict.fromkeys(list(s.exclude_classes) + read_class_list(s.exclude_classes_file)))
    cfg.model.init_from = resolve(cfg.model.init_from)
    _check(cfg, path)
    return cfg


def _check(cfg: TrainConfig, path: str) -> None:
    if cfg.data.kind not in DATA_KINDS:
        raise RsirError(f"{path}: data.kind must be one of {', '.join(DATA_KINDS)}, got {cfg.data.kind!r}")
    _check_sets(cfg, path)
    if not cfg.data.root and cfg.data.kind != "multi":
        raise RsirError(f"{path}: data.root is required (the dataset folder, split CSV or index folder)")
    if cfg.data.kind == "index" and not cfg.data.labels:
        raise RsirError(f"{path}: data.kind = index needs data.labels (a vector file of labelled polygons)")
    spec = loss_spec(cfg.loss.name, path)
    if (cfg.data.kind == "paired") != (spec.labels == "paired"):
        raise RsirError(f"{path}: data.kind = paired goes with loss.name {' or '.join(loss_names(labels='paired'))} "
                        f"(got kind {cfg.data.kind!r}, loss {cfg.loss.name!r})")
    if cfg.data.kind == "paired":
        if not cfg.data.root_b or not cfg.data.bands_b:
            raise RsirError(f"{path}: data.kind = paired needs data.root_b (raster B) and data.bands_b")
        if cfg.data.modality == cfg.data.modality_b:
            raise RsirError(f"{path}: data.modality and data.modality_b must differ (e.g. optical and sar), "
                            f"both are {cfg.data.modality!r}")
    for key, value in (("optim.epochs", cfg.optim.epochs), ("optim.batch_size", cfg.optim.batch_size),
                       ("model.embedding_dim", cfg.model.embedding_dim), ("data.input_size", cfg.data.input_size)):
        if value <= 0:
            raise RsirError(f"{path}: {key} must be positive, got {value}")
    if spec.hash_bits and cfg.model.hash_bits <= 0:
        raise RsirError(f"{path}: loss.name {cfg.loss.name!r} trains hash codes: set model.hash_bits (e.g. 64)")
    if cfg.model.hash_bits < 0 or cfg.model.hash_bits % 8:
        raise RsirError(f"{path}: model.hash_bits must be a multiple of 8 (0 = no hash head), "
                        f"got {cfg.model.hash_bits}")
    if cfg.optim.batch_size < 2:
        raise RsirError(f"{path}: optim.batch_size must be at least 2 for metric learning")
    if not 0 <= cfg.data.neighbour_batches <= 1:
        raise RsirError(f"{path}: data.neighbour_batches must be a share between 0 and 1, got "
                        f"{cfg.data.neighbour_batches}")
    if cfg.loss.class_dims:
        width = cfg.model.hash_bits or cfg.model.embedding_dim
        if cfg.loss.name != "crossmodal-supervised-ssl":
            raise RsirError(f"{path}: loss.class_dims splits crossmodal-supervised-ssl's embedding; loss.name is "
                            f"{cfg.loss.name!r}")
        if not 0 < cfg.loss.class_dims < width:
            raise RsirError(f"{path}: loss.class_dims must be between 1 and {width - 1} (the embedding has {width} "
                            f"dims), got {cfg.loss.class_dims}")
    if cfg.loss.rotation_angles not in ("quarter", "any"):
        raise RsirError(f"{path}: loss.rotation_angles must be quarter or any, got {cfg.loss.rotation_angles!r}")
    if not 0 <= cfg.loss.momentum < 1:
        raise RsirError(f"{path}: loss.momentum must be in [0, 1), got {cfg.loss.momentum}")
    if cfg.model.init_from and cfg.data.kind == "paired":
        raise RsirError(f"{path}: model.init_from is not supported for paired (cross-modal) training")
    n = len(cfg.data.bands)
    for key in ("mean", "std"):
        v = getattr(cfg.model, key)
        if v and len(v) != n:
            raise RsirError(f"{path}: model.{key} needs one value per band ({n}), got {v}")


def _check_sets(cfg: TrainConfig, path: str) -> None:
    d = cfg.data
    if (d.kind == "multi") != bool(d.sets):
        raise RsirError(f"{path}: data.kind = multi goes with one [[data.sets]] table per dataset "
                        f"(kind {d.kind!r}, {len(d.sets)} sets)")
    names = [s.name for s in d.sets]
    if len(set(names)) != len(names):
        raise RsirError(f"{path}: data.sets names must differ (got {names}); set name = ... on each")
    for s in d.sets:
        if s.kind not in SET_KINDS:
            raise RsirError(f"{path}: data.sets {s.name!r}: kind must be one of {', '.join(SET_KINDS)}, got {s.kind!r}")
        if not s.root:
            raise RsirError(f"{path}: data.sets entry {s.name!r} needs a root")
        if s.input_size < 0 or s.max_per_epoch < 0:
            raise RsirError(f"{path}: data.sets {s.name!r}: input_size and max_per_epoch must be >= 0")
    if d.input_size_range:
        lo_hi = d.input_size_range
        if (len(lo_hi) != 2 or not all(isinstance(v, int) for v in lo_hi)
                or not 0 < lo_hi[0] <= d.input_size <= lo_hi[1]):
            raise RsirError(f"{path}: data.input_size_range must be [smallest, largest] pixels holding "
                            f"data.input_size {d.input_size}, got {lo_hi}")


def read_class_list(path: str) -> list[str]:
    """Class names, one a line; blank lines and # comments skipped."""
    if not os.path.isfile(path):
        raise RsirError(f"{path}: no such class list file")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def load_config(path: str) -> TrainConfig:
    """Read a .toml, .yaml or .yml training config."""
    if not os.path.isfile(path):
        raise RsirError(f"{path}: no such config file")
    try:
        if path.lower().endswith(".toml"):
            import tomllib

            with open(path, "rb") as f:
                values = tomllib.load(f)
        elif path.lower().endswith((".yaml", ".yml")):
            import yaml

            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        else:
            raise RsirError(f"{path}: a config must be .toml, .yaml or .yml")
    except RsirError:
        raise
    except Exception as exc:  # tomllib/yaml parse errors carry the line number
        raise RsirError(f"{path}: cannot parse ({exc})") from None
    return parse_config(values, path)
