"""Build or extend an index directory, resumably.

Run: validate the options and every source first (nothing is written for bad input) -> take the folder's write
lock -> encode windows in checkpointed chunks under IDX/.partial/ -> write the next generation's data files and
manifest in IDX/.partial/final/ -> install: rename that folder to IDX/gen-NNNNNN/ (one rename), then replace
IDX/manifest.json (one rename) -> remove generations older than the previous one and the .partial folder.
A kill at any moment leaves the previous generation in service; a rerun of the same command resumes from the last
checkpoint or finishes the install; a rerun with other inputs is refused unless `restart=True`. Adding sources to
an existing index appends tiles (ids continue).
"""
from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..archive.footprints import FootprintMaker
from ..archive.sources import SourceSpec, expand_archive, open_source, resolve_bands
from ..archive.tiling import TileWindow, WindowGrid, plan_windows, source_gsd
from ..archive.value_check import reading_problem, sample_reading
from ..archive.values import ValueScaling, resolve_values
from ..encoder import Encoder, ModelInfo
from ..errors import Cancelled, RsirError
from ..fileio import atomic_path, read_json, write_json
from . import archive_codes, layout, mih_tables, tiles_gpkg
from .encode_chunks import ChunkResult, DatasetCache, EncodeSettings, SourceReader, encode_windows
from .faiss_build import (
    build_binary_index,
    build_float_index,
    check_factory,
    default_binary_factory,
    default_float_factory,
)
from .lock import IndexLock
from .manifest import Manifest, ModelRef, SourceEntry, Tiling, read_manifest, write_manifest

ProgressFn = Callable[[int, int], None]  # (windows done, windows total)
CancelFn = Callable[[], bool]
NoticeFn = Callable[[str], None]  # a message for the user now, not at the end (e.g. the size of a long run)
LARGE_RUN = 1_000_000  # tiles: above this a run says how many and how long, before it starts

# Fault injection for the crash-consistency tests: called with the name of each step of a run (see STEPS); the
# environment variable RSIR_FAULT_AT=step makes a process die there as a SIGKILL would (bench/chaos.py, tests).
STEPS = ("encode:chunk-saved", "encode:state-saved", "finalize:written", "install:ready", "install:data-renamed",
         "install:manifest-replaced", "install:old-removed")
FAULT_HOOK: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if FAULT_HOOK is not None:
        FAULT_HOOK(name)
    elif os.environ.get("RSIR_FAULT_AT") == name:
        os._exit(137)


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
    dask: str | None = None             # encode on Dask: "local", "local:N" or a scheduler address (tcp://...)
    model_codes: bool = False           # keep the model's hash codes instead of fitting codes on the archive
    code_bits: int | None = None        # bits of the codes fitted on the archive (default: the model's)

    def tiling(self) -> Tiling:
        return Tiling(tile=self.tile, stride=self.stride or self.tile, gsd=self.gsd,
                      bands=tuple(self.bands) if self.bands else None, scale=self.scale,
                      max_invalid=self.max_invalid, add_offset=self.add_offset or None, nodata=self.nodata,
                      input_size=self.input_size or None)

    def check(self) -> None:
        """RsirError for options no run can use, before anything is opened or written."""
        limit = 1 << 30
        for name, value, low in (("--tile", self.tile, 1), ("--stride", self.stride, 1),
                                 ("--input-size", self.input_size, 1), ("--batch-size", self.batch_size, 1),
                                 ("--checkpoint-every", self.checkpoint_every, 1), ("--threads", self.threads, 1),
                                 ("--code-bits", self.code_bits, 8)):
            if value is not None and not low <= value <= limit:
                raise RsirError(f"{name} {value}: must be a whole number from {low} to {limit}")
        if self.code_bits is not None and self.code_bits % 8:
            raise RsirError(f"--code-bits {self.code_bits}: must be a multiple of 8")
        if self.code_bits is not None and self.model_codes:
            raise RsirError("--code-bits sets the codes fitted on the archive; --model-codes keeps the model's: "
                            "give one of them")
        if not 0.0 <= self.max_invalid <= 1.0:
            raise RsirError(f"--max-invalid {self.max_invalid:g}: must be a share from 0 to 1")
        for name, value in (("--scale", self.scale), ("--gsd", self.gsd)):
            if value is not None and not (np.isfinite(value) and value > 0):
                raise RsirError(f"{name} {value:g}: must be a positive number")
        for name, value in (("--add-offset", self.add_offset), ("--nodata", self.nodata)):
            if value is not None and not np.isfinite(value):
                raise RsirError(f"{name} {value}: must be a finite number")


@dataclass
class BuildReport:
    index_dir: str
    tiles_added: int = 0
    skipped: int = 0
    total_tiles: int = 0
    sources_added: int = 0
    sources_already: int = 0
    tiles_path: str = ""               # the index's tiles.gpkg now (it moves to a new generation folder per update)
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


