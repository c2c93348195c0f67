"""Backbones and heads written here (torchvision/timm do not import beside the pinned torch)."""
