"""ONNX encoder: model metadata (contract 1, docs/contracts.md) and batched onnxruntime inference.

Outputs L2-normalised float embeddings and packed binary codes (`np.packbits` of the sign bits, big-endian
bit order within each byte). Models without a hash output get codes from the signs of their embedding.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import RsirError
from .fileio import sha256_file

CONTRACT_VERSION = "1"
INVARIANCE_VIEWS = {"none": 1, "rot4": 4, "d4": 8}  # rsir.invariance -> views per input inside the graph
REQUIRED_KEYS = ("rsir.format", "rsir.model_type", "rsir.outputs", "rsir.bands", "rsir.input_size", "rsir.scale",
                 "rsir.mean", "rsir.std", "rsir.embedding_dim")


@dataclass(frozen=True)
class GeneralBranchInfo:
    """`rsir.general_branch`: an untrained ImageNet branch beside the trained one (training/general_branch.py):
    its share of the cosine, PCA dimensions, which features, and the input it reads (enlarged `input_scale`
    times, averaged over `views` quarter turns; `also` a second untrained network's features joined to them)."""

    weight: float
    dims: int
    features: str = "head"
    input_scale: float = 1.0
    views: int = 1
    also: str = ""
    also_scale: float = 1.0
    also_views: int = 1

    @classmethod
    def of(cls, meta: dict) -> GeneralBranchInfo | None:
        """The branch a model's metadata declares, or None; ValueError/TypeError/KeyError when malformed."""
        if "rsir.general_branch" not in meta:
            return None
        g = json.loads(meta["rsir.general_branch"])
        scale, views = float(g.get("input_scale", 1)), int(g.get("views", 1))
        also = {"also": str(g["also"]), "also_scale": float(g.get("also_input_scale", scale)),
                "also_views": int(g.get("also_views", views))} if g.get("also") else {}
        return cls(float(g["weight"]), int(g["dims"]), str(g.get("features", "head")), scale, views, **also)

    @property
    def own_passes(self) -> float:
        """Passes of the network it runs beside the trained branch's, in plain-pass units (0: it shares it)."""
        if self.input_scale == 1 and self.views == 1 and not self.also:
            return 0.0
        # a second network counts as full passes: an upper bound, as pass_cost is for memory
        return self.views * self.input_scale ** 2 + (self.also_views * self.also_scale ** 2 if self.also else 0)

    def describe(self) -> str:
        where = f", {self.features} features" if self.features != "head" else ""
        if self.input_scale != 1:
            where += f" at {self.input_scale:g}x the input"
        if self.views != 1:
            where += f", averaged over {self.views} quarter turns"
        if self.also:
            own = [f"at {self.also_scale:g}x" if self.also_scale != self.input_scale else "",
                   f"{self.also_views} quarter turns" if self.also_views != self.views else ""]
            own_text = f" ({', '.join(o for o in own if o)})" if any(own) else ""
            where += f", joined by {self.also.replace('efficientnet_', 'EfficientNet-')} features{own_text}"
        return f"with a general ImageNet branch (PCA-{self.dims}, weight {self.weight:g}{where})"


@dataclass
class ModelInfo:
    """The model's `rsir.*` metadata, parsed."""

    path: str
    sha256: str
    model_type: str
    outputs: dict
    bands: list
    input_size: int
    scale: float
    mean: list[float]
    std: list[float]
    embedding_dim: int
    code_bits: int
    modality: str = "optical"
    method: str = ""
    # smallest and largest square input side the graph accepts (`rsir.input_size_range`); a model exported
    # without it takes `input_size` only
    input_size_range: tuple[int, int] = (0, 0)
    class_names: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    general_branch: GeneralBranchInfo | None = None

    @property
    def channels(self) -> int:
        return len(self.bands)

    @property
    def dynamic_size(self) -> bool:
        """The graph takes any square input side in `input_size_range`, not only `input_size`."""
        lo, hi = self.input_size_range
        return lo < hi

    def encode_size(self, native: int | None = None) -> int:
        """The input side to encode an image of `native` pixels a side at: its own size clamped to the model's
        range (resolution-aware models), else the model's one size. None = the model's default size."""
        if native is None or not self.dynamic_size:
            return self.input_size
        lo, hi = self.input_size_range
        return int(min(max(int(native), lo), hi))

    @property
    def has_hash(self) -> bool:
        return "code" in self.outputs

    @property
    def shared_space(self) -> str:
        """Id of the common embedding space of a cross-modal model set (`rsir.shared_space`; "" for others): an
        index built with one member can be searched with a query encoded by another."""
        return self.metadata.get("rsir.shared_space", "")

    @property
    def multi_label(self) -> bool:
        """Trained on label sets (`rsir.label_kind` = multi): class scores are independent sigmoids."""
        return self.metadata.get("rsir.label_kind") == "multi"

    @property
    def views(self) -> int:
        """How many views of each input the model runs inside its graph (`rsir.invariance`: rot4 = 4 quarter
        turns, d4 = those and their mirror images = 8; 1 for other models)."""
        return INVARIANCE_VIEWS.get(self.metadata.get("rsir.invariance", "none"), 1)

    @property
    def pass_cost(self) -> float:
        """How many plain passes of the network one input costs inside the graph, for keeping memory flat: the
        views, times 1 plus a general branch's own pass (`rsir.general_branch` with an input scale or views: the
        untrained network run again on the input enlarged `input_scale` times, `views` times)."""
        return self.views * (1.0 + (self.general_branch.own_passes if self.general_branch else 0.0))

    @property
    def effective_code_bits(self) -> int:
        """Bits of the binary codes core stores: the hash output's, or one per embedding dimension."""
        return self.code_bits if self.has_hash else self.embedding_dim

    @classmethod
    def from_metadata(cls, path: str, sha256: str, meta: dict) -> ModelInfo:
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise RsirError(f"{path}: ONNX model lacks rsir metadata {missing}; export it with `rsir export`")
        if meta["rsir.format"] != CONTRACT_VERSION:
            raise RsirError(f"{path}: rsir metadata format {meta['rsir.format']} is not supported "
                            f"(this rsir reads format {CONTRACT_VERSION})")
        try:
            info = cls(
                path=path, sha256=sha256, model_type=meta["rsir.model_type"],
                outputs=json.loads(meta["rsir.outputs"]), bands=json.loads(meta["rsir.bands"]),
                input_size=int(meta["rsir.input_size"]), scale=float(meta["rsir.scale"]),
                mean=[float(v) for v in json.loads(meta["rsir.mean"])],
                std=[float(v) for v in json.loads(meta["rsir.std"])],
                embedding_dim=int(meta["rsir.embedding_dim"]), code_bits=int(meta.get("rsir.code_bits", "0")),
                modality=meta.get("rsir.modality", "optical"), method=meta.get("rsir.method", ""),
                class_names=json.loads(meta.get("rsir.class_names", "[]")), metadata=dict(meta),
                general_branch=GeneralBranchInfo.of(meta),
            )
            size = info.input_size
            lo, hi = (int(v) for v in json.loads(meta.get("rsir.input_size_range", f"[{size}, {size}]")))
        except (ValueError, TypeError, KeyError) as exc:
            raise RsirError(f"{path}: malformed rsir metadata ({type(exc).__name__}: {exc})") from None
        if not 0 < lo <= info.input_size <= hi:
            raise RsirError(f"{path}: rsir.input_size_range [{lo}, {hi}] must hold rsir.input_size {info.input_size}")
        info.input_size_range = (lo, hi)
        if meta.get("rsir.invariance", "none") not in INVARIANCE_VIEWS:
            raise RsirError(f"{path}: unknown rsir.invariance {meta['rsir.invariance']!r} "
                            f"(this rsir reads {sorted(INVARIANCE_VIEWS)})")
        if not (len(info.mean) == len(info.std) == info.channels):
            raise RsirError(f"{path}: rsir.mean/rsir.std need one value per band in rsir.bands ({info.channels})")
        return info


def available_devices() -> list[str]:
    """Devices onnxruntime can really use here: always "cpu", plus "cuda" when its provider is present."""
    import onnxruntime as ort

    return ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in have:
        raise RsirError("device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
                        "(install onnxruntime-gpu) - use --device cpu or auto")
    if device not in ("auto", "cuda"):
        raise RsirError(f"unknown device {device!r}; use auto, cpu or cuda")
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in have else []) + ["CPUExecutionProvider"]


