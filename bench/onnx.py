"""Section "onnx": PyTorch vs onnxruntime on this CPU, model only, end to end, and the exported bundle (issues 22, 23).

For EfficientNet-Lite0 (pretrained, offline), ResNet-50 and DINOv2 ViT-S/14 (random weights: speed depends on
the architecture, not the weights), side by side in one run, same inputs, the same threads:

- model only, on pre-made normalised tensors: batch-1 latency and batch-32 images/s of torch eager fp32, of the
  engine's torch path (``prepare_model``: channels-last, bf16 where the engine picks it) and of onnxruntime fp32
  on the graph the engine exports (``core.onnx.backbone``), plus the max abs difference of the features;
- decode: Synthetic Flowers JPEGs through the engine's preprocessing (``load_image`` with draft, resize, crop,
  normalise) in line and in the engine's thread pool, and ``torchvision.io.decode_jpeg`` decoding alone;
- end to end (decode included): the engine's torch path (its DataLoader) vs onnxruntime (thread-pool decode);
- the bundle graph (uint8 in, normalisation + backbone + a head + softmax, ``core.bundle.export.BundleGraph``):
  batch-1 latency and batch-32 images/s, onnxruntime vs the same module in PyTorch (Lite0 and ViT-S/14).

Every time is the best of ``rounds`` interleaved rounds; the load average is recorded beside it: a shared machine
inflates every figure, and the ratios (measured back to back) are steadier than the figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .common import Context, Target, interleaved, load_average

MODELS = (("efficientnet_lite0", "pretrained"), ("resnet50", "random"), ("dinov2_vits14", "random"))
BUNDLE_MODELS = ("efficientnet_lite0", "dinov2_vits14")
GOAL_LITE0_END_TO_END = 150.0  # images/s, issue 22, on an idle 2-core AVX-512 CPU


def _best(times: list[float]) -> float:
    return min(times)


def _forward_rates(run_1, run_32, *, rounds: int) -> tuple[float, float]:
    times = interleaved({"1": run_1, "32": run_32}, rounds=rounds)
    return _best(times["1"]) * 1e3, 32 / _best(times["32"])


def _model_section(spec: str, weights: str, context: Context, dataset) -> dict:
    from core.backbones.resolved import resolve_backbone
    from core.backbones.variants import variant_forward
    from core.features.extract import (
        _DatasetImages,
        feature_loader,
        iter_feature_batches,
        prepare_model,
        select_precision,
    )
    from core.features.runtime import iter_onnx_batches, threaded_batches
    from core.onnx.backbone import backbone_graph, graph_features

    workspace = context.workspace
    backbone = resolve_backbone(spec, weights=weights).located(workspace=workspace)
    model = backbone.build(workspace=workspace)
    started = time.perf_counter()
    graph = backbone_graph(backbone, workspace=workspace, model=lambda: model)
    export_s = time.perf_counter() - started
    session = graph.session()
    size, rounds = backbone.input_size, context.sizes.rounds
    x32 = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(0))
    x1 = x32[:1]
    cpu = torch.device("cpu")
    precision = select_precision(cpu, "auto", backbone=backbone.name)
    engine = prepare_model(model, device=cpu, precision=precision)
    result: dict = {"weights": weights, "engine_precision": precision, "export_s": round(export_s, 1)}
    result["onnx_exporter"] = graph.exporter

    def torch_eager(x):
        with torch.inference_mode():
            return model(x)

    def engine_path(x):
        batch = [(x, torch.arange(len(x)), [""] * len(x))]
        return next(iter_feature_batches(engine, batch, device=cpu, precision=precision, total=len(x)))[0]

    def onnx_path(x):
        return graph_features(session, x.numpy(), graph.variants)

    for name, run in (("torch_fp32", torch_eager), ("torch_engine", engine_path), ("onnxruntime", onnx_path)):
        run(x1)  # warm-up
        latency_ms, rate = _forward_rates(lambda r=run: r(x1), lambda r=run: r(x32), rounds=rounds)
        result[name] = {"batch1_ms": round(latency_ms, 2), "batch32_images_per_s": round(rate, 1)}
    with variant_forward(model, graph.variants) as forward, torch.inference_mode():
        expected = {k: v.float().numpy() for k, v in forward(x32[:8]).items()}
    got = onnx_path(x32[:8])
    result["max_abs_feature_difference"] = float(max(np.abs(expected[k] - got[k]).max() for k in graph.variants))

    # Decode: the engine's per-image preprocessing, in line vs the thread pool; torchvision's decode_jpeg alone.
    n = min(context.sizes.images, len(dataset.image_paths))
    rows = np.linspace(0, len(dataset.image_paths) - 1, n).round().astype(int).tolist()
    images = _DatasetImages(tuple(dataset.image_paths), backbone)
    batches = [rows[i : i + 32] for i in range(0, n, 32)]
    image_shape = (3, backbone.input_size, backbone.input_size)

    def inline():
        for row in rows:
            images[row]

    def pooled():
        for _ in threaded_batches(images.__getitem__, batches, image_shape=image_shape):
            pass

    def decode_jpeg_only():
        from torchvision.io import decode_jpeg

        for row in rows:
            decode_jpeg(torch.frombuffer(bytearray(Path(dataset.image_paths[row]).read_bytes()), dtype=torch.uint8))

    decode = interleaved({"inline": inline, "thread_pool": pooled, "decode_jpeg_only": decode_jpeg_only}, rounds=2)
    result["decode_images_per_s"] = {k: round(n / _best(v), 1) for k, v in decode.items()}

    # End to end, JPEG decode included.
    def torch_end_to_end():
        loader = feature_loader(dataset.image_paths, backbone, device=cpu, batches=batches)
        for _ in iter_feature_batches(engine, loader, device=cpu, precision=precision, total=n):
            pass

    def onnx_end_to_end():
        loader = threaded_batches(images.__getitem__, batches, image_shape=image_shape)
        for _ in iter_onnx_batches(session, graph, loader, total=n, variants=graph.variants):
            pass

    ends = interleaved({"torch_engine": torch_end_to_end, "onnxruntime": onnx_end_to_end}, rounds=max(1, rounds - 1))
    result["end_to_end_images_per_s"] = {k: round(n / _best(v), 1) for k, v in ends.items()}
    result["end_to_end_images"] = n
    result["load_average"] = load_average()
    context.log(f"  onnx {spec}: {result}")
    return result


def _bundle_section(spec: str, context: Context) -> dict:
    import tempfile

    from core.backbones.resolved import resolve_backbone
    from core.bundle.export import BundleGraph
    from core.features.extract import prepare_model, select_precision
    from core.onnx.export import export_module, session

    workspace = context.workspace
    backbone = resolve_backbone(spec, weights="pretrained" if spec == "efficientnet_lite0" else "random")
    model = backbone.build(workspace=workspace)
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(backbone.feature_dim, 128), torch.nn.ReLU(), torch.nn.Linear(128, 17))
    config = backbone.config
    graph = BundleGraph(model, head, mean=config.mean, std=config.std, temperature=None).eval()
    size = backbone.input_size
    pixels = torch.randint(0, 256, (32, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        outputs = ["probabilities", "features"]
        exporter = export_module(graph, pixels[:2], path, input_name="images", output_names=outputs)
        onnx_session = session(path)
        cpu = torch.device("cpu")
        precision = select_precision(cpu, "auto", backbone=backbone.name)
        # Flower Probe's PyTorch path for a prediction: the engine-prepared backbone, then the fp32 head.
        engine = prepare_model(model, device=cpu, precision=precision)
        mean = torch.tensor(config.mean).view(1, 3, 1, 1)
        std = torch.tensor(config.std).view(1, 3, 1, 1)

        def torch_path(x):
            with torch.inference_mode():
                pixels_f = ((x.permute(0, 3, 1, 2).float() / 255 - mean) / std).contiguous(
                    memory_format=torch.channels_last
                )
                dtype = next(engine.parameters()).dtype
                return torch.softmax(head(engine(pixels_f.to(dtype)).float()), dim=1)

        def onnx_run(x):
            return onnx_session.run(None, {"images": x.numpy()})

        result = {"exporter": exporter, "torch_precision": precision}
        for name, run in (("torch", torch_path), ("onnxruntime", onnx_run)):
            run(pixels[:1])
            latency_ms, rate = _forward_rates(
                lambda r=run: r(pixels[:1]), lambda r=run: r(pixels), rounds=context.sizes.rounds
            )
            result[name] = {"batch1_ms": round(latency_ms, 2), "batch32_images_per_s": round(rate, 1)}
    result["load_average"] = load_average()
    context.log(f"  bundle {spec}: {result}")
    return result


def run(context: Context) -> tuple[dict, list[Target]]:
    from core.features.runtime import cpu_flags

    dataset = context.dataset()
    results: dict = {"cpu_flags": list(cpu_flags()), "threads": torch.get_num_threads(), "models": {}, "bundle": {}}
    results["load_average_before"] = load_average()
    for spec, weights in MODELS:
        results["models"][spec] = _model_section(spec, weights, context, dataset)
    for spec in BUNDLE_MODELS:
        results["bundle"][spec] = _bundle_section(spec, context)
    results["load_average_after"] = load_average()
    lite0 = results["models"]["efficientnet_lite0"]["end_to_end_images_per_s"]["onnxruntime"]
    load = f"load {results['load_average_before'][0]:.1f} -> {results['load_average_after'][0]:.1f}"
    targets = [
        Target("EfficientNet-Lite0 end to end, onnxruntime (images/s)", lite0, ">=", GOAL_LITE0_END_TO_END, "", load)
    ]
    return results, targets
