"""Processing provider "RSIR": Build index, Search by extent, Search by polygons, Search by image, Similarity heat
map."""
from __future__ import annotations

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingProvider,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from .controller import RetrievalSession, SearchRequest
from .engine import builder, default_model_path, errors, expansion, heatmap, queries
from .layers import HIT_FIELDS, hit_attributes

WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")


def _index_param(name: str = "INDEX") -> QgsProcessingParameterFile:
    return QgsProcessingParameterFile(name, "Index folder", behavior=QgsProcessingParameterFile.Folder)


def _hit_fields() -> QgsFields:
    fields = QgsFields()
    for name, kind in HIT_FIELDS:
        fields.append(QgsField(name, kind))
    return fields


def _add_hits(sink, fields: QgsFields, hits, extra: list | None = None) -> None:
    """Hit footprints (EPSG:4326) with their attributes, then `extra` values, into a feature sink."""
    for h in hits:
        f = QgsFeature(fields)
        f.setAttributes(hit_attributes(h) + list(extra or []))
        if h.footprint_wkt:
            f.setGeometry(QgsGeometry.fromWkt(h.footprint_wkt))
        sink.addFeature(f, QgsFeatureSink.FastInsert)


def _session(alg, parameters, context) -> RetrievalSession:
    try:
        return RetrievalSession(alg.parameterAsFile(parameters, "INDEX", context))
    except errors.RsirError as exc:
        raise QgsProcessingException(str(exc)) from None


def _expand_param() -> QgsProcessingParameterNumber:
    return QgsProcessingParameterNumber("EXPAND", "Query expansion: nearest tiles (0 = off)", defaultValue=0,
                                        minValue=0)


class _Base(QgsProcessingAlgorithm):
    NAME = ""
    TITLE = ""
    HELP = ""

    def name(self):
        return self.NAME

    def displayName(self):  # noqa: N802
        return self.TITLE

    def group(self):
        return "Image retrieval"

    def groupId(self):  # noqa: N802
        return "retrieval"

    def shortHelpString(self):  # noqa: N802
        return self.HELP

    def createInstance(self):  # noqa: N802
        return type(self)()

    def _write_hits(self, parameters, context, hits) -> dict:
        sink, dest = self.parameterAsSink(parameters, "OUTPUT", context, _hit_fields(), QgsWkbTypes.Polygon, WGS84)
        _add_hits(sink, _hit_fields(), hits)
        return {"OUTPUT": dest}

    def _search_params(self) -> None:
        self.addParameter(QgsProcessingParameterNumber("K", "Number of hits", defaultValue=20, minValue=1))
        self.addParameter(QgsProcessingParameterBoolean("HASH", "Hash (Hamming) search", defaultValue=False))
        self.addParameter(QgsProcessingParameterNumber("RERANK", "Hash search: re-rank this many nearest by cosine "
                                                       "(0 = off)", defaultValue=0, minValue=0))
        self.addParameter(_expand_param())
        self.addParameter(QgsProcessingParameterFeatureSink("OUTPUT", "Hits", QgsProcessing.TypeVectorPolygon))

    def _request(self, parameters, context) -> SearchRequest:
        return SearchRequest(k=self.parameterAsInt(parameters, "K", context),
                             mode="hash" if self.parameterAsBool(parameters, "HASH", context) else "float",
                             tile_rasters=0, expand=self.parameterAsInt(parameters, "EXPAND", context),
                             rerank=self.parameterAsInt(parameters, "RERANK", context))


