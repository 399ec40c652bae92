"""Section 2, feature extraction per backbone at 224 px, through core.features.extract' own code path.

For each backbone: GFLOPs per image (FlopCounterMode, attention counted through SDPA's math kernel);
model-only images/s on pre-made tensors in fp32, in bf16 (the engine's path) and in the engine's
previous bf16 path (fp32 weights under autocast); end-to-end images/s through the engine's DataLoader
(JPEG decode and preprocessing with the engine's default worker count, and, for comparison, with the
other choice: 0 workers, decoding in the model's process, against 1) in the precision the engine picks
for the backbone; the
fraction of the bf16 matmul peak reached; and the cosine similarity between fp32 and bf16 features,
plain and centred (``cosine_stats``).

Then the bf16 decision itself (``accuracy_check``): for each backbone with real pretrained weights here
(EfficientNet-Lite0's ship with its pip package; a DINOv2 or ResNet-50 checkpoint placed in the bench
workspace's weights folder counts too), fp32 and bf16 features of every image and the test accuracy of
heads trained on each (three seeds). Random-weight backbones are timed only: speed depends on the
architecture, not the weights, but their features say nothing about precision (a random ViT's CLS
feature is nearly the same for every image).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .common import Context, Target, cosine_stats, interleaved, median_ratio, seconds
from .roofline import measure_peak

BACKBONES = ("dinov2_vits14", "resnet50", "efficientnet_lite0")
VIT = "dinov2_vits14"
PACKAGED_PRETRAINED = "efficientnet_lite0"  # the one backbone whose pretrained weights ship with a pip package
ACCURACY_SEEDS = (0, 1, 2)
# One test image of Synthetic Flowers' 340 is 0.29 percentage points: "unchanged" allows at most one to flip.
ACCURACY_TOLERANCE_PP = 0.5


def weights_for(backbone: str, workspace) -> str:
    """ "pretrained" where the weights are here without a download, else "random"."""
    from core.backbones.registry import get_config

    here = backbone == PACKAGED_PRETRAINED or (workspace.weights_dir / get_config(backbone).weights_filename).is_file()
    return "pretrained" if here else "random"


def spread(count: int, total: int) -> np.ndarray:
    """``count`` row numbers spread evenly over ``total`` rows (every class of a class-ordered dataset)."""
    return np.linspace(0, total - 1, num=min(count, total)).round().astype(np.int64)


def gflops_per_image(model: torch.nn.Module, input_size: int) -> float:
    """Forward FLOPs of one image in GFLOPs; SDPA's math kernel makes the attention matmuls countable."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).float().to("cpu", memory_format=torch.contiguous_format)
    with FlopCounterMode(display=False) as counter, torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        model(torch.zeros(1, 3, input_size, input_size))
    return counter.get_total_flops() / 1e9


@torch.inference_mode()
def _autocast_forward(model: torch.nn.Module, batches: list, *, device: torch.device) -> np.ndarray:
    """The engine's bf16 path before ``prepare_model``: fp32 weights, contiguous, under autocast."""
    outputs = []
    for images, _, _ in batches:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            outputs.append(model(images.to(device)).float().cpu().numpy())
    return np.concatenate(outputs)


def _bf16_available(device: torch.device) -> bool:
    from core.features.extract import cpu_supports_bf16

    return (device.type == "cuda" and torch.cuda.is_bf16_supported()) or (device.type == "cpu" and cpu_supports_bf16())


