"""The one ONNX exporter of Flower Probe: a PyTorch module to a checked ``.onnx`` file, and its onnxruntime session.

Both users of ONNX go through ``export_module``: the CPU feature engine (``core.onnx.backbone``: a backbone with all
its feature variants as outputs, cached in the workspace) and the deployable bundle (``core.bundle``: backbone and
head as one graph). Modelled on timm's ``timm/utils/onnx.py`` (``onnx_export`` + ``check_forward``):

- ``torch.onnx.export`` with the dynamo exporter (``torch.export`` based) first; when that fails the TorchScript
  exporter is tried (the feature engine asks for the reverse order: ``EXPORT_ORDERS``); which one made a file is
  returned and recorded next to it. Both get a dynamic batch
  dimension and are traced with a batch of at least 2 (``torch.export`` specialises a batch of 1 into the graph).
- the weights stay inside the one file (``external_data=False``: every graph here is far below protobuf's 2 GB);
- ``onnx.checker.check_model(full_check=True)`` on the written file;
- ``compare_outputs``: onnxruntime's outputs against PyTorch's, max absolute difference and least cosine
  similarity per output, against the tolerance the features must meet (1e-4 absolute, cosine >= 0.99999).

A module that does not export raises ``OnnxUnavailableError`` whose one-line message names the operator when the
exporter's error does (``aten::...``), so the caller falls back to PyTorch with that line.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.base.errors import FlowerProbeError
from core.base.fileio import atomic_write

# Opset 18: the first with antialiased Resize and the default of torch 2.14's dynamo exporter.
OPSET = 18
# The oldest onnxruntime known to run opset-18 graphs (onnxruntime's compatibility table: 1.14 added opset 18);
# 1.16 is the oldest this project ran them with.
MIN_ONNXRUNTIME = (1, 16)
# What "the same features" means across runtimes (issue 22): every output within this absolute difference ...
MAX_ABS_DIFFERENCE = 1e-4
# ... and every row's cosine similarity at least this.
MIN_COSINE = 0.99999
# What each ``exporter`` choice tries, in order. "auto": dynamo (torch's current exporter), TorchScript where it fails.
# "torchscript-first": the reverse, for graphs made on the fly (the feature engine's): measured on the 2-core EPYC,
# export and check took 0.3 / 1.1 / 1.5 s against dynamo's 3.8 / 4.4 / 5.6 s for EfficientNet-Lite0 / ResNet-50 /
# ViT-S/14, and onnxruntime ran both graphs at the same speed (Lite0, batch 32, interleaved: 212 vs 201 images/s).
EXPORT_ORDERS = {
    "auto": ("dynamo", "torchscript"),
    "torchscript-first": ("torchscript", "dynamo"),
    "dynamo": ("dynamo",),
    "torchscript": ("torchscript",),
}
EXPORTERS = tuple(EXPORT_ORDERS)
# protobuf's 2 GB message limit, less headroom for the graph itself (timm's onnx_export keeps the same margin): a
# larger model (DINOv2 ViT-g/14, 4.5 GB) would need external data files, which this exporter does not write.
_SINGLE_FILE_LIMIT = 2**31 - 2**27
_OPERATOR = re.compile(r"aten(?:::|\.)([A-Za-z0-9_]+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class OnnxUnavailableError(FlowerProbeError):
    """An ONNX graph cannot be made or trusted here; the message is the one line a fallback prints."""


def onnxruntime_problem() -> str | None:
    """Why onnxruntime cannot run Flower Probe's graphs here (not installed, too old), or None when it can."""
    try:
        import onnxruntime
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc}); pip install -r requirements.txt"
    found = tuple(int(part) for part in re.findall(r"\d+", onnxruntime.__version__)[:2])
    if found < MIN_ONNXRUNTIME:
        wanted = ".".join(map(str, MIN_ONNXRUNTIME))
        return f"onnxruntime {onnxruntime.__version__} is too old (opset {OPSET} graphs need >= {wanted})"
    return None


def _operator_of(exc: BaseException) -> str | None:
    """The first ``aten`` operator an exporter's error (or its causes) names, e.g. ``linalg_eig``."""
    seen: BaseException | None = exc
    while seen is not None:
        if found := _OPERATOR.search(str(seen)):
            return found.group(1)
        seen = seen.__cause__ or seen.__context__
    return None


def _first_line(exc: BaseException) -> str:
    """The line of an exporter's (long, multi-line) error worth one line: the one naming an operator, else the first."""
    seen: BaseException | None = exc
    while seen is not None:
        lines = [_ANSI.sub("", line).strip() for line in str(seen).splitlines() if line.strip()]
        if named := [line for line in lines if _OPERATOR.search(line)]:
            return named[0][:200]
        seen = seen.__cause__ or seen.__context__
    lines = [_ANSI.sub("", line).strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _export_once(
    module: nn.Module, example: torch.Tensor, path: Path, *, exporter: str, input_name: str, output_names: list[str]
) -> None:
    # The exporters' progress lines, deprecation and tracer chatter are not the user's business.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        # The exporters differ in how the batch dimension is declared, and dynamo has switches of its own.
        if exporter == "dynamo":
            options = {
                "dynamo": True,
                "dynamic_shapes": ({0: "batch"},),
                "external_data": False,
                "optimize": True,
                "verbose": False,
                "report": False,
            }
        else:
            options = {"dynamo": False, "dynamic_axes": {name: {0: "batch"} for name in [input_name, *output_names]}}
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=output_names,
            opset_version=OPSET,
            **options,
        )


