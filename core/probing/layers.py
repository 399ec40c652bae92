"""Layer-wise probing: where in the network the useful features are.

``run_layer_probes`` probes the pooled feature of each chosen block (``core.backbones.tokens``: the class token
of every ViT block through the final norm, the global average pool of every CNN stage; the last layer is exactly
the ordinary ``model(x)`` feature) with the cheap protocols (k-NN, logistic regression, NCM). Every block's
features come from one forward pass (``core.features.tokens.extract_layers``) and are cached, so more layers or
protocols later run no forward. Each (layer, protocol) is a run recorded with features ``layer:<name>``, on the
whole training part, with the same test metrics and interval as every probe; Compare draws accuracy against
depth from them.
"""

from __future__ import annotations

import time

from core.backbones.tokens import layer_names, parse_layers
from core.base.errors import FlowerProbeError
from core.base.progress import ProgressCallback, report
from core.base.workspace import Workspace
from core.data.datasets import DEFAULT_SPLIT, prepare_dataset
from core.features.tokens import extract_layers
from core.probing.experiment import backbone_choices, library_versions
from core.probing.probes import ProbeConfig, run_probe
from core.probing.record import record_run
from core.runs.registry import RunRegistry

LAYER_PROTOCOLS = ("knn", "logreg", "ncm")
LAYER_PREFIX = "layer:"


def layer_variant(name: str) -> str:
    """The ``features`` a layer-wise run is recorded with: ``layer:block7``."""
    return f"{LAYER_PREFIX}{name}"


def layer_depth(backbone: str, variant: str) -> tuple[int, int] | None:
    """(1-based depth, number of layers) of a ``layer:`` variant of ``backbone``; None for other variants."""
    if not str(variant).startswith(LAYER_PREFIX):
        return None
    names = layer_names(backbone)
    name = variant[len(LAYER_PREFIX) :]
    return (names.index(name) + 1, len(names)) if name in names else None


def run_layer_probes(
    *,
    dataset: str,
    backbones: list[str],
    random_weights_for: tuple[str, ...] = (),
    layers: str = "all",
    protocols: list[str] | tuple[str, ...] = LAYER_PROTOCOLS,
    split: str = DEFAULT_SPLIT,
    config: ProbeConfig = ProbeConfig(),
    device: str = "auto",
    precision: str = "auto",
    workspace: Workspace,
    progress: ProgressCallback | None = None,
    on_run=None,
) -> list[dict]:
    """Probe each chosen layer of each backbone with ``protocols``; returns the run records in order.

    Every argument is checked (protocols among ``LAYER_PROTOCOLS``, layer indices within each backbone's depth)
    before anything is extracted or recorded.
    """
    protocols = list(dict.fromkeys(protocols))
    wrong = [p for p in protocols if p not in LAYER_PROTOCOLS]
    if wrong or not protocols:
        raise FlowerProbeError(
            f"protocols for layer-wise probing must be among {', '.join(LAYER_PROTOCOLS)} (cheap enough for every "
            f"block), got {', '.join(wrong) or 'none'}."
        )
    choices = backbone_choices(list(backbones), tuple(random_weights_for))
    picked = {choice: parse_layers(layers, backbone=choice.backbone) for choice in choices}
    prepared = prepare_dataset(dataset, workspace, progress=progress)
    parts = prepared.split(split)
    registry = RunRegistry(workspace.registry_path)
    versions = library_versions()
    total = sum(len(names) for names in picked.values()) * len(protocols)
    records, done = [], 0
    for choice in choices:
        started = time.perf_counter()
        sets = extract_layers(
            prepared, choice.resolved, workspace=workspace, device=device, precision=precision, progress=progress
        )
        features_seconds = time.perf_counter() - started
        for name in picked[choice]:
            feature_set = sets[name]
            (x_train, train_rows), (x_valid, valid_rows), (x_test, test_rows) = (
                feature_set.select(parts[p]) for p in ("train", "val", "test")
            )
            for protocol in protocols:
                result = run_probe(
                    protocol,
                    (x_train, prepared.labels[train_rows]),
                    (x_valid, prepared.labels[valid_rows]),
                    (x_test, prepared.labels[test_rows]),
                    num_classes=prepared.num_classes,
                    config=config,
                    seed=0,
                )
                record = record_run(
                    registry,
                    workspace=workspace,
                    dataset=prepared,
                    backbone=choice.backbone,
                    weights=choice.weights,
                    variant=layer_variant(name),
                    split=split,
                    shots=None,
                    seed=0,
                    result=result,
                    feature_set=feature_set,
                    features_seconds=features_seconds,
                    test_rows=test_rows,
                    train_images=len(train_rows),
                    settings=config.settings(protocol),
                    device=device,
                    precision=precision,
                    group_id=None,
                    versions=versions,
                    keep_head=False,
                )
                records.append(record)
                done += 1
                report(progress, "probe", done, total, message=f"{choice.label} · {name} · {protocol}")
                if on_run is not None:
                    on_run(record)
    return records
