"""``python -m core export``: a trained run as one deployable folder, checked against Flower Probe's own predict.

The folder (written to a temporary sibling and renamed into place, so a failure or a full disk leaves nothing):

- ``model.onnx``: the frozen backbone and the run's head as one graph. Input ``images``: uint8 (N, S, S, 3) RGB
  crops (``core.bundle.preprocess``); scaling to [0, 1] and mean/std are inside. Outputs ``probabilities``
  (N, classes), calibrated when the run's head has a temperature, and ``features`` (N, feature_dim), the backbone's
  pooled features. An attentive run's head reads the backbone's final patch tokens instead, kept from the same
  forward by ``core.backbones.tokens.token_hook`` and rounded to fp16 as ``Predictor`` does. Dynamic batch; a
  ViT's position table is baked at S (no interpolation in the graph).
- ``preprocessing.json`` (timm's data-config terms), ``labels.json`` (class names in output order),
  ``head.safetensors`` + ``config.json`` (for PyTorch users), ``README.md`` (the model card).

Parity gate: before the folder appears, onnxruntime on ``model.onnx`` and ``core.predict.classify.Predictor``
(fp32) classify the same real images of the run's dataset at batch sizes 1, 7 and 32; every probability must agree
within 1e-4 and every top-1 must be the same, or the export fails saying what differed.

An ``attentive`` run exports like the others (its head on the patch tokens, see ``model.onnx`` above); k-NN and NCM
runs are refused: their "head" is the run's training features (stored in the graph they would make a
file of n_train x feature_dim floats), which this exporter does not put in a graph; the message gives the size.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from core import __version__
from core.backbones.tokens import token_hook, token_layout
from core.base.errors import FlowerProbeError
from core.base.progress import ProgressCallback, report
from core.base.text import markdown_text
from core.base.workspace import Workspace
from core.bundle.preprocess import crop_pixels, preprocessing_record
from core.data.images import load_image
from core.features.extract import prepare_model
from core.features.runtime import cpu_flags
from core.onnx.export import OnnxUnavailableError, export_module, session
from core.predict.classify import MEMORY_PROTOCOLS, Predictor, tokens_as_cached

PARITY_BATCHES = (1, 7, 32)
PARITY_MAX_ABS = 1e-4  # probabilities, fp32 (issue 23)
INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "features")
FILES = ("model.onnx", "preprocessing.json", "labels.json", "head.safetensors", "config.json", "README.md")


class ParityError(FlowerProbeError):
    """onnxruntime and Flower Probe's predict disagreed on the export's check images; no bundle was written."""


class BundleGraph(nn.Module):
    """uint8 images (N, S, S, 3) -> (probabilities (N, C), features (N, D)): normalisation, backbone, head, softmax.

    With ``reads_tokens`` (an attentive head) the head gets the backbone's patch tokens (N, T, dim) of the same
    forward, rounded as the token cache holds them, and ``features`` stays the pooled output.
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, *, mean, std, temperature: float | None, reads_tokens: bool = False
    ) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.temperature = temperature
        self.reads_tokens = reads_tokens

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The same operations as torchvision's ToTensor (x / 255) then Normalize ((x - mean) / std).
        pixels = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if self.reads_tokens:
            with token_hook(self.backbone) as last:
                features = self.backbone((pixels - self.mean) / self.std).float()
                head_input = tokens_as_cached(last())
        else:
            features = self.backbone((pixels - self.mean) / self.std).float()
            head_input = features
        logits = self.head(head_input)
        if self.temperature is not None:
            logits = logits / self.temperature
        return torch.softmax(logits, dim=1), features


@dataclass
class BundleReport:
    """What ``export_bundle`` wrote and measured."""

    folder: Path
    run_id: int
    exporter: str
    parity: list[dict] = field(default_factory=list)  # per batch size: images, max_abs, top1_agree
    cost: dict = field(default_factory=dict)
    seconds: float = 0.0


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FlowerProbeError(f"out must be a folder; {out} is a file.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FlowerProbeError(
            f"out must be a new or empty folder; {out} holds files. Choose another folder, or pass --force to "
            f"replace it."
        )


