"""What an archive is made of, and how each piece opens as one GDAL dataset.

An archive is any mix of
- rasters (GeoTIFF, VRT, JP2, COG, ...): tiled on a regular grid;
- band-stack specs: a JSON file naming one file per band (as Sentinel-2 ships), stacked as a VRT and tiled;
- folders of image patches (EuroSAT/UCM style): every image is one tile, its label the sub-folder it sits in.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from osgeo import gdal

from ..errors import RsirError
from .gdal_open import open_raster

PATCH_EXTENSIONS = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".jp2", ".bmp", ".gif")
STACK_TYPE = "rsir.band_stack"


@dataclass(frozen=True)
class SourceSpec:
    """One item of an archive. `kind` is "raster", "stack" or "patch"; `scale` overrides the model's scale and
    `add_offset` is added to raw values before they are divided by it (a band-stack spec's own values)."""

    path: str
    kind: str
    label: str = ""
    scale: float | None = None
    add_offset: float | None = None


def expand_archive(paths: list[str]) -> list[SourceSpec]:
    """Turn the paths a user gave into sources, in a stable order.

    Raises RsirError if one is missing or none is found."""
    specs: list[SourceSpec] = []
    for raw in paths:
        path = os.path.abspath(raw)
        if not os.path.exists(path):
            raise RsirError(f"{raw}: no such file or folder")
        if os.path.isdir(path):
            specs.extend(_patch_folder(path))
        elif path.lower().endswith(".json"):
            stack = read_stack_spec(path)
            specs.append(SourceSpec(path, "stack", scale=stack.get("scale"), add_offset=stack.get("add_offset")))
        else:
            specs.append(SourceSpec(path, "raster"))
    if not specs:
        raise RsirError(f"empty archive: no rasters or image patches found in {', '.join(paths) or '(nothing given)'}")
    return specs


def _patch_folder(root: str) -> list[SourceSpec]:
    specs = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(folder, root)
        label = "" if rel == "." else rel.split(os.sep)[0]
        for name in sorted(files):
            if name.lower().endswith(PATCH_EXTENSIONS) and not name.startswith("."):
                specs.append(SourceSpec(os.path.join(folder, name), "patch", label=label))
    return specs


def read_stack_spec(path: str) -> dict:
    """Parse and check a band-stack spec:
    `{"type": "rsir.band_stack", "bands": [{"name": "B04", "path": "s2_B04.jp2"}, ...], "scale": 10000,
    "add_offset": -1000}` (band paths relative to the spec's folder; `scale` and `add_offset` optional: the model
    sees (raw + add_offset) / scale, as in ESA's Sentinel-2 products from processing baseline 04.00 on, whose
    RADIO_ADD_OFFSET / BOA_ADD_OFFSET is -1000)."""
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise RsirError(f"{path}: not a readable band-stack spec ({exc})") from None
    if not isinstance(spec, dict) or spec.get("type") != STACK_TYPE:
        raise RsirError(f"{path}: not a band-stack spec (expected \"type\": \"{STACK_TYPE}\")")
    bands = spec.get("bands")
    if not isinstance(bands, list) or not bands or not all(isinstance(b, dict) and "path" in b for b in bands):
        raise RsirError(f"{path}: band-stack spec needs a non-empty \"bands\" list of {{\"name\", \"path\"}} objects")
    scale, offset = spec.get("scale"), spec.get("add_offset")
    if scale is not None and (not _is_number(scale) or scale <= 0):
        raise RsirError(f"{path}: band-stack \"scale\" must be a positive number, got {scale!r}")
    if offset is not None and not _is_number(offset):
        raise RsirError(f"{path}: band-stack \"add_offset\" must be a number, got {offset!r}")
    return spec


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def open_source(spec: SourceSpec, vrt_path: str = "") -> gdal.Dataset:
    """Open a source as one dataset (a band stack becomes a VRT at its finest band resolution: in memory, or
    written to `vrt_path` when other files must refer to it - a VRT made from an in-memory one has no source file
    name, and QGIS cannot open it)."""
    if spec.kind != "stack":
        return open_raster(spec.path)
    stack = read_stack_spec(spec.path)
    folder = os.path.dirname(spec.path)
    files, names = [], []
    for i, band in enumerate(stack["bands"], 1):
        band_path = os.path.join(folder, band["path"])
        ds = open_raster(band_path)  # names the missing/corrupt band file
        if ds.RasterCount != 1:
            raise RsirError(f"{spec.path}: band file {band_path} has {ds.RasterCount} bands; a stack wants 1 per file")
        files.append(band_path)
        names.append(str(band.get("name", i)))
    vrt = gdal.BuildVRT(vrt_path, [os.path.abspath(f) for f in files], separate=True, resolution="highest")
    if vrt is None:
        raise RsirError(f"{spec.path}: the band files could not be stacked ({gdal.GetLastErrorMsg()})")
    for i, name in enumerate(names, 1):
        vrt.GetRasterBand(i).SetDescription(name)
    if vrt_path:
        vrt.FlushCache()
    return vrt


def band_names(ds: gdal.Dataset) -> list[str]:
    """Band descriptions, falling back to colour interpretation names ("Red", ...) where empty."""
    out = []
    for i in range(1, ds.RasterCount + 1):
        band = ds.GetRasterBand(i)
        out.append(band.GetDescription() or gdal.GetColorInterpretationName(band.GetColorInterpretation()))
    return out


def parse_band_list(text: str | None) -> list | None:
    """CLI `--bands 4,3,2` or `--bands B04,B03,B02` -> [4, 3, 2] or ["B04", "B03", "B02"]."""
    if not text:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return [int(t) if t.isdigit() else t for t in items]


def resolve_bands(ds: gdal.Dataset, wanted: list, what: str) -> list[int]:
    """Map band names or 1-based indices onto `ds`'s 1-based band numbers; RsirError naming `what` if impossible."""
    names = band_names(ds)
    lower = [n.lower() for n in names]
    out = []
    for b in wanted:
        if isinstance(b, int) or (isinstance(b, str) and b.isdigit()):
            idx = int(b)
            if not 1 <= idx <= ds.RasterCount:
                raise RsirError(f"{what}: has {ds.RasterCount} band(s) but band {idx} is needed "
                                f"(bands wanted: {wanted})")
            out.append(idx)
        elif str(b).lower() in lower:
            out.append(lower.index(str(b).lower()) + 1)
        else:
            raise RsirError(f"{what}: has no band named {b!r} (bands wanted: {wanted}; it has {names})")
    return out