@dataclass
class PlannedSource:
    """A source opened, its bands resolved, its windows planned (computed on demand) and its values checked."""

    spec: SourceSpec
    bands: list[int]
    values: ValueScaling
    input_size: int
    crs: str
    width: int
    height: int
    geotransform: list
    gsd: float
    windows: WindowGrid
    value_warning: str | None = None

    @property
    def path(self) -> str:
        return self.spec.path

    def entry(self, source_id: int, tiles: int, skipped: int) -> SourceEntry:
        return SourceEntry(id=source_id, path=self.spec.path, kind=self.spec.kind, label=self.spec.label,
                           bands=tuple(self.bands), scale=self.values.scale, add_offset=self.values.add_offset,
                           input_size=self.input_size, crs=self.crs, width=self.width, height=self.height,
                           gsd=self.gsd, geotransform=tuple(self.geotransform), windows=len(self.windows),
                           tiles=tiles, skipped=skipped)


def _plan_source(spec: SourceSpec, encoder: Encoder, opts: BuildOptions, check_values: bool = True) -> PlannedSource:
    """A source opened, its bands resolved, its windows planned and its value reading checked (a sample read:
    RsirError when the model's own scale is clearly wrong for it, a warning in the plan when the user's is)."""
    ds = open_source(spec)
    bands = resolve_bands(ds, opts.bands or encoder.info.bands, spec.path)
    windows = plan_windows(ds, spec.kind, opts.tile, opts.stride or opts.tile, opts.gsd, spec.path)
    # the source's own values (a band-stack spec's), else the run's options, else the model's scale and 0
    values = resolve_values((spec.scale, spec.add_offset), (opts.scale, opts.add_offset),
                            default_scale=encoder.info.scale)
    problem = None
    if check_values:
        problem = reading_problem(sample_reading(ds, bands, values, spec.path), spec.path, values)
        if problem and not (spec.scale or opts.scale):  # the model's default scale: refuse, nothing is written
            raise RsirError(problem)
    return PlannedSource(spec=spec, bands=bands, values=values,
                         input_size=source_size(encoder.info, spec.kind, ds.RasterXSize, ds.RasterYSize, opts.tile,
                                                opts.input_size),
                         crs=FootprintMaker(ds).crs, width=ds.RasterXSize, height=ds.RasterYSize,
                         geotransform=list(ds.GetGeoTransform()), gsd=source_gsd(ds), windows=windows,
                         value_warning=problem)


def _check_existing(out_dir: str, manifest: Manifest, encoder: Encoder, opts: BuildOptions) -> None:
    if manifest.model.sha256 != encoder.info.sha256:
        own = manifest.model.file(os.path.join(manifest.data_dir(out_dir), layout.MODEL_COPY))
        where = "" if own == manifest.model.path else f" (the index keeps a copy: {own})"
        raise RsirError(f"{out_dir}: index was built with model {manifest.model.path} (sha256 "
                        f"{manifest.model.sha256[:12]}), not {encoder.info.path} (sha256 {encoder.info.sha256[:12]});"
                        f" use that model{where} or a new --out")
    if manifest.tiling != opts.tiling():
        raise RsirError(f"{out_dir}: index was built with tiling {manifest.tiling.to_dict()}, not "
                        f"{opts.tiling().to_dict()}; use the same options to add to it, or a new --out")


def _check_factories(opts: BuildOptions, info: ModelInfo) -> None:
    if opts.code_bits and not archive_codes.fits_width(opts.code_bits, info.embedding_dim):
        raise RsirError(f"--code-bits {opts.code_bits}: codes fitted on the archive need at most one bit per "
                        f"embedding dimension ({info.embedding_dim})")
    if opts.float_factory:
        check_factory("float", opts.float_factory, info.embedding_dim)
    if opts.binary_factory:
        check_factory("binary", opts.binary_factory, opts.code_bits or info.effective_code_bits)


def _refuse_foreign_folder(out_dir: str, manifest: Manifest | None) -> None:
    if manifest is None and os.path.isdir(out_dir) and \
            [n for n in os.listdir(out_dir) if not layout.bookkeeping(n)]:
        raise RsirError(f"{out_dir}: exists and is not an rsir index (no {layout.MANIFEST}); use a new folder")


