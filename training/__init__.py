"""PyTorch side of rsir: model definitions, training and ONNX export. Never imported by core/ or the plugin."""
