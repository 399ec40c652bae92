"""One experiment run end to end: dataset -> cached features -> head -> run record; and comparisons of them.

``run_comparison`` is what the CLI's ``compare``, the Train page and Home's ready-made comparisons call: the
probe suite (``core.probing.suite``) with the reference head on the whole training part, one group with a status
that resumes. ``run_experiment`` is one such run on its own (the suite's ``run_feature_set`` with one run), recorded
as ``running`` first and completed in one transaction; any failure marks it failed (or cancelled, or interrupted)
with the reason. Both record through ``core.probing.record.record_run``, so a run is recorded one way whatever made
it.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property, partial
from importlib import metadata

from core import __version__
from core.backbones.resolved import WEIGHTS_SEPARATOR, ResolvedBackbone, resolve_backbone, split_spec
from core.base.errors import FlowerProbeError
from core.base.progress import ProgressCallback, ProgressEvent
from core.base.workspace import Workspace
from core.data.datasets import DEFAULT_SPLIT, Dataset, prepare_dataset
from core.features.rates import RATES_FILENAME, measured_rates, record_rate  # noqa: F401 (their old home)
from core.probing.heads import HeadConfig
from core.probing.presets import HEAD_DEFAULTS
from core.probing.probes import REFERENCE_PROTOCOLS, ProbeConfig
from core.probing.record import ending_status
from core.runs.registry import RunRegistry


@dataclass(frozen=True)
class ExperimentConfig:
    dataset: str = "oxford17"  # the reference experiment's dataset
    split: str = DEFAULT_SPLIT  # Oxford 17's first official split; "all" runs each split in turn
    backbone: str = "dinov2_vits14"
    weights: str = "pretrained"  # "pretrained", "random" (how much does pretraining matter?) or a checkpoint path
    head: HeadConfig = field(default_factory=HeadConfig)
    device: str = "auto"  # CUDA > MPS > CPU
    precision: str = "auto"  # mixed precision where measured fast and faithful
    feature_batch_size: int = 64  # images per backbone forward; fits ViT-S/ResNet-50 on small GPUs
    # CPU feature runtime (core.features.runtime.RUNTIMES): "auto" measures PyTorch vs onnxruntime once;
    # None is the engine's default (FLOWER_PROBE_RUNTIME, else "auto").
    runtime: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


_VERSIONED_PACKAGES = ("torch", "torchvision", "timm", "numpy", "safetensors", "pillow", "scikit-learn")


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform(), "flower_probe": __version__}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def splits_to_run(dataset: Dataset, split: str) -> list[str]:
    if split == "all":
        return sorted(dataset.splits)
    dataset.split(split)  # validates
    return [split]


def run_experiment(
    config: ExperimentConfig,
    *,
    workspace: Workspace,
    registry: RunRegistry | None = None,
    dataset: Dataset | None = None,
    group_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> dict:
    """Run one (dataset, split, backbone, head) experiment and record it; returns the run record.

    ``config.split`` must name one split here (the caller expands "all").
    """
    from core.probing.suite import ALL, SuitePlan, run_feature_set  # noqa: PLC0415 (the suite imports this module)

    registry = registry or RunRegistry(workspace.registry_path)
    dataset = dataset or prepare_dataset(config.dataset, workspace, progress=progress)
    dataset.split(config.split)  # validates, before anything is recorded
    choice = BackboneChoice(config.backbone, config.weights)
    variant = choice.resolved.default_variant  # looked up once, passed down
    versions = library_versions()
    run_id = registry.create_run(
        dataset_key=dataset.key,
        dataset_name=dataset.name,
        dataset_fingerprint=dataset.fingerprint,
        synthetic=dataset.synthetic,
        class_names=list(dataset.class_names),
        split=config.split,
        backbone=config.backbone,
        weights=config.weights,
        seed=config.head.seed,
        versions=versions,
        group_id=group_id,
        protocol=REFERENCE_PROTOCOLS[config.head.architecture],
        features=variant,
        # Replaced by record_run's config when the run completes; until then, what was asked for.
        config={**config.to_dict(), "excluded_images": list(dataset.excluded)},
    )
    with ending_status(partial(registry.end_run, run_id)):
        # The suite's one run of the reference head (protocol "mlp") on the whole training part, completing run_id.
        run_feature_set(
            registry,
            workspace=workspace,
            dataset=dataset,
            choice=choice,
            variant=variant,
            split=config.split,
            plan=SuitePlan(choices=((choice, variant),), protocols=("mlp",), levels=(ALL,), seeds=(config.head.seed,)),
            config=ProbeConfig(mlp=config.head),
            device=config.device,
            precision=config.precision,
            runtime=config.runtime,
            feature_batch_size=config.feature_batch_size,
            group_id=group_id,
            versions=versions,
            progress=progress,
            report_epochs=True,
            run_id=run_id,
        )
    return registry.get_run(run_id)


# WEIGHTS_SEPARATOR ("efficientnet_lite0@random": backbone names never contain it, timm tags neither) lives with
# the spec grammar in core.backbones.resolved and is re-exported here for the CLI and pages.


@dataclass(frozen=True)
class BackboneChoice:
    """One backbone of a comparison and the weights it runs with; the same backbone may appear with two weights."""

    backbone: str
    weights: str = "pretrained"  # "pretrained", "random" or a checkpoint path

    @cached_property
    def resolved(self) -> ResolvedBackbone:
        """This backbone and weights looked up once (``core.backbones.resolved``): what extraction, probes and
        run records receive; ``UnknownBackboneError`` (closest names) for an unknown name."""
        return resolve_backbone(self.backbone, weights=self.weights)

    @property
    def spec(self) -> str:
        """``name`` when pretrained, else ``name@random`` / ``name@<checkpoint>`` (``parse_backbone``'s inverse)."""
        return self.backbone if self.weights == "pretrained" else f"{self.backbone}{WEIGHTS_SEPARATOR}{self.weights}"

    @property
    def label(self) -> str:
        """How tables name it: ``resnet50`` or ``resnet50 (random weights)`` (the CLI's existing wording)."""
        return self.backbone + (
            ""
            if self.weights == "pretrained"
            else " (random weights)"
            if self.weights == "random"
            else " (checkpoint file)"
        )


def parse_backbone(spec: str) -> BackboneChoice:
    """``"resnet50"``: pretrained; ``"resnet50@random"``: random weights; ``"resnet50@/w/r50.pth"``: that file."""
    name, weights = split_spec(spec)
    return BackboneChoice(backbone=name, weights=weights)


def backbone_choices(backbones: list[str], random_weights_for: tuple[str, ...] = ()) -> list[BackboneChoice]:
    """The runs a comparison makes, in order: each spec of ``backbones`` parsed; a plain name listed in
    ``random_weights_for`` gets random weights instead of pretrained ones (the older spelling).

    Raises FlowerProbeError for an empty list, a ``random_weights_for`` name that is not a plain entry of
    ``backbones``, or the same backbone twice with the same weights.
    """
    if not backbones:
        raise FlowerProbeError("backbones must name at least one backbone.")
    choices = [parse_backbone(spec) for spec in backbones]
    for choice in choices:  # an unknown name fails now, with the closest names, not after the dataset is prepared
        _ = choice.resolved  # resolved once here; the choice carries the record down
    plain = {c.backbone for c in choices if c.weights == "pretrained"}
    unknown_random = set(random_weights_for) - plain
    if unknown_random:
        raise FlowerProbeError(
            f"random_weights_for names {sorted(unknown_random)}, which are not among the backbones {list(backbones)}."
        )
    choices = [
        BackboneChoice(c.backbone, "random") if c.weights == "pretrained" and c.backbone in random_weights_for else c
        for c in choices
    ]
    repeated = sorted({c.spec for c in choices if choices.count(c) > 1})
    if repeated:
        raise FlowerProbeError(
            f"backbones lists {repeated} twice with the same weights; give each backbone once per weights."
        )
    return choices


# ----------------------------------------------------------------------------------------------- duration estimates

# Before this workspace has measured a backbone: conservative CPU rates (images/s end to end), about half of what
# `python -m bench` measured on a 2-core AVX-512 CPU with the engine's chosen runtime (bench/README.md:
# EfficientNet-Lite0 160-210 on onnxruntime, ResNet-50 46-51 and ViT-S/14 23-26 on PyTorch bf16), because a plain AVX2
# CPU ran 2-3x slower (issue 14). Labelled as estimates wherever shown; a GPU is faster, so they only overstate there.
ESTIMATED_CPU_IMAGES_PER_S = {
    "dinov2_vits14": 12.0,
    "dinov2_vitb14": 3.0,
    "dinov2_vitl14": 1.0,
    "dinov2_vitg14": 0.3,
    "resnet50": 20.0,
    "efficientnet_lite0": 80.0,
}
ESTIMATED_UNKNOWN_IMAGES_PER_S = 2.0  # a backbone not listed above: assume a large one
GENERATE_KEY = "generate"  # the rates file's entry for drawing Synthetic Flowers (CPU only, any device)
# Two drawing processes made 1,360 images in 6.4 s (210 images/s) on the 2-core AVX-512 CPU; drawing is Python and
# Pillow, not vector maths, so an AVX2 CPU of the same clock draws about as fast: half of it, for slower clocks.
ESTIMATED_GENERATE_IMAGES_PER_S = 100.0
ESTIMATED_RUN_OVERHEAD_S = 5.0  # per run: building the backbone, training a head for 5 epochs, recording


class _RateWatcher:
    """A progress callback passing every event on; keeps the rate of ``stage``'s event that completed the step."""

    def __init__(self, progress: ProgressCallback | None, *, stage: str) -> None:
        self._progress, self._stage = progress, stage
        self.final_rate: float | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage == self._stage and event.total and event.done >= event.total:
            self.final_rate = event.rate  # None for "features from cache": nothing was measured
        if self._progress is not None:
            self._progress(event)


@dataclass(frozen=True)
class DurationEstimate:
    """How long a comparison should take: total seconds and, per step, (what, seconds, basis).

    ``basis`` is ``"measured"`` (a rate this workspace measured on this device), ``"estimate"`` (a
    conservative constant, nothing measured yet), ``"cached"`` (features on disk) or ``"overhead"``.
    """

    seconds: float
    steps: tuple[tuple[str, float, str], ...]

    @property
    def measured(self) -> bool:
        return all(basis != "estimate" for _, _, basis in self.steps)


def estimate_comparison(
    *,
    choices: list[BackboneChoice],
    n_images: int,
    runs_per_backbone: int,
    cached: set[tuple[str, str]],
    generate: bool,
    device: str,
    rates: dict[str, dict[str, float]],
) -> DurationEstimate:
    """Expected duration of a comparison from measured rates, or conservative constants where none was measured.

    Parameters
    ----------
    choices : the comparison's backbones (``backbone_choices``)
    n_images : images of the dataset (every image is extracted once per backbone and weights)
    runs_per_backbone : splits run per backbone (3 for Oxford 17's "all", else 1); extraction happens once
    cached : (backbone, weights) pairs whose features are already in the cache
    generate : the dataset still has to be drawn (Synthetic Flowers not prepared yet)
    device : the device name runs will use (``core.features.extract.device_name``), the key of ``rates``
    rates : ``measured_rates(workspace)``
    """
    steps = []
    if generate:
        rate = rates.get(GENERATE_KEY, {}).get("cpu")
        steps.append(
            (
                "generating the images",
                n_images / (rate or ESTIMATED_GENERATE_IMAGES_PER_S),
                "measured" if rate else "estimate",
            )
        )
    for choice in choices:
        if (choice.backbone, choice.weights) in cached:
            steps.append((f"{choice.label}: features from the cache", 0.0, "cached"))
            continue
        rate = rates.get(choice.backbone, {}).get(device)
        fallback = ESTIMATED_CPU_IMAGES_PER_S.get(choice.backbone, ESTIMATED_UNKNOWN_IMAGES_PER_S)
        steps.append(
            (
                f"{choice.label}: features of {n_images} images",
                n_images / (rate or fallback),
                "measured" if rate else "estimate",
            )
        )
    steps.append(
        ("loading backbones, training heads", ESTIMATED_RUN_OVERHEAD_S * len(choices) * runs_per_backbone, "overhead")
    )
    return DurationEstimate(seconds=sum(s for _, s, _ in steps), steps=tuple(steps))


def run_comparison(
    *,
    dataset: str,
    backbones: list[str],
    split: str = DEFAULT_SPLIT,
    head: HeadConfig = HEAD_DEFAULTS,
    random_weights_for: tuple[str, ...] = (),
    device: str = "auto",
    precision: str = "auto",
    workspace: Workspace,
    progress: ProgressCallback | None = None,
    on_run_start: Callable[[ExperimentConfig], None] | None = None,
    on_run: Callable[[dict], None] | None = None,
    runtime: str | None = None,
) -> list[dict]:
    """Run every backbone on every requested split; returns the run records in order.

    ``runtime``: the CPU feature runtime (``core.features.runtime.RUNTIMES``; None: the engine's default).

    ``backbones`` are specs as ``parse_backbone`` reads them, so one backbone can run twice with different
    weights (``["efficientnet_lite0", "efficientnet_lite0@random"]``: how much does pretraining matter?).
    ``on_run_start(config)`` and ``on_run(record)`` frame each run (the CLI prints headers and results there).

    A comparison is the probe suite (``core.probing.suite.run_probe_suite``) with the reference head (protocol
    ``mlp``, ``head``'s architecture and settings) on the whole training part, seed ``head.seed``: one group with
    a status, resumed when the same comparison stopped before its end.
    """
    from core.probing.suite import ALL, run_probe_suite  # noqa: PLC0415 (the suite imports this module)

    asked = ExperimentConfig(dataset=dataset, head=head, device=device, precision=precision, runtime=runtime)

    def on_start(choice: BackboneChoice, variant: str, split_id: str) -> None:
        if on_run_start is not None:  # the comparison's settings with this run's split, backbone and weights
            on_run_start(replace(asked, split=split_id, backbone=choice.backbone, weights=choice.weights))

    return run_probe_suite(
        dataset=dataset,
        backbones=backbones,
        random_weights_for=random_weights_for,
        protocols=["mlp"],
        shots=[ALL],
        seeds=[head.seed],
        split=split,
        config=ProbeConfig(mlp=head),
        device=device,
        precision=precision,
        workspace=workspace,
        progress=progress,
        on_run=on_run,
        on_start=on_start,
        kind="compare",
        runtime=runtime,
    )