def build_index(archive: list[str], model_path: str, out_dir: str, opts: BuildOptions | None = None,
                progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                restart: bool = False, notice: NoticeFn | None = None) -> BuildReport:
    """Index (or extend the index with) the rasters, band stacks and patch folders in `archive`. One writer at a
    time: a second one gets RsirError naming the first."""
    opts = opts or BuildOptions()
    opts.check()
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RsirError(f"{out_dir}: is a file, not an index folder")
    specs = expand_archive(archive)
    encoder = Encoder(model_path, device=opts.device, threads=opts.threads, batch_size=opts.batch_size)
    _check_input_size(encoder.info, opts.input_size)
    _check_factories(opts, encoder.info)
    _refuse_foreign_folder(out_dir, read_manifest(out_dir) if os.path.isdir(out_dir) else None)
    created = not os.path.isdir(out_dir)
    partial = layout.path(out_dir, layout.PARTIAL)
    names = _listed([os.path.basename(s.path) for s in specs])
    program = "QGIS" if "qgis" in os.path.basename(sys.argv[0] if sys.argv else "").lower() else "rsir index"
    with IndexLock(out_dir, what=f"{program} indexing {names} with {os.path.basename(model_path)}") as lock:
        try:
            return _build_locked(specs, encoder, out_dir, opts, progress, cancel, restart, notice)
        except (RsirError, OSError) as exc:
            if isinstance(exc, Cancelled):
                raise
            _after_failure(out_dir, partial, created, lock)
            if isinstance(exc, OSError):
                raise RsirError(_os_problem(exc, out_dir)) from None
            raise


def _listed(names: list[str], limit: int = 1) -> str:
    """"a.tif" / "a.tif, b.tif and 3 more": the first `limit` of `names`, and how many others."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _os_problem(exc: OSError, out_dir: str) -> str:
    """One line for a failed write: which file, why, and what is left."""
    where = exc.filename or out_dir
    what = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}.get(exc.errno,
                                                                                     exc.strerror or str(exc))
    kept = layout.path(out_dir, layout.PARTIAL)
    tail = (f"; the tiles encoded so far are kept in {kept} ({_size_mb(kept):.0f} MB): fix that and rerun the same "
            "command to resume, or delete that folder" if os.path.isdir(kept) else "; nothing was written")
    return f"{where}: {what}" + tail + "; the index as it was is untouched"


def _size_mb(folder: str) -> float:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total / 1e6


def _after_failure(out_dir: str, partial: str, created: bool, lock: IndexLock) -> None:
    """After an error (not a cancel or kill): free what is not worth resuming: the half-written next generation
    always, the unfinished run when no chunk of it was saved, and a folder this run created that holds nothing."""
    state_path = os.path.join(partial, "state.json")
    try:
        state = read_json(state_path)
    except (OSError, ValueError):
        state = None
    if state is not None and state.get("phase") == "install":  # finished and waiting to be installed: keep
        return
    shutil.rmtree(os.path.join(partial, "final"), ignore_errors=True)
    if os.path.isdir(partial) and (state is None or (not state.get("chunks") and state.get("phase") == "encode")):
        shutil.rmtree(partial, ignore_errors=True)
    if created and os.path.isdir(out_dir) and set(os.listdir(out_dir)) <= {layout.LOCK}:
        lock.release()
        for name in os.listdir(out_dir):
            os.remove(os.path.join(out_dir, name))
        os.rmdir(out_dir)


def _build_locked(specs, encoder, out_dir, opts, progress, cancel, restart, notice) -> BuildReport:
    t0 = time.perf_counter()
    report = BuildReport(out_dir)
    partial = layout.path(out_dir, layout.PARTIAL)
    state_path = os.path.join(partial, "state.json")
    manifest = read_manifest(out_dir)
    state = read_json(state_path) if os.path.exists(state_path) else None
    if state is not None and state.get("phase") == "install" and manifest is not None and \
            manifest.generation == state.get("generation"):
        _finish_install(out_dir, manifest, partial)  # killed after the manifest was replaced: only cleanup left
        state = None
    if state is not None and restart:
        shutil.rmtree(partial)
        state = None
    _refuse_foreign_folder(out_dir, manifest)
    if manifest is not None:
        _check_existing(out_dir, manifest, encoder, opts)
    known = {s.path for s in manifest.sources} if manifest else set()
    new_specs = [s for s in specs if s.path not in known]
    report.sources_already = len(specs) - len(new_specs)
    n0 = manifest.tiles if manifest else 0

    # validates every source before any write; of a folder of patches only the first is sampled for its values
    plan = [_plan_source(s, encoder, opts, check_values=s.kind != "patch" or i == 0 or new_specs[i - 1].kind !=
                         "patch") for i, s in enumerate(new_specs)]
    report.notes += [p.value_warning for p in plan if p.value_warning]
    key = hashlib.sha256(json.dumps({"model": encoder.info.sha256, "n0": n0, "tiling": opts.tiling().to_dict(),
                                     "sources": [(p.path, p.bands, p.values.scale)
                                                 + ((p.values.add_offset,) if p.values.add_offset else ())
                                                 for p in plan]},
                                    sort_keys=True).encode()).hexdigest()
    if state is not None and state["key"] != key:
        raise RsirError(f"{out_dir}: holds an unfinished indexing run with other inputs or options{_describe(state)}"
                        "; rerun it to finish it, or discard it (rsir index --restart; in QGIS, Build index with "
                        "\"Discard an unfinished run\")")
    if not plan and state is None:
        report.total_tiles = n0
        report.tiles_path = os.path.join(manifest.data_dir(out_dir), layout.TILES) if manifest else ""
        report.notes.append("nothing new to index: every source is already in the index")
        report.seconds = time.perf_counter() - t0
        return report
    if state is None:
        os.makedirs(partial, exist_ok=True)
        state = {"key": key, "phase": "encode", "done_windows": 0, "chunks": [], "kept": 0, "skipped": 0,
                 "skipped_by_source": [0] * len(plan), "created": _now(),
                 "sources": [p.path for p in plan], "windows": sum(len(p.windows) for p in plan)}
        write_json(state_path, state)
    report.resumed_windows = state["done_windows"]

    if state["phase"] == "encode":
        _encode(plan, encoder, opts, partial, state, state_path, progress, cancel, notice)
        state["generation"] = _finalize(plan, encoder, opts, out_dir, manifest, partial, state)
        _step("finalize:written")
        state["phase"] = "install"
        write_json(state_path, state)
    _step("install:ready")
    installed = _install(out_dir, partial, state["generation"])
    base = layout.path(out_dir, layout.BASE)
    if plan and os.path.isdir(base):  # its tables lack the new tiles: learning can no longer be undone
        shutil.rmtree(base, ignore_errors=True)
        report.notes.append(f"{out_dir}: its vectors from before learning from labels are dropped (they lack the "
                            "new tiles): the learned model is now the index's own")

    report.windows_this_run = state["done_windows"] - report.resumed_windows
    report.tiles_added, report.skipped = state["kept"], state["skipped"]
    report.total_tiles = n0 + state["kept"]
    report.sources_added = len(plan)
    report.tiles_path = os.path.join(installed.data_dir(out_dir), layout.TILES)
    report.seconds = time.perf_counter() - t0
    return report


def _describe(state: dict) -> str:
    """" (of a.tif and 2 more, started T, 2048 of 9000 tiles encoded)" for a refusal; "" for runs from before
    2026-12-07, whose state does not record its sources."""
    if not state.get("sources"):
        return ""
    what = _listed([os.path.basename(p) for p in state["sources"]])
    return (f" (of {what}, started {state.get('created', '?')}, {state['done_windows']} of "
            f"{state.get('windows', '?')} tiles encoded)")


def _windows(plan: list[PlannedSource], start: int, stop: int):
    """(source number, window) for the run's windows start..stop-1, sources one after another."""
    offset = 0
    for si, p in enumerate(plan):
        n = len(p.windows)
        lo, hi = max(start - offset, 0), min(stop - offset, n)
        for i in range(lo, hi):
            yield si, p.windows[i]
        offset += n
        if offset >= stop:
            return


