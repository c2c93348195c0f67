"""Tile footprints: pixel window -> polygon in the source CRS and in EPSG:4326 (lon/lat order)."""
from __future__ import annotations

from osgeo import gdal, ogr, osr

from .tiling import TileWindow


def wgs84() -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def srs_from_user(text: str) -> osr.SpatialReference:
    """`EPSG:32618`, WKT or PROJ string -> SpatialReference in x/y (lon/lat) axis order."""
    srs = osr.SpatialReference()
    if srs.SetFromUserInput(text) != 0:
        raise ValueError(f"unknown CRS {text!r}")
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def srs_label(srs: osr.SpatialReference | None) -> str:
    """`EPSG:N` when the CRS has an EPSG code, else its WKT; empty for no CRS."""
    if srs is None:
        return ""
    code, auth = srs.GetAuthorityCode(None), srs.GetAuthorityName(None)
    return f"{auth}:{code}" if code and auth else srs.ExportToWkt()


def crs_name(text: str | None) -> str:
    """A CRS as a user reads it in a message: `EPSG:32618`, or the CRS's own name ("WGS 84 / UTM zone 18N") for
    a WKT without an authority code - never a screenful of WKT."""
    if not text:
        return "the raster's CRS"
    try:
        srs = srs_from_user(text)
    except ValueError:
        return text[:60]
    label = srs_label(srs)
    return label if not label.lstrip().startswith(("PROJCS", "GEOGCS", "PROJCRS", "GEOGCRS", "COMPD")) else \
        (srs.GetName() or "a custom CRS")


class FootprintMaker:
    """Footprints for one dataset; `None` geometries where the dataset has no georeference."""

    def __init__(self, ds: gdal.Dataset):
        self.gt = ds.GetGeoTransform()
        wkt = ds.GetProjection()
        self.srs = None
        self.to_wgs84 = None
        if wkt:
            self.srs = osr.SpatialReference(wkt=wkt)
            self.srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            self.to_wgs84 = osr.CoordinateTransformation(self.srs, wgs84())

    @property
    def crs(self) -> str:
        return srs_label(self.srs)

    def corners(self, win: TileWindow) -> list[tuple[float, float]]:
        """Closed ring of the window's corners in source coordinates."""
        gt = self.gt
        px = [(win.x, win.y), (win.x + win.w, win.y), (win.x + win.w, win.y + win.h), (win.x, win.y + win.h)]
        pts = [(gt[0] + c * gt[1] + r * gt[2], gt[3] + c * gt[4] + r * gt[5]) for c, r in px]
        return pts + [pts[0]]

    def polygons(self, win: TileWindow) -> tuple[ogr.Geometry | None, ogr.Geometry | None]:
        """(footprint in source CRS, footprint in EPSG:4326)."""
        if self.srs is None:
            return None, None
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in self.corners(win):
            ring.AddPoint_2D(x, y)
        src = ogr.Geometry(ogr.wkbPolygon)
        src.AddGeometry(ring)
        geo = src.Clone()
        geo.Transform(self.to_wgs84)
        return src, geo