def _refuse_memory_protocols(run: dict, predictor: Predictor | None = None) -> None:
    if run.get("protocol") in MEMORY_PROTOCOLS:
        n = len(predictor.reference_features) if predictor is not None else None
        dim = predictor.reference_features.shape[1] if predictor is not None else None
        size = f" ({n} x {dim} float32 = {n * dim * 4 / 1e6:.1f} MB)" if n else ""
        raise FlowerProbeError(
            f"Run {run['id']} is a {run['protocol']} run: its head is its training features{size}, which the exporter "
            f"does not store in a graph. Export a run of the mlp, linear, logreg or attentive protocol on the same "
            f"backbone."
        )


def _check_images(predictor: Predictor, *, count: int) -> list[Path]:
    """``count`` real images of the run's dataset: its test part first, repeated when it holds fewer."""
    split = predictor.dataset.split(predictor.run["split"])
    rows = list(split["test"]) + list(split["val"]) + list(split["train"])
    paths = [predictor.dataset.image_paths[int(r)] for r in rows[:count]]
    return [paths[i % len(paths)] for i in range(count)]


def _pixels(paths: list[Path], preprocessing: dict) -> np.ndarray:
    return np.stack(
        [crop_pixels(load_image(path, draft_size=preprocessing["resize"]), preprocessing) for path in paths]
    )


def parity_check(predictor: Predictor, model_path: Path, preprocessing: dict) -> list[dict]:
    """onnxruntime vs ``predictor.predict`` on real images at each of ``PARITY_BATCHES``; raises ``ParityError``."""
    graph_session = session(model_path)
    figures, problems = [], []
    for batch in PARITY_BATCHES:
        paths = _check_images(predictor, count=batch)
        expected = np.stack(
            [p.probabilities for p in predictor.predict([(path.name, path) for path in paths], neighbours=1)]
        )
        got = graph_session.run(["probabilities"], {INPUT_NAME: _pixels(paths, preprocessing)})[0]
        max_abs = float(np.abs(expected - got).max())
        same = int((expected.argmax(1) == got.argmax(1)).sum())
        figures.append({"batch": batch, "images": batch, "max_abs": max_abs, "top1_agree": same})
        if max_abs > PARITY_MAX_ABS:
            problems.append(f"batch {batch}: probabilities differ by up to {max_abs:.2e} (allowed {PARITY_MAX_ABS:g})")
        if same != batch:
            problems.append(f"batch {batch}: top-1 differs on {batch - same} of {batch} images")
    if problems:
        raise ParityError(
            f"The exported graph does not classify like Flower Probe's predict ({'; '.join(problems)}); no bundle "
            f"was written."
        )
    return figures


def _cost(model_path: Path, preprocessing: dict, paths: list[Path]) -> dict:
    """onnxruntime latency of one image and images/s at batch 32 on this machine (best of 3, decode excluded)."""
    graph_session = session(model_path)
    pixels = _pixels(paths[:32], preprocessing)
    timings = {}
    for batch in (1, 32):
        x = pixels[:batch]
        graph_session.run(None, {INPUT_NAME: x})
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            graph_session.run(None, {INPUT_NAME: x})
            best = min(best, time.perf_counter() - started)
        timings[batch] = best
    return {
        "latency_ms_batch1": round(timings[1] * 1e3, 2),
        "images_per_s_batch32": round(32 / timings[32], 1),
        "threads": torch.get_num_threads(),
        "cpu": f"{os.cpu_count()} cores, flags {' '.join(cpu_flags()) or 'unknown'}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "model_mb": round(model_path.stat().st_size / 1e6, 1),
    }