def _readers(plan: list[PlannedSource]) -> list[SourceReader]:
    return [SourceReader(p.spec, tuple(p.bands), p.values, p.input_size) for p in plan]


def _settings(encoder: Encoder, opts: BuildOptions) -> EncodeSettings:
    return EncodeSettings(model=os.path.abspath(encoder.info.path), sha256=encoder.info.sha256,
                          batch_size=opts.batch_size, max_invalid=opts.max_invalid, nodata=opts.nodata,
                          device=opts.device, threads=opts.threads)


def _commit_chunk(partial: str, state: dict, state_path: str, result: ChunkResult) -> None:
    """Save one encoded chunk and count it in the run's state: a kill after this keeps it."""
    name = f"chunk_{len(state['chunks']):06d}.npz"
    with atomic_path(os.path.join(partial, name)) as tmp, open(tmp, "wb") as f:
        np.savez(f, emb=result.emb, codes=result.codes, meta=result.meta)
    _step("encode:chunk-saved")
    state["chunks"].append(name)
    state["done_windows"] += result.processed
    state["kept"] += len(result.meta)
    state["skipped"] += sum(result.skipped.values())
    state["skipped_by_source"] = [n + result.skipped.get(si, 0) for si, n in enumerate(state["skipped_by_source"])]
    write_json(state_path, state)
    _step("encode:state-saved")


