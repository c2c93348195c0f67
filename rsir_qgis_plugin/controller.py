"""GUI-free search wiring for the plugin: an opened index, its encoder, and one query -> a SearchResult.

Everything here is plain core/ calls, so the dock, the Processing algorithms and the tests share one path.
"""
from __future__ import annotations

import datetime as _dt
import os
import tempfile
from dataclasses import dataclass, field

from .engine import default_model, errors, expansion, feedback, heatmap, modality, queries, reader, search, tile_vrt
from .engine import encoder as core_encoder


@dataclass
class SearchRequest:
    k: int = 20
    mode: str = "float"             # "float" (cosine) or "hash" (Hamming)
    radius: int | None = None       # Hamming radius for the hash-results layer; None: no such layer
    tile_rasters: int = 5           # top hits added as raster layers (VRT windows)
    heatmap: bool = False
    device: str = "auto"
    query_modality: str = "auto"    # which encoder reads a box/image query; auto: by the raster's band count
    expand: int = 0                 # query expansion with this many nearest tiles; 0: off
    rerank: int = 0                 # hash mode: re-rank this many Hamming candidates by cosine; 0: off
    whole_box: bool = False         # read a box of 1.5+ tiles as one resampled image, not as averaged tiles


@dataclass
class SearchResult:
    query: object                   # core.queries.Query
    hits: list
    radius_hits: list = field(default_factory=list)
    heatmap_path: str | None = None
    heatmap_max: float | None = None
    heatmap_min: float | None = None
    tile_vrts: list = field(default_factory=list)  # (path, layer name, display range) of the top hits as VRTs
    results_dir: str = ""
    raster: str | None = None       # raster the query was read from (box queries)
    tile_rasters: int = 5
    warnings: list[str] = field(default_factory=list)
    ranking: str = "cosine"         # how the hits were ranked (core.search.ranking_name)
    model_sha: str = ""             # the index's model the query was encoded with

    @property
    def title(self) -> str:
        """The layer group's name: time, query (the raster by its file name: the tree is narrow), ranking."""
        description = self.query.description
        if self.raster:
            description = description.replace(self.raster, os.path.basename(self.raster))
        return f"{_dt.datetime.now():%H:%M:%S} {description} ({self.ranking})"


def results_folder() -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = os.path.join(tempfile.gettempdir(), "rsir_results", stamp)
    os.makedirs(path, exist_ok=True)
    return path