EXAMPLE = """\
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image, ImageOps

pre, labels = json.load(open("preprocessing.json")), json.load(open("labels.json"))
image = Image.open(sys.argv[1])
image.draft("RGB", (pre["resize"], pre["resize"]))  # JPEG: decode at reduced size, as Flower Probe does
image = ImageOps.exif_transpose(image).convert("RGB")
w, h, s, c = *image.size, pre["resize"], pre["input_size"][1]
size = (s, s) if pre["crop_mode"] == "squash" else (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
image = image.resize(size, getattr(Image.Resampling, pre["interpolation"].upper()))
left, top = int(round((size[0] - c) / 2.0)), int(round((size[1] - c) / 2.0))
pixels = np.asarray(image.crop((left, top, left + c, top + c)), dtype=np.uint8)[None]  # (1, c, c, 3) RGB
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
probabilities, features = session.run(None, {"images": pixels})
best = int(probabilities[0].argmax())
print(json.dumps({"class": labels[best], "probability": float(probabilities[0, best])}))
"""


def _card(*, run: dict, predictor: Predictor, report_: BundleReport, preprocessing: dict, feature_dim: int) -> str:
    metrics = run.get("metrics") or {}
    ci = metrics.get("test_acc_ci")
    hyper = metrics.get("hyperparameter") or {}
    calibration = metrics.get("calibration") or {}
    config = predictor.config
    name = markdown_text
    lines = [
        f"# {name(run['backbone'])} + {name(run.get('protocol') or 'mlp')} head on {name(run['dataset_name'])}",
        "",
        f"Exported by Flower Probe {__version__} from run {run['id']}.",
        "",
        "## What it is",
        "",
        f"- **Backbone**: {name(run['backbone'])} ({name(config.description)}), frozen; weights "
        f"{name(run['weights'])} ({name(run['weights_tag'])}), license {name(config.license)}.",
        _features_line(run, predictor, feature_dim),
        f"- **Dataset**: {name(run['dataset_name'])}, fingerprint `{run['dataset_fingerprint']}`, split "
        f"{name(run['split'])}; {len(run['class_names'])} classes (labels.json, in output order): "
        + ", ".join(name(c) for c in run["class_names"])
        + ".",
        f"- **Protocol**: {name(run.get('protocol') or 'mlp')}"
        + (
            f", {name(hyper.get('name'))} = {name(hyper.get('value'))} (chosen on validation)"
            if hyper.get("name")
            else ""
        )
        + ".",
        f"- **Test accuracy**: {run['test_acc']:.2f} %"
        + (f" (95 % bootstrap interval {ci[0]:.2f} to {ci[1]:.2f} %)" if ci else "")
        + ".",
    ]
    if calibration.get("temperature"):
        before, after = calibration.get("before") or {}, calibration.get("after") or {}
        lines.append(
            f"- **Calibration**: temperature T = {calibration['temperature']:.3f} in the graph (logits / T); test ECE "
            f"{before.get('ece', float('nan')):.3f} before, {after.get('ece', float('nan')):.3f} after "
            f"({calibration.get('n_bins', 15)} bins)."
        )
    else:
        lines.append("- **Calibration**: none fitted; the probabilities are the head's plain softmax.")
    lines += [
        "",
        "## The graph",
        "",
        f"`model.onnx`: ONNX opset 18, made by torch.onnx.export's **{report_.exporter}** exporter, checked with "
        "onnx.checker. Input `images`: **uint8 NHWC** (batch, "
        f"{config.input_size}, {config.input_size}, 3), RGB 0-255, any batch size. Scaling to [0, 1] and the "
        f"normalisation (mean {[round(m, 4) for m in config.mean]}, std {[round(v, 4) for v in config.std]}) are "
        "inside the graph. Outputs "
        f"`probabilities` (batch, {len(run['class_names'])}) and `features` (batch, {feature_dim})."
        + (" The ViT's position embeddings are fixed for this input size." if predictor.backbone.is_vit else ""),
        "",
        f"Before the graph (preprocessing.json): decode (JPEG drafted to {preprocessing['resize']} px), apply EXIF "
        f"orientation, convert to RGB, resize the "
        + ("whole image" if preprocessing["crop_mode"] == "squash" else "shorter side")
        + f" to {preprocessing['resize']} px ({preprocessing['interpolation']}, Pillow), centre-crop "
        f"{config.input_size} px.",
        "",
        "## Classify a photo (onnxruntime + Pillow, exactly as the Classify page does)",
        "",
        "Run from this folder: `python classify.py photo.jpg`",
        "",
        "```python",
        EXAMPLE.rstrip("\n"),
        "```",
        "",
        "## Parity with Flower Probe",
        "",
        "onnxruntime on this file vs Flower Probe's own predict (PyTorch fp32) on real images of the dataset:",
        "",
        "| batch | images | max abs probability difference | same top-1 |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {p['batch']} | {p['images']} | {p['max_abs']:.2e} | {p['top1_agree']} of {p['images']} |"
        for p in report_.parity
    ]
    cost = report_.cost
    lines += [
        "",
        "## Cost on the exporting machine",
        "",
        f"onnxruntime CPU, {cost['threads']} threads, {name(cost['cpu'])}; load average {cost['load_average']} "
        f"(a shared machine: figures are upper bounds): one image {cost['latency_ms_batch1']} ms, batch of 32 "
        f"{cost['images_per_s_batch32']} images/s (preprocessing excluded); model.onnx {cost['model_mb']} MB.",
        "",
        "## For PyTorch users",
        "",
        (
            "`head.safetensors` holds the attentive head's weights and its `num_heads`; Flower Probe's "
            "`core.probing.attentive.load_attentive_head` builds it from them, on the backbone's patch tokens "
            "(batch, tokens, dim)."
            if predictor.reads_tokens
            else "`head.safetensors` holds the head's weights and `config.json` how to build it (Flower Probe's "
            "`core.probing.heads.build_head`) on the backbone's features."
        ),
        "",
    ]
    return "\n".join(lines)