def _encode(plan, encoder, opts, partial, state, state_path, progress, cancel, notice) -> None:
    total, done = sum(len(p.windows) for p in plan), state["done_windows"]
    readers, settings = _readers(plan), _settings(encoder, opts)
    if opts.dask:
        from .distributed import encode_on_cluster

        chunks = ((start, list(_windows(plan, start, min(start + opts.checkpoint_every, total))))
                  for start in range(done, total, opts.checkpoint_every))
        encode_on_cluster(opts.dask, chunks, readers, settings, total, done,
                          commit=lambda result: _commit_chunk(partial, state, state_path, result),
                          progress=progress, cancel=cancel, notice=notice)
        return
    datasets = DatasetCache()
    t_start, announced = time.perf_counter(), total - done <= LARGE_RUN
    if progress:
        progress(done, total)
    while done < total:
        chunk = list(_windows(plan, done, done + opts.checkpoint_every))

        def batch_done(processed: int, base: int = done) -> None:
            nonlocal announced
            if progress:
                progress(base + processed, total)
            if not announced and notice:
                announced = True
                rate = processed / max(time.perf_counter() - t_start, 1e-6)
                notice(f"{total - base:,} tiles to encode: about {(total - base) / rate / 3600:.1f} h at "
                       f"{rate:.0f} tiles/s; checkpointed every {opts.checkpoint_every} tiles, so an interrupted "
                       "run resumes when the same command is run again")

        result = encode_windows(chunk, dict(enumerate(readers)), encoder, settings, datasets, cancel, batch_done)
        if result.processed:
            _commit_chunk(partial, state, state_path, result)
            done += result.processed
        if result.cancelled:
            raise Cancelled(f"indexing cancelled after {done} of {total} tiles; rerun the same command to resume")


def _chunk_tables(partial: str, names: list[str], key: str):
    """Each committed chunk's `key` array ("emb", "codes", "meta") in run order, one chunk in memory at a time."""
    for name in names:
        with np.load(os.path.join(partial, name)) as z:
            yield z[key]


def _append_tables(old_path: str | None, parts, out_path: str, dtype, width: int, n: int) -> np.ndarray:
    """Write the old file's bytes, then each of `parts`, to `out_path`; returns the whole (n, width) table,
    memory-mapped read-only."""
    with open(out_path, "wb") as out:
        if old_path and os.path.exists(old_path):
            with open(old_path, "rb") as old:
                shutil.copyfileobj(old, out, 1 << 24)
        for rows in parts:
            out.write(np.ascontiguousarray(rows, dtype=dtype).tobytes())
    if n == 0:
        return np.zeros((0, width), dtype)
    return np.memmap(out_path, dtype=dtype, mode="r", shape=(n, width))


def _finalize(plan, encoder, opts, out_dir, manifest: Manifest | None, partial, state) -> int:
    """Write the next generation (data files and manifest) into IDX/.partial/final/; returns its number. Streams
    the chunks: memory stays at one chunk plus the faiss indexes being built, whatever the archive's size."""
    info = encoder.info
    n0 = manifest.tiles if manifest else 0
    n = n0 + state["kept"]  # the committed chunks' rows, counted as each was committed
    if n == 0:
        shutil.rmtree(partial)
        raise RsirError(f"{_listed([p.path for p in plan], 3)}: no valid tiles: all {state['skipped']} tile(s) are "
                        f"nodata or empty beyond --max-invalid {opts.max_invalid}; nothing was written")
    final = os.path.join(partial, "final")
    shutil.rmtree(final, ignore_errors=True)
    os.makedirs(final)
    old = (lambda name: os.path.join(manifest.data_dir(out_dir), name)) if manifest else (lambda name: None)
    dim, nbytes = info.embedding_dim, info.effective_code_bits // 8
    all_emb = _append_tables(old(layout.EMBEDDINGS), _chunk_tables(partial, state["chunks"], "emb"),
                             os.path.join(final, layout.EMBEDDINGS), np.float16, dim, n)
    fit_bits = _archive_code_bits(out_dir, manifest, info, n, opts.model_codes, opts.code_bits)
    if fit_bits:  # every code from the stored embeddings; the model's codes of the chunks are not used
        all_codes = _fit_archive_codes(final, all_emb, fit_bits)
    else:
        all_codes = _append_tables(old(layout.CODES), _chunk_tables(partial, state["chunks"], "codes"),
                                   os.path.join(final, layout.CODES), np.uint8, nbytes, n)
    bits = fit_bits or info.effective_code_bits
    sid0 = len(manifest.sources) if manifest else 0
    old_windows = old(layout.WINDOWS)
    if manifest is None or os.path.exists(old_windows):  # an index from before windows.i32 goes on without it
        _append_tables(old_windows, (np.column_stack([m[:, :1] + sid0, m[:, 1:]])
                                     for m in _chunk_tables(partial, state["chunks"], "meta")),
                       os.path.join(final, layout.WINDOWS), np.int32, 5, n)

    float_factory = opts.float_factory or default_float_factory(n)
    binary_factory = opts.binary_factory or default_binary_factory(n, bits)
    _write_faiss(final, all_emb, all_codes, bits, float_factory, binary_factory)

    gpkg = os.path.join(final, layout.TILES)
    if manifest:
        shutil.copyfile(old(layout.TILES), gpkg)
        gds, layer = tiles_gpkg.open_update(gpkg)
    else:
        gds, layer = tiles_gpkg.create(gpkg)
    rows, makers, i = [], {}, n0
    kept_by_source = np.zeros(len(plan), np.int64)
    for meta in _chunk_tables(partial, state["chunks"], "meta"):
        if len(meta):
            kept_by_source += np.bincount(meta[:, 0], minlength=len(plan))
        for si, x, y, w, h in meta.tolist():
            if si not in makers:
                makers.clear()
                makers[si] = FootprintMaker(open_source(plan[si].spec))
            src_geom, geo = makers[si].polygons(TileWindow(x, y, w, h))
            label = plan[si].spec.label
            rows.append({"id": i, "source_id": sid0 + si, "source": plan[si].path, "x": x, "y": y, "w": w,
                         "h": h, "label": label, "labels": [label] if label else [], "src_crs": plan[si].crs,
                         "src_wkt": src_geom.ExportToWkt() if src_geom else None, "geom": geo})
            i += 1
            if len(rows) >= 50_000:
                tiles_gpkg.add_tiles(layer, rows)
                rows = []
    tiles_gpkg.add_tiles(layer, rows)
    tiles_gpkg.index_sources(gds)
    gds = None  # noqa: F841 - closes the GeoPackage

    sources = list(manifest.sources) if manifest else []
    sources += [p.entry(sid0 + si, int(kept_by_source[si]), int(state["skipped_by_source"][si]))
                for si, p in enumerate(plan)]
    now = _now()
    new_manifest = Manifest(
        **_model_fields(info, fit_bits), tiling=opts.tiling(),
        tiles=n, skipped=(manifest.skipped if manifest else 0) + state["skipped"],
        float_factory=float_factory, binary_factory=binary_factory, sources=tuple(sources),
        created=manifest.created if manifest else now, updated=now, **_next_generation(manifest))
    keep_model_copy(final, info.path)
    write_manifest(os.path.join(final, layout.MANIFEST), new_manifest)
    _fsync_folder(final)
    return new_manifest.generation


