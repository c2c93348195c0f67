"""The `rsir` command line: index, search, info (core) plus subcommands other packages register
through the `rsir.commands` entry-point group (training/ adds `export`)."""
from __future__ import annotations

import argparse
import os
import re
import sys
from importlib.metadata import entry_points

from . import __version__
from .errors import Cancelled, RsirError

EPILOG = """examples:
  rsir index scene.tif --model model.onnx --out idx/
  rsir index s2_stack.json eurosat/ --model model.onnx --out idx/ --tile 64 --stride 32
  rsir search idx/ --bbox 455000,4180000,455640,4180640 --crs EPSG:32618 --raster scene.tif -k 10 \\
      --out hits.gpkg --png hits.png
  rsir search idx/ --tile 42 --hash
  rsir info idx/
"""


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bbox wants xmin,ymin,xmax,ymax numbers, got {text!r}") from None
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"--bbox wants 4 numbers xmin,ymin,xmax,ymax, got {len(vals)}")
    return vals  # type: ignore[return-value]


def _whole(low: int, high: int = 1 << 31):
    """argparse type: a whole number from `low` to `high` (a huge or negative count is refused as it is read,
    not met later as an overflow)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low} to {high})")
        return value

    return parse


def _ids(text: str) -> list[int]:
    """argparse type: comma-separated tile ids."""
    try:
        ids = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"tile ids are whole numbers separated by commas, got {text!r}") from None
    if not ids or min(ids) < 0 or max(ids) >= 1 << 62:
        raise argparse.ArgumentTypeError(f"tile ids are 0 or more, got {text!r}")
    return ids


def _dask_address(text: str) -> str:
    from .index.distributed import check_address

    try:
        return check_address(text)
    except RsirError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None


def _common_encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="onnxruntime device: auto uses CUDA when its provider is installed (default: auto)")
    p.add_argument("--threads", type=_whole(1, 1024), default=None,
                   help="CPU threads for onnxruntime (default: all cores)")
    p.add_argument("--bands", default=None,
                   help="source bands feeding the model, in model order: 1-based numbers (4,3,2) or band "
                        "names (B04,B03,B02); default: the model's own band list")
    p.add_argument("--scale", type=float, default=None,
                   help="divide raw pixel values by this instead of the model's scale (e.g. 3000 for "
                        "Sentinel-2 L1C reflectance into a model trained on 8-bit RGB)")
    p.add_argument("--add-offset", type=float, default=None, metavar="V",
                   help="add V to raw pixel values before dividing by the scale (e.g. -1000 for Sentinel-2 "
                        "products of processing baseline 04.00 and later, whose RADIO_ADD_OFFSET is -1000); a "
                        "band-stack spec's own \"add_offset\" wins; default 0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsir", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Remote-sensing image retrieval: index an archive of imagery once, then find the places most "
                    "similar to a tile, an image file or a box drawn on a raster.")
    parser.add_argument("--version", action="version", version=f"rsir {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("index", help="tile and encode an archive into an index folder (resumable)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Tile the rasters, band-stack specs (.json) and patch folders of ARCHIVE, encode "
                                   "every tile with the ONNX model and write an index folder. Interrupted runs "
                                   "resume when rerun; new sources are appended to an existing index.")
    p.add_argument("archive", nargs="+", metavar="ARCHIVE", help="raster files, band-stack .json specs, patch folders")
    p.add_argument("--model", help="ONNX model exported by `rsir export`, or a shipped model by name: default (best "
                                   "on imagery it was not trained on), int8 (about twice as fast), fast (about 10x, "
                                   "for the land uses it was trained on); default: default")
    p.add_argument("--out", required=True, help="index folder to create or extend")
    p.add_argument("--tile", type=_whole(1, 1 << 20), default=64, help="tile size in pixels (at --gsd if given)")
    p.add_argument("--input-size", type=_whole(1, 1 << 16), default=None,
                   help="encode every tile at this side in pixels (default: a resolution-aware model reads each "
                        "source near its own size: raster tiles at --tile, each patch at its own side, clamped to "
                        "the model's range; other models at their one input size)")
    p.add_argument("--stride", type=_whole(1, 1 << 20), default=None,
                   help="step between tiles in pixels (default: = --tile)")
    p.add_argument("--gsd", type=float, default=None,
                   help="resample to this ground resolution (CRS units per pixel) before tiling")
    p.add_argument("--max-invalid", type=float, default=0.5,
                   help="skip tiles whose share of nodata pixels exceeds this")
    p.add_argument("--nodata", type=float, default=None,
                   help="pixel value (in every band) that is empty in sources declaring no nodata of their own, "
                        "e.g. 0 for the fill around a scene (default: such sources have no empty pixels; a zero, "
                        "like radar water, is data)")
    p.add_argument("--float-factory", default=None, help="faiss factory string for the float index "
                   "(default: Flat up to 200k tiles, IVF above)")
    p.add_argument("--binary-factory", default=None, help="faiss factory string for the binary index "
                   "(default: BFlat up to 2M tiles, BIVF above)")
    p.add_argument("--model-codes", action="store_true",
                   help="keep the model's hash codes; by default an index of at least 2 tiles per code bit gets "
                        "codes fitted on its own embeddings (PCA-ITQ; better hash search on imagery unlike the "
                        "model's training data, docs/results.md)")
    p.add_argument("--code-bits", type=_whole(8, 4096), default=None, metavar="B",
                   help="bits of the codes fitted on the archive (a multiple of 8, at most the embedding size; "
                        "default: the model's). 128 halves the default's 256: half the memory and faster Hamming "
                        "search, 1.8 points less mAP@100 on unseen classes, none with --rerank 200 "
                        "(docs/results.md)")
    p.add_argument("--batch-size", type=_whole(1, 1 << 16), default=64, help="tiles per inference batch")
    p.add_argument("--checkpoint-every", type=_whole(1), default=2048, help="tiles between resumable checkpoints")
    p.add_argument("--restart", action="store_true", help="discard an unfinished run in --out instead of resuming")
    p.add_argument("--dask", type=_dask_address, default=None, metavar="CLUSTER",
                   help="encode on Dask: local (one worker process per core), local:N (N worker processes) or a "
                        "scheduler address such as tcp://HOST:8786 (workers must see the archive and the model at "
                        "the same paths); the index is the same as without --dask")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _common_encoder_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="find the tiles most similar to a tile, an image or a box",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Search an index. The query is a tile of the index (--tile), an image file "
                                   "(--image), a box over a raster (--bbox with --raster, box in --crs) or a "
                                   "polygon from a vector file over a raster (--polygon with --raster). A box or "
                                   "polygon of 1.5 tiles a side or more is read as the index-sized tiles it covers, "
                                   "their embeddings averaged (--whole-box: resampled as one image).")
    p.add_argument("index", metavar="IDX", help="index folder")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--tile", type=_whole(0, (1 << 63) - 1),
                   help="tile id (the query tile itself is left out of the hits)")
    q.add_argument("--image", help="image file: the whole image is the query")
    q.add_argument("--bbox", type=_bbox, help="xmin,ymin,xmax,ymax of the query box")
    q.add_argument("--polygon", metavar="VECTOR",
                   help="vector file (GeoPackage, shapefile, GeoJSON, ...) whose polygon is the query: the tiles "
                        "inside it are averaged; its first feature, or --fid")
    p.add_argument("--fid", type=_whole(0, (1 << 63) - 1), default=None, help="feature id of the --polygon to use")
    p.add_argument("--crs", default=None, help="CRS of --bbox, e.g. EPSG:4326 (default: the raster's CRS)")
    p.add_argument("--raster", default=None, help="raster or band-stack spec the --bbox is read from")
    p.add_argument("--whole-box", action="store_true",
                   help="read a --bbox (or a georeferenced --image) of 1.5 index tiles a side or more as one image "
                        "resampled to the model input, instead of as index-sized tiles whose embeddings are "
                        "averaged (the default)")
    p.add_argument("--model", default=None,
                   help="ONNX model for image/box queries (default: the index's own, or for a cross-modal index "
                        "the encoder of the query's modality, see --modality)")
    p.add_argument("--modality", default="auto",
                   help="cross-modal indexes: which encoder reads the query (e.g. optical, sar). auto: the index's "
                        "own for its sources, else the raster's RSIR_MODALITY tag or sensor metadata, else its band "
                        "count; a guess is said")
    p.add_argument("-k", type=_whole(1, 1 << 20), default=20, help="number of hits")
    p.add_argument("--hash", action="store_true", help="rank by Hamming distance of the binary codes")
    p.add_argument("--radius", type=_whole(0, 4096), default=None,
                   help="with --hash: every tile within this Hamming distance")
    p.add_argument("--rerank", type=_whole(0, 1 << 20), default=0, metavar="R",
                   help="with --hash: rank the R nearest by Hamming distance again by cosine similarity (0: off; "
                        "float-search quality at hash-search cost, docs/results.md)")
    p.add_argument("--nprobe", type=_whole(1, 1 << 20), default=None,
                   help="inverted lists visited per query (IVF indexes)")
    p.add_argument("--expand", type=_whole(0, 1000), default=0, metavar="N",
                   help="query expansion: search again with the query moved towards its N nearest tiles (0: off; "
                        "keep N below the number of matches you expect, docs/results.md)")
    f = p.add_argument_group("relevance feedback", "mark hits (tile ids) or image files as relevant or not: the query "
                             "is refined with them (docs/results.md, \"Relevance feedback\")")
    f.add_argument("--positive", type=_ids, metavar="ID,...", help="tile ids that are what you look for")
    f.add_argument("--negative", type=_ids, metavar="ID,...", help="tile ids that are not")
    f.add_argument("--positive-image", action="append", metavar="FILE", help="an image that is (repeatable)")
    f.add_argument("--negative-image", action="append", metavar="FILE", help="an image that is not (repeatable)")
    f.add_argument("--feedback", choices=["linear", "rocchio"], default="linear",
                   help="linear: a logistic regression on the marks scores every tile; rocchio: the query moved "
                        "towards the relevant marks and away from the others")
    f.add_argument("--session", metavar="FILE.json",
                   help="keep the query and every round's marks in this file; with an existing file, continue its "
                        "query (no --tile/--image/--bbox needed) with all its earlier marks plus this command's")
    f.add_argument("--labels-out", metavar="FILE.gpkg",
                   help="with --session: write its marks as a label layer for rsir train (data.kind = \"index\"): "
                        "the marked tiles' footprints, class = --label for the relevant ones, \"other\" for the rest")
    f.add_argument("--label", metavar="NAME", help="with --labels-out: the class name of what you searched for")
    p.add_argument("--out", default=None, help="write hits (and the query box) to this GeoPackage")
    p.add_argument("--png", default=None, help="write a PNG mosaic of the query and its top hits")
    _common_encoder_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="describe an index folder")
    p.add_argument("index", metavar="IDX", help="index folder")
    p.set_defaults(func=cmd_info)

    for ep in entry_points(group="rsir.commands"):
        try:
            ep.load()(sub)
        except ImportError as exc:  # e.g. training/ without torch: core commands keep working
            sub.add_parser(ep.name, help=f"(unavailable: {exc})")
    return parser


def _progress_bar(what: str, quiet: bool):
    """(update(done, total), close) of a `core.progress.Progress` in tiles; its first update is where a resumed
    run starts."""
    from .progress import Progress

    bar = Progress(what, unit="tile", quiet=quiet, resumable=True)
    return bar.set, bar.close


def cmd_index(args: argparse.Namespace) -> int:
    from .archive.sources import parse_band_list
    from .index.builder import BuildOptions, build_index

    opts = BuildOptions(tile=args.tile, stride=args.stride, gsd=args.gsd, bands=parse_band_list(args.bands),
                        input_size=args.input_size,
                        scale=args.scale, add_offset=args.add_offset, max_invalid=args.max_invalid, nodata=args.nodata,
                        float_factory=args.float_factory, binary_factory=args.binary_factory,
                        checkpoint_every=args.checkpoint_every,
                        device=args.device, threads=args.threads, batch_size=args.batch_size, dask=args.dask,
                        model_codes=args.model_codes, code_bits=args.code_bits)
    from .default_model import resolve_model

    model = resolve_model(args.model)
    if not model:
        raise RsirError("no --model given, and this installation ships no default model (default_model/)")
    if model != args.model:
        print(f"model: {model} ({f'shipped as {args.model}' if args.model else 'the default'}; --model picks another)")
    update, close = _progress_bar("indexing", args.quiet)
    try:
        report = build_index(args.archive, model, args.out, opts, progress=update, restart=args.restart,
                             notice=lambda message: print(f"\nrsir index: {message}", file=sys.stderr))
    finally:
        close()
    for note in report.notes:
        print(note)
    resumed = (f"; {report.resumed_windows} of its tiles were read before an interruption, "
               f"{report.windows_this_run} in this run" if report.resumed_windows else "")
    print(f"indexed {report.tiles_added} tiles from {report.sources_added} source(s), skipped {report.skipped} "
          f"nodata/empty, in {report.seconds:.1f} s ({report.tiles_per_s:.0f} tiles/s){resumed}")
    if report.sources_already:
        print(f"{report.sources_already} source(s) were already in the index")
    print(f"index {report.index_dir}: {report.total_tiles} tiles")
    return 0


def _query(args: argparse.Namespace, index, bands):
    """The query the search options describe (tile, image, box or polygon)."""
    from .encoder import Encoder
    from .queries import query_from_box, query_from_image, query_from_tile

    if args.tile is not None:
        return query_from_tile(index, args.tile)
    model = args.model or index.model_file
    if not os.path.exists(model):
        from .default_model import missing_model_message

        raise RsirError(missing_model_message(model, index.model.sha256, "pass it with --model"))
    said = []
    if not args.model:  # a cross-modal index: the encoder of the query's modality
        from .modality import choose_for_path, modality_models

        encoders = modality_models(index.model_info)
        choice = choose_for_path(index, encoders, args.image or args.raster, args.modality,
                                 how_to_choose="pass --modality")
        if choice.modality != index.model_info.modality:  # else `model` is the index's own file already
            model = encoders[choice.modality].path
        said = [choice.warning] if choice.warning else []
        if len(encoders) > 1:
            print(f"query read with the {choice.modality} encoder ({choice.reason})")
    encoder = Encoder(model, device=args.device, threads=args.threads)
    if args.image:
        query = query_from_image(index, encoder, args.image, bands, args.scale, args.add_offset,
                                 whole=args.whole_box)
    elif args.polygon:
        from .archive.vectors import read_polygon

        wkt, envelope, crs = read_polygon(args.polygon, args.fid)
        query = query_from_box(index, encoder, args.raster, envelope, crs, bands, args.scale, args.add_offset,
                               whole=args.whole_box, within=wkt)
    else:
        query = query_from_box(index, encoder, args.raster, args.bbox, args.crs, bands, args.scale,
                               args.add_offset, whole=args.whole_box)
    query.warnings[:0] = said
    return query


def _feedback(args: argparse.Namespace, index, bands, query):
    """(the query refined by the session's and this command's marks, the session - the one in --session, else a
    new one of this query - with this command's marks as its latest round)."""
    from . import feedback
    from .feedback_session import Example, Session

    session = None
    if args.session and os.path.exists(args.session):
        session = Session.load(args.session)
        session.check_index(index.dir, args.session)
    examples = []
    images = [(p, True) for p in args.positive_image or []] + [(p, False) for p in args.negative_image or []]
    if images:
        from .encoder import Encoder
        from .queries import query_from_image

        encoder = Encoder(args.model or index.model_file, device=args.device, threads=args.threads)
        for path, relevant in images:
            q = query_from_image(index, encoder, path, bands, args.scale, args.add_offset)
            examples.append(Example(os.path.abspath(path), relevant, q.embedding, q.code))
    if query is None:
        if session is None:
            raise RsirError("give a query (--tile, --image, --bbox or --polygon), or --session FILE of an earlier "
                            "search to continue it")
        query = session.query
    both = set(args.positive or []) & set(args.negative or [])
    if both:
        raise RsirError(f"tile(s) {sorted(both)} marked both --positive and --negative")
    session = session or Session(index.dir, query)
    if args.positive or args.negative or examples:
        session.add_round(args.feedback, args.positive or [], args.negative or [], examples, hits=[])
    marks = session.marks(index)  # every round's, a tile marked again taking its latest mark
    refined = feedback.refine(index, query, marks, args.feedback) if any(marks.counts) else query
    return refined, session


def cmd_search(args: argparse.Namespace) -> int:
    from .archive.sources import parse_band_list
    from .expansion import expand_query
    from .index.reader import Index
    from .search import ranking_name, search

    # argument errors first: before the index is opened and the model loaded
    if args.rerank and not args.hash:
        raise RsirError("--rerank re-ranks hash search candidates: add --hash")
    if (args.bbox or args.polygon) and not args.raster:
        raise RsirError(f"{'--bbox' if args.bbox else '--polygon'} needs --raster: the raster (or band-stack spec) "
                        "to read it from")
    if args.labels_out and not (args.session and args.label):
        raise RsirError("--labels-out writes a session's marks as labels: give --session FILE and --label NAME")
    asked = args.tile is not None or args.image or args.bbox or args.polygon
    if asked and args.session and os.path.exists(args.session):
        raise RsirError(f"{args.session}: continues the query it holds; leave out --tile/--image/--bbox/--polygon, "
                        "or give a new session file")
    marking = args.positive or args.negative or args.positive_image or args.negative_image
    if not asked and not args.session:
        raise RsirError("give a query: --tile, --image, --bbox or --polygon (or --session FILE of an earlier search)")
    index = Index(args.index)
    bands = parse_band_list(args.bands)
    query = _query(args, index, bands) if asked else None
    session = None
    if marking or args.session:
        query, session = _feedback(args, index, bands, query)
    mode = "hash" if args.hash else "float"
    query = expand_query(index, query, args.expand, mode, args.nprobe)
    hits = search(index, query, k=args.k, mode=mode, radius=args.radius, nprobe=args.nprobe, rerank=args.rerank)
    for warning in query.warnings:
        print(f"rsir search: warning: {warning}", file=sys.stderr)
    print(f"query: {query.description}  ({ranking_name(mode, args.rerank)} search, {index.n} tiles)")
    print(f"{'rank':>4} {'tile':>7} {'score':>7} {'hamming':>7}  {'label':<20} {'x':>6} {'y':>6}  source")
    for h in hits:
        print(f"{h.rank:>4} {h.tile_id:>7} {h.score:7.4f} {h.hamming:>7}  {h.label[:20]:<20} {h.x:>6} {h.y:>6}  "
              f"{os.path.basename(h.source)}")
    if not hits:
        print("no hits")
    if args.out:
        from .hits_io import write_hits_gpkg

        write_hits_gpkg(args.out, query, hits)
        print(f"wrote {args.out} (layers: query, hits)")
    if args.png:
        _write_png(args.png, index, query, hits)
        print(f"wrote {args.png}")
    if args.session:
        ids = [h.tile_id for h in hits]
        session.hits = session.hits or ids  # a new session's: its first command's hits
        if marking:
            session.rounds[-1].hits = ids
        session.save(args.session)
        print(f"session {args.session}: {len(session.rounds)} round(s) of marks; continue with --session "
              f"{args.session} --positive ID,... --negative ID,...")
        if args.labels_out:
            from .mark_labels import write_labels

            pos, neg, _ = session.marked()
            n = write_labels(args.labels_out, index, {**{t: False for t in neg}, **{t: True for t in pos}},
                             args.label)
            print(f"wrote {args.labels_out}: {n} labelled tiles (\"{args.label}\" and \"other\"); train with "
                  f"data.kind = \"index\", data.root = \"{index.dir}\", data.labels = \"{args.labels_out}\"")
    return 0


def _write_png(path: str, index, query, hits) -> None:
    from .archive.tiling import TileWindow
    from .mosaic import read_tile_pixels, write_mosaic

    size = 64
    pixels = []
    for h in hits[:23]:
        entry = index.sources[h.source_id]
        pixels.append(read_tile_pixels(h.source, entry.kind, list(entry.bands), TileWindow(h.x, h.y, h.w, h.h), size))
    qpix = None
    if query.pixels is not None:
        qpix = query.pixels
    elif query.tile_id is not None:
        t = index.tile(query.tile_id)
        entry = index.sources[t.source_id]
        qpix = read_tile_pixels(t.source, entry.kind, list(entry.bands), TileWindow(t.x, t.y, t.w, t.h), size)
    if qpix is not None and qpix.shape[-1] != size:
        from .archive.pixels import resample_array

        qpix = resample_array(qpix, size)
    write_mosaic(path, qpix, pixels)


def cmd_info(args: argparse.Namespace) -> int:
    from .encoder import describe_method
    from .index.reader import Index

    index = Index(args.index)
    m = index.manifest
    meta = m.model.metadata
    t = m.tiling
    crs = sorted({s.crs or "(none)" for s in m.sources})
    print(f"index      {index.dir}")
    print(f"tiles      {m.tiles} indexed, {m.skipped} skipped as nodata/empty, from {len(m.sources)} source(s)")
    print(f"model      {m.model.path} (sha256 {m.model.sha256[:12]}, {describe_method(meta)}, "
          f"input {meta.get('rsir.input_size')} px, bands {meta.get('rsir.bands')})")
    print(f"vectors    {m.embedding_dim}-d float ({m.float_factory}), {m.describe_codes()} ({m.binary_factory})")
    ground = index.tile_ground_size()
    options = ((f", gsd {t.gsd}" if t.gsd else "") + (f", bands {list(t.bands)}" if t.bands else "")
               + (f", scale {t.scale}" if t.scale else "")
               + (f", add_offset {t.add_offset:g}" if t.add_offset else ""))
    if all(s.kind == "patch" for s in m.sources):  # --tile and --stride do not apply to patches
        print("tiling     each patch is one tile, read whole" + options)
    else:
        patches = sum(s.kind == "patch" for s in m.sources)
        print(f"tiling     tile {t.tile} px" + (f" ({ground})" if ground else "") + f", stride {t.stride} px"
              + options + (f"; {patches} patch(es), each one tile read whole" if patches else ""))
    print(f"encoded at {index.describe_input_sizes()}")
    print(f"crs        {', '.join(crs)}")
    print(f"values     {index.describe_values()}")
    print(f"stored     {os.path.relpath(index.data_dir, index.dir)} (generation {m.generation}, format {m.format})")
    print(f"updated    {m.updated} (created {m.created})")
    return 0


# options whose value is a list of coordinates: west of Greenwich or south of the equator it starts with a minus,
# which argparse would take for an option ("--bbox: expected one argument")
COORDINATE_OPTIONS = ("--bbox",)


def join_coordinate_values(argv: list[str]) -> list[str]:
    """`--bbox -78.36,34.88,...` -> `--bbox=-78.36,34.88,...`, so negative coordinates parse as written."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in COORDINATE_OPTIONS and i + 1 < len(argv) and re.match(r"-\.?\d", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_coordinate_values(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .archive.gdal_open import gdal_messages_once

    try:
        with gdal_messages_once():
            code = args.func(args) or 0
        sys.stdout.flush()  # here, so a reader that left early (| head) is met below, not at interpreter exit
        return code
    except Cancelled as exc:
        print(f"rsir {args.command}: {exc}", file=sys.stderr)
        return 130
    except RsirError as exc:
        print(f"rsir {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nrsir {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rsir search ... | head`: the reader has what it wanted; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a write refused (read-only, disk full, no such folder): say which file and why
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"rsir {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