def open_session(model_path: str, opts, providers: list[str]):
    """An onnxruntime session, or RsirError naming the file when it is not a readable ONNX model."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model_path, sess_options=opts, providers=providers)
    except RsirError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for non-ONNX files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RsirError(f"{model_path}: not a valid ONNX model ({first[:200]})") from None


def info_of_session(model_path: str, session) -> ModelInfo:
    """The rsir metadata of an open session's model."""
    return ModelInfo.from_metadata(model_path, sha256_file(model_path), session.get_modelmeta().custom_metadata_map)


class Encoder:
    """Batched ONNX inference: raw pixels (N, C, H, W) -> normalised embeddings and packed codes."""

    def __init__(self, model_path: str, device: str = "auto", threads: int | None = None, batch_size: int = 64):
        import onnxruntime as ort

        if not os.path.isfile(model_path):
            raise RsirError(f"{model_path}: no such model file")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = open_session(model_path, opts, _providers(device))
        self.info = info_of_session(model_path, self.session)
        names = {o.name for o in self.session.get_outputs()}
        for role, name in self.info.outputs.items():
            if name not in names:
                raise RsirError(f"{model_path}: rsir.outputs names {role} output {name!r}, which the graph lacks")
        # a model that averages over 8 views runs 8x the batch inside (or a general branch its own enlarged pass):
        # keep the peak memory of a plain model (the default at 256 px, batch 64: 4.6 GB without this, 0.9 GB with)
        self.batch_size = max(1, int(batch_size // self.info.pass_cost))
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()
        self._mean = np.asarray(self.info.mean, np.float32)[None, :, None, None]
        self._std = np.asarray(self.info.std, np.float32)[None, :, None, None]

    @property
    def device(self) -> str:
        return "cuda" if self.providers and self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def preprocess(self, raw: np.ndarray, scale: float | None = None) -> np.ndarray:
        """Raw values -> model input: divide by `scale` (default: the model's), then per-band mean/std."""
        x = np.asarray(raw, np.float32) / np.float32(scale or self.info.scale)
        return np.ascontiguousarray((x - self._mean) / self._std, dtype=np.float32)

    def encode(self, raw: np.ndarray, scale: float | None = None, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings float32 (N, D) L2-normalised, codes uint8 (N, bits/8)) for raw pixels (N, C, S, S), S the
        model's input size or, for a resolution-aware model, any side in its `input_size_range`. `progress(done,
        total)` is called after each batch."""
        self.check_input(raw)
        embs, codes = [], []
        want = [self.info.outputs["embedding"]] + ([self.info.outputs["code"]] if self.info.has_hash else [])
        for i in range(0, len(raw), self.batch_size):
            out = self.session.run(want, {self.input_name: self.preprocess(raw[i:i + self.batch_size], scale)})
            emb = out[0].astype(np.float32)
            embs.append(emb)
            codes.append(pack_signs(out[1] if self.info.has_hash else emb))
            if progress is not None:
                progress(min(i + self.batch_size, len(raw)), len(raw))
        if not embs:
            return (np.zeros((0, self.info.embedding_dim), np.float32),
                    np.zeros((0, self.info.effective_code_bits // 8), np.uint8))
        return l2_normalise(np.concatenate(embs)), np.concatenate(codes)


    def check_input(self, raw: np.ndarray) -> None:
        """RsirError unless `raw` is (N, C, S, S) with the model's band count and a side it takes."""
        lo, hi = self.info.input_size_range
        c = self.info.channels
        if raw.ndim == 4 and raw.shape[1] == c and raw.shape[2] == raw.shape[3] and lo <= raw.shape[2] <= hi:
            return
        want = f"(N, {c}, {lo}, {lo})" if lo == hi else f"(N, {c}, S, S) with {lo} <= S <= {hi}"
        raise RsirError(f"{self.info.path}: input must be {want}, got {raw.shape}")

    def class_logits(self, raw: np.ndarray, scale: float | None = None) -> np.ndarray:
        """(N, classes) logits of the model's classifier output (`class_logits` in rsir.outputs)."""
        if "class_logits" not in self.info.outputs:
            raise RsirError(f"{self.info.path}: the model exports no classifier output")
        name = self.info.outputs["class_logits"]
        out = [self.session.run([name], {self.input_name: self.preprocess(raw[i:i + self.batch_size], scale)})[0]
               for i in range(0, len(raw), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.info.class_names)), np.float32)


def describe_method(meta: dict) -> str:
    """How a model was made, from its metadata, for listings: "milan, averaged over rot4, within-class whitened,
    float16 weight storage"."""
    parts = [meta.get("rsir.method", "?")]
    if "rsir.input_size_range" in meta:
        lo, hi = json.loads(meta["rsir.input_size_range"])
        parts.append(f"input {lo}-{hi} px")
    try:
        branch = GeneralBranchInfo.of(meta)
    except (ValueError, TypeError, KeyError):
        branch = None  # a listing of an index whose model metadata is odd still lists
    if branch is not None:
        parts.append(branch.describe())
    if "rsir.invariance" in meta:
        parts.append(f"averaged over {meta['rsir.invariance']}")
    if "rsir.whitening" in meta:
        whitening = json.loads(meta["rsir.whitening"])
        if whitening.get("kind") != "none":
            parts.append(f"{whitening.get('kind', '')} whitened".strip())
        if whitening.get("codes"):
            parts.append(f"{whitening['codes']} codes")
    if "rsir.quantization" in meta:  # "int8 weights and activations (...)" -> "int8 weights and activations"
        parts.append(meta["rsir.quantization"].split(" (")[0])
    if "rsir.weight_storage" in meta:
        parts.append(f"{meta['rsir.weight_storage']} weight storage")
    return ", ".join(parts)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def pack_signs(logits: np.ndarray) -> np.ndarray:
    """Sign bits (value > 0 -> 1), packed 8 per byte, most significant bit first."""
    return np.packbits(np.asarray(logits) > 0, axis=1)


def code_hex(code: np.ndarray) -> str:
    """A packed code as hex: the hash bucket id shown to users."""
    return bytes(np.asarray(code, np.uint8)).hex()