def keep_model_copy(folder: str, model_path: str) -> None:
    """A copy of the model beside a generation's data (layout.MODEL_COPY). Searches use it where the model's own
    file has gone or changed (a default model replaced by a newer one, an index moved to another machine), so an
    index always has the encoder its vectors came from. A copy, not a hard link: `cp new.onnx model.onnx`
    rewrites the file a link shares (15 MB for the default model)."""
    target = os.path.join(folder, layout.MODEL_COPY)
    if os.path.abspath(model_path) != os.path.abspath(target):
        shutil.copyfile(model_path, target)


def _model_fields(info: ModelInfo, archive_bits: int | None = None, path: str | None = None) -> dict:
    """The manifest fields that come from the model an index is encoded with, and from its codes: fitted on the
    archive with `archive_bits` bits (format 3, which older rsir versions refuse rather than search with the
    model's codes), or the model's (None). `path`: where the manifest says the model is (default: the file read)."""
    source = archive_codes.SOURCE if archive_bits else "hash" if info.has_hash else "embedding-signs"
    return {"model": ModelRef(os.path.abspath(path or info.path), info.sha256, info.metadata),
            "embedding_dim": info.embedding_dim, "code_bits": archive_bits or info.effective_code_bits,
            "code_source": source, "format": layout.FORMAT_VERSION if archive_bits else layout.FORMAT_MODEL_CODES}


def _archive_code_bits(out_dir: str, previous: Manifest | None, info: ModelInfo, n: int, model_codes: bool,
                       code_bits: int | None) -> int | None:
    """The bits of the next generation's codes where they are fitted on the archive (archive_codes.py), refitted
    on all the tiles at each update: `code_bits`, else what the index's fitted codes have, else the model's. None
    (the model's codes) for a cross-modal model (its codes bridge the modalities), for a model already fitted to
    this archive (learning from labels, `rsir adapt`: its codes
    are), with `model_codes` (RsirError for an index whose codes are fitted: its tiles' model codes were never
    stored), and where archive_codes.applies says no (RsirError where `code_bits` asked for other codes)."""
    own = info.effective_code_bits
    if info.shared_space:
        # codes trained across modalities: fitted on one modality's embeddings they lose the other's queries (GeFolki
        # optical boxes on a radar index: P@1 80 -> 45 by Hamming; docs/results.md, "Archive codes")
        if code_bits and code_bits != own:
            raise RsirError(f"--code-bits {code_bits}: {info.path} is a cross-modal model; its {own}-bit codes are "
                            "trained across modalities and are kept")
        return None
    if "rsir.adapted_from" in info.metadata or model_codes:
        if model_codes and previous is not None and previous.code_source == archive_codes.SOURCE:
            raise RsirError(f"{out_dir}: its codes are fitted on its archive, and the model's codes of its tiles were "
                            "not kept; add to it without --model-codes, or build a new index with it")
        if code_bits and code_bits != own:
            raise RsirError(f"--code-bits {code_bits}: {info.path} is adapted to this index and brings its own "
                            f"{own}-bit codes")
        return None
    fitted_before = previous is not None and previous.code_source == archive_codes.SOURCE
    bits = code_bits or (previous.code_bits if fitted_before else own)
    if archive_codes.applies(n, bits, info.embedding_dim):
        return bits
    if bits != own:
        raise RsirError(f"--code-bits {bits}: codes fitted on the archive need at most one bit per embedding "
                        f"dimension ({info.embedding_dim}) and at least {archive_codes.MIN_TILES_PER_BIT} tiles per "
                        f"bit ({archive_codes.MIN_TILES_PER_BIT * bits}); the index has {n} tiles")
    return None


