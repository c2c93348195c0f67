"""Build or extend an index directory, resumably.

Run: validate every source first (nothing is written for bad input) -> encode windows in checkpointed chunks
under IDX/.partial/ -> finalize the data files in IDX/.partial/final/ -> rename them into IDX/, manifest last.
A rerun of the same command resumes from the last checkpoint (or finishes an interrupted rename); a rerun with
other inputs is refused unless `restart=True`. Adding sources to an existing index appends tiles (ids continue).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..archive.footprints import FootprintMaker
from ..archive.pixels import invalid_fraction, read_window
from ..archive.sources import SourceSpec, expand_archive, open_source, resolve_bands
from ..archive.tiling import TileWindow, plan_windows, source_gsd
from ..archive.value_check import reading_problem, sample_reading
from ..encoder import Encoder, ModelInfo
from ..errors import Cancelled, RsirError
from ..fileio import atomic_path, read_json, write_json
from . import layout, tiles_gpkg
from .faiss_build import build_binary_index, build_float_index, default_binary_factory, default_float_factory

ProgressFn = Callable[[int, int], None]  # (windows done, windows total)
CancelFn = Callable[[], bool]


@dataclass
class BuildOptions:
    """Tiling and encoding options of `rsir index`."""

    tile: int = 64
    stride: int | None = None           # default: = tile (no overlap)
    gsd: float | None = None            # resample to this ground resolution (source CRS units per pixel)
    bands: list | None = None           # override the model's band list (names or 1-based indices)
    input_size: int | None = None       # encode every tile at this side (default: the model's rule, `source_size`)
    scale: float | None = None          # override the model's value scale for sources without their own
    add_offset: float | None = None     # added to raw values before the scale, for sources without their own
    max_invalid: float = 0.5            # skip tiles with more nodata pixels than this share
    nodata: float | None = None         # fill value of sources that declare no nodata (else: none is empty)
    float_factory: str | None = None    # faiss factory strings; default chosen by size
    binary_factory: str | None = None
    checkpoint_every: int = 2048        # windows per checkpoint
    device: str = "auto"
    threads: int | None = None
    batch_size: int = 64

    def tiling(self) -> dict:
        return {"tile": self.tile, "stride": self.stride or self.tile, "gsd": self.gsd, "bands": self.bands,
                "scale": self.scale, "max_invalid": self.max_invalid,
                # only when set, so indexes and unfinished runs from before the options keep matching
                **({"add_offset": self.add_offset} if self.add_offset else {}),
                **({"nodata": self.nodata} if self.nodata is not None else {}),
                **({"input_size": self.input_size} if self.input_size else {})}


@dataclass
class BuildReport:
    index_dir: str
    tiles_added: int = 0
    skipped: int = 0
    total_tiles: int = 0
    sources_added: int = 0
    sources_already: int = 0
    resumed_windows: int = 0           # windows already done by an earlier, interrupted run
    windows_this_run: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def tiles_per_s(self) -> float:
        return self.windows_this_run / self.seconds if self.seconds > 0 else 0.0


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def source_size(info: ModelInfo, kind: str, width: int, height: int, tile: int, forced: int | None = None) -> int:
    """The input side a source's tiles are encoded at: `forced` (`--input-size`), else the model's rule
    (`ModelInfo.encode_size`) applied to the tile's own side: a patch's larger side, a raster's tile size (pixels
    at `--gsd`). A model of one input size takes that size."""
    return forced or info.encode_size(max(width, height) if kind == "patch" else tile)


def _check_input_size(info: ModelInfo, size: int | None) -> None:
    lo, hi = info.input_size_range
    if size is not None and not lo <= size <= hi:
        raise RsirError(f"--input-size {size}: {info.path} takes "
                        + (f"{lo} px only" if lo == hi else f"{lo} to {hi} px"))


def _plan_source(spec: SourceSpec, encoder: Encoder, opts: BuildOptions, check_values: bool = True) -> dict:
    """A source opened, its bands resolved, its windows planned and its value reading checked (a sample read:
    RsirError when the model's own scale is clearly wrong for it, a warning in the plan when the user's is)."""
    ds = open_source(spec)
    bands = resolve_bands(ds, opts.bands or encoder.info.bands, spec.path)
    if opts.tile <= 0 or (opts.stride is not None and opts.stride <= 0):
        raise RsirError(f"tile size and stride must be positive (got {opts.tile}, {opts.stride})")
    windows = plan_windows(ds, spec.kind, opts.tile, opts.stride or opts.tile, opts.gsd, spec.path)
    scale = spec.scale or opts.scale or encoder.info.scale
    offset = float(spec.add_offset if spec.add_offset is not None else (opts.add_offset or 0.0))
    problem = None
    if check_values:
        problem = reading_problem(sample_reading(ds, bands, scale, offset, spec.path), spec.path, scale, offset)
        if problem and not (spec.scale or opts.scale):  # the model's default scale: refuse, nothing is written
            raise RsirError(problem)
    return {"path": spec.path, "kind": spec.kind, "label": spec.label, "value_warning": problem,
            "input_size": source_size(encoder.info, spec.kind, ds.RasterXSize, ds.RasterYSize, opts.tile,
                                      opts.input_size),
            "scale": scale, "add_offset": offset,
            "bands": bands,
            "crs": FootprintMaker(ds).crs, "width": ds.RasterXSize, "height": ds.RasterYSize,
            "geotransform": list(ds.GetGeoTransform()),
            "gsd": source_gsd(ds), "windows": [[w.x, w.y, w.w, w.h] for w in windows]}


def _check_existing(out_dir: str, manifest: dict, encoder: Encoder, opts: BuildOptions) -> None:
    if manifest.get("format") != layout.FORMAT_VERSION:
        raise RsirError(f"{out_dir}: index format {manifest.get('format')} is not supported by this rsir")
    model = manifest["model"]
    if model["sha256"] != encoder.info.sha256:
        raise RsirError(f"{out_dir}: index was built with model {model['path']} (sha256 {model['sha256'][:12]}), "
                        f"not {encoder.info.path} (sha256 {encoder.info.sha256[:12]}); use that model or a new --out")
    if manifest["tiling"] != opts.tiling():
        raise RsirError(f"{out_dir}: index was built with tiling {manifest['tiling']}, not {opts.tiling()}; "
                        "use the same options to add to it, or a new --out")


def build_index(archive: list[str], model_path: str, out_dir: str, opts: BuildOptions | None = None,
                progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                restart: bool = False) -> BuildReport:
    """Index (or extend the index with) the rasters, band stacks and patch folders in `archive`."""
    opts = opts or BuildOptions()
    t0 = time.perf_counter()
    out_dir = os.path.abspath(out_dir)
    report = BuildReport(out_dir)
    specs = expand_archive(archive)
    encoder = Encoder(model_path, device=opts.device, threads=opts.threads, batch_size=opts.batch_size)
    manifest_path = layout.path(out_dir, layout.MANIFEST)
    partial = layout.path(out_dir, layout.PARTIAL)
    manifest = read_json(manifest_path) if os.path.exists(manifest_path) else None
    if manifest is None and os.path.isdir(out_dir) and set(os.listdir(out_dir)) - {layout.PARTIAL}:
        raise RsirError(f"{out_dir}: exists and is not an rsir index (no {layout.MANIFEST}); use a new folder")
    if manifest is not None:
        _check_existing(out_dir, manifest, encoder, opts)
    known = {s["path"] for s in manifest["sources"]} if manifest else set()
    new_specs = [s for s in specs if s.path not in known]
    report.sources_already = len(specs) - len(new_specs)
    n0 = manifest["counts"]["tiles"] if manifest else 0

    _check_input_size(encoder.info, opts.input_size)
    # validates every source before any write; of a folder of patches only the first is sampled for its values
    plan = [_plan_source(s, encoder, opts, check_values=s.kind != "patch" or i == 0 or new_specs[i - 1].kind !=
                         "patch") for i, s in enumerate(new_specs)]
    report.notes += [p["value_warning"] for p in plan if p["value_warning"]]
    key = hashlib.sha256(json.dumps({"model": encoder.info.sha256, "n0": n0, "tiling": opts.tiling(),
                                     "sources": [(p["path"], p["bands"], p["scale"])
                                                 + ((p["add_offset"],) if p["add_offset"] else ()) for p in plan]},
                                    sort_keys=True).encode()).hexdigest()
    state_path = os.path.join(partial, "state.json")
    state = read_json(state_path) if os.path.exists(state_path) else None
    if state is not None and state["key"] != key:
        if not restart:
            raise RsirError(f"{out_dir}: holds an unfinished indexing run with other inputs or options; rerun that "
                            "command to finish it, or pass --restart to discard it")
        shutil.rmtree(partial)
        state = None
    if not plan and state is None:
        report.total_tiles = n0
        report.notes.append("nothing new to index: every source is already in the index")
        report.seconds = time.perf_counter() - t0
        return report
    if state is None:
        os.makedirs(partial, exist_ok=True)
        state = {"key": key, "phase": "encode", "done_windows": 0, "chunks": [], "kept": 0, "skipped": 0,
                 "skipped_by_source": [0] * len(plan), "created": _now()}
        write_json(state_path, state)
    report.resumed_windows = state["done_windows"]

    if state["phase"] == "encode":
        _encode(plan, encoder, opts, partial, state, state_path, progress, cancel)
        _finalize(plan, encoder, opts, out_dir, manifest, partial, state)
        state["phase"] = "install"
        write_json(state_path, state)
    _install(out_dir, partial)

    report.windows_this_run = state["done_windows"] - report.resumed_windows
    report.tiles_added, report.skipped = state["kept"], state["skipped"]
    report.total_tiles = n0 + state["kept"]
    report.sources_added = len(plan)
    report.seconds = time.perf_counter() - t0
    return report


def _encode(plan, encoder, opts, partial, state, state_path, progress, cancel) -> None:
    flat = [(si, TileWindow(*w)) for si, p in enumerate(plan) for w in p["windows"]]
    total, done = len(flat), state["done_windows"]
    datasets: dict[int, object] = {}

    def dataset(si: int):
        if si not in datasets:
            datasets.clear()  # one open source at a time: archives can hold tens of thousands of patches
            datasets[si] = open_source(SourceSpec(plan[si]["path"], plan[si]["kind"]))
        return datasets[si]

    if progress:
        progress(done, total)
    while done < total:
        chunk = flat[done:done + opts.checkpoint_every]
        meta, skipped_here = [], [0] * len(plan)
        embs, codes = [], []
        cancelled = False
        processed = 0
        for start in range(0, len(chunk), opts.batch_size):
            if cancel and cancel():
                cancelled = True
                break
            # one tensor per input side (patches of several sizes); tiles keep their archive order
            by_size: dict[int, tuple[list, list]] = {}
            for si, win in chunk[start:start + opts.batch_size]:
                ds = dataset(si)
                raw = read_window(ds, plan[si]["bands"], win, plan[si]["input_size"], plan[si]["path"])
                if invalid_fraction(ds, plan[si]["bands"], win, raw, opts.nodata) > opts.max_invalid:
                    skipped_here[si] += 1
                    continue
                batch_pix, batch_meta = by_size.setdefault(plan[si]["input_size"], ([], []))
                batch_pix.append((raw + np.float32(plan[si]["add_offset"])) / np.float32(plan[si]["scale"]))
                batch_meta.append((si, win.x, win.y, win.w, win.h))
            if by_size:
                parts = [(encoder.encode(np.stack(pix), scale=1.0), m) for pix, m in by_size.values()]
                batch_meta = [row for _, m in parts for row in m]
                order = sorted(range(len(batch_meta)), key=lambda i: (batch_meta[i][0], i))
                embs.append(np.concatenate([e for (e, _), _ in parts])[order])
                codes.append(np.concatenate([c for (_, c), _ in parts])[order])
                meta.extend(batch_meta[i] for i in order)
            processed += len(chunk[start:start + opts.batch_size])
            if progress:
                progress(done + processed, total)
        if processed:
            name = f"chunk_{len(state['chunks']):06d}.npz"
            with atomic_path(os.path.join(partial, name)) as tmp, open(tmp, "wb") as f:
                np.savez(f, emb=np.concatenate(embs) if embs else np.zeros((0, encoder.info.embedding_dim), "f4"),
                         codes=np.concatenate(codes) if codes else
                         np.zeros((0, encoder.info.effective_code_bits // 8), "u1"),
                         meta=np.asarray(meta, dtype=np.int64).reshape(-1, 5))
            done += processed
            state["chunks"].append(name)
            state["done_windows"] = done
            state["kept"] += len(meta)
            state["skipped"] += sum(skipped_here)
            state["skipped_by_source"] = [a + b for a, b in zip(state["skipped_by_source"], skipped_here)]
            write_json(state_path, state)
        if cancelled:
            raise Cancelled(f"indexing cancelled after {done} of {total} tiles; rerun the same command to resume")


def _load_chunks(partial: str, names: list[str]):
    embs, codes, metas = [], [], []
    for name in names:
        with np.load(os.path.join(partial, name)) as z:
            embs.append(z["emb"])
            codes.append(z["codes"])
            metas.append(z["meta"])
    return np.concatenate(embs), np.concatenate(codes), np.concatenate(metas)


def _append_rows(old_path: str | None, new_rows: np.ndarray, out_path: str, dtype) -> np.ndarray:
    """Write old file bytes + new rows to out_path; return the whole table as a read-only memmap-ish array."""
    with open(out_path, "wb") as out:
        if old_path and os.path.exists(old_path):
            with open(old_path, "rb") as old:
                shutil.copyfileobj(old, out, 1 << 24)
        out.write(np.ascontiguousarray(new_rows, dtype=dtype).tobytes())
    return np.fromfile(out_path, dtype=dtype)


def _finalize(plan, encoder, opts, out_dir, manifest, partial, state) -> None:
    info = encoder.info
    emb, codes, meta = _load_chunks(partial, state["chunks"])
    n0 = manifest["counts"]["tiles"] if manifest else 0
    n = n0 + len(emb)
    if n == 0:
        shutil.rmtree(partial)
        raise RsirError(f"no valid tiles: all {state['skipped']} tile(s) of the archive are nodata or empty "
                        f"beyond --max-invalid {opts.max_invalid}; nothing was written")
    final = os.path.join(partial, "final")
    shutil.rmtree(final, ignore_errors=True)
    os.makedirs(final)
    old = (lambda name: layout.path(out_dir, name)) if manifest else (lambda name: None)
    dim, nbytes = info.embedding_dim, info.effective_code_bits // 8
    all_emb = _append_rows(old(layout.EMBEDDINGS), emb.astype(np.float16), os.path.join(final, layout.EMBEDDINGS),
                           np.float16).reshape(n, dim)
    all_codes = _append_rows(old(layout.CODES), codes, os.path.join(final, layout.CODES), np.uint8).reshape(n, nbytes)

    float_factory = opts.float_factory or default_float_factory(n)
    binary_factory = opts.binary_factory or default_binary_factory(n, info.effective_code_bits)
    import faiss

    faiss.write_index(build_float_index(all_emb.astype(np.float32), float_factory),
                      os.path.join(final, layout.FLOAT_INDEX))
    faiss.write_index_binary(build_binary_index(all_codes, info.effective_code_bits, binary_factory),
                             os.path.join(final, layout.BINARY_INDEX))

    gpkg = os.path.join(final, layout.TILES)
    if manifest:
        shutil.copyfile(layout.path(out_dir, layout.TILES), gpkg)
        gds, layer = tiles_gpkg.open_update(gpkg)
    else:
        gds, layer = tiles_gpkg.create(gpkg)
    sid0 = len(manifest["sources"]) if manifest else 0
    rows, makers = [], {}
    for i, (si, x, y, w, h) in enumerate(meta.tolist()):
        if si not in makers:
            makers.clear()
            makers[si] = FootprintMaker(open_source(SourceSpec(plan[si]["path"], plan[si]["kind"])))
        src_geom, geo = makers[si].polygons(TileWindow(x, y, w, h))
        label = plan[si]["label"]
        rows.append({"id": n0 + i, "source_id": sid0 + si, "source": plan[si]["path"], "x": x, "y": y, "w": w,
                     "h": h, "label": label, "labels": [label] if label else [], "src_crs": plan[si]["crs"],
                     "src_wkt": src_geom.ExportToWkt() if src_geom else None, "geom": geo})
        if len(rows) >= 50_000:
            tiles_gpkg.add_tiles(layer, rows)
            rows = []
    tiles_gpkg.add_tiles(layer, rows)
    tiles_gpkg.index_sources(gds)
    gds = None  # noqa: F841 - closes the GeoPackage

    kept_by_source = np.bincount(meta[:, 0], minlength=len(plan)) if len(meta) else np.zeros(len(plan), int)
    sources = list(manifest["sources"]) if manifest else []
    for si, p in enumerate(plan):
        entry = {k: v for k, v in p.items() if k not in ("windows", "value_warning")}
        entry.update(id=sid0 + si, windows=len(p["windows"]), tiles=int(kept_by_source[si]),
                     skipped=int(state["skipped_by_source"][si]))
        sources.append(entry)
    now = _now()
    new_manifest = {
        "format": layout.FORMAT_VERSION, "rsir_version": __version__,
        "created": manifest["created"] if manifest else now, "updated": now,
        "model": {"path": os.path.abspath(info.path), "sha256": info.sha256, "metadata": info.metadata},
        "embedding_dim": dim, "code_bits": info.effective_code_bits,
        "code_source": "hash" if info.has_hash else "embedding-signs",
        "tiling": opts.tiling(),
        "counts": {"tiles": n, "skipped": (manifest["counts"]["skipped"] if manifest else 0) + state["skipped"],
                   "sources": len(sources)},
        "faiss": {"float": float_factory, "binary": binary_factory},
        "sources": sources,
    }
    write_json(os.path.join(final, layout.MANIFEST), new_manifest)


def _install(out_dir: str, partial: str) -> None:
    """Rename finished files into place, manifest last; safe to repeat after an interruption."""
    final = os.path.join(partial, "final")
    for name in layout.DATA_FILES + (layout.MANIFEST,):
        src = os.path.join(final, name)
        if os.path.exists(src):
            os.replace(src, layout.path(out_dir, name))
    shutil.rmtree(partial)
