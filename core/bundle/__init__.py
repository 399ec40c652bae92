"""The deployable bundle of a trained run: one ONNX graph with its preprocessing, labels, card and parity check."""
