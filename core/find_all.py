"""Every tile of an index that scores above a threshold, as one layer: the answer to "where are all the solar
farms" after a few rounds of relevance feedback, instead of a top k."""
from __future__ import annotations

import numpy as np
from osgeo import ogr

from .archive.footprints import wgs84
from .fileio import atomic_path
from .index import layout


def all_scores(index, embedding: np.ndarray) -> np.ndarray:
    """Cosine similarity of every tile of `index` (a core.index.reader.Index) to a unit `embedding`, row = id;
    read in chunks of the memory-mapped table."""
    return index.scores(np.arange(index.n), np.asarray(embedding, np.float32))


def default_threshold(scores: np.ndarray, relevant_ids=(), k: int = 20) -> float:
    """Where to start the slider: the lowest score of a tile marked relevant, else the k-th best score."""
    relevant = [int(t) for t in relevant_ids if 0 <= int(t) < len(scores)]
    if relevant:
        return float(scores[relevant].min())
    return float(np.sort(scores)[-min(k, len(scores))]) if len(scores) else 0.0


def write_tiles_layer(path: str, index, ids: np.ndarray, scores: np.ndarray, chunk: int = 5000) -> int:
    """Write (atomically) a GeoPackage layer "tiles" of the footprints of `ids` with their tile_id, score (of
    `scores`, row = id), source and label, best first; returns the number written."""
    ids = np.asarray(ids, np.int64)
    ids = ids[np.argsort(-scores[ids], kind="stable")]
    src = ogr.Open(index.data_path(layout.TILES))
    tiles = src.GetLayerByName("tiles")
    with atomic_path(path) as tmp:
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(tmp)
        out = ds.CreateLayer("tiles", wgs84(), ogr.wkbPolygon)
        for name, kind in (("rank", ogr.OFTInteger), ("tile_id", ogr.OFTInteger64), ("score", ogr.OFTReal),
                           ("source", ogr.OFTString), ("label", ogr.OFTString)):
            out.CreateField(ogr.FieldDefn(name, kind))
        rank = {int(t): i + 1 for i, t in enumerate(ids)}
        out.StartTransaction()
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            tiles.SetAttributeFilter(f"fid IN ({','.join(str(int(t)) for t in part)})")
            feats = sorted(tiles, key=lambda f: rank[f.GetFID()])
            for f in feats:
                feat = ogr.Feature(out.GetLayerDefn())
                tid = f.GetFID()
                feat.SetField("rank", rank[tid])
                feat.SetField("tile_id", tid)
                feat.SetField("score", float(scores[tid]))
                feat.SetField("source", f.GetField("source"))
                feat.SetField("label", f.GetField("label"))
                geom = f.GetGeometryRef()
                if geom is not None:
                    feat.SetGeometry(geom.Clone())
                out.CreateFeature(feat)
        out.CommitTransaction()
        tiles.SetAttributeFilter(None)
        ds = None  # noqa: F841 - flush and close before the rename
    return len(ids)