def _fit_archive_codes(final: str, embeddings: np.ndarray, bits: int) -> np.ndarray:
    """Fit codes on the generation's `embeddings` (its table, row = tile id), write them over its code table and
    the map beside it; returns the new code table, memory-mapped."""
    fitted = archive_codes.fit(embeddings, bits)
    codes_path = os.path.join(final, layout.CODES)
    archive_codes.recode(embeddings, codes_path, fitted)
    fitted.save(os.path.join(final, layout.CODE_FIT))
    return np.memmap(codes_path, np.uint8, "r", shape=(len(embeddings), bits // 8))


def _next_generation(manifest: Manifest | None) -> dict:
    """The manifest fields of the generation after `manifest`'s (the first when None), written by this rsir."""
    generation = (manifest.generation if manifest else 0) + 1
    return {"generation": generation, "data": layout.generation_name(generation),
            "previous": (manifest.data or ".") if manifest else None, "rsir_version": __version__}


def _write_faiss(folder: str, emb: np.ndarray, codes: np.ndarray, bits: int, float_factory: str,
                 binary_factory: str) -> None:
    """A generation's faiss files, float and binary, over its tables (row = tile id)."""
    import faiss

    index = build_float_index(emb, float_factory)  # chunk by chunk from the (memory-mapped) table
    faiss.write_index(index, os.path.join(folder, layout.FLOAT_INDEX))
    del index  # before the binary one is built: at 10M tiles each is gigabytes
    binary = build_binary_index(codes, bits, binary_factory)
    faiss.write_index_binary(binary, os.path.join(folder, layout.BINARY_INDEX))
    del binary
    tables = mih_tables.hash_layout(binary_factory)
    if tables is not None and tables[1] <= mih_tables.MAX_BITS:  # searched from disk, not from faiss's in-RAM copy
        mih_tables.write_tables(folder, codes, *tables)


def _fsync_folder(folder: str, files: bool = True) -> None:
    """Flush a folder's files and entries to disk (POSIX): after a power cut, a manifest must not name files
    whose contents never reached the disk."""
    if files:
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if os.path.isdir(path):  # e.g. the hash tables' folder
                _fsync_folder(path)
                continue
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _install(out_dir: str, partial: str, generation: int) -> Manifest:
    """Put generation `generation` in service: rename its folder into place, then replace the manifest. Each
    step is one rename, and a rerun after a kill between them goes on from where it stopped. Returns the
    manifest now in service."""
    final = os.path.join(partial, "final")
    target = layout.path(out_dir, layout.generation_name(generation))
    current = read_manifest(out_dir)
    if not os.path.isdir(final) and not os.path.isdir(target) and \
            (current is None or current.generation != generation):
        raise RsirError(f"{partial}: the unfinished run's finished files are gone; pass --restart to index again")
    if os.path.isdir(final):
        if os.path.isdir(target):  # a leftover of a run that was discarded: nothing refers to it
            shutil.rmtree(target)
        os.replace(final, target)
        _step("install:data-renamed")
    staged = os.path.join(target, layout.MANIFEST)
    if os.path.exists(staged):
        os.replace(staged, layout.path(out_dir, layout.MANIFEST))
        _fsync_folder(out_dir, files=False)
        _step("install:manifest-replaced")
    installed = read_manifest(out_dir)
    _finish_install(out_dir, installed, partial)
    return installed


def _finish_install(out_dir: str, manifest: Manifest, partial: str) -> None:
    """Remove what the index no longer uses: generations older than the previous one (kept for readers that
    opened it before this update; they reopen at their next search) and the finished run's .partial folder."""
    keep = {manifest.data, manifest.previous or ""}
    for name in os.listdir(out_dir):
        if layout.is_generation(name) and name not in keep:
            shutil.rmtree(layout.path(out_dir, name), ignore_errors=True)  # Windows: still open; next time
    if "." not in keep and manifest.data:  # format 1 data files, two generations back
        for name in layout.DATA_FILES:
            try:
                os.remove(layout.path(out_dir, name))
            except OSError:
                pass
    _step("install:old-removed")
    shutil.rmtree(partial, ignore_errors=True)


VectorTransform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (emb, codes) -> same


def rewrite_vectors(index_dir: str, model_path: str, transform: VectorTransform, chunk: int = 65536,
                    progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                    source_dir: str | None = None, model_codes: bool = False) -> Manifest:
    """Install a new generation of the index whose vectors are `transform` of its current ones (or of the tables
    in `source_dir`, e.g. the vectors from before learning), with `model_path` as its model: a model that appends
    a map to the index's own (e.g. one learned from an analyst's labels) re-encodes the index without reading an
    image. Same tiles and ids; a kill or a cancel leaves the current generation in service (nothing to resume:
    rerunning costs what the run did, seconds per 100k tiles). The codes are then fitted on the archive as indexing
    fits them (`_archive_code_bits`, at the width the index's tables have; `model_codes`: keep the transform's)."""
    out_dir = os.path.abspath(index_dir)
    with IndexLock(out_dir, what=f"re-encoding with {os.path.basename(model_path)}"):
        return rewrite_vectors_locked(out_dir, model_path, transform, chunk, progress, cancel, source_dir,
                                      model_codes)


def rewrite_vectors_locked(out_dir: str, model_path: str, transform: VectorTransform, chunk: int = 65536,
                           progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                           source_dir: str | None = None, model_codes: bool = False,
                           recorded_path: str | None = None) -> Manifest:
    """`rewrite_vectors` for a caller that holds the index's lock. `recorded_path`: the path the manifest names
    for the model, where `model_path` is a copy of it (default: `model_path`)."""
    info = Encoder(model_path, device="cpu").info
    partial = layout.path(out_dir, layout.PARTIAL)
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise RsirError(f"{out_dir}: not an rsir index (no {layout.MANIFEST})")
    if os.path.exists(os.path.join(partial, "state.json")):
        raise RsirError(f"{out_dir}: holds an unfinished indexing run; finish it (rerun it) or discard it "
                        "(rsir index --restart) first")
    shutil.rmtree(partial, ignore_errors=True)  # a killed rewrite's leftovers
    final = os.path.join(partial, "final")
    os.makedirs(final)
    try:
        n, old = manifest.tiles, manifest.data_dir(out_dir)
        src = source_dir or old
        width = (os.path.getsize(os.path.join(src, layout.EMBEDDINGS)) // 2) // max(n, 1)
        table = np.memmap(os.path.join(src, layout.EMBEDDINGS), np.float16, "r", shape=(n, width))
        code_bytes = os.path.getsize(os.path.join(src, layout.CODES)) // max(n, 1)
        code_table = np.memmap(os.path.join(src, layout.CODES), np.uint8, "r", shape=(n, code_bytes))
        dim, nbytes = info.embedding_dim, info.effective_code_bits // 8
        # codes fitted on the archive keep the width the tables have (an index's --code-bits)
        adapted = "rsir.adapted_from" in info.metadata
        fit_bits = _archive_code_bits(out_dir, None, info, n, model_codes,
                                      None if adapted or model_codes else 8 * code_bytes)
        with open(os.path.join(final, layout.EMBEDDINGS), "wb") as fe, open(os.path.join(final, layout.CODES),
                                                                           "wb") as fc:
            for start in range(0, n, chunk):
                if cancel is not None and cancel():
                    raise Cancelled(f"{out_dir}: re-encoding cancelled; the index is as it was")
                emb, codes = transform(np.asarray(table[start:start + chunk], np.float32),
                                       np.asarray(code_table[start:start + chunk]))
                if emb.shape[1] != dim or (not fit_bits and codes.shape[1] != nbytes):
                    raise RsirError(f"{model_path}: the transform gives {emb.shape[1]}-d embeddings and "
                                    f"{8 * codes.shape[1]}-bit codes, the model says {dim} and {8 * nbytes}")
                fe.write(np.ascontiguousarray(emb, np.float16).tobytes())
                if not fit_bits:
                    fc.write(np.ascontiguousarray(codes, np.uint8).tobytes())
                if progress:
                    progress(min(start + chunk, n), n)
        bits = fit_bits or info.effective_code_bits
        same_sizes = (dim, bits) == (manifest.embedding_dim, manifest.code_bits)
        embeddings = np.memmap(os.path.join(final, layout.EMBEDDINGS), np.float16, "r", shape=(n, dim))
        codes = (_fit_archive_codes(final, embeddings, fit_bits) if fit_bits else
                 np.memmap(os.path.join(final, layout.CODES), np.uint8, "r", shape=(n, nbytes)))
        _write_faiss(final, embeddings, codes, bits, manifest.float_factory,
                     manifest.binary_factory if same_sizes else default_binary_factory(n, bits))
        for name in (layout.TILES, layout.WINDOWS):
            if os.path.exists(os.path.join(old, name)):
                shutil.copyfile(os.path.join(old, name), os.path.join(final, name))
        new = manifest.replace(**_model_fields(info, fit_bits, recorded_path), updated=_now(),
                               **_next_generation(manifest))
        keep_model_copy(final, info.path)
        write_manifest(os.path.join(final, layout.MANIFEST), new)
        _fsync_folder(final)
    except BaseException:  # a failed or cancelled rewrite leaves nothing behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return _install(out_dir, partial, new.generation)