def _features_line(run: dict, predictor: Predictor, feature_dim: int) -> str:
    """The card's line on what the head reads."""
    default = markdown_text(predictor.backbone.default_variant)
    if not predictor.reads_tokens:
        return f"- **Features**: {markdown_text(run.get('features') or default)} ({feature_dim} values)."
    layout = token_layout(run["backbone"])
    return (
        f"- **Features**: the head reads the final {layout.kind} ({layout.tokens} x {layout.dim}; "
        f"{', '.join(layout.excluded)} left out), rounded to fp16 as Flower Probe caches them; the `features` output "
        f"is the pooled {default} ({feature_dim} values)."
    )


def _head_state(predictor: Predictor) -> dict[str, torch.Tensor]:
    """The head's weights as ``head.safetensors`` holds them: an attentive head's with its ``num_heads`` too, which
    ``load_attentive_head`` reads (its weights alone do not say how the width is split)."""
    state = {k: v.contiguous() for k, v in predictor.head.state_dict().items()}
    if predictor.reads_tokens:
        state["num_heads"] = torch.tensor(predictor.head.num_heads)
    return state


def export_bundle(
    run_id: int,
    *,
    workspace: Workspace,
    out: str | os.PathLike,
    force: bool = False,
    exporter: str = "auto",
    progress: ProgressCallback | None = None,
) -> BundleReport:
    """Export run ``run_id`` as a bundle folder at ``out`` (see the module docstring); returns what was done.

    Raises
    ------
    FlowerProbeError
        Unknown or unfinished run, head or features gone, a k-NN/NCM run, ``out`` not empty without ``force``.
    OnnxUnavailableError
        The graph does not export (the operator named).
    ParityError
        onnxruntime and Flower Probe's predict disagree; nothing is written.
    """
    started = time.perf_counter()
    out = Path(out).expanduser().resolve()
    _check_out(out, force)
    report(progress, "export", 0, 4, message=f"Loading run {run_id}")
    predictor = Predictor.from_run(run_id, workspace=workspace, device="cpu", progress=progress)
    run = predictor.run
    _refuse_memory_protocols(run, predictor)
    if not predictor.reads_tokens and run.get("features") not in (None, predictor.backbone.default_variant):
        raise FlowerProbeError(
            f"Run {run['id']} probes the {run['features']} features, which keep no head; export a run on "
            f"{predictor.backbone.default_variant}."
        )
    # The bundle is fp32; its parity is checked against Flower Probe's predict at fp32 (same weights, same head).
    fp32 = predictor.backbone.build(workspace=workspace)
    predictor.model = prepare_model(fp32, device=torch.device("cpu"), precision="fp32")
    predictor.precision = "fp32"
    predictor.onnx_graph = predictor.onnx_session = None  # PyTorch's forward is the reference of the parity check
    config = predictor.config
    preprocessing = preprocessing_record(config)
    graph = BundleGraph(
        fp32,
        predictor.head,
        mean=config.mean,
        std=config.std,
        temperature=predictor.temperature,
        reads_tokens=predictor.reads_tokens,
    ).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        report(progress, "export", 1, 4, message=f"Exporting {run['backbone']} + head to ONNX")
        example = torch.from_numpy(_pixels(_check_images(predictor, count=2), preprocessing))
        exporter_used = export_module(
            graph, example, staging / "model.onnx", input_name=INPUT_NAME, output_names=OUTPUT_NAMES, exporter=exporter
        )
        report(progress, "export", 2, 4, message="Parity check: onnxruntime vs Flower Probe's predict")
        result = BundleReport(folder=out, run_id=run["id"], exporter=exporter_used)
        result.parity = parity_check(predictor, staging / "model.onnx", preprocessing)
        report(progress, "export", 3, 4, message="Measuring and writing the card")
        result.cost = _cost(staging / "model.onnx", preprocessing, _check_images(predictor, count=32))
        feature_dim = int(predictor.reference_features.shape[1])
        (staging / "preprocessing.json").write_text(json.dumps(preprocessing, indent=1), encoding="utf-8")
        (staging / "labels.json").write_text(
            json.dumps(list(run["class_names"]), indent=1, ensure_ascii=False), encoding="utf-8"
        )
        save_file(
            _head_state(predictor),
            str(staging / "head.safetensors"),
            metadata={"run_id": str(run["id"])},
        )
        head_config = (run.get("config") or {}).get("head") or {}
        (staging / "config.json").write_text(
            json.dumps(
                {
                    "run_id": run["id"],
                    "backbone": run["backbone"],
                    "weights": run["weights"],
                    "weights_tag": run["weights_tag"],
                    "features": run.get("features") or predictor.backbone.default_variant,
                    "feature_dim": feature_dim,
                    "num_classes": len(run["class_names"]),
                    "protocol": run.get("protocol") or "mlp",
                    "head": head_config,
                    "temperature": predictor.temperature,
                    "flower_probe": __version__,
                },
                indent=1,
            ),
            encoding="utf-8",
        )
        result.seconds = time.perf_counter() - started
        card = _card(run=run, predictor=predictor, report_=result, preprocessing=preprocessing, feature_dim=feature_dim)
        (staging / "README.md").write_text(card, encoding="utf-8")
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report(progress, "export", 4, 4, message=f"Bundle written to {out}")
    return result


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging folder onto ``out``; a replaced folder is removed only after the rename."""
    for file in staging.iterdir():  # flush every file before the rename makes them the bundle
        with open(file, "rb+") as handle:
            os.fsync(handle.fileno())
        file.chmod(0o644)  # temporary files are private (mkstemp's 0600); a bundle is meant to be shared
    staging.chmod(0o755)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["BundleReport", "OnnxUnavailableError", "ParityError", "export_bundle", "EXAMPLE"]
