"""The probe suite: every backbone x feature variant x protocol x shots x seed, on cached features, recorded.

Few-shot levels draw that many training images per class (a class with fewer uses all it has) with a
seeded generator; a seed's draws are nested (its 1-shot images are among its 2-shot images, and so on),
and every protocol of one (shots, seed) sees the same images, so protocols compare pair by pair. The
validation and test parts stay whole at every level: hyperparameters are chosen on the full validation
part, which is more labelled data than the few-shot training set itself (say so when reporting). The
whole training part ("all") has no draw to repeat, so it runs once, with the first seed.

Each run is recorded completed in one transaction, with a ``group_id`` shared by the suite; a bad input
(unknown protocol, a variant the backbone lacks, shots larger than any class holds, a class without a
training image) is refused before anything is recorded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from safetensors.torch import save_file

from core.backbones.variants import check_variant, default_variant
from core.base.errors import FlowerProbeError
from core.base.fileio import atomic_write
from core.base.progress import ProgressCallback, report
from core.base.workspace import Workspace
from core.data.datasets import Dataset, prepare_dataset
from core.features.extract import extract_features
from core.probing.experiment import BackboneChoice, backbone_choices, library_versions
from core.probing.probes import ProbeConfig, ProbeResult, check_protocols, run_probe
from core.probing.summary import summarise_runs
from core.runs.files import stored_path
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

    @property
    def runs(self) -> int:
        draws = sum(1 if level is ALL else len(self.seeds) for level in self.levels)
        return len(self.choices) * len(self.protocols) * draws


def plan_suite(
    *,
    backbones: list[str],
    random_weights_for: tuple[str, ...] = (),
    protocols: list[str],
    features: list[str] | None,
    shots: list[int | None],
    seeds: int,
) -> SuitePlan:
    """Validate the suite's arguments before any work or record; ``features`` None: each backbone's default variant."""
    if not isinstance(seeds, int) or seeds < 1:
        raise FlowerProbeError(f"seeds must be a whole number >= 1, got {seeds!r}.")
    if not shots:
        raise FlowerProbeError("shots must name at least one level (e.g. all, or 1,4,16,all).")
    protocols = check_protocols(list(protocols))
    pairs = []
    for choice in backbone_choices(list(backbones), tuple(random_weights_for)):
        for variant in features or [default_variant(choice.backbone)]:
            pairs.append((choice, check_variant(choice.backbone, variant)))
    return SuitePlan(choices=tuple(pairs), protocols=tuple(protocols), levels=tuple(shots), seeds=tuple(range(seeds)))


def probe_grid(
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    num_classes: int,
    plan: SuitePlan,
    config: ProbeConfig = ProbeConfig(),
) -> Iterator[tuple[int | None, int, int, ProbeResult]]:
    """Every (shots, seed, protocol) of ``plan`` on one feature set: yields (shots, seed, training images, result).

    The generator is the suite's inner loop on cached features, without extraction or records (the benchmark times it).
    """
    x_train, y_train = train
    for level in plan.levels:
        for seed in plan.seeds[:1] if level is ALL else plan.seeds:
            picked = draw_shots(y_train, level, seed=seed)
            for protocol in plan.protocols:
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
                    ),
                )


def _predictions(dataset: Dataset, rows: np.ndarray, result: ProbeResult) -> list[tuple]:
    return [
        (
            int(row),
            stored_path(dataset.image_paths[row], base=dataset.root),
            int(label),
            int(predicted),
            float(scores[predicted]),
            scores.tolist(),
        )
        for row, label, predicted, scores in zip(rows, result.labels, result.predictions, result.scores)
    ]


def run_probe_suite(
    *,
    dataset: str,
    backbones: list[str],
    random_weights_for: tuple[str, ...] = (),
    protocols: list[str],
    features: list[str] | None = None,
    shots: list[int | None] = (ALL,),
    seeds: int = DEFAULT_SEEDS,
    split: str = "1",
    config: ProbeConfig = ProbeConfig(),
    device: str = "auto",
    precision: str = "auto",
    workspace: Workspace,
    progress: ProgressCallback | None = None,
    on_run=None,
) -> list[dict]:
    """Run and record the whole suite; returns the run records in order (``on_run(record)`` after each).

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
    registry = RunRegistry(workspace.registry_path)
    prepared = prepare_dataset(dataset, workspace, progress=progress)
    parts = prepared.split(split)
    check_shots(prepared.labels[parts["train"]], list(plan.levels), class_names=prepared.class_names)
    group_id = uuid.uuid4().hex[:12]
    versions = library_versions()
    records, done = [], 0
    for choice, variant in plan.choices:
        started = time.perf_counter()
        feature_set = extract_features(
            prepared,
            choice.backbone,
            workspace=workspace,
            weights=choice.weights,
            device=device,
            precision=precision,
            progress=progress,
            variant=variant,
        )
        features_seconds = time.perf_counter() - started
        (x_train, train_rows), (x_valid, valid_rows), (x_test, test_rows) = (
            feature_set.select(parts[p]) for p in ("train", "val", "test")
        )
        valid, test = (x_valid, prepared.labels[valid_rows]), (x_test, prepared.labels[test_rows])
        grid = probe_grid(
            (x_train, prepared.labels[train_rows]),
            valid,
            test,
            num_classes=prepared.num_classes,
            plan=plan,
            config=config,
        )
        for level, seed, train_images, result in grid:
            record = _record(
                registry,
                workspace=workspace,
                dataset=prepared,
                choice=choice,
                variant=variant,
                level=level,
                seed=seed,
                split=split,
                group_id=group_id,
                versions=versions,
                config=config,
                device=device,
                precision=precision,
                feature_set=feature_set,
                features_seconds=features_seconds,
                test_rows=test_rows,
                result=result,
                train_images=train_images,
            )
            records.append(record)
            done += 1
            shots_text = "all" if level is ALL else f"{level}-shot"
            # Between runs: the job runner's cancel takes effect here.
            report(
                progress,
                "probe",
                done,
                plan.runs,
                message=f"{choice.label} · {variant} · {result.protocol} · {shots_text} · seed {seed}",
            )
            if on_run is not None:
                on_run(record)
    return records


