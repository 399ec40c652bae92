"""ONNX export of backbones (and, in ``core.bundle``, of whole trained runs) and their onnxruntime sessions."""