def measure_backbone(context: Context, backbone: str) -> dict:
    from core.backbones.registry import build_backbone, get_config
    from core.features.extract import (
        compute_features,
        default_num_workers,
        feature_loader,
        prepare_model,
        select_device,
        select_precision,
    )

    device = select_device("auto")
    engine_precision = select_precision(device, "auto", backbone=backbone)
    sizes = context.sizes
    dataset = context.dataset()
    paths = [dataset.image_paths[row] for row in spread(sizes.images, len(dataset.image_paths))]
    n = len(paths)
    model, source = build_backbone(
        backbone, weights=weights_for(backbone, context.workspace), workspace=context.workspace
    )
    gflops = gflops_per_image(model, get_config(backbone).input_size)

    images, rows, errors = next(iter(feature_loader(paths, backbone, device=device, batch_size=n, num_workers=0)))
    decode_s = seconds(
        lambda: list(feature_loader(paths, backbone, device=device, batch_size=n, num_workers=0))
    )  # warm now
    batch = sizes.feature_batch
    batches = [(images[s : s + batch], rows[s : s + batch], errors[s : s + batch]) for s in range(0, n, batch)]

    precisions = ("fp32", "bf16") if _bf16_available(device) else ("fp32",)
    prepared = {name: prepare_model(copy.deepcopy(model), device=device, precision=name) for name in precisions}
    before = copy.deepcopy(model).to(device) if device.type == "cpu" and "bf16" in precisions else None
    outputs: dict[str, np.ndarray] = {}

    def model_only(name: str):
        return lambda: outputs.__setitem__(
            name, compute_features(prepared[name], batches, device=device, precision=name, total=n)[0]
        )

    def end_to_end(label: str, workers: int | None):
        def run():
            loader = feature_loader(paths, backbone, device=device, batch_size=batch, num_workers=workers)
            outputs[label] = compute_features(
                prepared[engine_precision], loader, device=device, precision=engine_precision, total=n
            )[0]

        return run

    variants = {name: model_only(name) for name in precisions}
    if before is not None:
        variants["bf16_autocast_before"] = lambda: outputs.__setitem__(
            "bf16_autocast_before", _autocast_forward(before, batches, device=device)
        )
    engine_workers = default_num_workers(device)
    compared_workers = 1 if engine_workers == 0 else 0  # the other side of the engine's choice, as evidence for it
    for workers in sorted({engine_workers, compared_workers}):
        variants[f"end_to_end_workers_{workers}"] = end_to_end(f"end_to_end_workers_{workers}", workers)
    warm = batches[:1]  # oneDNN builds its kernels for a shape on the first call: keep that out of the timing
    for name, prepared_model in prepared.items():
        compute_features(prepared_model, warm, device=device, precision=name, total=len(warm[0][0]))
    if before is not None:
        _autocast_forward(before, warm, device=device)
    times = interleaved(variants, rounds=sizes.rounds)
    rates = {name: n / min(values) for name, values in times.items()}

    peak = measure_peak(context, "bf16")  # measured next to the forwards; the fraction uses the run's best peak
    model_rate = rates[engine_precision]
    result = {
        "weights": weights_for(backbone, context.workspace),
        "weights_tag": source.tag,
        "engine_precision": engine_precision,
        "images": n,
        "batch_size": batch,
        "rounds": sizes.rounds,
        "gflops_per_image": round(gflops, 3),
        "images_per_s": {name: round(rate, 2) for name, rate in rates.items()},
        "seconds_per_round": {name: [round(t, 3) for t in values] for name, values in times.items()},
        "decode_preprocess_images_per_s_one_process": round(n / decode_s, 1),
        "model_only_gflops": round(model_rate * gflops, 1),
        "bf16_peak_gflops_adjacent": round(peak, 1),
        "roofline_fraction": model_rate * gflops / context.peaks["bf16"],
        # Speed ratios are medians of per-round ratios (variants of one round share its load).
        "end_to_end_fraction": median_ratio(times[engine_precision], times[f"end_to_end_workers_{engine_workers}"]),
        "end_to_end_fraction_by_workers": {
            workers: median_ratio(times[engine_precision], times[f"end_to_end_workers_{workers}"])
            for workers in (engine_workers, compared_workers)
        },
        "end_to_end_fraction_best_over_best": rates[f"end_to_end_workers_{engine_workers}"] / model_rate,
        "default_num_workers": engine_workers,
    }
    if "bf16" in precisions:
        result["bf16_speedup_vs_fp32"] = round(median_ratio(times["fp32"], times["bf16"]), 2)
        result["cosine_bf16_vs_fp32"] = cosine_stats(outputs["bf16"], outputs["fp32"])
        result["cosine_bf16_vs_fp32_centred"] = cosine_stats(outputs["bf16"], outputs["fp32"], centre=True)
    if before is not None:
        result["bf16_speedup_vs_autocast_before"] = round(median_ratio(times["bf16_autocast_before"], times["bf16"]), 2)
        result["cosine_autocast_before_vs_fp32"] = cosine_stats(outputs["bf16_autocast_before"], outputs["fp32"])
    context.log(
        f"  {backbone}: {gflops:.2f} GFLOPs/img; model-only {engine_precision} {model_rate:.2f} img/s "
        f"({result['roofline_fraction']:.0%} of bf16 peak); "
        f"end-to-end {rates[f'end_to_end_workers_{engine_workers}']:.2f} img/s "
        f"({result['end_to_end_fraction']:.0%}); " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items())
    )
    return result