class RetrievalSession:
    """An index opened for searching; the encoder is loaded on first use (per device) and kept."""

    def __init__(self, index_dir: str):
        self.index = reader.Index(index_dir)
        self._display_ranges: dict[tuple, list] = {}  # per source and bands: the whole scene's stretch
        self._load_models()

    def _load_models(self) -> None:
        own = self.index.model_info
        self._encoders: dict[tuple[str, str], object] = {}
        self._model_sha = self.index.model.sha256
        # cross-modal indexes: the other modalities' encoders exported beside the index's model
        self.modality_models = modality.modality_models(own) if os.path.exists(own.path) else {own.modality: own}

    def refresh(self) -> bool:
        """Follow an update of the index (Index.refresh); when it brought another model (Learn from marks,
        `rsir learn-labels`), queries are encoded with that one from now on. True if the index changed."""
        changed = self.index.refresh()
        if changed and self.index.model.sha256 != self._model_sha:
            self._load_models()
        return changed

    @property
    def modalities(self) -> list[str]:
        """Query modalities this index can be searched with: its own first."""
        own = self.index.model_info.modality
        return [own] + sorted(m for m in self.modality_models if m != own)

    def encoder(self, device: str = "auto", which: str | None = None):
        which = which or self.index.model_info.modality
        if (device, which) not in self._encoders:
            info = self.modality_models.get(which)
            own = which == self.index.model_info.modality
            model = self.index.model_file if own else info.path if info else ""
            if not os.path.exists(model):
                raise errors.RsirError(
                    default_model.missing_model_message(self.index.model.path, self.index.model.sha256) if own
                    else f"{model or which}: the {which} encoder of this index is not there (any more)")
            self._encoders[(device, which)] = core_encoder.Encoder(model, device=device)
        return self._encoders[(device, which)]

    def query_modality(self, raster: str, req: SearchRequest):
        """How a query raster is read (core.modality.ModalityChoice): the user's choice, else what the index, the
        raster's metadata and its band count tell, with a warning when that is a guess."""
        return modality.choose_for_path(self.index, self.modality_models, raster, req.query_modality,
                                        how_to_choose="set Query modality in the dock")

    def _query_encoder(self, raster: str, req: SearchRequest):
        """(encoder, warnings) for a box, polygon or image query from `raster`."""
        choice = self.query_modality(raster, req)
        return self.encoder(req.device, choice.modality), [choice.warning] if choice.warning else []

    def summary(self) -> dict:
        m = self.index.manifest
        meta = m.model.metadata
        return {"model": os.path.basename(m.model.path), "method": core_encoder.describe_method(meta),
                "tile": m.tiling.tile, "stride": m.tiling.stride, "tiles": m.tiles,
                "crs": sorted({s.crs or "(none)" for s in m.sources}), "code_bits": m.code_bits,
                "codes": m.describe_codes(), "sources": len(m.sources)}

    def describe(self) -> str:
        s = self.summary()
        ground = self.index.tile_ground_size()
        return (f"{s['tiles']} tiles of {s['tile']} px{f' ({ground})' if ground else ''} from {s['sources']} "
                f"source(s); model {s['model']} "
                f"({s['method']}); CRS {', '.join(s['crs'])}; "
                f"{s['codes']}; "
                f"values {self.index.describe_values()}")

    # -- queries ------------------------------------------------------------------------------------------
    def search_box(self, raster: str, box: tuple[float, float, float, float], box_crs: str,
                   req: SearchRequest, within: str | None = None) -> SearchResult:
        """`within`: a polygon (WKT in `box_crs`) whose bounding box `box` is; only its tiles are averaged."""
        self.refresh()  # an update since the index was opened: search its newest generation
        enc, said = self._query_encoder(raster, req)
        query = queries.query_from_box(self.index, enc, raster, box, box_crs, whole=req.whole_box, within=within)
        query.warnings[:0] = said
        return self._finish(query, req, raster)

    def search_polygons(self, raster: str, polygons: list[str], crs: str, req: SearchRequest) -> SearchResult:
        """Several polygons (WKT in `crs`) as one query: the tiles inside each, averaged together."""
        self.refresh()
        enc, said = self._query_encoder(raster, req)
        query = queries.query_from_polygons(self.index, enc, raster, polygons, crs)
        query.warnings[:0] = said
        return self._finish(query, req, raster)

    def search_tile(self, tile_id: int, req: SearchRequest) -> SearchResult:
        self.refresh()
        query = queries.query_from_tile(self.index, tile_id)
        return self._finish(query, req, self.index.tile(tile_id).source)

    def search_image(self, path: str, req: SearchRequest) -> SearchResult:
        self.refresh()
        enc, said = self._query_encoder(path, req)
        query = queries.query_from_image(self.index, enc, path, whole=req.whole_box)
        query.warnings[:0] = said
        in_index = self.index.source_entry(path) is not None
        return self._finish(query, req, path if in_index else None)

    def refine(self, query, marks: dict[int, bool], method: str, req: SearchRequest,
               raster: str | None = None, model_sha: str = "") -> SearchResult:
        """The next round of relevance feedback: `query` (the loop's original query, encoded with the model
        `model_sha`) refined by the analyst's marks {tile id: relevant?}, searched as any query."""
        self.refresh()
        if model_sha and model_sha != self._model_sha:
            raise errors.RsirError("Search again, then refine: the index was re-encoded with another model since "
                                   "this search (Learn from marks, or rsir learn-labels)")
        pos = [t for t, ok in marks.items() if ok]
        neg = [t for t, ok in marks.items() if not ok]
        refined = feedback.refine(self.index, query, feedback.Marks.from_index(self.index, pos, neg), method)
        return self._finish(refined, req, raster)

    def tile_at(self, lon: float, lat: float) -> int | None:
        """Id of the tile whose EPSG:4326 footprint contains (lon, lat), nearest centre first; None if none."""
        self.refresh()
        return self.index.tile_at(lon, lat)

    def _finish(self, query, req: SearchRequest, raster: str | None):
        query = expansion.expand_query(self.index, query, req.expand, req.mode)
        rerank = req.rerank if req.mode == "hash" else 0
        hits = search.search(self.index, query, k=req.k, mode=req.mode, rerank=rerank)
        radius_hits = []
        if req.radius is not None:
            radius_hits = search.search(self.index, query, k=req.k, mode="hash", radius=req.radius)
        result = SearchResult(query, hits, radius_hits, results_dir=results_folder(), raster=raster,
                              tile_rasters=req.tile_rasters, warnings=list(query.warnings),
                              ranking=search.ranking_name(req.mode, rerank), model_sha=self._model_sha)
        if req.heatmap:  # an extra layer: where it cannot be drawn the hits still come, with a warning
            if raster is None:
                result.warnings.append("no heat map: an image-file query has no raster to map")
            else:
                path = os.path.join(result.results_dir, "heatmap.tif")
                try:
                    result.heatmap_path, result.heatmap_max, _ = heatmap.similarity_heatmap(
                        self.index, query.embedding, raster, path)
                    result.heatmap_min = _lowest_score(path)
                except errors.RsirError as exc:
                    result.warnings.append(f"no heat map: {exc}")
        result.tile_vrts = self.write_tile_vrts(hits[:req.tile_rasters], result.results_dir)
        return result

    def write_tile_vrts(self, hits, out_dir: str) -> list[tuple[str, str, list | None]]:
        """(path, layer name, display range) of each hit as a VRT window of its source with the index's bands: no
        pixel copies. The display range is the whole source's (a patch is its own source), computed once per
        source for the session."""
        out = []
        for h in hits:
            entry = self.index.sources[h.source_id]
            path = tile_vrt.write_tile_vrt(h.source, entry.kind, list(entry.bands), h.x, h.y, h.w, h.h,
                                           os.path.join(out_dir, f"rank{h.rank:03d}_tile{h.tile_id}.vrt"))
            key = (h.source, tuple(entry.bands))
            if key not in self._display_ranges and entry.kind != "patch":
                self._display_ranges[key] = tile_vrt.display_range(h.source, entry.kind, list(entry.bands))
            out.append((path, f"#{h.rank} tile {h.tile_id}", self._display_ranges.get(key)))
        return out


def _lowest_score(path: str) -> float:
    """The lowest scored cell of a heat map (its nodata cells left out): the bottom of its colour ramp."""
    import numpy as np
    from osgeo import gdal

    arr = gdal.Open(path).ReadAsArray()
    return float(np.min(arr[arr > heatmap.NODATA]))