def export_module(
    module: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    input_name: str,
    output_names: Sequence[str],
    exporter: str = "auto",
) -> str:
    """Export ``module`` (eval mode, fp32) to ONNX at ``path``, atomically, and check the file.

    Parameters
    ----------
    module : nn.Module
        Maps one tensor of shape (N, ...) to a tensor or a tuple of tensors of shape (N, ...), one per output name.
    example : Tensor of shape (N, ...), N >= 2
        A traced input; its shape fixes every dimension but the batch.
    path : where the ``.onnx`` file goes; nothing is there unless the export and the check succeeded
    input_name, output_names : the graph's input and output names
    exporter : one of ``EXPORT_ORDERS``: ``"auto"`` (dynamo, then TorchScript when dynamo fails),
        ``"torchscript-first"``, ``"dynamo"`` or ``"torchscript"``

    Returns
    -------
    str
        ``"dynamo"`` or ``"torchscript"``: the exporter that made the file.

    Raises
    ------
    OnnxUnavailableError
        Neither exporter could export the module; the message names the operator when the exporter said it.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise FlowerProbeError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}.")
    if example.ndim < 1 or example.shape[0] < 2:
        raise FlowerProbeError(
            f"example must hold a batch of at least 2 (torch.export fixes a batch of 1), got shape "
            f"{tuple(example.shape)}."
        )
    module = module.eval()
    weight_bytes = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    if weight_bytes >= _SINGLE_FILE_LIMIT:
        raise OnnxUnavailableError(
            f"{type(module).__name__} does not fit one ONNX file: its {weight_bytes / 1e9:.1f} GB of fp32 weights "
            f"exceed protobuf's 2 GB limit (Flower Probe keeps each graph in one checked file)."
        )
    tries = EXPORT_ORDERS[exporter]
    failures: list[tuple[str, BaseException]] = []
    for name in tries:
        try:
            with atomic_write(path) as tmp:
                _export_once(
                    module, example, tmp, exporter=name, input_name=input_name, output_names=list(output_names)
                )
                onnx.checker.check_model(str(tmp), full_check=True)
            return name
        except FlowerProbeError:
            raise  # the workspace could not be written: no exporter will do better
        except Exception as exc:  # any exporter failure: the next exporter, or the one-line reason below
            failures.append((name, exc))
    operators = [op for _, exc in failures if (op := _operator_of(exc))]
    what = f"operator {operators[0]}" if operators else "an operation"
    details = "; ".join(f"{name}: {_first_line(exc)}" for name, exc in failures)
    raise OnnxUnavailableError(
        f"{type(module).__name__} does not export to ONNX: {what} has no ONNX equivalent in opset {OPSET} "
        f"({details}); it would export with that operation replaced by ONNX-exportable ones."
    ) from failures[-1][1]


def session(path: str | Path, *, threads: int | None = None):
    """An onnxruntime CPU session on ``path``; ``threads`` None uses PyTorch's intra-op thread count.

    Raises
    ------
    OnnxUnavailableError
        onnxruntime is missing or too old, or the file is not a graph it can load.
    """
    if problem := onnxruntime_problem():
        raise OnnxUnavailableError(problem)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # The same cores as PyTorch would use, so the micro-benchmark compares like with like.
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise OnnxUnavailableError(f"onnxruntime cannot load {Path(path).name}: {_first_line(exc)}") from exc


def compare_outputs(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per output: ``max_abs`` difference and ``min_cosine`` similarity over rows, of arrays of shape (N, D).

    ``ok`` (1.0 or 0.0) says whether both meet ``MAX_ABS_DIFFERENCE`` and ``MIN_COSINE``.
    """
    figures = {}
    for name, reference in expected.items():
        a = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
        b = np.asarray(got[name], dtype=np.float64).reshape(len(reference), -1)
        if a.shape != b.shape:
            figures[name] = {"max_abs": float("inf"), "min_cosine": -1.0, "ok": 0.0}
            continue
        max_abs = float(np.abs(a - b).max(initial=0.0))
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        # Two zero rows are the same feature; a zero row against a non-zero one is not.
        cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
        min_cosine = float(cosine.min(initial=1.0))
        ok = max_abs <= MAX_ABS_DIFFERENCE and min_cosine >= MIN_COSINE
        figures[name] = {"max_abs": max_abs, "min_cosine": min_cosine, "ok": float(ok)}
    return figures


def check_failures(figures: dict[str, dict[str, float]]) -> list[str]:
    """The outputs of ``compare_outputs`` figures that missed the tolerance, described in words."""
    return [
        f"{name}: max abs difference {f['max_abs']:.2e} (allowed {MAX_ABS_DIFFERENCE:g}), "
        f"least cosine {f['min_cosine']:.7f} (needed {MIN_COSINE})"
        for name, f in figures.items()
        if not f["ok"]
    ]
