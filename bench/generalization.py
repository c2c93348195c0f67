"""Generalization benchmark: models on data they were not tuned on, next to untrained ImageNet features.

    .venv/bin/python bench/generalization.py default_model/*.onnx [MORE.onnx ...]

Tasks (test -> train, mAP@100, float cosine and Hamming, ties by cosine as core.search orders them):
- EuroSAT (Sentinel-2, 10 classes; queries and database subsampled, stratified, see the note under the table);
- AID, all 30 classes (aerial);
- AID seen 15: the classes multi-dataset training may use;
- AID unseen 15: `configs/generalization/aid_unseen_classes.txt`, which no default may train on (a model that did
  gets a dagger on that column).
Models' codes: fitted on each task's database as `rsir index` fits them on an archive (--codes model: the model's
own); --rerank R adds hash search with its R nearest re-ranked by cosine.
Baselines in the same run: untrained ImageNet EfficientNet-Lite0 and Lite2 at 96 and 224 px, float cosine of the
1280-d pooled features and 128-bit PCA-ITQ codes fitted on each task's database. Each model runs at its own input
size, or a resolution-aware model at each dataset's image size clamped to its range (as `rsir index` reads a patch
folder). Embeddings are cached in --cache (per model file, size and image list): a rerun only encodes what changed;
`--fresh` recomputes everything.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training.config import read_class_list  # noqa: E402
from training.generalization import (  # noqa: E402
    Contender,
    Suite,
    SuiteDataset,
    SuiteTask,
    suite_table,
    task_sizes_note,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNSEEN_FILE = os.path.join(ROOT, "configs", "generalization", "aid_unseen_classes.txt")
BASELINES = (("efficientnet_lite0", 96), ("efficientnet_lite0", 224), ("efficientnet_lite2", 96),
             ("efficientnet_lite2", 224))
# the same network read as a resolution-aware model is: each dataset at its own size within 96-256 px (EuroSAT 96,
# AID 150) - the baseline of the same size for models that read that way
RESOLUTION_AWARE = ("efficientnet_lite2", (96, 256))


def model_contender(arg: str, codes: str = "archive", code_bits: int | None = None) -> Contender:
    """MODEL.onnx, or MODEL.onnx@SIZE (every dataset read at SIZE px); `codes`, `code_bits`: Contender.hash and
    .code_bits."""
    path, _, size = arg.rpartition("@") if arg.rpartition("@")[2].isdigit() else (arg, "", "")
    label = os.path.splitext(os.path.basename(path))[0] + (f", {code_bits}-bit codes" if code_bits else "")
    if size:
        return Contender(f"{label} @ {size} px", path, size=int(size), hash=codes, code_bits=code_bits)
    return Contender(label, path, hash=codes, code_bits=code_bits)


def baseline_model(cache: str, backbone: str, size: int, size_range: tuple[int, int] | None = None) -> str:
    """The untrained ImageNet model at one input size (or resolution-aware over `size_range`), exported once into
    the cache."""
    from training.pretrained import export_imagenet_lsh

    sizes = f"{size_range[0]}-{size_range[1]}" if size_range else str(size)
    path = os.path.join(cache, "baselines", f"{backbone}_imagenet_{sizes}px.onnx")
    if not os.path.exists(path):
        export_imagenet_lsh(path, bits=64, input_size=size, backbone=backbone, input_size_range=size_range)
    return path


def suite_tasks(aid_classes: list[str], unseen: tuple[str, ...], eurosat_queries: int,
                eurosat_database: int) -> list[SuiteTask]:
    seen = tuple(c for c in aid_classes if c not in unseen)
    return [SuiteTask("EuroSAT", "eurosat_rgb", max_queries=eurosat_queries, max_database=eurosat_database),
            SuiteTask("AID all 30", "aid"),
            SuiteTask("AID seen 15", "aid", classes=seen),
            SuiteTask("AID unseen 15", "aid", classes=unseen, unseen=True)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="ONNX models to score; MODEL.onnx@224 reads every dataset at 224 px "
                    "instead of the model's own size rule")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"),
                    help="folder holding eurosat_rgb/ and aid/ (default: ../shared/data)")
    ap.add_argument("--cache", default=os.path.join(ROOT, "cache", "generalization"))
    ap.add_argument("--eurosat-queries", type=int, default=1000, help="EuroSAT test images searched (0 = all 5400)")
    ap.add_argument("--eurosat-database", type=int, default=5000,
                    help="EuroSAT train images searched in (0 = all 18900)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fresh", action="store_true", help="ignore cached embeddings")
    ap.add_argument("--codes", choices=("archive", "model"), default="archive",
                    help="the models' hash codes: fitted on each task's database as `rsir index` fits them on an "
                         "archive (default), or the model's own (`rsir index --model-codes`)")
    ap.add_argument("--code-bits", type=int, default=None, metavar="B",
                    help="bits of the codes fitted on the archive (`rsir index --code-bits`; default: the model's)")
    ap.add_argument("--rerank", type=int, default=0, metavar="R",
                    help="also score hash search with its R nearest re-ranked by cosine (`rsir search --hash "
                         "--rerank R`)")
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    cache = os.path.abspath(args.cache)
    if args.fresh:
        for name in os.listdir(cache) if os.path.isdir(cache) else []:
            if name.startswith("emb-"):
                os.remove(os.path.join(cache, name))
    datasets = [SuiteDataset("eurosat_rgb", os.path.join(args.data, "eurosat_rgb")),
                SuiteDataset("aid", os.path.join(args.data, "aid"))]
    aid_classes = sorted(d for d in os.listdir(datasets[1].root) if os.path.isdir(os.path.join(datasets[1].root, d)))
    tasks = suite_tasks(aid_classes, tuple(read_class_list(UNSEEN_FILE)), args.eurosat_queries, args.eurosat_database)
    if args.code_bits and args.codes != "archive":
        ap.error("--code-bits sets the bits of codes fitted on the archive (--codes archive)")
    contenders = [model_contender(m, args.codes, args.code_bits) for m in args.models]
    if not args.no_baselines:
        contenders += [Contender(f"untrained ImageNet {b.split('_')[1].capitalize()}, {s} px",
                                 baseline_model(cache, b, s), hash="itq") for b, s in BASELINES]
        b, size_range = RESOLUTION_AWARE
        contenders.append(Contender(f"untrained ImageNet {b.split('_')[1].capitalize()}, each dataset at its size",
                                    baseline_model(cache, b, size_range[0], size_range), hash="itq"))
    suite = Suite(datasets, tasks, cache, threads=args.threads, rerank=args.rerank)
    rows = suite.run(contenders)
    table = suite_table(rows, tasks)
    note = task_sizes_note(rows, tasks)
    minutes = (time.perf_counter() - t0) / 60
    codes = ("codes fitted on the task's database as `rsir index` fits them on an archive" if args.codes == "archive"
             else "the model's own codes")
    rerank = f"; re-ranked = its {args.rerank} nearest ranked again by cosine" if args.rerank else ""
    text = (f"{table}\n\nmAP@100, test -> train; float = cosine, hash = Hamming distance (ties by cosine) of "
            f"{codes} (untrained: PCA-ITQ 128 bits fitted on the task's database){rerank}; † = trained on these "
            f"classes.\n{note}\n"
            f"({minutes:.1f} min with cached embeddings where present)\n")
    print()
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