def _record(
    registry: RunRegistry,
    *,
    workspace: Workspace,
    dataset: Dataset,
    choice: BackboneChoice,
    variant: str,
    level: int | None,
    seed: int,
    split: str,
    group_id: str,
    versions: dict,
    config: ProbeConfig,
    device: str,
    precision: str,
    feature_set,
    features_seconds: float,
    test_rows: np.ndarray,
    result: ProbeResult,
    train_images: int,
) -> dict:
    protocol_config = {
        "mlp": config.mlp.to_dict(),
        "linear": config.to_dict()["linear"],
        "logreg": config.to_dict()["logreg"],
        "knn": {"ks": list(config.knn_ks), "temperature": config.knn_temperature},
        "ncm": {},
    }[result.protocol]
    head = (
        result.head_config.to_dict()
        if result.head_config
        else {"head": result.protocol, "standardise": result.standardised}
    )
    run = {
        "dataset_key": dataset.key,
        "dataset_name": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "synthetic": dataset.synthetic,
        "class_names": list(dataset.class_names),
        "split": split,
        "backbone": choice.backbone,
        "weights": choice.weights,
        "seed": seed,
        "versions": versions,
        "group_id": group_id,
        "protocol": result.protocol,
        "features": variant,
        "shots": level,
        "config": {
            "dataset": dataset.key,
            "split": split,
            "backbone": choice.backbone,
            "weights": choice.weights,
            "device": device,
            "precision": precision,
            "protocol": result.protocol,
            "features": variant,
            "shots": level,
            "seed": seed,
            "train_images": train_images,
            "probe": protocol_config,
            "head": head,
            "excluded_images": list(dataset.excluded),
            "validation": "the whole validation part at every shots level",
        },
    }
    outcome = {
        "weights_tag": feature_set.weights_tag,
        "device": feature_set.device,
        "precision": feature_set.precision,
        "timings": {
            "features_s": features_seconds,
            "features_cached": feature_set.from_cache,
            "extraction_s": feature_set.seconds,
            "train_s": result.seconds,
            "total_s": result.seconds,
        },
        "best_epoch": result.hyperparameter["value"] if result.protocol == "mlp" else None,
        "test_acc": result.test.accuracy,
        "test_loss": result.test_loss,
        "per_class_acc": result.test.per_class_accuracy,
        "confusion": result.test.confusion,
        "skipped": [list(s) for s in feature_set.skipped],
        "features_path": stored_path(feature_set.cache_path, base=workspace.root),
        "epochs": result.epochs,
        "predictions": _predictions(dataset, test_rows, result),
        "metrics": result.record_metrics(),
    }
    keep_head = result.head_state is not None and level is ALL and variant == default_variant(choice.backbone)

    def write_head(run_id: int) -> str:
        path = workspace.heads_dir / f"run-{run_id}.safetensors"
        with atomic_write(path) as tmp:
            save_file(
                {k: v.contiguous() for k, v in result.head_state.items()},
                str(tmp),
                metadata={"run_id": str(run_id), "protocol": result.protocol},
            )
        return stored_path(path, base=workspace.root)

    run_id = registry.record_completed_run(run=run, result=outcome, head=write_head if keep_head else None)
    return registry.get_run(run_id)


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
