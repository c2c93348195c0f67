"""Queries: a tile of the index, an image file, a box or polygon over a raster, or an in-memory array, read the
way the archive was read (bands, value scale and offset, ground resolution) and encoded into an embedding and a
code that `core.search` ranks the index by."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal, osr

from .archive.footprints import FootprintMaker, crs_name, srs_from_user
from .archive.gdal_open import open_raster
from .archive.pixels import invalid_fraction, read_window, resample_array
from .archive.sources import SourceSpec, expand_archive, open_source, resolve_bands
from .archive.tiling import TileWindow, cover_windows, source_gsd
from .archive.values import ValueScaling, resolve_values
from .encoder import Encoder, l2_normalise
from .errors import RsirError
from .index.manifest import SourceEntry
from .index.reader import Index


@dataclass
class Query:
    """An encoded query. `footprint_wkt` (EPSG:4326) and `pixels` (raw, C x S x S) exist for box/image queries."""

    kind: str
    description: str
    embedding: np.ndarray  # (D,) L2-normalised
    code: np.ndarray       # (bits/8,) packed
    tile_id: int | None = None
    footprint_wkt: str | None = None
    pixels: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)  # things the user should know; the query still ran


def query_from_tile(index: Index, tile_id: int) -> Query:
    """An indexed tile as the query, with its footprint (the map shows and zooms to it like a drawn box)."""
    return Query("tile", f"tile {tile_id}", index.embeddings([tile_id])[0], index.codes([tile_id])[0], tile_id=tile_id,
                 footprint_wkt=index.tile(tile_id).footprint_wkt)


def _query_reading(index: Index, encoder: Encoder, raster_path: str, ds, grid: list[SourceEntry], bands, scale,
                   add_offset, own: SourceSpec | None = None) -> tuple[list, ValueScaling, list[str]]:
    """Bands, value scale and offset to read a query with, and any warning about them.

    Values: the caller's, else the query source's own (a band-stack spec's), else what the index used for that
    source or for the indexed sources on its pixel grid (a VRT of indexed band files, as QGIS shows a spec), else
    the values every source of the archive was read with, else the index run's options or the model's scale and
    offset 0, with a warning. An 8-bit query of an archive read at a deeper scale (a PNG or JPEG against
    Sentinel-2 reflectance) is taken as display values: the model's own scale, offset 0. `grid`: the indexed
    sources the query raster is or lies on the pixel grid of (`Index.same_grid_sources`)."""
    own_scale, own_offset = (own.scale, own.add_offset) if own else (None, None)
    if index.is_cross_modal(encoder.info):  # the index's bands and scale are the other modality's
        chosen = resolve_bands(ds, bands or encoder.info.bands, raster_path)
        return chosen, resolve_values((scale, add_offset), (own_scale, own_offset),
                                      default_scale=encoder.info.scale), []
    tiling = index.manifest.tiling
    chosen = resolve_bands(ds, bands or (list(tiling.bands) if tiling.bands else None) or encoder.info.bands,
                           raster_path)
    sources = grid or index.sources
    scales = {s.scale for s in sources}
    offsets = {s.add_offset for s in sources}
    stored = (next(iter(scales)) if len(scales) == 1 else tiling.scale or encoder.info.scale,
              next(iter(offsets)) if len(offsets) == 1 else tiling.add_offset or 0.0)
    warnings = []
    if index.source_entry(raster_path) is None and ds.GetRasterBand(1).DataType == gdal.GDT_Byte and \
            stored[0] > 255:
        stored = (encoder.info.scale, 0.0)
    elif (len(scales) > 1 and scale is None and own_scale is None) or \
            (len(offsets) > 1 and add_offset is None and own_offset is None):
        warnings.append(f"{os.path.basename(raster_path)} is not in the index, whose sources were read with "
                        f"different value scales or offsets; read with scale {stored[0]:g}, offset "
                        f"{stored[1]:g}; if the query's values differ, give them (rsir search --scale / "
                        "--add-offset) or query through a band-stack spec that states them")
    return chosen, resolve_values((scale, add_offset), (own_scale, own_offset), stored,
                                  default_scale=encoder.info.scale), warnings


def query_from_image(index: Index, encoder: Encoder, image_path: str, bands: list | None = None,
                     scale: float | None = None, add_offset: float | None = None, whole: bool = False) -> Query:
    """The whole image as the query: resampled to the model input, or - for a georeferenced image of 1.5 index
    tiles a side or more, unless `whole` - read as index-sized tiles whose embeddings are averaged, as a box is.
    An image without a georeference has no ground size to compare, so it is always read whole."""
    index.check_model(encoder.info)
    ds = open_raster(image_path)
    _check_image_size(ds, image_path)
    grid = index.same_grid_sources(ds, image_path)
    chosen, values, warnings = _query_reading(index, encoder, image_path, ds, grid, bands, scale, add_offset)
    win = TileWindow(0, 0, ds.RasterXSize, ds.RasterYSize)
    tile = None if whole or not ds.GetProjection() else _index_tile_pixels(index, ds, grid)
    parts = _area_parts(win, tile)
    # an image read whole is one patch: near its own size, as a patch folder is indexed
    size = input_side(index, encoder, grid, max(win.w, win.h) if parts == [win] and tile is None else None)
    embedding, code, used, pixels = _encode_parts(index, encoder, ds, chosen, parts, values, size, image_path)
    note, raw = _area_read(ds, chosen, win, parts, pixels, tile, used, size, image_path)
    fp = FootprintMaker(ds).polygons(win)[1]
    return Query("image", f"image {image_path}{note}", embedding, code,
                 footprint_wkt=fp.ExportToWkt() if fp else None, pixels=raw, warnings=warnings)


MIN_QUERY_SIDE = 8        # px: below this an image holds no pattern to search for
MAX_WHOLE_IMAGE_SIDE = 8192  # px: an image without a georeference is read whole, decoded in one piece


def _check_image_size(ds, path: str) -> None:
    """RsirError for an image query too small to mean anything, or too large to decode whole (a georeferenced one
    is read as index tiles, so any size does)."""
    w, h = ds.RasterXSize, ds.RasterYSize
    if min(w, h) < MIN_QUERY_SIDE:
        raise RsirError(f"{path}: is {w} x {h} px, too small to search with (at least {MIN_QUERY_SIDE} px a side)")
    if max(w, h) > MAX_WHOLE_IMAGE_SIDE and not ds.GetProjection():
        raise RsirError(f"{path}: is {w} x {h} px without a georeference, too large to read whole as one query "
                        f"(at most {MAX_WHOLE_IMAGE_SIDE} px a side); crop it, or give it a georeference (it is "
                        "then read as index-sized tiles), or draw a box on it instead")


def _area_parts(win: TileWindow, tile: int | None, inside=None) -> list[TileWindow]:
    """The windows a query area is read as: itself, or with `tile` (index tile side in the raster's pixels) and an
    area of 1.5 tiles a side or more, index-sized tiles spread over it (`cover_windows`), keeping those whose
    centre passes `inside` (a test on pixel coordinates), all of them if none does."""
    parts = [win] if tile is None else cover_windows(win, tile)
    if inside is not None and len(parts) > 1:
        parts = [w for w in parts if inside(w.x + w.w / 2, w.y + w.h / 2)] or parts
    return parts


def input_side(index: Index, encoder: Encoder, grid: list[SourceEntry], native: int | None = None) -> int:
    """The input side a query is encoded at, as the archive was read: `rsir index --input-size` when given; else
    the side the indexed sources on the query's grid were encoded at, when they agree; else the query encoder's
    rule (`ModelInfo.encode_size`) applied to `native` (a whole image's larger side) or to the index's tile
    size. Models of one input size always take that size."""
    forced = index.manifest.tiling.input_size
    if forced and encoder.info.dynamic_size:
        return encoder.info.encode_size(forced)
    if not index.is_cross_modal(encoder.info):
        sizes = {index.source_input_size(s) for s in grid}
        if len(sizes) == 1:
            return sizes.pop()
    return encoder.info.encode_size(native or index.manifest.tiling.tile)


def _encode_parts(index: Index, encoder: Encoder, ds, bands: list, parts: list[TileWindow], values: ValueScaling,
                  size: int, what: str) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """(embedding, packed code, windows used, their pixels read at `size`) of windows: one window's own, or the
    mean of their embeddings and the bit-wise majority of their codes, leaving out windows with more nodata than
    the index allows unless all have."""
    pixels = np.stack([read_window(ds, bands, w, size, what) for w in parts])
    if len(parts) > 1:
        tiling = index.manifest.tiling
        valid = [invalid_fraction(ds, bands, w, p, tiling.nodata) <= tiling.max_invalid
                 for w, p in zip(parts, pixels)]
        if any(valid):
            pixels = pixels[np.asarray(valid)]
    emb, code = encoder.encode(values.apply(pixels), scale=1.0)
    code = index.query_codes(emb, code)
    if len(pixels) == 1:
        return emb[0], code[0], 1, pixels
    bits = np.unpackbits(code, axis=1).mean(axis=0) >= 0.5  # majority; ties set the bit
    return (l2_normalise(emb.mean(axis=0, keepdims=True))[0], np.packbits(bits.astype(np.uint8)), len(pixels),
            pixels)


def _area_read(ds, bands: list, win: TileWindow, parts: list[TileWindow], pixels: np.ndarray, tile: int | None,
               used: int, size: int, what: str) -> tuple[str, np.ndarray]:
    """(a note for the query's description, the whole area at the model input for display) of an area read as
    `parts`: an area read whole already is that read, with no note."""
    if parts == [win]:
        return "", pixels[0]
    cols, rows = len({w.x for w in parts}), len({w.y for w in parts})
    return f" ({cols} x {rows} tiles of {tile} px, {used} averaged)", read_window(ds, bands, win, size, what)


def _user_and_raster_srs(ds, crs: str | None) -> tuple[osr.SpatialReference, osr.SpatialReference] | None:
    """(the CRS a user gave coordinates in, the raster's), both in x/y order; None when either is missing, so the
    coordinates are taken as the raster's. RsirError for a CRS that is not one."""
    if not crs or not ds.GetProjection():
        return None
    try:
        user = srs_from_user(crs)
    except ValueError as exc:
        raise RsirError(str(exc)) from None
    own = osr.SpatialReference(wkt=ds.GetProjection())
    own.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return user, own


def _centre_test(ds, wkt: str, crs: str | None):
    """A test (col, row) -> bool: does that pixel position of `ds` lie in the polygon `wkt` (given in `crs`, default
    the raster's)?"""
    from osgeo import ogr

    polygon = ogr.CreateGeometryFromWkt(wkt)
    if polygon is None:
        raise RsirError(f"not a polygon (WKT): {wkt[:60]}")
    pair = _user_and_raster_srs(ds, crs)
    transform = osr.CoordinateTransformation(pair[1], pair[0]) if pair else None  # raster -> polygon CRS
    gt = ds.GetGeoTransform()

    def inside(col: float, row: float) -> bool:
        x, y = gdal.ApplyGeoTransform(gt, col, row)
        if transform is not None:
            x, y = transform.TransformPoint(x, y)[:2]
        point = ogr.Geometry(ogr.wkbPoint)
        point.AddPoint_2D(x, y)
        return polygon.Contains(point)

    return inside


def query_from_array(index: Index, encoder: Encoder, pixels: np.ndarray, scale: float | None = None,
                     description: str = "array") -> Query:
    """An in-memory (C, H, W) array of any size, resampled to the model input through GDAL."""
    index.check_model(encoder.info)
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape[0] != encoder.info.channels:
        raise RsirError(f"{description}: has {arr.shape[0]} band(s), the model needs {encoder.info.channels}")
    raw = resample_array(arr, input_side(index, encoder, [], max(arr.shape[1:])), description)
    own_scale = None if index.is_cross_modal(encoder.info) else index.manifest.tiling.scale
    values = resolve_values((scale, None), (own_scale, None), default_scale=encoder.info.scale)
    emb, code = encoder.encode(values.apply(raw[None]), scale=1.0)
    return Query("image", description, emb[0], index.query_codes(emb, code)[0], pixels=raw)


def _corner(v: float) -> str:
    """A box coordinate as a person reads it: metres to 0.1, degrees to 1e-6 (a dragged box carries float noise)."""
    return f"{round(v, 1 if abs(v) >= 1000 else 6):.10g}"


def _short_box(bbox) -> str:
    return "(" + ", ".join(_corner(v) for v in bbox) + ")"


def box_to_window(ds, raster_path: str, bbox: tuple[float, float, float, float], bbox_crs: str | None) -> TileWindow:
    """Pixel window of a box (xmin, ymin, xmax, ymax) given in `bbox_crs` (default: the raster's CRS).

    The box is densified and reprojected, so a lon/lat box over a UTM raster maps to the right pixels.
    RsirError when the box is empty, outside the raster, or sticks out of it.
    """
    xmin, ymin, xmax, ymax = bbox
    if not (xmax > xmin and ymax > ymin):
        raise RsirError(f"box {bbox} is empty: it needs xmin < xmax and ymin < ymax")
    wkt = ds.GetProjection()
    if bbox_crs and not wkt:
        raise RsirError(f"{raster_path}: has no CRS, so a box in {crs_name(bbox_crs)} cannot be placed on it")
    pts = [(xmin + (xmax - xmin) * t / 20, ymin) for t in range(21)] + \
          [(xmax, ymin + (ymax - ymin) * t / 20) for t in range(21)] + \
          [(xmin + (xmax - xmin) * t / 20, ymax) for t in range(21)] + \
          [(xmin, ymin + (ymax - ymin) * t / 20) for t in range(21)]
    pair = _user_and_raster_srs(ds, bbox_crs)
    if pair:
        ct = osr.CoordinateTransformation(*pair)
        pts = [ct.TransformPoint(x, y)[:2] for x, y in pts]
    gt = ds.GetGeoTransform()
    inv = gdal.InvGeoTransform(gt)
    cols, rows = zip(*[gdal.ApplyGeoTransform(inv, x, y) for x, y in pts])
    c0, c1, r0, r1 = min(cols), max(cols), min(rows), max(rows)
    width, height = ds.RasterXSize, ds.RasterYSize
    if c1 <= 0 or r1 <= 0 or c0 >= width or r0 >= height:
        raise RsirError(f"box {_short_box(bbox)} ({crs_name(bbox_crs)}) lies outside raster {raster_path} "
                        f"({width} x {height} px)")
    tol = 1e-6
    if c0 < -tol or r0 < -tol or c1 > width + tol or r1 > height + tol:
        raise RsirError(f"box {_short_box(bbox)} ({crs_name(bbox_crs)}) extends beyond raster {raster_path}; "
                        "draw it inside")
    x0, y0 = max(0, int(math.floor(c0 + tol))), max(0, int(math.floor(r0 + tol)))
    x1, y1 = min(width, int(math.ceil(c1 - tol))), min(height, int(math.ceil(r1 - tol)))
    return TileWindow(x0, y0, max(1, x1 - x0), max(1, y1 - y0))


def query_from_box(index: Index, encoder: Encoder, raster: str, bbox: tuple[float, float, float, float],
                   bbox_crs: str | None = None, bands: list | None = None, scale: float | None = None,
                   add_offset: float | None = None, whole: bool = False, within: str | None = None) -> Query:
    """Read the box's pixels from `raster` (a raster file or band-stack spec) and encode them as the query.

    A box of 1.5 index tiles a side or more is read as tiles of the index's ground size (`cover_windows`) whose
    embeddings are averaged (codes: bit-wise majority), so the network sees the ground resolution it sees in the
    archive; resampling a 2 x 2-tile box into one model input halves that resolution (EuroSAT 2 x 2 same-class
    mosaics: 65 mAP@100 against 99.9 for the average; docs/results.md, which also shows when the whole box is the
    better read). `whole`: read the box as one image anyway. Tiles with more nodata than the index allows are
    left out unless all are. `within`: a polygon (WKT, in `bbox_crs`; the box is usually its bounding box) - only
    tiles whose centre lies in it are averaged, so a selected field or forest stand is the query, not its
    bounding box."""
    ds, grid, chosen, values, warnings = _open_query_raster(index, encoder, raster, bands, scale, add_offset)
    win = box_to_window(ds, raster, bbox, bbox_crs)
    tile = None if whole else _index_tile_pixels(index, ds, grid)
    parts = _area_parts(win, tile, _centre_test(ds, within, bbox_crs) if within else None)
    size = input_side(index, encoder, grid)
    embedding, packed, used, pixels = _encode_parts(index, encoder, ds, chosen, parts, values, size, raster)
    note, raw = _area_read(ds, chosen, win, parts, pixels, tile, used, size, raster)
    corners = ','.join(_corner(v) for v in bbox)
    description = f"{'polygon' if within else 'box'} {corners} on {raster}{note}"
    maker = FootprintMaker(ds)
    geo = maker.polygons(win)[1]
    if maker.srs is not None and maker.srs.IsGeographic():
        warnings.append(f"{os.path.basename(raster)} uses a degree-based CRS: its pixels are not square on the "
                        "ground, so tiles and boxes are distorted away from the equator")
    return Query("box", description, embedding, packed, footprint_wkt=geo.ExportToWkt() if geo else None,
                 pixels=raw, warnings=warnings)


def _open_query_raster(index: Index, encoder: Encoder, raster: str, bands, scale, add_offset):
    """A raster or band-stack spec opened for a box or polygon query: (dataset, the indexed sources on its grid,
    bands, value scale, offset, warnings), after checking the encoder belongs to the index."""
    index.check_model(encoder.info)
    spec = expand_archive([raster])[0]
    ds = open_source(SourceSpec(spec.path, spec.kind))
    grid = index.same_grid_sources(ds, spec.path)
    chosen, values, warnings = _query_reading(index, encoder, spec.path, ds, grid, bands, scale, add_offset, spec)
    return ds, grid, chosen, values, warnings


def query_from_polygons(index: Index, encoder: Encoder, raster: str, polygons: list[str], crs: str | None = None,
                        bands: list | None = None, scale: float | None = None,
                        add_offset: float | None = None) -> Query:
    """Several polygons (WKT in `crs`, default the raster's) over `raster` as one query - "places like these
    fields": the tiles inside each polygon (a polygon under 1.5 tiles a side: its bounding box, read whole), all
    averaged together. One polygon is `query_from_box` with `within`."""
    from osgeo import ogr

    if not polygons:
        raise RsirError("no polygons to query with")
    boxes = []
    for wkt in polygons:
        geom = ogr.CreateGeometryFromWkt(wkt)
        if geom is None or geom.IsEmpty():
            raise RsirError(f"not a polygon (WKT): {wkt[:60]}")
        xmin, xmax, ymin, ymax = geom.GetEnvelope()
        boxes.append((xmin, ymin, xmax, ymax))
    if len(polygons) == 1:
        return query_from_box(index, encoder, raster, boxes[0], crs, bands, scale, add_offset, within=polygons[0])
    ds, grid, chosen, values, warnings = _open_query_raster(index, encoder, raster, bands, scale, add_offset)
    tile = _index_tile_pixels(index, ds, grid)
    windows = [box_to_window(ds, raster, box, crs) for box in boxes]
    parts = [w for wkt, win in zip(polygons, windows) for w in _area_parts(win, tile, _centre_test(ds, wkt, crs))]
    size = input_side(index, encoder, grid)
    embedding, code, used, _ = _encode_parts(index, encoder, ds, chosen, parts, values, size, raster)
    xmins, ymins, xmaxs, ymaxs = zip(*boxes)  # the polygons' joint envelope
    win = box_to_window(ds, raster, (min(xmins), min(ymins), max(xmaxs), max(ymaxs)), crs)
    geo = FootprintMaker(ds).polygons(win)[1]
    return Query("box", f"{len(polygons)} polygons on {raster} ({used} tiles averaged)", embedding, code,
                 footprint_wkt=geo.ExportToWkt() if geo else None,
                 pixels=read_window(ds, chosen, win, size, raster), warnings=warnings)


def _index_tile_pixels(index: Index, ds, grid: list[SourceEntry]) -> int | None:
    """The side of the index's tiles in pixels of the query raster `ds`: the tile size at the index's ground
    resolution (its --gsd, else the gsd shared by the indexed sources on the raster's grid or by all of them, else
    the raster's own) over the raster's pixel size. Patch-folder indexes: the patches' common width, if any."""
    sources = grid or index.sources
    tiling = index.manifest.tiling
    if all(s.kind == "patch" for s in sources):
        widths = {s.width for s in sources}
        return widths.pop() if len(widths) == 1 else None
    gsds = {s.gsd for s in sources if s.kind != "patch"}
    index_gsd = tiling.gsd or (gsds.pop() if len(gsds) == 1 else source_gsd(ds))
    return max(1, round(tiling.tile * index_gsd / source_gsd(ds)))
