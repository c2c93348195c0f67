"""`rsir export` (and later `rsir train`): registered with core's CLI through the `rsir.commands` entry points."""
from __future__ import annotations

import argparse


def export_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsir export` on core's argument parser."""
    p = subparsers.add_parser(
        "export", help="export a retrieval model to ONNX with rsir metadata",
        description="Export a model to ONNX with the metadata core/ needs. Until training lands, the only source "
                    "is --pretrained: ImageNet EfficientNet-Lite0 features with a fixed LSH hash head.")
    p.add_argument("--pretrained", choices=["efficientnet_lite0"], default="efficientnet_lite0",
                   help="ImageNet backbone to export (default: %(default)s)")
    p.add_argument("--bits", type=int, default=64, help="hash code length in bits (default: %(default)s)")
    p.add_argument("--input-size", type=int, default=64, help="square input side in pixels (default: %(default)s)")
    p.add_argument("--scale", type=float, default=255.0,
                   help="raw pixel values are divided by this before normalisation (default: %(default)s)")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .pretrained import export_imagenet_lsh

    if args.bits <= 0 or args.bits % 8:
        raise SystemExit(f"rsir export: --bits must be a positive multiple of 8, got {args.bits}")
    meta = export_imagenet_lsh(args.out, bits=args.bits, input_size=args.input_size, scale=args.scale)
    print(f"wrote {args.out}: {meta['rsir.method']}, embedding {meta['rsir.embedding_dim']}-d, "
          f"{meta['rsir.code_bits']}-bit codes, input {meta['rsir.input_size']} px")
    return 0
