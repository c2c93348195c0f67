"""manifest.json parsed once into typed records (as `ModelInfo` is for the model), with the defaults for indexes
written by older versions in this one place. The builder writes a `Manifest`; everything else reads one."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

from ..archive.values import ValueScaling
from ..errors import RsirError
from ..fileio import read_json, write_json
from . import layout


@dataclass(frozen=True)
class Tiling:
    """The tiling and reading options of the run that made the index (`rsir index` flags)."""

    tile: int
    stride: int
    gsd: float | None = None
    bands: tuple | None = None
    scale: float | None = None
    max_invalid: float = 0.5
    add_offset: float | None = None
    nodata: float | None = None
    input_size: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Tiling:
        return cls(tile=int(d["tile"]), stride=int(d["stride"]), gsd=d.get("gsd"),
                   bands=tuple(d["bands"]) if d.get("bands") else None, scale=d.get("scale"),
                   max_invalid=float(d.get("max_invalid", 0.5)), add_offset=d.get("add_offset") or None,
                   nodata=d.get("nodata"), input_size=d.get("input_size") or None)

    def to_dict(self) -> dict:
        # the optional keys only when set, so indexes and unfinished runs from before the options keep matching
        return {"tile": self.tile, "stride": self.stride, "gsd": self.gsd,
                "bands": list(self.bands) if self.bands else None, "scale": self.scale,
                "max_invalid": self.max_invalid,
                **({"add_offset": self.add_offset} if self.add_offset else {}),
                **({"nodata": self.nodata} if self.nodata is not None else {}),
                **({"input_size": self.input_size} if self.input_size else {})}


@dataclass(frozen=True)
class SourceEntry:
    """One indexed source: how it was read (bands, values, input side) and what it gave (windows, tiles)."""

    id: int
    path: str
    kind: str                          # "raster", "stack" or "patch"
    label: str | None
    bands: tuple                       # resolved, 1-based
    scale: float
    add_offset: float                  # 0 for indexes from before add_offset
    input_size: int                    # the side its tiles were encoded at (older indexes: the model's one size)
    crs: str
    width: int
    height: int
    gsd: float
    geotransform: tuple | None = None  # None in indexes from before 2026-11-30: open the source to read it
    windows: int = 0
    tiles: int = 0
    skipped: int = 0

    @classmethod
    def from_dict(cls, d: dict, model_input_size: int) -> SourceEntry:
        gt = d.get("geotransform")
        return cls(id=int(d["id"]), path=d["path"], kind=d["kind"], label=d.get("label"), bands=tuple(d["bands"]),
                   scale=float(d["scale"]), add_offset=float(d.get("add_offset", 0.0)),
                   input_size=int(d.get("input_size") or model_input_size), crs=d.get("crs") or "",
                   width=int(d["width"]), height=int(d["height"]), gsd=float(d["gsd"]),
                   geotransform=tuple(gt) if gt else None, windows=int(d.get("windows", 0)),
                   tiles=int(d.get("tiles", 0)), skipped=int(d.get("skipped", 0)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bands"] = list(self.bands)
        d["geotransform"] = list(self.geotransform) if self.geotransform else None
        return d

    @property
    def values(self) -> ValueScaling:
        """How its raw values were read."""
        return ValueScaling(self.scale, self.add_offset)


@dataclass(frozen=True)
class ModelRef:
    path: str
    sha256: str
    metadata: dict

    def file(self, copy: str) -> str:
        """The model's file: `path` if it still holds this model (the same sha256), else the `copy` an index keeps
        of it (layout.MODEL_COPY) if there, else `path`, gone or changed (the encoder then says so)."""
        from ..fileio import sha256_file

        if os.path.isfile(self.path) and sha256_file(self.path) == self.sha256:
            return self.path
        return copy if os.path.isfile(copy) else self.path


@dataclass(frozen=True)
class Manifest:
    """An index's manifest.json. `data` is the folder (relative to the index) that holds this generation's data
    files: "gen-000003", or "" for format 1 indexes whose files sit in the index folder itself."""

    model: ModelRef
    embedding_dim: int
    code_bits: int
    code_source: str                   # "hash" (the model's), "embedding-signs" or "archive-itq" (archive_codes.py)
    tiling: Tiling
    tiles: int
    skipped: int
    float_factory: str
    binary_factory: str
    sources: tuple[SourceEntry, ...]
    created: str
    updated: str
    rsir_version: str = ""
    format: int = layout.FORMAT_VERSION
    generation: int = 0
    data: str = ""
    previous: str | None = None        # the generation before (kept until the next update, for open readers)
    extra: dict = field(default_factory=dict, compare=False)  # keys a newer rsir wrote, kept on rewrite

    @property
    def code_bytes(self) -> int:
        return self.code_bits // 8

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest.json") -> Manifest:
        try:
            fmt = d.get("format")
            if fmt not in layout.READABLE_FORMATS:
                raise RsirError(f"{where}: index format {fmt} is not supported by this rsir (it reads "
                                f"{', '.join(map(str, layout.READABLE_FORMATS))})")
            m = d["model"]
            model_input = int(m["metadata"].get("rsir.input_size", 0) or 0)
            known = {"format", "rsir_version", "created", "updated", "model", "embedding_dim", "code_bits",
                     "code_source", "tiling", "counts", "faiss", "sources", "generation", "data", "previous"}
            return cls(model=ModelRef(m["path"], m["sha256"], dict(m["metadata"])),
                       embedding_dim=int(d["embedding_dim"]), code_bits=int(d["code_bits"]),
                       code_source=d.get("code_source", "hash"), tiling=Tiling.from_dict(d["tiling"]),
                       tiles=int(d["counts"]["tiles"]), skipped=int(d["counts"].get("skipped", 0)),
                       float_factory=d["faiss"]["float"], binary_factory=d["faiss"]["binary"],
                       sources=tuple(SourceEntry.from_dict(s, model_input) for s in d["sources"]),
                       created=d.get("created", ""), updated=d.get("updated", ""),
                       rsir_version=d.get("rsir_version", ""), format=int(fmt),
                       generation=int(d.get("generation", 0)), data=d.get("data", ""), previous=d.get("previous"),
                       extra={k: v for k, v in d.items() if k not in known})
        except RsirError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RsirError(f"{where}: not a valid rsir manifest ({type(exc).__name__}: {exc})") from None

    def to_dict(self) -> dict:
        return {"format": self.format, "rsir_version": self.rsir_version, "created": self.created,
                "updated": self.updated, "generation": self.generation, "data": self.data,
                "previous": self.previous,
                "model": {"path": self.model.path, "sha256": self.model.sha256, "metadata": self.model.metadata},
                "embedding_dim": self.embedding_dim, "code_bits": self.code_bits, "code_source": self.code_source,
                "tiling": self.tiling.to_dict(),
                "counts": {"tiles": self.tiles, "skipped": self.skipped, "sources": len(self.sources)},
                "faiss": {"float": self.float_factory, "binary": self.binary_factory},
                "sources": [s.to_dict() for s in self.sources], **self.extra}

    def describe_codes(self) -> str:
        """Where the index's binary codes come from, in words."""
        from .archive_codes import SOURCE

        if self.code_source == SOURCE:
            return f"{self.code_bits}-bit codes fitted on this archive (PCA-ITQ of its embeddings)"
        if self.code_source == "embedding-signs":
            return f"{self.code_bits} sign bits of the embedding (the model has no hash head)"
        return f"{self.code_bits}-bit codes of the model"

    def replace(self, **changes) -> Manifest:
        return replace(self, **changes)

    def data_dir(self, index_dir: str) -> str:
        """The folder holding this generation's data files."""
        return os.path.join(index_dir, self.data) if self.data else index_dir

    def source_entry(self, path: str) -> SourceEntry | None:
        path = os.path.abspath(path)
        return next((s for s in self.sources if s.path == path), None)


def read_manifest(index_dir: str) -> Manifest | None:
    """The manifest of `index_dir`, or None when it has none; RsirError when it is not a valid one."""
    path = layout.path(index_dir, layout.MANIFEST)
    try:
        raw = read_json(path)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise RsirError(f"{path}: not a valid rsir manifest ({exc})") from None
    if not isinstance(raw, dict):
        raise RsirError(f"{path}: not a valid rsir manifest (not a JSON object)")
    return Manifest.from_dict(raw, path)


def write_manifest(path: str, manifest: Manifest) -> None:
    write_json(path, manifest.to_dict())
