"""Open an index directory read-only and answer nearest-neighbour queries by tile id."""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass

import faiss
import numpy as np
from osgeo import ogr

from ..encoder import ModelInfo, l2_normalise
from ..errors import RsirError
from . import archive_codes, hamming, layout, mih_tables
from .archive_codes import ArchiveCodes
from .faiss_build import set_nprobe
from .manifest import Manifest, ModelRef, SourceEntry, read_manifest
from .mih_tables import MihTables


@dataclass
class TileRecord:
    """A tile's attributes from tiles.gpkg; `footprint_wkt` is in EPSG:4326 (None for ungeoreferenced patches)."""

    id: int
    source_id: int
    source: str
    x: int
    y: int
    w: int
    h: int
    label: str
    labels: list[str]
    src_crs: str
    src_wkt: str | None
    footprint_wkt: str | None


PREAD_MAX = 65536  # rows read with pread; more (a heat map's, Find all's) go through the memory map


def _drop_pages(table: np.ndarray) -> None:
    """After a scan of a memory-mapped table: release its pages from this process (they stay in the page cache),
    so one scan of 10M codes does not leave 320 MB counted against a searching process."""
    import mmap

    base = getattr(table, "_mmap", None)
    if base is not None and hasattr(base, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            base.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def _read_mapped(read, path: str):
    """A faiss index file memory-mapped (IO_FLAG_MMAP: flat codes and inverted lists stay on disk and only the
    pages a search touches are read: opening a 10M-tile index costs nothing), else read whole where the platform
    or the index type does not map."""
    try:
        return read(path, faiss.IO_FLAG_MMAP)
    except RuntimeError:
        return read(path)


class Index:
    """An rsir index directory. Raises RsirError if it is not one, or is incomplete.

    An index open while an update installs a new generation goes on serving the one it opened (its files stay
    until the update after next); `refresh()` (called before every search by `core.search`) moves to the new one.
    """

    def __init__(self, index_dir: str):
        self.dir = os.path.abspath(index_dir)
        if not os.path.isdir(self.dir):
            raise RsirError(f"{index_dir}: no such index folder")
        for attempt in range(3):
            stamp = self._stamp()
            try:
                self._open(index_dir)
                return
            except RsirError:
                # an update replaced the manifest, and removed the generation it named, while we opened it
                if attempt == 2 or self._stamp() == stamp:
                    raise

    def _stamp(self) -> tuple | None:
        try:
            st = os.stat(layout.path(self.dir, layout.MANIFEST))
            return st.st_ino, st.st_mtime_ns, st.st_size
        except FileNotFoundError:
            return None

    def _open(self, index_dir: str) -> None:
        self._opened = self._stamp()
        manifest = read_manifest(self.dir)
        if manifest is None:
            if os.path.isdir(layout.path(self.dir, layout.PARTIAL)):
                raise RsirError(f"{index_dir}: indexing has not finished; rerun the same `rsir index` command "
                                "to resume it")
            raise RsirError(f"{index_dir}: not an rsir index (no {layout.MANIFEST})")
        self.manifest: Manifest = manifest
        self.data_dir = manifest.data_dir(self.dir)
        self.n = manifest.tiles
        self.embedding_dim = manifest.embedding_dim
        self.code_bits = manifest.code_bits
        self.code_bytes = manifest.code_bytes
        self._emb = self._table(layout.EMBEDDINGS, np.float16, self.embedding_dim)
        self._codes = self._table(layout.CODES, np.uint8, self.code_bytes)
        self.archive_codes: ArchiveCodes | None = self._archive_codes()
        self._float = None
        self._binary = None
        self._mih = None
        # opened now, as the memory maps are: an open index keeps reading its generation after an update removes it
        self._fds: dict[str, int] = ({name: os.open(self.data_path(name), os.O_RDONLY)
                                      for name in (layout.EMBEDDINGS, layout.CODES)} if hasattr(os, "pread") else {})
        self._gpkg = None
        self._fields: dict[str, int] | None = None
        self._windows: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def refresh(self) -> bool:
        """Reopen when an update has installed a new generation since this index was opened; True if it did."""
        if self._stamp() in (self._opened, None):
            return False
        self.close()
        self.__init__(self.dir)
        return True

    def _table(self, name: str, dtype, width: int) -> np.ndarray:
        path = os.path.join(self.data_dir, name)
        expected = self.n * width * np.dtype(dtype).itemsize
        if not os.path.exists(path) or os.path.getsize(path) != expected:
            hint = ("an update of this older-format index was interrupted - rerun the same `rsir index` command to "
                    "finish it" if not self.manifest.data else
                    "the index folder is damaged or was copied in part; copy it again or rebuild it")
            raise RsirError(f"{self.dir}: {os.path.relpath(path, self.dir)} does not match the manifest "
                            f"({self.n} tiles); {hint}")
        return np.memmap(path, dtype=dtype, mode="r", shape=(self.n, width))

    def _archive_codes(self) -> ArchiveCodes | None:
        """The map that gives this index's codes from embeddings, where they are fitted on the archive."""
        if self.manifest.code_source != archive_codes.SOURCE:
            return None
        path = self.data_path(layout.CODE_FIT)
        try:
            fitted = archive_codes.load(path)
        except (OSError, ValueError, KeyError) as exc:
            raise RsirError(f"{self.dir}: {os.path.relpath(path, self.dir)} cannot be read ({exc}); the index folder "
                            "is damaged or was copied in part; copy it again or rebuild it") from None
        if fitted.matrix.shape != (self.embedding_dim, self.code_bits):
            raise RsirError(f"{self.dir}: {os.path.relpath(path, self.dir)} maps {fitted.matrix.shape[0]}-d "
                            f"embeddings to {fitted.bits} bits, the manifest says {self.embedding_dim} and "
                            f"{self.code_bits}; the index folder is damaged")
        return fitted

    def query_codes(self, embeddings: np.ndarray, model_codes: np.ndarray) -> np.ndarray:
        """The codes of query embeddings (N, D) in this index's code space: fitted on the archive where the index's
        are (the model's own codes do not match them), else `model_codes`, as the encoder gave them."""
        return model_codes if self.archive_codes is None else self.archive_codes.codes(embeddings)

    def data_path(self, name: str) -> str:
        """Path of a data file (layout.TILES, ...) of the generation this index opened."""
        return os.path.join(self.data_dir, name)

    # -- metadata -------------------------------------------------------------------------------------------
    @property
    def model(self) -> ModelRef:
        return self.manifest.model

    @property
    def model_info(self) -> ModelInfo:
        m = self.model
        return ModelInfo.from_metadata(m.path, m.sha256, m.metadata)

    @property
    def model_file(self) -> str:
        """The file of the index's model: where it was when the index was built, if it is still that model; else
        the copy the index keeps of it (indexes since 2026-12-07; `ModelRef.file`)."""
        return self.model.file(self.data_path(layout.MODEL_COPY))

    @property
    def sources(self) -> tuple[SourceEntry, ...]:
        return self.manifest.sources

    def source_entry(self, path: str) -> SourceEntry | None:
        return self.manifest.source_entry(path)

    def tile_ground_size(self) -> str:
        """The side of a tile on the ground, e.g. "640 m", when every tiled source shares it; "" otherwise (mixed
        resolutions without --gsd, patch folders, rasters without a projected CRS)."""
        from ..archive.footprints import srs_from_user

        tiled = [s for s in self.sources if s.kind != "patch"]
        gsds = {self.manifest.tiling.gsd or s.gsd for s in tiled}
        try:
            projected = tiled and all(s.crs and srs_from_user(s.crs).IsProjected() for s in tiled)
        except ValueError:
            projected = False
        if len(gsds) != 1 or not projected:
            return ""
        unit = srs_from_user(tiled[0].crs).GetLinearUnitsName()
        return f"{self.manifest.tiling.tile * gsds.pop():g} {'m' if unit.lower() in ('metre', 'meter') else unit}"

    def source_input_size(self, entry: SourceEntry) -> int:
        """The input side a source's tiles were encoded at (indexes from before resolution-aware models: the
        model's one size)."""
        return entry.input_size or self.model_info.input_size

    def describe_input_sizes(self) -> str:
        """The input sides the sources were encoded at, grouped: "96 px for 3 source(s)", or for patch folders of
        several sizes "96-150 px (each patch near its own size) for 400 source(s)"."""
        sizes = Counter(self.source_input_size(s) for s in self.sources)
        if self.manifest.tiling.input_size or len(sizes) <= 3:
            return "; ".join(f"{size} px for {n} source(s)" for size, n in sorted(sizes.items()))
        return f"{min(sizes)}-{max(sizes)} px (each patch near its own size) for {sum(sizes.values())} source(s)"

    def describe_values(self) -> str:
        """How the sources' raw values reached the model, grouped: "raw / 3000 for 2 source(s); (raw-1000) / ..."."""
        groups = Counter(s.values for s in self.sources)
        return "; ".join(f"{values.describe()} for {n} source(s)"
                         for values, n in sorted(groups.items(), key=lambda g: (g[0].scale, g[0].add_offset)))

    def same_grid_sources(self, ds, path: str) -> list[SourceEntry]:
        """[the indexed source `path` is], or else every indexed source on exactly its pixel grid (size,
        geotransform, CRS): a VRT or copy of indexed band files, as QGIS shows a band-stack spec. `ds`: `path`
        opened with GDAL."""
        entry = self.source_entry(path)
        if entry is not None:
            return [entry]
        from ..archive.footprints import FootprintMaker
        from ..archive.sources import SourceSpec, open_source

        crs, gt, found = FootprintMaker(ds).crs, ds.GetGeoTransform(), []
        for s in self.sources:
            if s.kind == "patch" or (s.width, s.height) != (ds.RasterXSize, ds.RasterYSize) or s.crs != crs:
                continue
            grid = s.geotransform
            if grid is None:  # indexes made before 2026-11-30 did not record it
                try:
                    grid = open_source(SourceSpec(s.path, s.kind)).GetGeoTransform()
                except RsirError:  # moved or deleted since indexing: not this one
                    continue
            if np.allclose(grid, gt):
                found.append(s)
        return found

    def check_model(self, info: ModelInfo) -> None:
        """RsirError unless `info` is the model this index was built with, or another modality's encoder of the
        same cross-modal shared space (its queries land in the index's embedding space)."""
        if info.sha256 == self.model.sha256:
            return
        own = self.model_info
        if own.shared_space and info.shared_space == own.shared_space:
            return
        hint = (f"; a cross-modal query needs an encoder of its shared space {own.shared_space[:12]} "
                f"(the index is {own.modality})" if own.shared_space else "")
        raise RsirError(f"{info.path}: is not the model index {self.dir} was built with ({self.model.path}, "
                        f"sha256 {self.model.sha256[:12]} vs {info.sha256[:12]}){hint}")

    def is_cross_modal(self, info: ModelInfo) -> bool:
        """True when `info` is an accepted encoder other than the index's own (a query from another modality)."""
        return info.sha256 != self.model.sha256

    # -- vectors --------------------------------------------------------------------------------------------
    def _check_ids(self, ids) -> np.ndarray:
        try:
            ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        except OverflowError:
            raise RsirError(f"{self.dir}: no such tile (tile ids are 0..{self.n - 1})") from None
        bad = ids[(ids < 0) | (ids >= self.n)]
        if len(bad):
            raise RsirError(f"{self.dir}: no tile {int(bad[0])} (tile ids are 0..{self.n - 1})")
        return ids

    def _rows(self, table: np.ndarray, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` of a table: a few (hits, marks, candidates) read with pread, which leaves them in the page
        cache; through the memory map each random row would map a whole block into this process (3 GB of a 10M-tile
        index's embeddings after 100 searches)."""
        if len(ids) > PREAD_MAX or not hasattr(os, "pread"):
            return np.asarray(table[ids])
        width = table.shape[1]
        return mih_tables.pread_rows(self._fds[name], ids, width * table.dtype.itemsize, table.dtype, width)

    def close(self) -> None:
        """Close the files this index reads with pread (the memory maps close with the object)."""
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}
        if self._mih is not None:
            self._mih.close()
            self._mih = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def embeddings(self, ids) -> np.ndarray:
        return l2_normalise(self._rows(self._emb, layout.EMBEDDINGS, self._check_ids(ids)).astype(np.float32))

    def scores(self, ids: np.ndarray, query: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Cosine similarity of `query` (unit, float32) to the tiles `ids` (sorted ascending), in chunks of the
        memory-mapped table: a heat map over 100k tiles without a 100k x D float32 copy."""
        ids = self._check_ids(ids)
        query = np.asarray(query, np.float32)
        out = np.empty(len(ids), np.float32)
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            contiguous = len(part) and part[-1] - part[0] == len(part) - 1
            rows = (self._emb[part[0]:part[-1] + 1] if contiguous else self._emb[part]).astype(np.float32)
            out[i:i + chunk] = (rows @ query) / np.maximum(np.linalg.norm(rows, axis=1), 1e-12)
            if (i // chunk) % 16 == 15:  # a heat map over millions of tiles must not pile up in this process
                _drop_pages(self._emb)
        _drop_pages(self._emb)
        return out

    def all_embeddings(self) -> np.ndarray:
        """The float16 table itself (memory-mapped), row = tile id."""
        return self._emb

    def codes(self, ids) -> np.ndarray:
        return self._rows(self._codes, layout.CODES, self._check_ids(ids))

    @property
    def float_index(self):
        if self._float is None:
            self._float = _read_mapped(faiss.read_index, self.data_path(layout.FLOAT_INDEX))
            self._check_ntotal(self._float, layout.FLOAT_INDEX)
        return self._float

    @property
    def binary_index(self):
        if self._binary is None:
            self._binary = _read_mapped(faiss.read_index_binary, self.data_path(layout.BINARY_INDEX))
            self._check_ntotal(self._binary, layout.BINARY_INDEX)
        return self._binary

    def _check_ntotal(self, index, name: str) -> None:
        if index.ntotal != self.n:
            raise RsirError(f"{self.dir}: {name} holds {index.ntotal} tiles, the manifest {self.n}; the index folder "
                            "is damaged or was copied in part")

    def search_float(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(cosine similarities, tile ids), each (nq, k); ids -1 where fewer than k exist."""
        index = self.float_index
        if nprobe:
            set_nprobe(index, nprobe)
        return index.search(np.ascontiguousarray(queries, np.float32), min(k, self.n))

    @property
    def mih(self) -> MihTables | None:
        """The generation's multi-index hashing tables on disk (mih_tables.py), None where it has none."""
        if self._mih is None and os.path.isdir(self.data_path(mih_tables.FOLDER)) and hasattr(os, "pread"):
            self._mih = MihTables(self.data_dir, self.data_path(layout.CODES), self.n)
        return self._mih

    def search_hamming(self, codes: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Hamming distances, tile ids), each (nq, k), ties broken by id. Exact for flat and hash (multi-index
        hashing) indexes; IVF and HNSW are approximate, their effort set by `nprobe`."""
        codes = np.ascontiguousarray(codes, np.uint8).reshape(-1, self.code_bytes)
        k = min(k, self.n)
        if self.mih is not None:
            return self._search_mih(codes, k)
        index = self.binary_index
        if hamming.hash_tables(index) is not None:
            return hamming.mih_search(index, self._codes, codes, k)
        if isinstance(index, faiss.IndexBinaryFlat):  # one shard per core: a single query uses them all
            return hamming.scan_knn(hamming.flat_codes(index), codes, k)
        if nprobe:
            set_nprobe(index, nprobe)
        return index.search(codes, k)

    def _search_mih(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k-NN through the tables on disk; a query whose neighbours lie too far for probing to pay scans."""
        dist = np.full((len(codes), k), -1, np.int32)
        ids = np.full((len(codes), k), -1, np.int64)
        for row, code in enumerate(codes):
            found = self.mih.knn(code, k)
            if found is None:
                d, i = hamming.scan_knn(self._codes, code[None], k)
                found = (d[0], i[0])
                _drop_pages(self._codes)
            dist[row, :len(found[0])], ids[row, :len(found[1])] = found
        return dist, ids

    @property
    def hamming_exact(self) -> bool:
        """Whether search_hamming is exact (flat scan, multi-index hashing) rather than approximate (IVF, HNSW)."""
        if self.mih is not None:
            return True
        index = self.binary_index
        return hamming.hash_tables(index) is not None or isinstance(index, faiss.IndexBinaryFlat)

    def range_hamming(self, code: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """All tiles within Hamming distance <= radius of one code, sorted by distance then id; exact with
        every index type."""
        if self.mih is not None:
            if self.mih.range_wins(radius):
                return self.mih.range(code, radius)
            dist, ids = hamming.scan_range(self._codes, code, radius)
            _drop_pages(self._codes)
            order = np.lexsort((ids, dist))
            return dist[order], ids[order]
        return hamming.range_search(self.binary_index, self._codes, code, radius)

    def hamming(self, code: np.ndarray, ids) -> np.ndarray:
        """Hamming distance from one packed code to the codes of `ids`."""
        x = np.bitwise_xor(self.codes(ids), np.asarray(code, np.uint8).reshape(1, -1))
        return np.unpackbits(x, axis=1).sum(axis=1)

    # -- tiles ----------------------------------------------------------------------------------------------
    def _layer(self) -> ogr.Layer:
        if self._gpkg is None:
            self._gpkg = ogr.Open(self.data_path(layout.TILES))
            if self._gpkg is None:
                raise RsirError(f"{self.dir}: {layout.TILES} cannot be opened")
        return self._gpkg.GetLayerByName("tiles")

    def tile(self, tile_id: int) -> TileRecord:
        self._check_ids([tile_id])
        layer = self._layer()
        feat = layer.GetFeature(int(tile_id))
        if feat is None:
            raise RsirError(f"{self.dir}: tile {tile_id} is missing from {layout.TILES}")
        if self._fields is None:  # by index: GDAL's Python binding looks a name up with a loop over the fields
            defn = layer.GetLayerDefn()
            self._fields = {defn.GetFieldDefn(i).GetName(): i for i in range(defn.GetFieldCount())}
        f = self._fields
        text = feat.GetFieldAsString
        geom = feat.GetGeometryRef()
        return TileRecord(
            id=int(tile_id), source_id=feat.GetFieldAsInteger(f["source_id"]), source=text(f["source"]),
            x=feat.GetFieldAsInteger(f["x"]), y=feat.GetFieldAsInteger(f["y"]), w=feat.GetFieldAsInteger(f["w"]),
            h=feat.GetFieldAsInteger(f["h"]), label=text(f["label"]), labels=json.loads(text(f["labels"]) or "[]"),
            src_crs=text(f["src_crs"]),
            src_wkt=text(f["src_wkt"]) if feat.IsFieldSetAndNotNull(f["src_wkt"]) else None,
            footprint_wkt=geom.ExportToWkt() if geom is not None else None)

    def _sql(self, query: str, args=(), batch: int = 4096) -> list[tuple]:
        """Rows of a read-only SQL query on tiles.gpkg (a GeoPackage is SQLite): whole columns in one call, not a
        feature at a time through OGR; a connection of its own, so any thread may ask. Fetched `batch` rows at a
        time: one fetchall of 100k rows holds Python's lock long enough to freeze QGIS's map thread."""
        import sqlite3

        path = self.data_path(layout.TILES)
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                cursor, rows = con.execute(query, args), []
                while part := cursor.fetchmany(batch):
                    rows += part
                return rows
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise RsirError(f"{path}: cannot be read ({exc})") from None

    def source_windows(self, source_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(tile ids, (n, 4) x/y/w/h pixel windows) of one source, in tile order; read once per open index (a
        heat map per query must not re-read 100k rows) and kept as int32."""
        path = self.data_path(layout.WINDOWS)
        if source_id not in self._windows and os.path.exists(path):  # one vectorised pass, no row objects
            table = np.memmap(path, np.int32, "r", shape=(self.n, 5))
            ids = np.flatnonzero(table[:, 0] == source_id)
            self._windows[source_id] = (ids, np.asarray(table[ids, 1:]))
            _drop_pages(table)
        if source_id not in self._windows:  # indexes from before windows.i32
            rows = self._sql("SELECT fid, x, y, w, h FROM tiles WHERE source_id = ? ORDER BY fid",
                             (int(source_id),))
            table = np.concatenate([np.asarray(rows[i:i + 4096], np.int64).reshape(-1, 5)
                                    for i in range(0, len(rows), 4096)] or [np.zeros((0, 5), np.int64)])
            self._windows[source_id] = (table[:, 0], table[:, 1:].astype(np.int32))
        return self._windows[source_id]

    def ids_in_box(self, minx: float, miny: float, maxx: float, maxy: float) -> list[int]:
        """Ids of the tiles whose EPSG:4326 footprint's bounding box meets the box, from the GeoPackage's R-tree."""
        return [int(t) for (t,) in self._sql("SELECT id FROM rtree_tiles_geom WHERE maxx >= ? AND minx <= ? AND "
                                             "maxy >= ? AND miny <= ?", (minx, maxx, miny, maxy))]

    def tile_at(self, lon: float, lat: float) -> int | None:
        """Id of the tile whose EPSG:4326 footprint contains (lon, lat), the one with the nearest centre where
        tiles overlap; None where there is none. Candidates come from the GeoPackage's R-tree."""
        candidates = self.ids_in_box(lon, lat, lon, lat)
        point = ogr.Geometry(ogr.wkbPoint)
        point.AddPoint_2D(lon, lat)
        best = None
        for tid in candidates:
            wkt = self.tile(int(tid)).footprint_wkt
            geom = ogr.CreateGeometryFromWkt(wkt) if wkt else None
            if geom is not None and geom.Contains(point):
                d = geom.Centroid().Distance(point)
                if best is None or d < best[0]:
                    best = (d, int(tid))
        return None if best is None else best[1]

    def tiles_path(self) -> str:
        return self.data_path(layout.TILES)