def accuracy_check(context: Context, backbone: str) -> dict:
    """fp32 vs bf16 features of every image from a pretrained backbone, and heads trained on each."""
    from core.features.extract import extract_features
    from core.probing.heads import HeadConfig, train_head

    dataset = context.dataset()
    split = dataset.split("1")
    result: dict = {"seeds": list(ACCURACY_SEEDS)}
    sets = {}
    for precision in ("fp32", "bf16"):
        sets[precision] = extract_features(
            dataset, backbone, workspace=context.workspace, weights="pretrained", precision=precision
        )
        result[f"{precision}_extract_images_per_s"] = round(sets[precision].images_per_second, 2)
        accuracies = []
        for seed in ACCURACY_SEEDS:
            parts = [sets[precision].select(split[part]) for part in ("train", "val", "test")]
            train, valid, test = ((features, dataset.labels[rows]) for features, rows in parts)
            accuracies.append(
                train_head(
                    train, valid, test, num_classes=dataset.num_classes, config=HeadConfig(seed=seed)
                ).test.accuracy
            )
        result[f"{precision}_test_acc"] = accuracies
    np.testing.assert_array_equal(sets["fp32"].rows, sets["bf16"].rows)
    result["images"] = len(sets["fp32"].rows)
    result["cosine_bf16_vs_fp32"] = cosine_stats(sets["bf16"].features, sets["fp32"].features)
    result["cosine_bf16_vs_fp32_centred"] = cosine_stats(sets["bf16"].features, sets["fp32"].features, centre=True)
    result["test_acc_difference_pp"] = float(np.mean(result["bf16_test_acc"]) - np.mean(result["fp32_test_acc"]))
    context.log(
        f"  bf16 check on {backbone}: cosine min {result['cosine_bf16_vs_fp32']['min']:.5f} "
        f"mean {result['cosine_bf16_vs_fp32']['mean']:.5f}, "
        f"test acc fp32 {result['fp32_test_acc']} vs bf16 {result['bf16_test_acc']}"
    )
    return result


def run(context: Context) -> tuple[dict, list[Target]]:
    from core.features.extract import select_device, select_precision

    if "bf16" not in context.peaks:
        measure_peak(context, "bf16")
    results: dict = {"backbones": {backbone: measure_backbone(context, backbone) for backbone in BACKBONES}}
    results["bf16_peak_gflops"] = round(context.peaks["bf16"], 1)
    vit = results["backbones"][VIT]
    targets = [
        Target("ViT-S/14 model-only, share of bf16 matmul peak", 100 * vit["roofline_fraction"], ">=", 45, "%"),
        Target("ViT-S/14 end-to-end / model-only", 100 * vit["end_to_end_fraction"], ">=", 85, "%"),
    ]
    device = select_device("auto")
    results["accuracy_check"] = {}
    if not _bf16_available(device):
        return results, targets
    for backbone in BACKBONES:
        if weights_for(backbone, context.workspace) != "pretrained":
            continue
        check = accuracy_check(context, backbone)
        check["engine_precision"] = select_precision(device, "auto", backbone=backbone)
        results["accuracy_check"][backbone] = check
        faithful = (
            check["cosine_bf16_vs_fp32"]["min"] >= 0.999
            and abs(check["test_acc_difference_pp"]) < ACCURACY_TOLERANCE_PP
        )
        verdict = (
            "bf16 kept"
            if faithful
            else "engine uses fp32"
            if check["engine_precision"] == "fp32"
            else "ENGINE STILL USES BF16"
        )
        targets += [
            Target(
                f"{backbone} bf16 vs fp32 features, min cosine ({check['images']} images)",
                check["cosine_bf16_vs_fp32"]["min"],
                ">=",
                0.999,
                "",
                verdict,
            ),
            Target(
                f"{backbone} bf16 vs fp32 head test accuracy, |difference|",
                abs(check["test_acc_difference_pp"]),
                "<",
                ACCURACY_TOLERANCE_PP,
                "pp",
            ),
        ]
    return results, targets