class BuildIndex(_Base):
    NAME, TITLE = "buildindex", "Build index"
    HELP = ("Tile and encode rasters (or patch folders / band-stack specs) with an ONNX retrieval model into an "
            "index folder. Reruns resume an interrupted run; new sources are appended.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers("SOURCES", "Rasters", QgsProcessing.TypeRaster))
        # optional, the shipped model when left out: qgis_process treats a mandatory parameter as missing even
        # when it has a default
        self.addParameter(QgsProcessingParameterFile("MODEL", "ONNX model (empty: the shipped default)",
                                                     extension="onnx", defaultValue=default_model_path() or None,
                                                     optional=True))
        self.addParameter(QgsProcessingParameterNumber("TILE", "Tile size (px)", defaultValue=64, minValue=4))
        self.addParameter(QgsProcessingParameterNumber("STRIDE", "Stride (px)", defaultValue=64, minValue=1))
        self.addParameter(QgsProcessingParameterNumber("SCALE", "Value scale: raw values are divided by it (0 = the "
                                                       "model's)", QgsProcessingParameterNumber.Double, 0.0,
                                                       minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber("ADD_OFFSET", "Value offset: added to raw values before the "
                                                       "scale (-1000 for Sentinel-2 baseline 04.00+)",
                                                       QgsProcessingParameterNumber.Double, 0.0))
        self.addParameter(QgsProcessingParameterNumber("NODATA", "Nodata value of sources that declare none, e.g. 0 "
                                                       "for scene fill (empty: zeros are data)",
                                                       QgsProcessingParameterNumber.Double, optional=True))
        self.addParameter(QgsProcessingParameterBoolean("MODEL_CODES", "Keep the model's hash codes (default: fit "
                                                        "codes on this archive's own embeddings)",
                                                        defaultValue=False))
        self.addParameter(QgsProcessingParameterNumber("CODE_BITS", "Bits of the codes fitted on the archive (0 = "
                                                       "the model's; e.g. 128 for half the memory)",
                                                       defaultValue=0, minValue=0, maxValue=4096))
        self.addParameter(QgsProcessingParameterFile("OUT", "Index folder", behavior=QgsProcessingParameterFile.Folder))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layers = self.parameterAsLayerList(parameters, "SOURCES", context)
        out = self.parameterAsFile(parameters, "OUT", context)
        opts = builder.BuildOptions(tile=self.parameterAsInt(parameters, "TILE", context),
                                    stride=self.parameterAsInt(parameters, "STRIDE", context),
                                    scale=self.parameterAsDouble(parameters, "SCALE", context) or None,
                                    add_offset=self.parameterAsDouble(parameters, "ADD_OFFSET", context) or None,
                                    nodata=(self.parameterAsDouble(parameters, "NODATA", context)
                                            if parameters.get("NODATA") not in (None, "") else None),
                                    model_codes=self.parameterAsBool(parameters, "MODEL_CODES", context),
                                    code_bits=self.parameterAsInt(parameters, "CODE_BITS", context) or None)
        try:
            model = self.parameterAsFile(parameters, "MODEL", context) or default_model_path()
            if not model:
                raise errors.RsirError("no MODEL given, and this installation ships no default model")
            report = builder.build_index([lyr.source() for lyr in layers], model, out, opts,
                                         progress=lambda d, t: feedback.setProgress(100.0 * d / max(t, 1)),
                                         cancel=feedback.isCanceled)
        except errors.RsirError as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo(f"indexed {report.tiles_added} tiles, skipped {report.skipped}; {report.total_tiles} in "
                          f"the index")
        return {"OUT": out, "TILES": report.total_tiles}


class SearchByExtent(_Base):
    NAME, TITLE = "searchbyextent", "Search by extent"
    HELP = ("The pixels of a raster inside an extent are the query; writes the k most similar tiles. An extent of "
            "1.5 index tiles a side or more is read as index-sized tiles whose embeddings are averaged, unless "
            "WHOLE_BOX reads it as one resampled image.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(_index_param())
        self.addParameter(QgsProcessingParameterRasterLayer("RASTER", "Query raster"))
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Query extent"))
        self.addParameter(QgsProcessingParameterBoolean("WHOLE_BOX", "Read a large extent as one image",
                                                        defaultValue=False))
        self._search_params()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        session = _session(self, parameters, context)
        raster = self.parameterAsRasterLayer(parameters, "RASTER", context)
        crs = self.parameterAsExtentCrs(parameters, "EXTENT", context)
        rect = self.parameterAsExtent(parameters, "EXTENT", context, crs)
        box = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
        try:
            req = self._request(parameters, context)
            req.whole_box = self.parameterAsBool(parameters, "WHOLE_BOX", context)
            result = session.search_box(raster.source(), box, crs.toWkt(), req)
        except errors.RsirError as exc:
            raise QgsProcessingException(str(exc)) from None
        return self._write_hits(parameters, context, result.hits)


class SearchByPolygons(_Base):
    NAME, TITLE = "searchbypolygons", "Search by polygons"
    HELP = ("Each polygon of a layer (fields, stands, sites) is a query over the raster: the index-sized tiles "
            "inside it are averaged, as the dock's Selected polygon does. Writes the k most similar tiles of every "
            "polygon, with the polygon's feature id in query_fid. ONE_QUERY: all polygons' tiles averaged into one "
            "query instead (places like these fields; query_fid -1).")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(_index_param())
        self.addParameter(QgsProcessingParameterRasterLayer("RASTER", "Query raster"))
        self.addParameter(QgsProcessingParameterFeatureSource("POLYGONS", "Query polygons",
                                                              [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterBoolean("ONE_QUERY", "All polygons as one query",
                                                        defaultValue=False))
        self._search_params()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        session = _session(self, parameters, context)
        raster = self.parameterAsRasterLayer(parameters, "RASTER", context)
        polygons = self.parameterAsSource(parameters, "POLYGONS", context)
        fields = _hit_fields()
        fields.append(QgsField("query_fid", QVariant.LongLong))
        sink, dest = self.parameterAsSink(parameters, "OUTPUT", context, fields, QgsWkbTypes.Polygon, WGS84)
        crs, total, searched = polygons.sourceCrs().toWkt(), max(polygons.featureCount(), 1), 0
        if self.parameterAsBool(parameters, "ONE_QUERY", context):
            wkts = [f.geometry().asWkt() for f in polygons.getFeatures() if not f.geometry().isEmpty()]
            try:
                result = session.search_polygons(raster.source(), wkts, crs, self._request(parameters, context))
            except errors.RsirError as exc:
                raise QgsProcessingException(str(exc)) from None
            _add_hits(sink, fields, result.hits, [-1])
            feedback.pushInfo(f"one query from {len(wkts)} polygon(s): {result.query.description}")
            return {"OUTPUT": dest}
        for i, feature in enumerate(polygons.getFeatures()):
            if feedback.isCanceled():
                break
            geom = feature.geometry()
            if geom.isEmpty():
                feedback.pushWarning(f"polygon {feature.id()}: no geometry, skipped")
                continue
            try:
                result = session.search_polygons(raster.source(), [geom.asWkt()], crs,
                                                 self._request(parameters, context))
            except errors.RsirError as exc:
                feedback.pushWarning(f"polygon {feature.id()}: {exc}")  # one bad polygon does not stop the rest
                continue
            _add_hits(sink, fields, result.hits, [feature.id()])
            searched += 1
            feedback.setProgress(100.0 * (i + 1) / total)
        feedback.pushInfo(f"searched with {searched} of {polygons.featureCount()} polygon(s)")
        return {"OUTPUT": dest}


class SearchByImage(_Base):
    NAME, TITLE = "searchbyimage", "Search by image"
    HELP = ("A whole image file is the query: resampled to the model input, or, if it is georeferenced and 1.5 "
            "index tiles a side or more, read as index-sized tiles whose embeddings are averaged.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(_index_param())
        self.addParameter(QgsProcessingParameterFile("IMAGE", "Query image"))
        self._search_params()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        session = _session(self, parameters, context)
        try:
            result = session.search_image(self.parameterAsFile(parameters, "IMAGE", context),
                                          self._request(parameters, context))
        except errors.RsirError as exc:
            raise QgsProcessingException(str(exc)) from None
        return self._write_hits(parameters, context, result.hits)


class SimilarityHeatmap(_Base):
    NAME, TITLE = "similarityheatmap", "Similarity heat map"
    HELP = ("Scores every indexed tile of a raster against the query extent's pixels; overlapping tiles are "
            "averaged. The raster must be in the index.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(_index_param())
        self.addParameter(QgsProcessingParameterRasterLayer("RASTER", "Indexed raster"))
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Query extent"))
        self.addParameter(_expand_param())
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Heat map"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        session = _session(self, parameters, context)
        raster = self.parameterAsRasterLayer(parameters, "RASTER", context)
        crs = self.parameterAsExtentCrs(parameters, "EXTENT", context)
        rect = self.parameterAsExtent(parameters, "EXTENT", context, crs)
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        try:
            query = queries.query_from_box(session.index, session.encoder(), raster.source(),
                                          (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()),
                                          crs.toWkt())
            query = expansion.expand_query(session.index, query, self.parameterAsInt(parameters, "EXPAND", context))
            _, best, _ = heatmap.similarity_heatmap(session.index, query.embedding, raster.source(), out)
        except errors.RsirError as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo(f"highest similarity {best:.4f}")
        return {"OUTPUT": out}


class RsirProvider(QgsProcessingProvider):
    def id(self):
        return "rsir"

    def name(self):
        return "RSIR"

    def longName(self):  # noqa: N802
        return "RSIR remote-sensing image retrieval"

    def loadAlgorithms(self):  # noqa: N802
        for alg in (BuildIndex(), SearchByExtent(), SearchByPolygons(), SearchByImage(), SimilarityHeatmap()):
            self.addAlgorithm(alg)



