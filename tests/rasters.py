"""Synthetic georeferenced rasters (GDAL) with known patterns, and polygon layers (OGR), for the tests."""
from __future__ import annotations

import numpy as np
from osgeo import gdal, osr

# UTM 18N: easting 500000 is the central meridian (-75 deg), northing 0 the equator, so footprints have known
# lon/lat; 10 m pixels like Sentinel-2.
ORIGIN = (500000.0, 2560.0)
GSD = 10.0
EPSG = 32618


def write_raster(path: str, data: np.ndarray, origin=ORIGIN, gsd: float = GSD, epsg: int | None = EPSG,
                 nodata: float | None = None, names: list[str] | None = None) -> str:
    """Write (C, H, W) `data` as a GeoTIFF (north-up, `gsd` pixels, top-left corner at `origin`)."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    gdal_type = {np.dtype("uint8"): gdal.GDT_Byte, np.dtype("uint16"): gdal.GDT_UInt16,
                 np.dtype("float32"): gdal.GDT_Float32}[data.dtype]
    ds = gdal.GetDriverByName("GTiff").Create(path, data.shape[2], data.shape[1], data.shape[0], gdal_type)
    if epsg is not None:
        ds.SetGeoTransform((origin[0], gsd, 0.0, origin[1], 0.0, -gsd))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    for i in range(data.shape[0]):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(data[i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
        if names:
            band.SetDescription(names[i])
    ds.FlushCache()
    ds = None
    return path


def tile_pattern(seed: int, size: int = 64, channels: int = 3) -> np.ndarray:
    """A distinct uint8 tile: its own mean colour, stripe orientation/frequency and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.05, 0.5)
    stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    out = []
    for _ in range(channels):
        base = rng.uniform(40, 215)
        amp = rng.uniform(10, 40)
        out.append(base + amp * stripes + rng.normal(0, 8, (size, size)))
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def mosaic_with_twin(rows: int = 4, cols: int = 4, size: int = 64, twin_of=(0, 0), twin_at=(3, 2),
                     seed: int = 0) -> np.ndarray:
    """(3, rows*size, cols*size) uint8 of distinct tiles, where tile `twin_at` (row, col) copies `twin_of`."""
    img = np.zeros((3, rows * size, cols * size), np.uint8)
    for r in range(rows):
        for c in range(cols):
            img[:, r * size:(r + 1) * size, c * size:(c + 1) * size] = tile_pattern(seed * 1000 + r * cols + c, size)
    (r0, c0), (r1, c1) = twin_of, twin_at
    img[:, r1 * size:(r1 + 1) * size, c1 * size:(c1 + 1) * size] = img[:, r0 * size:(r0 + 1) * size,
                                                                       c0 * size:(c0 + 1) * size]
    return img


_CASTS = [(150, 110, 70), (70, 150, 110), (110, 70, 150), (150, 150, 80), (80, 150, 150), (150, 80, 150)]


def class_image(cls: int, seed: int, size: int = 32) -> np.ndarray:
    """A uint8 RGB image of synthetic class `cls`: the class fixes the stripe orientation and colour cast;
    each image gets its own phase, frequency jitter, brightness and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = cls * np.pi / 4 + rng.normal(0, 0.05)
    stripes = np.sin(0.6 * (1 + rng.uniform(-0.1, 0.1)) * (xx * np.cos(angle) + yy * np.sin(angle))
                     + rng.uniform(0, 2 * np.pi))
    cast = np.array(_CASTS[cls % len(_CASTS)], np.float64)
    img = [cast[c] + rng.uniform(-15, 15) + 45 * stripes + rng.normal(0, 10, (size, size)) for c in range(3)]
    return np.clip(np.stack(img), 0, 255).astype(np.uint8)


def write_class_folder(root: str, n_classes: int = 4, per_class: int = 12, size: int = 32) -> str:
    """A folder-per-class dataset (EuroSAT layout) of synthetic GeoTIFF-free images (no georeferencing)."""
    import os

    for c in range(n_classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
        for i in range(per_class):
            write_raster(os.path.join(root, f"class{c}", f"img{i:03d}.tif"), class_image(c, c * 1000 + i, size),
                         epsg=None)
    return root


def write_polygons(path: str, wkts: list[str], classes: list[str] | None = None, epsg: int = EPSG,
                   layer: str = "labels") -> str:
    """A GeoPackage of polygons (WKT in EPSG `epsg`), each with its `class` attribute if `classes` are given."""
    from osgeo import ogr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    lyr = ds.CreateLayer(layer, srs, ogr.wkbPolygon)
    if classes is not None:
        lyr.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    for i, wkt in enumerate(wkts):
        feat = ogr.Feature(lyr.GetLayerDefn())
        if classes is not None:
            feat.SetField("class", classes[i])
        feat.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        lyr.CreateFeature(feat)
    ds = None  # closes the file
    return str(path)
