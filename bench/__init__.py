"""Flower Probe's benchmark: ``python -m bench`` measures the engine against the reference way and the hardware.

One run measures, on the current device: the matmul roofline, feature extraction per backbone, the
reference 5-epoch protocol against this engine's extract-once-and-cache path, head training, t-SNE and
page render times; it writes a JSON report (``bench/results/``) and prints each target, the figure
measured and whether it is met. Modules: ``common`` (timing, targets, the table), one module per section.
"""
