"""The probe suite: every backbone x feature variant x protocol x shots x seed, on cached features, recorded.

Few-shot levels draw that many training images per class (a class with fewer uses all it has) with a
seeded generator; a seed's draws are nested (its 1-shot images are among its 2-shot images, and so on),
and every protocol of one (shots, seed) sees the same images, so protocols compare pair by pair. The
validation and test parts stay whole at every level: hyperparameters are chosen on the full validation
part, which is more labelled data than the few-shot training set itself (say so when reporting). The
whole training part ("all") has no draw to repeat, so it runs once, with the first seed.

A suite is one group of runs with a status (``RunRegistry.start_group``): running, then completed, failed,
cancelled or interrupted. Each run is recorded completed in one transaction (``core.probing.record.record_run``)
as it ends; a suite that stopped, run again the same way, resumes its group and records only the runs it lacks.
A bad input (unknown protocol, a variant the backbone lacks, shots larger than any class holds, a class without a
training image) is refused before anything is recorded. ``compare`` is this suite with the reference head
(protocol ``mlp``) on the whole training part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from core.backbones.tokens import token_layout
from core.base.errors import FlowerProbeError
from core.base.progress import ProgressCallback, report
from core.base.workspace import Workspace
from core.data.datasets import DEFAULT_SPLIT, Dataset, prepare_dataset
from core.features.extract import extract_features
from core.features.tokens import TOKENS, TokenFeatureSet, require_tokens
from core.probing.experiment import (
    GENERATE_KEY,
    BackboneChoice,
    _RateWatcher,
    backbone_choices,
    library_versions,
    record_rate,
    splits_to_run,
)
from core.probing.probes import (
    REFERENCE_PROTOCOLS,
    TOKEN_PROTOCOLS,
    ZERO_SHOT_PROTOCOL,
    ProbeConfig,
    ProbeResult,
    check_protocols,
    recorded_protocol,
    run_probe,
)
from core.probing.record import ending_status, record_run, run_key
from core.probing.summary import summarise_runs
from core.runs.registry import RunRegistry

ALL = None  # the shots level "all": the whole training part
DEFAULT_SEEDS = 5  # draws per few-shot level: enough for a std, and the suite stays well under a minute per backbone


def parse_shots(text: str) -> list[int | None]:
    """``"1,2,4,8,16,all"`` -> ``[1, 2, 4, 8, 16, None]`` (None: the whole training part), in the order given."""
    levels: list[int | None] = []
    for item in str(text).split(","):
        item = item.strip().lower()
        if item == "all":
            levels.append(ALL)
        elif item.isdigit() and int(item) >= 1:
            levels.append(int(item))
        else:
            raise FlowerProbeError(
                f"shots must be positive whole numbers or 'all', separated by commas (e.g. 1,4,16,all); "
                f"got {item!r} in {text!r}."
            )
    return list(dict.fromkeys(levels))


def check_shots(train_labels: np.ndarray, levels: list[int | None], *, class_names: tuple[str, ...]) -> None:
    """Every class has a training image, and no level asks for more images than the largest class holds."""
    counts = np.bincount(train_labels, minlength=len(class_names))
    empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise FlowerProbeError(
            f"every class needs at least one training image; {', '.join(repr(c) for c in empty)} has none."
        )
    too_many = [n for n in levels if n is not ALL and n > counts.max()]
    if too_many:
        raise FlowerProbeError(
            f"shots must be at most {counts.max()} (the largest class's training images) or 'all', got {too_many}."
        )


def draw_shots(train_labels: np.ndarray, shots: int | None, *, seed: int) -> np.ndarray:
    """Positions into the training part: ``shots`` per class (all of a class that has fewer), drawn with ``seed``.

    The draw is one seeded permutation of the training part read class by class, so a larger level's draw
    contains every smaller level's for the same seed. ``shots`` None returns every position.
    """
    if shots is ALL:
        return np.arange(len(train_labels))
    order = np.random.default_rng(seed).permutation(len(train_labels))
    picked = [order[train_labels[order] == c][:shots] for c in np.unique(train_labels)]
    return np.sort(np.concatenate(picked))


@dataclass(frozen=True)
class SuitePlan:
    """What a suite will run, validated: (choice, variant) pairs, protocols, shots levels and seeds."""

    choices: tuple[tuple[BackboneChoice, str], ...]
    protocols: tuple[str, ...]
    levels: tuple[int | None, ...]
    seeds: tuple[int, ...]
    notes: tuple[str, ...] = ()  # requested feature variants a backbone lacks, and what it runs instead

    def schedule(self, variant: str) -> list[tuple[int | None, int, str]]:
        """The (shots, seed, protocol) runs of one variant: ``attentive`` runs on the ``tokens`` pseudo-variant
        (cached patch tokens), every other protocol on each pooled variant."""
        protocols = [p for p in self.protocols if (p in TOKEN_PROTOCOLS) == (variant == TOKENS)]
        return [
            (level, seed, protocol)
            for level in self.levels
            for seed in (self.seeds[:1] if level is ALL else self.seeds)
            for protocol in protocols
        ]

    @property
    def runs(self) -> int:
        return sum(len(self.schedule(variant)) for _, variant in self.choices)


def plan_suite(
    *,
    backbones: list[str],
    random_weights_for: tuple[str, ...] = (),
    protocols: list[str],
    features: list[str] | None,
    shots: list[int | None],
    seeds: int | Sequence[int],
) -> SuitePlan:
    """Validate the suite's arguments before any work or record; ``features`` None: each backbone's default variant.

    ``seeds``: how many draws (seeds 0 to seeds - 1), or the seeds themselves (``compare``'s ``--seed``).
    """
    if isinstance(seeds, Sequence) and not isinstance(seeds, str):
        values = list(dict.fromkeys(seeds))
        if not values or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in values):
            raise FlowerProbeError(f"seeds must be whole numbers >= 0, at least one, got {list(seeds)!r}.")
        seed_values = tuple(values)
    elif isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seed_values = tuple(range(seeds))
    else:
        raise FlowerProbeError(f"seeds must be a whole number >= 1, got {seeds!r}.")
    if not shots:
        raise FlowerProbeError("shots must name at least one level (e.g. all, or 1,4,16,all).")
    protocols = check_protocols(list(protocols))
    if ZERO_SHOT_PROTOCOL in protocols:
        raise FlowerProbeError("protocols: 'zeroshot' runs through core.probing.zeroshot (python -m core probe does).")
    pooled = any(p not in TOKEN_PROTOCOLS for p in protocols)
    pairs, notes = [], []
    choices = backbone_choices(list(backbones), tuple(random_weights_for))
    for variant in features or []:  # a variant none of the backbones gives is a mistake, not a mix of kinds
        if not any(variant in choice.resolved.variants for choice in choices):
            choices[0].resolved.check_variant(variant)
    for choice in choices:
        variants, note = _variants_of(choice.resolved, features) if pooled else ([], None)
        pairs.extend((choice, variant) for variant in variants)
        notes.extend([note] if note else [])
        if any(p in TOKEN_PROTOCOLS for p in protocols):
            token_layout(choice.backbone)  # a backbone with neither patch tokens nor a feature map is refused here
            pairs.append((choice, TOKENS))
    return SuitePlan(
        choices=tuple(pairs), protocols=tuple(protocols), levels=tuple(shots), seeds=seed_values, notes=tuple(notes)
    )


def _variants_of(backbone, features: Sequence[str] | None) -> tuple[list[str], str | None]:
    """The requested ``features`` ``backbone`` gives, and a note when it lacks some.

    One list of variants serves backbones of both kinds (``--features cls,patch_mean`` for a ViT beside a CNN):
    each probes those it has; one that has none of them probes its own default variant, said in the note.
    """
    if not features:
        return [backbone.default_variant], None
    given = [variant for variant in features if variant in backbone.variants]
    lacking = [variant for variant in features if variant not in backbone.variants]
    if not lacking:
        return given, None
    instead = given or [backbone.default_variant]
    note = (
        f"{backbone.spec}: no {', '.join(lacking)} features (it gives {', '.join(backbone.variants)}); "
        f"probing {', '.join(instead)}" + ("" if given else " instead")
    )
    return instead, note


def probe_grid(
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    num_classes: int,
    plan: SuitePlan,
    config: ProbeConfig = ProbeConfig(),
    only: set[tuple[int | None, int, str]] | None = None,
    progress: ProgressCallback | None = None,
) -> Iterator[tuple[int | None, int, int, ProbeResult]]:
    """Every (shots, seed, protocol) of ``plan`` on one feature set: yields (shots, seed, training images, result).

    ``only``: just these (shots, seed, protocol), the rest skipped (a resumed suite); ``progress`` gets the
    reference head's epochs. The generator is the suite's inner loop on cached features, without extraction or
    records (the benchmark times it).
    """
    x_train, y_train = train
    for level in plan.levels:
        for seed in plan.seeds[:1] if level is ALL else plan.seeds:
            picked = draw_shots(y_train, level, seed=seed)
            for protocol in plan.protocols:
                if only is not None and (level, seed, protocol) not in only:
                    continue
                yield (
                    level,
                    seed,
                    len(picked),
                    run_probe(
                        protocol,
                        (x_train[picked], y_train[picked]),
                        valid,
                        test,
                        num_classes=num_classes,
                        config=config,
                        seed=seed,
                        progress=progress,
                    ),
                )


def suite_key(
    *, dataset: Dataset, splits: list[str], plan: SuitePlan, config: ProbeConfig, device: str, precision: str
) -> str:
    """What makes two suites the same suite (a rerun of it resumes its group): the data (fingerprint, exclusions,
    splits), every (backbone, weights, variant), protocols, shots levels, seeds, the probes' settings, the device
    and precision asked for. A hex digest."""
    identity = {
        "dataset": dataset.fingerprint,
        "excluded": sorted(dataset.excluded),
        "splits": list(splits),
        "choices": [[choice.backbone, choice.weights, variant] for choice, variant in plan.choices],
        "protocols": list(plan.protocols),
        "levels": [None if level is ALL else int(level) for level in plan.levels],
        "seeds": list(plan.seeds),
        "probe": config.to_dict(),
        "device": device,
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:32]


def _planned_keys(
    dataset: Dataset, splits: list[str], plan: SuitePlan, config: ProbeConfig
) -> list[tuple[BackboneChoice, str, str, int | None, int, str, tuple]]:
    """Every run of the suite in the order it runs: (choice, variant, split, shots, seed, protocol, run key)."""
    planned = []
    for choice, variant in plan.choices:
        for split_id in splits:
            for level, seed, protocol in plan.schedule(variant):
                key = (
                    dataset.fingerprint,
                    split_id,
                    choice.backbone,
                    choice.weights,
                    variant,
                    recorded_protocol(protocol, config),
                    level,
                    seed,
                )
                planned.append((choice, variant, split_id, level, seed, protocol, key))
    return planned


def run_probe_suite(
    *,
    dataset: str,
    backbones: list[str],
    random_weights_for: tuple[str, ...] = (),
    protocols: list[str],
    features: list[str] | None = None,
    shots: list[int | None] = (ALL,),
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    split: str = DEFAULT_SPLIT,
    config: ProbeConfig = ProbeConfig(),
    device: str = "auto",
    precision: str = "auto",
    workspace: Workspace,
    progress: ProgressCallback | None = None,
    on_run: Callable[[dict], None] | None = None,
    on_start: Callable[[BackboneChoice, str, str], None] | None = None,
    kind: str = "suite",
    runtime: str | None = None,
) -> list[dict]:
    """Run and record the whole suite as one group; returns every run record of the group in the suite's order.

    The suite is one group (``RunRegistry.start_group``) with a status: running, then completed, or failed,
    cancelled or interrupted (Ctrl-C, SIGTERM; a kill -9 is found by the next reader). The same suite run again
    (``suite_key``) resumes that group and records only the runs it lacks (``core.probing.record.run_key``), so it
    ends with exactly the runs an uninterrupted suite records. Each run is recorded in one transaction.

    ``seeds``: a number of draws (seeds 0..n-1) or the seeds themselves. ``split`` may be ``"all"`` (each of the
    dataset's splits in turn). ``on_start(choice, variant, split)`` comes before a feature set's runs (``compare``
    prints its header there), ``on_run(record)`` after each run recorded now. ``kind`` is ``"suite"`` or
    ``"compare"`` (the suite with the reference head alone).

    Head files are written for runs on the whole training part with the backbone's default variant and a
    probe that is a ``core.probing.heads`` head (mlp, linear, logreg), so Classify can use them; few-shot runs are
    points of a curve and keep only their record and predictions.
    """
    plan = plan_suite(
        backbones=backbones,
        random_weights_for=random_weights_for,
        protocols=protocols,
        features=features,
        shots=list(shots),
        seeds=seeds,
    )
    for note in plan.notes:  # to the CLI (the log) and to the page's job log (the progress events)
        logging.getLogger("flower_probe").warning(note)
        report(progress, "probe", 0, len(plan.choices), message=note)
    registry = RunRegistry(workspace.registry_path)
    watched = _RateWatcher(progress, stage=GENERATE_KEY)
    prepared = prepare_dataset(dataset, workspace, progress=watched)
    if watched.final_rate:
        record_rate(workspace, what=GENERATE_KEY, device="cpu", images_per_s=watched.final_rate)
    splits = splits_to_run(prepared, split)
    for split_id in splits:
        parts = prepared.split(split_id)
        check_shots(prepared.labels[parts["train"]], list(plan.levels), class_names=prepared.class_names)
    for choice, variant in plan.choices:  # before anything is recorded: attentive needs tokens extracted first
        if variant == TOKENS:
            require_tokens(prepared, choice.resolved, workspace=workspace, precision=precision, device=device)
    planned = _planned_keys(prepared, splits, plan, config)
    group_id, resumed = registry.start_group(
        kind=kind,
        key=suite_key(dataset=prepared, splits=splits, plan=plan, config=config, device=device, precision=precision),
        planned=len(planned),
        config={
            "dataset": prepared.key,
            "splits": splits,
            "backbones": [choice.spec for choice, _ in plan.choices],
            "features": [variant for _, variant in plan.choices],
            "protocols": list(plan.protocols),
            "shots": ["all" if level is ALL else level for level in plan.levels],
            "seeds": list(plan.seeds),
            "device": device,
            "precision": precision,
        },
    )
    recorded = {run_key(r) for r in registry.group_runs(group_id)} if resumed else set()
    versions = library_versions()
    with ending_status(partial(registry.end_group, group_id)):
        done = sum(key in recorded for *_, key in planned)
        for choice, variant in plan.choices:
            for split_id in splits:
                missing = {
                    (level, seed, protocol)
                    for c, v, s, level, seed, protocol, key in planned
                    if (c, v, s) == (choice, variant, split_id) and key not in recorded
                }
                if not missing:  # resumed: every run of this feature set is recorded already
                    continue
                if on_start is not None:
                    on_start(choice, variant, split_id)
                done = run_feature_set(
                    registry,
                    workspace=workspace,
                    dataset=prepared,
                    choice=choice,
                    variant=variant,
                    split=split_id,
                    plan=plan,
                    only=missing,
                    config=config,
                    device=device,
                    precision=precision,
                    runtime=runtime,
                    group_id=group_id,
                    versions=versions,
                    progress=progress,
                    on_run=on_run,
                    done=done,
                    total=len(planned),
                    report_epochs=kind == "compare",  # the reference experiment's printout, epoch by epoch
                )
    registry.end_group(group_id, status="completed")
    order = {key: position for position, (*_, key) in enumerate(planned)}
    return sorted(registry.group_runs(group_id), key=lambda r: order.get(run_key(r), len(order)))


def run_feature_set(
    registry: RunRegistry,
    *,
    workspace: Workspace,
    dataset: Dataset,
    choice: BackboneChoice,
    variant: str,
    split: str,
    plan: SuitePlan,
    config: ProbeConfig,
    device: str,
    precision: str,
    group_id: str | None,
    versions: dict,
    progress: ProgressCallback | None,
    report_epochs: bool,
    only: set | None = None,
    on_run: Callable[[dict], None] | None = None,
    done: int = 0,
    total: int | None = None,
    runtime: str | None = None,
    feature_batch_size: int = 64,
    run_id: int | None = None,
) -> int:
    """The runs ``only`` (shots, seed, protocol; None: all of ``plan``) of one (backbone, weights, variant, split),
    each recorded as it ends; returns how many runs of the suite are done (``done`` before, of ``total``: the plan's
    runs when None).

    ``feature_batch_size``: images per backbone forward when the features are extracted. ``run_id``: a run created
    ``running`` before the work (``core.probing.experiment.run_experiment``), completed by the plan's one run."""
    total = plan.runs if total is None else total
    started = time.perf_counter()
    watched = _RateWatcher(progress, stage="features")
    if variant == TOKENS:  # the attentive probe's patch tokens, memory-mapped: no forward here
        feature_set = TokenFeatureSet(
            require_tokens(dataset, choice.resolved, workspace=workspace, precision=precision, device=device)
        )
    else:
        feature_set = extract_features(
            dataset,
            choice.resolved,  # resolved once by the plan; nothing below looks the name up again
            workspace=workspace,
            device=device,
            precision=precision,
            progress=watched,
            variant=variant,
            runtime=runtime,
            batch_size=feature_batch_size,
        )
    features_seconds = time.perf_counter() - started
    if watched.final_rate:  # computed here, not read from the cache
        record_rate(workspace, what=choice.backbone, device=feature_set.device, images_per_s=watched.final_rate)
    parts = dataset.split(split)
    (x_train, train_rows), (x_valid, valid_rows), (x_test, test_rows) = (
        feature_set.select(parts[p]) for p in ("train", "val", "test")
    )
    grid = probe_grid(
        (x_train, dataset.labels[train_rows]),
        (x_valid, dataset.labels[valid_rows]),
        (x_test, dataset.labels[test_rows]),
        num_classes=dataset.num_classes,
        plan=plan,
        config=config,
        only=only,
        progress=progress if report_epochs else None,
    )
    for level, seed, train_images, result in grid:
        record = record_run(
            registry,
            workspace=workspace,
            dataset=dataset,
            backbone=choice.backbone,
            weights=choice.weights,
            variant=variant,
            split=split,
            shots=level,
            seed=seed,
            result=result,
            feature_set=feature_set,
            features_seconds=features_seconds,
            test_rows=test_rows,
            train_images=train_images,
            settings=config.settings(_requested_protocol(result.protocol)),
            device=device,
            precision=precision,
            group_id=group_id,
            versions=versions,
            keep_head=level is ALL and variant in (choice.resolved.default_variant, TOKENS),
            run_id=run_id,
        )
        done += 1
        shots_text = "all" if level is ALL else f"{level}-shot"
        # Between runs: the job runner's cancel takes effect here.
        report(
            progress,
            "probe",
            done,
            total,
            message=f"{choice.label} · {variant} · {result.protocol} · {shots_text} · seed {seed}",
        )
        if on_run is not None:
            on_run(record)
    return done


def _requested_protocol(recorded: str) -> str:
    """The protocol asked for behind a recorded name (``reference_linear`` is the ``mlp`` protocol's recipe)."""
    return "mlp" if recorded in REFERENCE_PROTOCOLS.values() else recorded


# ----------------------------------------------------------------------------------------------- reports


def result_rows(records: list[dict]) -> list[dict]:
    """The ``--json`` rows: one per run, with its interval and chosen hyperparameter."""
    return [
        {
            "backbone": r["backbone"],
            "weights": r["weights"],
            "features": r["features"],
            "protocol": r["protocol"],
            "shots": "all" if r["shots"] is None else r["shots"],
            "seed": r["seed"],
            "test_acc": r["test_acc"],
            "test_acc_ci": r["metrics"]["test_acc_ci"],
            "hyperparameter": r["metrics"]["hyperparameter"],
            "run_id": r["id"],
        }
        for r in records
    ]


def _row_label(run: dict) -> str:
    return f"{BackboneChoice(run['backbone'], run['weights']).label} · {run['features']}"


def protocols_table(records: list[dict]) -> str:
    """Rows backbone x features, columns protocols, cells test top-1 on the whole training part with its interval."""
    full = [r for r in records if r["shots"] is None]
    protocols = list(dict.fromkeys(r["protocol"] for r in full))
    rows: dict[str, dict[str, str]] = {}
    for summary in summarise_runs(full):
        run = summary.first
        low, high = run["metrics"]["test_acc_ci"]
        rows.setdefault(_row_label(run), {})[run["protocol"]] = f"{summary.acc_mean:.1f} [{low:.1f}, {high:.1f}]"
    width = max([len("backbone · features")] + [len(label) for label in rows])
    lines = [f"{'backbone · features':<{width}} " + " ".join(f"{p:>18}" for p in protocols)]
    lines += [
        f"{label:<{width}} " + " ".join(f"{cells.get(p, '-'):>18}" for p in protocols) for label, cells in rows.items()
    ]
    return "\n".join(lines)


def fewshot_points(records: list[dict]) -> list[dict]:
    """Mean and std of test top-1 over seeds per (backbone, weights, features, protocol, shots); shots None is 'all'."""
    points = []
    for summary in summarise_runs(records):
        run = summary.first
        points.append(
            {
                "label": f"{_row_label(run)} · {run['protocol']}",
                "backbone": run["backbone"],
                "weights": run["weights"],
                "features": run["features"],
                "protocol": run["protocol"],
                "shots": run["shots"],
                "mean": summary.acc_mean,
                "std": summary.acc_std,
                "draws": len(summary.runs),
                "train_images": _mean_train_images(summary.runs),
            }
        )
    return points


def _mean_train_images(runs: tuple[dict, ...]) -> float | None:
    """Mean training images of runs the suite made (it records them); None for runs made otherwise."""
    known = [r["config"]["train_images"] for r in runs if "train_images" in r["config"]]
    return float(np.mean(known)) if known else None


def fewshot_table(records: list[dict]) -> str:
    """Rows backbone x features x protocol, columns shots levels, cells mean ± std over the draws."""
    points = fewshot_points(records)
    levels = sorted({p["shots"] for p in points}, key=lambda s: float("inf") if s is None else s)
    rows: dict[str, dict] = {}
    for point in points:
        cell = f"{point['mean']:.1f}" + (f" ± {point['std']:.1f}" if point["std"] is not None else "")
        rows.setdefault(point["label"], {})[point["shots"]] = cell
    width = max([len("images per class")] + [len(label) for label in rows])
    lines = [f"{'images per class':<{width}} " + " ".join(f"{'all' if s is None else s:>12}" for s in levels)]
    lines += [
        f"{label:<{width}} " + " ".join(f"{cells.get(s, '-'):>12}" for s in levels) for label, cells in rows.items()
    ]
    return "\n".join(lines)
