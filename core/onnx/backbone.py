"""A backbone as an ONNX graph for the CPU feature engine: every feature variant an output, cached in the workspace.

``backbone_graph`` exports backbone ``name`` with its weights at its input size once, to
``<workspace>/onnx/<name>-<key>.onnx``, keyed by the weights' digest (``WeightsSource.tag``), the input size and
the variants; a record beside it (``.json``) holds the file's own SHA-256, the exporter that made it and the
check figures. On reuse the file is hashed and compared with the record: a damaged or half-copied file is
rebuilt, never trusted (``BackboneGraph.rebuilt`` says why). Export, check and record are written atomically
under a lock, so two processes asking at once export once and a kill leaves no half-written graph.

The graph's input ``images`` is what the PyTorch path's model gets: float32 (N, 3, S, S), normalised
(``core.backbones.registry.make_transform``); its outputs are the variants of ``core.backbones.variants``
in ``model_variants`` order, float32 (N, dim) each. ViTs are built at their input size, so the position table
is a constant of that size in the graph (no interpolation is exported). Before a graph is kept, onnxruntime's
outputs on seeded inputs must equal PyTorch fp32's within ``core.onnx.export``'s tolerance, so features from
either runtime may share one feature cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.backbones.resolved import ResolvedBackbone, resolve_backbone
from core.backbones.variants import variant_forward
from core.base.errors import FlowerProbeError
from core.base.fileio import atomic_write_bytes, disk_errors, file_digest
from core.base.progress import ProgressCallback, report
from core.base.workspace import Workspace
from core.onnx.export import (
    OPSET,
    OnnxUnavailableError,
    check_failures,
    compare_outputs,
    export_module,
    onnxruntime_problem,
    session,
)

# Bump when the graph's inputs, outputs or export recipe change: older files then miss and are exported again.
GRAPH_FORMAT_VERSION = 1
INPUT_NAME = "images"
ONNX_DIR = "onnx"  # inside the workspace
# Seeded inputs of the check: a batch size unlike the traced one (2), so a batch baked into the graph shows.
_CHECK_BATCH = 3
_CHECK_SEED = 0


class VariantGraph(nn.Module):
    """``images`` (N, 3, S, S) -> one float32 (N, dim) tensor per variant, as ``variant_forward`` computes them.

    The variants come from the same forward hooks the PyTorch path uses; the exporters trace through them.
    """

    def __init__(self, model: nn.Module, variants: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.variants = variants
        self._forward = None

    @contextmanager
    def hooked(self) -> Iterator[VariantGraph]:
        with variant_forward(self.model, self.variants) as forward:
            self._forward = forward
            try:
                yield self
            finally:
                self._forward = None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self._forward(images)
        return tuple(out[name].float() for name in self.variants)


@dataclass(frozen=True)
class BackboneGraph:
    """A checked ONNX graph of a backbone in the workspace.

    check : {variant: {"max_abs", "min_cosine", "ok"}}, onnxruntime vs PyTorch fp32 on the seeded check batch
    rebuilt : why a file that was there was not reused (damaged), or None
    """

    path: Path
    backbone: str
    weights_tag: str
    input_size: int
    variants: tuple[str, ...]
    exporter: str
    check: dict
    export_s: float
    rebuilt: str | None = None

    def session(self, *, threads: int | None = None):
        return session(self.path, threads=threads)


def graph_key(backbone: str, *, weights_tag: str, input_size: int, variants: tuple[str, ...]) -> str:
    payload = {
        "format": GRAPH_FORMAT_VERSION,
        "backbone": backbone,
        "weights": weights_tag,
        "input_size": input_size,
        "variants": list(variants),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def graph_paths(workspace: Workspace, backbone: str, key: str) -> tuple[Path, Path]:
    """(``.onnx`` file, its ``.json`` record) of a graph key in the workspace."""
    stem = f"{backbone.replace(':', '-').replace('/', '_')}-{key}"
    folder = workspace.root / ONNX_DIR
    return folder / f"{stem}.onnx", folder / f"{stem}.json"


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with disk_errors(lock_path):
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a")  # noqa: SIM115 - the handle outlives this block; `with handle` closes it
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_record(record_path: Path) -> dict | None:
    try:
        return json.loads(record_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _trusted(onnx_path: Path, record: dict | None) -> tuple[bool, str | None]:
    """(the file may be used, why it may not when it exists)."""
    if not onnx_path.is_file():
        return False, None
    if record is None:
        return False, f"cached ONNX file {onnx_path.name} has no record (an interrupted export); rebuilt"
    digest = file_digest(onnx_path)
    if digest != record.get("sha256"):
        return False, (
            f"cached ONNX file {onnx_path.name} does not match its recorded SHA-256 (damaged or changed: "
            f"{digest[:12]} vs {str(record.get('sha256'))[:12]}); rebuilt"
        )
    return True, None


def check_graph(graph_module: VariantGraph, onnx_path: Path, *, input_size: int) -> dict:
    """onnxruntime vs PyTorch fp32 on a seeded batch of ``_CHECK_BATCH`` normal inputs (normalised-image scale)."""
    generator = torch.Generator().manual_seed(_CHECK_SEED)
    images = torch.randn(_CHECK_BATCH, 3, input_size, input_size, generator=generator)
    with torch.inference_mode():
        expected = {name: t.numpy() for name, t in zip(graph_module.variants, graph_module(images), strict=True)}
    outputs = session(onnx_path).run(list(graph_module.variants), {INPUT_NAME: images.numpy()})
    return compare_outputs(expected, dict(zip(graph_module.variants, outputs, strict=True)))


def backbone_graph(
    backbone: ResolvedBackbone | str,
    *,
    workspace: Workspace,
    model: Callable[[], nn.Module] | None = None,
    exporter: str = "auto",
    progress: ProgressCallback | None = None,
) -> BackboneGraph:
    """The checked ONNX graph of ``backbone`` (a record or a ``NAME[@weights]`` spec), from the workspace or
    exported now.

    Parameters
    ----------
    backbone : ResolvedBackbone or str
        ``core.backbones.resolved.resolve_backbone``'s record (located or not) or a spec.
    model : callable, optional
        Returns the backbone's model (``backbone.build``'s) when an export needs it, if the caller has one (saves
        building it twice); called only when no trusted file is there; the model is not changed.
    exporter : see ``core.onnx.export.export_module``

    Raises
    ------
    OnnxUnavailableError
        onnxruntime is missing or too old, the graph does not export (the operator named), or onnxruntime's
        features differ from PyTorch's beyond the tolerance (the figures named). The caller falls back to PyTorch.
    """
    if problem := onnxruntime_problem():
        raise OnnxUnavailableError(problem)
    backbone = resolve_backbone(backbone).located(workspace=workspace, progress=progress)
    name, config, variants = backbone.name, backbone.config, backbone.variants
    key = graph_key(name, weights_tag=backbone.weights_tag, input_size=config.input_size, variants=variants)
    onnx_path, record_path = graph_paths(workspace, name, key)
    with _exclusive(onnx_path.with_suffix(".lock")):
        record = _read_record(record_path)
        trusted, rebuilt = _trusted(onnx_path, record)
        if trusted:
            return _graph(onnx_path, record, rebuilt=None)
        report(progress, "onnx", 0, 1, message=f"Exporting {name} to ONNX (once per weights and input size)")
        started = time.perf_counter()
        built = model() if model is not None else backbone.build(workspace=workspace, progress=progress)
        fp32 = _fp32_copy(built)
        graph_module = VariantGraph(fp32, variants).eval()
        example = torch.randn(2, 3, config.input_size, config.input_size, generator=torch.Generator().manual_seed(1))
        record_path.unlink(missing_ok=True)  # a record never describes another file than the one beside it
        with graph_module.hooked():
            used = export_module(
                graph_module,
                example,
                onnx_path,
                input_name=INPUT_NAME,
                output_names=list(variants),
                exporter=exporter,
            )
            check = check_graph(graph_module, onnx_path, input_size=config.input_size)
        if failures := check_failures(check):
            onnx_path.unlink(missing_ok=True)
            raise OnnxUnavailableError(
                f"onnxruntime's {name} features differ from PyTorch's ({'; '.join(failures)}); not used."
            )
        record = {
            "format": GRAPH_FORMAT_VERSION,
            "backbone": name,
            "weights_tag": backbone.weights_tag,
            "input_size": config.input_size,
            "variants": list(variants),
            "exporter": used,
            "opset": OPSET,
            "sha256": file_digest(onnx_path),
            "check": check,
            "export_s": round(time.perf_counter() - started, 3),
            "torch": torch.__version__,
            "created_at": time.time(),
        }
        atomic_write_bytes(record_path, json.dumps(record, indent=1).encode("utf-8"))
        report(progress, "onnx", 1, 1, message=f"Exported {name} to ONNX in {record['export_s']:.1f} s ({used})")
        return _graph(onnx_path, record, rebuilt=rebuilt)


def _graph(path: Path, record: dict, *, rebuilt: str | None) -> BackboneGraph:
    return BackboneGraph(
        path=path,
        backbone=record["backbone"],
        weights_tag=record["weights_tag"],
        input_size=record["input_size"],
        variants=tuple(record["variants"]),
        exporter=record["exporter"],
        check=record["check"],
        export_s=record["export_s"],
        rebuilt=rebuilt,
    )


def _fp32_copy(model: nn.Module) -> nn.Module:
    """``model`` itself when it is already fp32 on the CPU in the default layout, else an fp32 CPU copy."""
    import copy

    parameters = list(model.parameters())
    if all(p.dtype == torch.float32 and p.device.type == "cpu" for p in parameters):
        return model
    return copy.deepcopy(model).float().cpu()


def graph_features(graph_session, images: np.ndarray, variants: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``{variant: float32 (N, dim)}`` of preprocessed ``images`` (N, 3, S, S) from an onnxruntime session."""
    if images.dtype != np.float32:
        raise FlowerProbeError(f"images must be float32, got {images.dtype}.")
    outputs = graph_session.run(list(variants), {INPUT_NAME: np.ascontiguousarray(images)})
    return dict(zip(variants, outputs, strict=True))


def existing_graph(backbone: ResolvedBackbone | str, *, workspace: Workspace) -> BackboneGraph | None:
    """The backbone's trusted graph if the workspace already holds one (digest checked), else None; never exports.

    For callers that must not do long work (a page classifying one photo): they use onnxruntime when an
    extraction made the graph before, and PyTorch otherwise.
    """
    if onnxruntime_problem():
        return None
    backbone = resolve_backbone(backbone).located(workspace=workspace)
    key = graph_key(
        backbone.name, weights_tag=backbone.weights_tag, input_size=backbone.input_size, variants=backbone.variants
    )
    onnx_path, record_path = graph_paths(workspace, backbone.name, key)
    record = _read_record(record_path)
    trusted, _ = _trusted(onnx_path, record)
    return _graph(onnx_path, record, rebuilt=None) if trusted else None
