"""Command line: ``python -m core --help``.

python -m core compare --dataset synthetic --backbones efficientnet_lite0 resnet50 --random-weights-for resnet50
python -m core prepare --dataset oxford17
python -m core runs
python -m core backbones
python -m core predict --run 3 photo.jpg other.heic
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from core.backbones.registry import (
    TIMM_PREFIX,
    get_config,
    list_backbones,
    list_timm_backbones,
    parse_weights_overrides,
)
from core.base.errors import FlowerProbeError
from core.base.fileio import atomic_write_bytes
from core.base.progress import ProgressEvent, format_duration
from core.base.workspace import Workspace
from core.data.datasets import DEFAULT_SPLIT, list_datasets, prepare_dataset
from core.features.extract import DEVICES, PRECISIONS
from core.features.runtime import RUNTIME_HELP, RUNTIMES
from core.health.checks import HealthConfig
from core.maps.projection import MAP_METHODS, MapParams
from core.probing.experiment import WEIGHTS_SEPARATOR, parse_backbone, run_comparison
from core.probing.heads import HEAD_ARCHITECTURES, HeadConfig
from core.probing.presets import HEAD_DEFAULTS, REFERENCE
from core.probing.probes import ALL_PROTOCOLS, PROTOCOLS
from core.probing.suite import DEFAULT_SEEDS, fewshot_table, parse_shots, protocols_table, result_rows, run_probe_suite
from core.probing.summary import summarise_runs
from core.runs.naming import run_name
from core.runs.registry import RunRegistry
from core.runs.sanity import run_warnings

DATASET_HELP = "oxford17, synthetic, or folder:<name under the data root>"


class ConsoleProgress:
    """Prints epochs the way the reference experiment does, and a progress bar for long steps.

    On a terminal the bar redraws in place at most every 0.2 s; in a log file it prints a line per 10%.
    """

    def __init__(self, stream=sys.stderr, *, ignore: tuple[str, ...] = ()) -> None:
        self.stream = stream
        self.ignore = ignore  # stages not shown (compare prints each run itself, so not the suite's run count)
        self.interactive = stream.isatty()
        self._last_draw = 0.0
        self._last_decile: tuple[str, int] = ("", -1)

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage in self.ignore:
            return
        if event.stage == "train":
            m = event.metrics
            print(
                f"Epoch: {m['epoch']} | train loss: {m['train_loss']:.4f} | train acc: {m['train_acc']:.1f} | "
                f"valid loss: {m['valid_loss']:.4f} | valid acc: {m['valid_acc']:.1f}",
                flush=True,
            )
            if m["saved_best"]:
                print(f"Save best model at epoch {m['epoch']}.", flush=True)
            return
        finished = bool(event.total) and event.done >= event.total
        if self.interactive:
            now = time.monotonic()
            if not finished and now - self._last_draw < 0.2:
                return
            self._last_draw = now
        else:
            decile = (event.stage, int(event.fraction * 10))
            if decile == self._last_decile:
                return
            self._last_decile = decile
        width = 30
        filled = int(width * event.fraction)
        rate = f" {event.rate:.1f}/s" if event.rate else ""
        if event.seconds_left is not None and not finished:
            rate += f" {format_duration(event.seconds_left)} left"
        total = f"{event.done}/{event.total}" if event.total else f"{event.done}"
        line = f"{event.stage:>9} [{'#' * filled}{'.' * (width - filled)}] {total}{rate} {event.message[:40]}"
        self.stream.write(f"\r{line:<90}" + ("\n" if finished else "") if self.interactive else line + "\n")
        self.stream.flush()


def _print_run(record: dict, workspace: Workspace) -> None:
    # The reference experiment's own line first (unchanged since the first release), then the run's one name.
    print(f"Test loss: {record['test_loss']:.4f} | test acc: {record['test_acc']:.1f}")
    print(f"Recorded as {run_name(record)}")
    for warning in run_warnings(record, workspace):
        print(f"Warning: {warning.text}")
    skipped = record.get("skipped") or []
    if skipped:
        print(f"Skipped {len(skipped)} unreadable image(s):")
        for path, reason in skipped:
            print(f"  {path}: {reason}")
    print()


def comparison_table(records: list[dict]) -> str:
    """Side-by-side table, one row per experiment (``core.probing.summary``); with several splits, mean and std over
    them.
    """
    lines = [
        f"{'backbone':<34} {'splits':>6} {'test acc':>15} {'test loss':>15} {'features s':>10} {'train s':>8} device"
    ]
    for summary in summarise_runs(records):
        runs = summary.runs
        label = summary.first["backbone"] + (" (random weights)" if summary.first["weights"] == "random" else "")
        if len(runs) > 1:
            acc, loss = (
                f"{summary.acc_mean:.1f} ± {summary.acc_std:.1f}",
                f"{summary.loss_mean:.4f} ± {summary.loss_std:.4f}",
            )
        else:
            acc, loss = f"{summary.acc_mean:.1f}", f"{summary.loss_mean:.4f}"
        features_s = sum(r["timings"]["features_s"] for r in runs)
        train_s = sum(r["timings"]["train_s"] for r in runs)
        lines.append(
            f"{label:<34} {','.join(summary.splits):>6} {acc:>15} {loss:>15} {features_s:>10.1f} {train_s:>8.2f} "
            f"{runs[0]['device']}"
        )
    return "\n".join(lines)


def _cmd_compare(args: argparse.Namespace, workspace: Workspace) -> None:
    head = HeadConfig(
        architecture=args.head_architecture,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.head_batch_size,
        seed=args.seed,
        standardise=args.standardise,
    )

    def on_run_start(config) -> None:
        print(
            f"=== {config.backbone}{' (random weights)' if config.weights == 'random' else ''} "
            f"on {args.dataset}, split {config.split}",
            flush=True,
        )

    records = run_comparison(
        dataset=args.dataset,
        backbones=with_weights_overrides(args.backbones, parse_weights_overrides(args.weights)),
        split=args.split,
        head=head,
        random_weights_for=tuple(args.random_weights_for),
        device=args.device,
        precision=args.precision,
        runtime=args.runtime,
        workspace=workspace,
        progress=ConsoleProgress(ignore=("probe",)),
        on_run_start=on_run_start,
        on_run=lambda record: _print_run(record, workspace),
    )
    print(comparison_table(records))
    print(f"\nRecorded runs {', '.join(str(r['id']) for r in records)} in {workspace.registry_path}")


def _probe_layers(args: argparse.Namespace, workspace: Workspace) -> None:
    """``probe --layers``: the cheap protocols on every chosen block's pooled features, one forward pass."""
    from core.probing.layers import LAYER_PROTOCOLS, run_layer_probes

    asked = [p.strip() for p in args.protocols.split(",")] if args.protocols_given else list(LAYER_PROTOCOLS)
    records = run_layer_probes(
        dataset=args.dataset,
        backbones=with_weights_overrides(args.backbones, parse_weights_overrides(args.weights)),
        random_weights_for=tuple(args.random_weights_for),
        layers=args.layers,
        protocols=asked,
        split=args.split,
        device=args.device,
        precision=args.precision,
        workspace=workspace,
        progress=ConsoleProgress(),
    )
    print("Layer-wise: test top-1 % on the whole training part [95 % bootstrap interval], per block")
    print(protocols_table(records))
    print(f"\nRecorded {len(records)} runs in {workspace.registry_path}")


def _probe_zero_shot(args: argparse.Namespace, workspace: Workspace, *, check_only: bool) -> list[dict]:
    """``probe --protocols ...,zeroshot``: each backbone's CLIP text tower on the dataset's class names."""
    from core.probing.experiment import backbone_choices
    from core.probing.zeroshot import check_prompts, clip_source, load_prompts, run_zero_shot
    from core.runs.registry import RunRegistry

    choices = backbone_choices(
        with_weights_overrides(args.backbones, parse_weights_overrides(args.weights)), tuple(args.random_weights_for)
    )
    for choice in choices:
        clip_source(choice.backbone)
    dataset = prepare_dataset(args.dataset, workspace, progress=ConsoleProgress())
    prompts = load_prompts(workspace, dataset)
    check_prompts(prompts.class_names, prompts.templates, num_classes=dataset.num_classes)
    if check_only:
        return []
    registry = RunRegistry(workspace.registry_path)
    return [
        run_zero_shot(
            dataset=dataset,
            backbone=choice.backbone,
            weights=choice.weights,
            split=args.split,
            workspace=workspace,
            registry=registry,
            progress=ConsoleProgress(),
        )
        for choice in choices
    ]


def _print_zero_shot(records: list[dict]) -> None:
    from core.runs.naming import weights_name

    print("\nZero-shot (class names and prompt templates, no labelled image): test top-1 % [95 % interval]")
    for run in records:
        low, high = run["metrics"]["test_acc_ci"]
        templates = run["metrics"]["hyperparameter"]["value"]
        print(
            f"  {run['backbone']} ({weights_name(run['weights'])}): {run['test_acc']:.1f} [{low:.1f}, {high:.1f}]"
            f"  ({templates} templates; run {run['id']})"
        )


def _cmd_probe(args: argparse.Namespace, workspace: Workspace) -> None:
    args.protocols_given = args.protocols is not None
    args.protocols = args.protocols or ",".join(PROTOCOLS)
    if args.layers:
        _probe_layers(args, workspace)
        return
    zero_shot = "zeroshot" in [p.strip() for p in args.protocols.split(",")]
    if zero_shot:  # refused before anything runs: a backbone without a text tower, bad class names
        _probe_zero_shot(args, workspace, check_only=True)
        args.protocols = ",".join(p.strip() for p in args.protocols.split(",") if p.strip() != "zeroshot")
        if not args.protocols:
            _print_zero_shot(_probe_zero_shot(args, workspace, check_only=False))
            return
    features = [v.strip() for v in args.features.split(",")] if args.features else None
    new_runs: list[dict] = []  # recorded by this command; a resumed suite's others were recorded before
    records = run_probe_suite(
        dataset=args.dataset,
        backbones=with_weights_overrides(args.backbones, parse_weights_overrides(args.weights)),
        random_weights_for=tuple(args.random_weights_for),
        protocols=[p.strip() for p in args.protocols.split(",")],
        features=features,
        shots=parse_shots(args.shots),
        seeds=args.seeds,
        split=args.split,
        device=args.device,
        precision=args.precision,
        runtime=args.runtime,
        workspace=workspace,
        progress=ConsoleProgress(),
        on_run=new_runs.append,
    )
    print("Test top-1 % on the whole training part, [95 % bootstrap interval over test images]")
    print(protocols_table(records))
    if any(r["shots"] is not None for r in records):
        print(f"\nFew-shot: test top-1 %, mean ± std over {args.seeds} draws (validation part whole at every level)")
        print(fewshot_table(records))
    if args.json:
        atomic_write_bytes(args.json, json.dumps({"results": result_rows(records)}, indent=1).encode("utf-8"))
        print(f"\nWrote {args.json}")
    if zero_shot:
        _print_zero_shot(_probe_zero_shot(args, workspace, check_only=False))
    earlier = len(records) - len(new_runs)
    resumed = f", resuming it: {earlier} were recorded before" if earlier else ""
    print(
        f"\nRecorded {len(new_runs)} runs (group {records[0]['group_id']}, {len(records)} runs{resumed}) "
        f"in {workspace.registry_path}"
    )


def _cmd_cost(args: argparse.Namespace, workspace: Workspace) -> None:
    from core.cost.measure import cost_table, cpu_model_and_flags, load_average, measure_costs  # only this command

    specs = [(c.backbone, c.weights) for c in map(parse_backbone, args.backbones)]
    cpu, flags = cpu_model_and_flags()
    print(f"CPU: {cpu}; flags {' '.join(flags) or 'none of interest'}; load average {load_average()}", flush=True)
    results = measure_costs(
        specs,
        workspace=workspace,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        remeasure=args.remeasure,
        progress=ConsoleProgress(),
    )
    costs = [cost for _, _, cost, _, _ in results if cost is not None]
    if costs:
        print(cost_table(costs))
    for backbone, weights, cost, reused, error in results:
        label = backbone if weights == "pretrained" else f"{backbone}{WEIGHTS_SEPARATOR}{weights}"
        if error is not None:
            print(f"{label}: not measured: {error}")
            continue
        notes = [
            f"{cost.device}, {cost.runtime}, batch {cost.batch_size}, input {cost.input_size}px",
            "stored figure reused (--remeasure to measure again)" if reused else f"measured in {cost.seconds:.1f} s",
            f"load average {cost.load_before} before, {cost.load_after} after",
            f"end to end from {cost.end_to_end_note}",
            f"forward memory: {cost.memory_kind}, peak {cost.peak_memory_bytes / 2**20:,.0f} MiB",
        ]
        if not cost.model_batch_warm:
            notes.append("* one cold batch only (a warm one did not fit in the time budget)")
        if cost.busy:
            notes.append(cost.busy)
        print(f"{label}: " + "; ".join(notes))
    if args.json:
        payload = {
            "costs": [cost.to_dict() for cost in costs],
            "not_measured": [{"backbone": b, "weights": w, "error": e} for b, w, _, _, e in results if e is not None],
        }
        atomic_write_bytes(args.json, json.dumps(payload, indent=1).encode("utf-8"))
        print(f"Wrote {args.json}")
    if not costs:
        raise FlowerProbeError("no backbone could be measured; the reasons are above.")


def _cmd_prepare(args: argparse.Namespace, workspace: Workspace) -> None:
    dataset = prepare_dataset(args.dataset, workspace, progress=ConsoleProgress())
    print(
        f"{dataset.name}: {len(dataset.image_paths)} images, {dataset.num_classes} classes, "
        f"splits {sorted(dataset.splits)} in {dataset.root}"
    )


def _cmd_datasets(args: argparse.Namespace, workspace: Workspace) -> None:
    for entry in list_datasets(workspace):
        print(f"{entry.key:<30} {entry.name:<32} {entry.state}")


def _cmd_health(args: argparse.Namespace, workspace: Workspace) -> None:
    from core.backbones.resolved import resolve_backbone
    from core.base.csv_export import csv_text
    from core.base.errors import MissingFileError
    from core.health.checks import (  # only this command needs them
        CSV_COLUMNS,
        dataset_health,
        report_text,
    )

    config = HealthConfig(split=args.split, folds=args.folds, duplicate_threshold=args.duplicate_threshold)
    backbone = resolve_backbone(args.backbone, weights=args.weights)  # looked up once, passed down
    options = dict(workspace=workspace, variant=args.features, config=config)
    try:
        report = dataset_health(args.dataset, backbone, extract=False, progress=ConsoleProgress(), **options)
    except MissingFileError:
        if args.no_extract:
            raise
        # As `probe` and `compare` do: extract what is missing, but say what it costs first.
        print(_extraction_cost(args.dataset, args.backbone, workspace), flush=True)
        report = dataset_health(args.dataset, backbone, extract=True, progress=ConsoleProgress(), **options)
    print(report_text(report, top=args.top))
    if args.csv:
        atomic_write_bytes(args.csv, csv_text(report.flagged_rows(), columns=CSV_COLUMNS).encode("utf-8"))
        print(f"\nWrote {len(report.flagged_rows())} flagged row(s) to {args.csv}")


def _extraction_cost(dataset_key: str, backbone: str, workspace: Workspace) -> str:
    """``No cached ... features: extracting them first, N images, about T here (measured|estimated rate).``"""
    from core.data.datasets import load_dataset
    from core.features.extract import device_name, select_device
    from core.features.rates import measured_rates
    from core.probing.experiment import ESTIMATED_CPU_IMAGES_PER_S, ESTIMATED_UNKNOWN_IMAGES_PER_S

    n_images = len(load_dataset(dataset_key, workspace).image_paths)
    rate = measured_rates(workspace).get(backbone, {}).get(device_name(select_device("auto")))
    basis = "at the rate measured in this workspace" if rate else "an estimate from a plain 2-core CPU's rate"
    rate = rate or ESTIMATED_CPU_IMAGES_PER_S.get(backbone, ESTIMATED_UNKNOWN_IMAGES_PER_S)
    return (
        f"No cached {backbone} features for {dataset_key}: extracting them first, {n_images} images, about "
        f"{format_duration(n_images / rate)} here ({basis}); later checks reuse them. --no-extract refuses instead."
    )


def _cmd_agree(args: argparse.Namespace, workspace: Workspace) -> None:
    from core.agreement.report import agreement_report
    from core.probing.stats import comparison_sentence, paired_comparison

    if len(args.backbones) != 2:
        raise FlowerProbeError(f"backbones must name exactly two feature sets, got {len(args.backbones)}.")
    variants = [args.features_a, args.features_b]

    report = agreement_report(
        args.dataset,
        *args.backbones,
        workspace=workspace,
        k=args.k,
        variant_a=variants[0],
        variant_b=variants[1],
        split=args.split,
        extract=not args.no_extract,
        progress=ConsoleProgress(),
        # Said before a forward pass over every image, with what it costs here.
        before_extract=lambda name: print(_extraction_cost(args.dataset, name, workspace), flush=True),
    )
    pair = report.pair
    print(
        f"{pair.dataset_name}: A = {pair.source_a.describe()}, B = {pair.source_b.describe()}, {pair.n_images:,} images"
    )
    for sentence in report.sentences():
        print(f"- {sentence}")
    if report.errors is None:
        print(
            "- No error consistency: no completed run of each on this dataset to compare mistakes (python -m core "
            f"compare --dataset {args.dataset} --backbones {' '.join(args.backbones)} makes them)."
        )
    else:
        comparison = paired_comparison(report.correct_a, report.correct_b)
        print(f"- {comparison_sentence(comparison, name_a='A', name_b='B')}.")
    if args.json:
        atomic_write_bytes(args.json, json.dumps(report.to_dict(), indent=1).encode("utf-8"))
        print(f"Wrote {args.json}")


def with_weights_overrides(backbones: list[str], overrides: dict[str, str]) -> list[str]:
    """``--weights NAME=PATH`` (``parse_weights_overrides``' dict): each pretrained NAME among ``backbones``
    runs with PATH."""
    plain = {spec for spec in backbones if parse_backbone(spec).weights == "pretrained"}
    unknown = sorted(set(overrides) - plain)
    if unknown:
        raise FlowerProbeError(
            f"weights names {', '.join(unknown)}, which is not among the backbones {' '.join(backbones)} "
            "(with pretrained weights)."
        )
    return [f"{spec}{WEIGHTS_SEPARATOR}{overrides[spec]}" if spec in overrides else spec for spec in backbones]


def _cmd_backbones(args: argparse.Namespace, workspace: Workspace) -> None:
    if args.timm is None:
        for name in list_backbones():
            config = get_config(name)
            print(f"{name:<20} {config.feature_dim:>5}-d  {config.description}")
        return
    configs, more = list_timm_backbones(args.timm, limit=args.limit)
    if not configs:
        raise FlowerProbeError(
            f"No pretrained timm model matches {args.timm!r}; try a shorter pattern (e.g. dinov2, convnext, clip)."
        )
    width = max(len(c.name) for c in configs)
    print(f"{'backbone':<{width}} {'features':>8} {'input':>9} {'resize':>6}  interpolation")
    for config in configs:
        print(
            f"{config.name:<{width}} {config.feature_dim:>6}-d {config.input_size:>4}x{config.input_size:<4} "
            f"{config.resize:>6}  {config.interpolation}"
        )
    if more:
        print(f"... and {more} more; narrow the pattern or raise --limit.")


def _cmd_runs(args: argparse.Namespace, workspace: Workspace) -> None:
    if args.groups:  # each comparison or probe suite: its status and how many of its runs it recorded
        for group in RunRegistry(workspace.registry_path).list_groups(limit=args.limit):
            config = group["config"]
            print(
                f"group {group['id']} · {group['kind']} · {group['status']} · {group['recorded']}/{group['planned']} "
                f"runs · {config.get('dataset')} · {' '.join(config.get('backbones', []))}"
                + (f" · {group['error']}" if group["error"] else "")
            )
        return
    for run in RunRegistry(workspace.registry_path).list_runs(limit=args.limit):
        # One name for a run everywhere (core.runs.naming), then what the name leaves out: status and dataset.
        print(f"{run_name(run)} · {run['status']} · {run['dataset_key']}")
        for warning in run_warnings(run, workspace) if run["status"] == "completed" else []:
            print(f"    warning: {warning.text}")


def _cmd_predict_bundle(args: argparse.Namespace) -> None:
    from core.bundle.run import Bundle  # only this command needs it

    predictions = Bundle(args.bundle).classify([(path, path) for path in args.images])
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2, ensure_ascii=False))
    else:
        for prediction in predictions:
            print(prediction.name)
            if prediction.error:
                print(f"  error: {prediction.error}")
            for rank, (class_name, probability) in enumerate(prediction.top, start=1):
                print(f"  {rank}. {class_name:<30} {probability:.4f}")
    if all(p.error for p in predictions):
        raise FlowerProbeError(f"None of the {len(predictions)} image(s) could be classified; the reasons are above.")


def _cmd_export(args: argparse.Namespace, workspace: Workspace) -> None:
    from core.bundle.export import export_bundle  # only this command needs it

    result = export_bundle(args.run, workspace=workspace, out=args.out, force=args.force, progress=ConsoleProgress())
    worst = max(p["max_abs"] for p in result.parity)
    print(
        f"Wrote {result.folder} ({result.exporter} exporter) in {result.seconds:.1f} s. Parity with predict at batch "
        f"sizes {', '.join(str(p['batch']) for p in result.parity)}: probabilities within {worst:.1e}, same top-1. "
        f"onnxruntime here: {result.cost['latency_ms_batch1']} ms for one image, "
        f"{result.cost['images_per_s_batch32']} images/s at batch 32."
    )


def _attention_summaries(predictor, images: list[str], workspace: Workspace) -> dict[str, dict]:
    """For an attentive run, where its head looked on each photo (``core.predict.attention``), by photo name."""
    if not predictor.reads_tokens:
        return {}
    from core.predict.attention import attention_views

    views = attention_views(predictor.run, [(path, path) for path in images], workspace=workspace, progress=None)
    return {
        v.name: {"attention_grid": list(v.weights.shape), "peak_attention_vs_uniform": round(v.peak_share, 3)}
        for v in views
    }


def _cmd_predict(args: argparse.Namespace, workspace: Workspace) -> None:
    from core.predict.classify import Predictor  # only this command needs it

    if args.bundle:
        _cmd_predict_bundle(args)
        return
    predictor = Predictor.from_run(
        args.run, workspace=workspace, device=args.device, progress=ConsoleProgress(), extract_missing=True
    )  # a command line may take its time; a page queues a job
    predictions = predictor.predict([(path, path) for path in args.images])
    ok_images = [path for path, prediction in zip(args.images, predictions, strict=True) if prediction.ok]
    attention = _attention_summaries(predictor, ok_images, workspace)
    if args.json:
        print(f"Probabilities: {predictor.probabilities_note}.", file=sys.stderr)  # stdout stays one JSON document
        rows = [{**p.to_dict(), **attention.get(p.name, {})} for p in predictions]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        print(f"Probabilities: {predictor.probabilities_note}.")
        for prediction in predictions:
            print(prediction.name)
            if not prediction.ok:
                print(f"  error: {prediction.error}")
            for rank, (class_name, probability) in enumerate(prediction.top, start=1):
                print(f"  {rank}. {class_name:<30} {probability:.4f}")
            if prediction.name in attention:
                rows, cols = attention[prediction.name]["attention_grid"]
                peak = attention[prediction.name]["peak_attention_vs_uniform"]
                print(f"  attention over {rows} x {cols} patches, the most-attended one {peak:.1f}x the uniform weight")
    if not any(p.ok for p in predictions):
        raise FlowerProbeError(f"None of the {len(predictions)} image(s) could be classified; the reasons are above.")


def _cmd_map(args: argparse.Namespace, workspace: Workspace) -> None:
    from core.backbones.resolved import resolve_backbone
    from core.data.datasets import load_dataset
    from core.features.extract import extract_features
    from core.maps.projection import cached_map, map_png

    backbone = resolve_backbone(args.backbone, weights=args.weights)  # looked up once, passed down
    dataset = load_dataset(args.dataset, workspace)
    features = extract_features(dataset, backbone, workspace=workspace, progress=ConsoleProgress())
    params = MapParams(perplexity=args.perplexity, n_neighbors=args.n_neighbors, min_dist=args.min_dist)
    feature_map = cached_map(
        features.features,
        method=args.method,
        params=params,
        cache_dir=workspace.features_dir / "maps",
        progress=ConsoleProgress(),
    )
    title = (
        f"{dataset.name} · {args.backbone} ({args.weights}) · {MAP_METHODS[args.method]}, "
        f"{params.describe(args.method)}"
    )
    png = map_png(feature_map.embedding, dataset.labels[features.rows], class_names=dataset.class_names, title=title)
    atomic_write_bytes(args.out, png)
    print(f"Wrote {args.out} ({len(features.rows)} images)")


def _cmd_patches(args: argparse.Namespace, workspace: Workspace) -> None:
    from pathlib import Path

    from core.backbones.resolved import resolve_backbone
    from core.maps.patches import patch_grids, patch_views, png_bytes, sign_note, view_sheet

    grids = patch_grids(
        [(Path(path).name, path) for path in args.images],
        backbone=resolve_backbone(args.backbone, weights=args.weights),  # looked up once, passed down
        workspace=workspace,
        progress=ConsoleProgress(),
    )
    views, pca = patch_views(grids, threshold=args.threshold)
    for index, view in enumerate(views):
        out = Path(args.out) / f"{index:03d}-{Path(view.name).stem}-patches.png"
        atomic_write_bytes(out, png_bytes(view_sheet(view)))
        print(f"Wrote {out}: photo | first component | foreground (> {args.threshold:g}) | RGB of 3 components")
    print(f"{views[0].kind} on a {views[0].grid[0]} x {views[0].grid[1]} grid. {sign_note(pca)}")


def _cmd_extract(args: argparse.Namespace, workspace: Workspace) -> None:
    from core.backbones.resolved import resolve_backbone
    from core.features.extract import extract_features, read_features

    backbone = resolve_backbone(args.backbone, weights=args.weights)  # looked up once, passed down
    variants = [backbone.check_variant(v) for v in (args.features or [None])]
    dataset = prepare_dataset(args.dataset, workspace, progress=ConsoleProgress())
    if args.tokens:  # first: its forward pass caches the pooled variants too, so the extraction below reads them
        _extract_tokens(args, workspace, dataset, backbone)
    common = {
        "workspace": workspace,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "progress": ConsoleProgress(),
        "variant": variants[0],
    }
    if args.engine == "ray":
        from core.features.ray_engine import extract_features_ray

        result = extract_features_ray(
            dataset,
            backbone,
            address=args.ray_address,
            num_gpus_per_worker=args.num_gpus_per_worker,
            runtime=args.runtime,
            **common,
        )
    else:
        result = extract_features(dataset, backbone, device=args.device, runtime=args.runtime, **common)
    how = (
        "read from the cache"
        if result.from_cache
        else f"computed in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s)"
    )
    print(
        f"{dataset.name} · {args.backbone}: {len(result.rows)} images, {how}, {result.precision} on {result.device} "
        f"({result.runtime})"
    )
    for variant in variants:  # every variant came from the same pass: the others are read, not computed
        features = result if variant == result.variant else read_features(result.cache_path, variant=variant)
        print(f"  {variant}: {features.features.shape[1]}-d")
    if result.skipped:
        print(
            f"Skipped {len(result.skipped)} unreadable image(s), first: {result.skipped[0][0]}: {result.skipped[0][1]}"
        )
    print(f"Cache: {result.cache_path}")


def _extract_tokens(args: argparse.Namespace, workspace: Workspace, dataset, backbone) -> None:
    """``extract --tokens``: final patch tokens too (fp16), after saying their size; refused if the disk is short."""
    from core.features.tokens import extract_tokens, size_text, token_entry

    if args.engine != "local":
        raise FlowerProbeError("engine must be local for --tokens (the Ray engine writes pooled features only).")
    _, layout = token_entry(dataset, backbone, workspace=workspace, precision=args.precision, device=args.device)
    print(
        f"Patch tokens: {size_text(layout, len(dataset.image_paths))} on disk ({layout.kind}, "
        f"{layout.grid[0]} x {layout.grid[1]}; left out: {', '.join(layout.excluded)})",
        flush=True,
    )
    cache = extract_tokens(
        dataset,
        backbone,
        workspace=workspace,
        device=args.device,
        precision=args.precision,
        progress=ConsoleProgress(),
    )
    how = "read from the cache" if cache.from_cache else "extracted now"
    print(f"  tokens: {cache.tokens.shape[0]} x {cache.tokens.shape[1]} x {cache.tokens.shape[2]} fp16, {how}")
    print(f"Token cache: {cache.folder}")


def _backbone_spec(text: str) -> str:
    """argparse type of ``--backbones``: ``NAME``, ``NAME@random`` or ``NAME@<checkpoint>`` with a known NAME."""
    try:
        get_config(parse_backbone(text).backbone)
    except FlowerProbeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _experiment_options() -> argparse.ArgumentParser:
    """The options ``compare`` and ``probe`` share (argparse's parent parser): what to run on, with which weights,
    where. Defaults and choices are the engine's own (``REFERENCE``, ``DEFAULT_SPLIT``, ``DEVICES``, ``PRECISIONS``).
    """
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--dataset", default=REFERENCE.dataset, help=DATASET_HELP)
    shared.add_argument(
        "--backbones",
        nargs="+",
        default=list(REFERENCE.backbones),
        type=_backbone_spec,
        metavar="NAME[@random]",
        help=f"from: {', '.join(list_backbones())}. NAME@random runs it with random weights, NAME@<checkpoint path> "
        "with that file; the same NAME may appear twice (efficientnet_lite0 efficientnet_lite0@random: "
        "how much does pretraining matter?)",
    )
    shared.add_argument(
        "--random-weights-for", nargs="*", default=[], metavar="NAME", help="use random weights for these backbones"
    )
    shared.add_argument(
        "--weights",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help=(
            "run backbone NAME with this checkpoint (.pth state dict or .safetensors): "
            "timm:convnext_tiny=/path/ft.safetensors"
        ),
    )
    shared.add_argument(
        "--split",
        default=REFERENCE.split,
        help="1, 2, 3 or all (Oxford 17's official splits; other datasets have split 1)",
    )
    shared.add_argument("--device", default=DEVICES[0], choices=DEVICES)
    shared.add_argument("--precision", default=PRECISIONS[0], choices=PRECISIONS)
    shared.add_argument("--runtime", default=None, choices=RUNTIMES, help=RUNTIME_HELP)
    return shared


def _backbone_options() -> argparse.ArgumentParser:
    """The options of the commands that read one backbone's features of a dataset (``map``, ``extract``, ``health``;
    argparse's parent parser)."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--dataset", required=True, help=DATASET_HELP)
    shared.add_argument("--backbone", required=True, metavar="NAME", help="a name from `backbones`, or timm:<tag>")
    shared.add_argument("--weights", default="pretrained", help="pretrained, random, or a checkpoint path")
    return shared


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core", description="Flower Probe: how good are a frozen backbone's features for my classes?"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    experiment, one_backbone = _experiment_options(), _backbone_options()
    compare = sub.add_parser(
        "compare",
        parents=[experiment],
        help="train a head on each backbone's frozen features and compare them",
    )
    compare.add_argument(
        "--head-architecture",
        "--head",
        dest="head_architecture",
        default=HEAD_DEFAULTS.architecture,
        choices=HEAD_ARCHITECTURES,
        help="the head trained on the features (--head: the older spelling)",
    )
    compare.add_argument("--epochs", type=int, default=HEAD_DEFAULTS.epochs)
    compare.add_argument("--lr", type=float, default=HEAD_DEFAULTS.lr)
    compare.add_argument(
        "--head-batch-size",
        "--batch-size",
        dest="head_batch_size",
        type=int,
        default=HEAD_DEFAULTS.batch_size,
        help="feature vectors per step of the head's training (--batch-size: the older spelling)",
    )
    compare.add_argument("--seed", type=int, default=HEAD_DEFAULTS.seed)
    compare.add_argument(
        "--standardise",
        action="store_true",
        help="centre and scale each feature by the training part's mean and std before the head",
    )
    compare.set_defaults(handler=_cmd_compare)

    probe = sub.add_parser(
        "probe",
        parents=[experiment],
        help="probe frozen features the field's ways (mlp, linear, logreg, k-NN, NCM), few-shot, with intervals",
    )
    probe.add_argument(
        "--protocols",
        default=None,
        help=f"comma-separated, from {', '.join(ALL_PROTOCOLS)} (default {','.join(PROTOCOLS)}; attentive needs "
        "extract --tokens first; zeroshot a CLIP backbone; with --layers: knn, logreg, ncm)",
    )
    probe.add_argument(
        "--layers",
        default=None,
        metavar="all|N,M,...",
        help="layer-wise probing: the pooled features of these blocks (1-based; -1 the last) with k-NN, logreg, NCM",
    )
    probe.add_argument(
        "--features",
        default="",
        help="comma-separated variants (cls, patch_mean, cls+patch_mean, last4; gap for CNNs); "
        "default: each backbone's own (cls for ViTs, gap for CNNs)",
    )
    probe.add_argument("--shots", default="all", help="training images per class, comma-separated, e.g. 1,2,4,8,16,all")
    probe.add_argument(
        "--seeds",
        type=int,
        default=DEFAULT_SEEDS,
        help="random draws per few-shot level (the whole training part runs once)",
    )
    probe.add_argument("--json", metavar="PATH", help="also write every run's result as JSON")
    probe.set_defaults(handler=_cmd_probe)

    prepare = sub.add_parser("prepare", help="download Oxford 17 or generate Synthetic Flowers")
    prepare.add_argument("--dataset", required=True)
    prepare.set_defaults(handler=_cmd_prepare)

    sub.add_parser("datasets", help="list datasets").set_defaults(handler=_cmd_datasets)
    backbones = sub.add_parser("backbones", help="list backbones (built-in, or timm's pretrained models with --timm)")
    backbones.add_argument(
        "--timm",
        metavar="PATTERN",
        help=(
            "list timm's pretrained models matching PATTERN (e.g. dinov2; wildcards allowed), "
            f"usable as {TIMM_PREFIX}<name>"
        ),
    )
    backbones.add_argument(
        "--limit", type=int, default=25, help="at most this many models with --timm (each costs a meta-device build)"
    )
    backbones.set_defaults(handler=_cmd_backbones)
    runs = sub.add_parser("runs", help="list recorded runs")
    runs.add_argument("--limit", type=int, default=30)
    runs.add_argument(
        "--groups", action="store_true", help="list comparisons and probe suites (groups) with their status instead"
    )
    runs.set_defaults(handler=_cmd_runs)

    cost = sub.add_parser(
        "cost", help="measure what each backbone costs on this machine (speed, latency, memory, FLOPs, sizes)"
    )
    cost.add_argument(
        "--backbones", nargs="+", required=True, metavar="B", help="NAME, NAME@random or NAME@<checkpoint path>"
    )
    cost.add_argument("--device", default=DEVICES[0], choices=DEVICES)
    cost.add_argument("--precision", default=PRECISIONS[0], choices=PRECISIONS)
    cost.add_argument("--batch-size", type=int, default=64, help="images per forward, extraction's batch (default 64)")
    cost.add_argument("--remeasure", action="store_true", help="measure again even if the workspace has the figures")
    cost.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    cost.set_defaults(handler=_cmd_cost)

    predict = sub.add_parser("predict", help="classify images with a trained run (the Classify page's prediction)")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=int, metavar="ID", help="a completed run's id (see `runs`)")
    source.add_argument(
        "--bundle", metavar="DIR", help="a folder written by `export`: run its model.onnx with onnxruntime"
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files: JPEG, PNG, WebP, HEIC, ...")
    predict.add_argument("--json", action="store_true", help="print the predictions as JSON")
    predict.add_argument("--device", default=DEVICES[0], choices=DEVICES)
    predict.set_defaults(handler=_cmd_predict)

    export = sub.add_parser(
        "export",
        help="write a run as a deployable folder: model.onnx (backbone + head), preprocessing, labels, model card",
    )
    export.add_argument("--run", type=int, required=True, metavar="ID", help="a completed mlp/linear/logreg run")
    export.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    export.add_argument("--force", action="store_true", help="replace DIR even if it holds files")
    export.set_defaults(handler=_cmd_export)

    map_ = sub.add_parser(
        "map", parents=[one_backbone], help="write a static t-SNE, UMAP or PCA map of a backbone's features as a PNG"
    )
    map_.add_argument("--method", default=next(iter(MAP_METHODS)), choices=list(MAP_METHODS))
    map_.add_argument("--perplexity", type=float, default=MapParams.perplexity, help="t-SNE; at most (images - 1) / 3")
    map_.add_argument("--n-neighbors", type=int, default=MapParams.n_neighbors, help="UMAP; from 2 to images - 1")
    map_.add_argument("--min-dist", type=float, default=MapParams.min_dist, help="UMAP; from 0 to 1")
    map_.add_argument("--out", required=True, metavar="PNG")
    map_.set_defaults(handler=_cmd_map)

    patches = sub.add_parser("patches", help="write the patch-PCA view (DINOv2's figure) of images as PNGs")
    patches.add_argument(
        "--backbone", required=True, metavar="NAME", help="a ViT (patch tokens) or a CNN (last feature map)"
    )
    patches.add_argument("--weights", default="pretrained", help="pretrained, random, or a checkpoint path")
    patches.add_argument(
        "--threshold", type=float, default=0.5, help="foreground threshold on the first component, 0-1"
    )
    patches.add_argument("images", nargs="+", metavar="IMAGE")
    patches.add_argument("--out", required=True, metavar="DIR")
    patches.set_defaults(handler=_cmd_patches)

    extract = sub.add_parser(
        "extract",
        parents=[one_backbone],
        help="extract and cache a backbone's features for a dataset (locally or on Ray)",
    )
    extract.add_argument(
        "--engine", default="local", choices=["local", "ray"], help="ray: a Ray Data job (pip install 'ray[data]')"
    )
    extract.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="the Ray cluster (auto, ray://host:10001); default a local one",
    )
    extract.add_argument("--batch-size", type=int, default=64)
    extract.add_argument(
        "--num-gpus-per-worker", type=float, default=0.0, metavar="G", help="Ray engine: GPUs per model actor"
    )
    extract.add_argument(
        "--features", nargs="*", default=None, metavar="VARIANT", help="check these variants exist (all are cached)"
    )
    extract.add_argument("--device", default=DEVICES[0], choices=DEVICES, help="local engine")
    extract.add_argument("--precision", default=PRECISIONS[0], choices=PRECISIONS)
    extract.add_argument("--runtime", default=None, choices=RUNTIMES, help=RUNTIME_HELP + "; Ray: CPU actors")
    extract.add_argument(
        "--tokens",
        action="store_true",
        help="also cache the final patch tokens (fp16, N x tokens x dim x 2 bytes, said first) for the attentive probe",
    )
    extract.set_defaults(handler=_cmd_extract)

    health = sub.add_parser(
        "health",
        parents=[one_backbone],
        help="likely label errors, duplicates and train/test leakage, outliers, from cached features",
    )
    health.add_argument(
        "--features", default=None, metavar="VARIANT", help="a feature variant (default: the backbone's own)"
    )
    health.add_argument(
        "--split", default=DEFAULT_SPLIT, help="the split whose train/val/test parts are used (Oxford 17: 1, 2 or 3)"
    )
    health.add_argument(
        "--folds", type=int, default=HealthConfig.folds, help="cross-validation folds for the label check"
    )
    health.add_argument(
        "--duplicate-threshold",
        type=float,
        default=HealthConfig.duplicate_threshold,
        metavar="COSINE",
        help="default: from the dataset's own similarities",
    )
    health.add_argument("--top", type=int, default=5, help="candidates printed per issue type")
    health.add_argument("--csv", default=None, metavar="PATH", help="write one row per flagged image")
    health.add_argument(
        "--extract", action="store_true", help="(the default) extract the features first when they are not cached"
    )
    health.add_argument(
        "--no-extract", action="store_true", help="refuse instead of extracting features that are not cached"
    )
    health.set_defaults(handler=_cmd_health)

    agree = sub.add_parser(
        "agree", help="how much two backbones' features agree: neighbours, CKA, and their runs' shared mistakes"
    )
    agree.add_argument("--dataset", required=True, help=DATASET_HELP)
    agree.add_argument(
        "--backbones",
        nargs=2,
        required=True,
        type=_backbone_spec,
        metavar="NAME[@random]",
        help="two feature sets: NAME, NAME@random or NAME@<checkpoint path> (efficientnet_lite0 "
        "efficientnet_lite0@random: what does pretraining change?)",
    )
    agree.add_argument("--k", type=int, default=10, help="nearest neighbours per image (cosine), fewer than the images")
    agree.add_argument("--features-a", default=None, metavar="VARIANT", help="A's feature variant (default: its own)")
    agree.add_argument("--features-b", default=None, metavar="VARIANT", help="B's feature variant (default: its own)")
    agree.add_argument(
        "--split",
        default=None,
        help="the split of the runs whose mistakes are compared (default: the newest both have)",
    )
    agree.add_argument("--json", metavar="PATH", help="also write the measures as JSON")
    agree.add_argument(
        "--no-extract", action="store_true", help="refuse instead of extracting features that are not cached"
    )
    agree.set_defaults(handler=_cmd_agree)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args, Workspace.from_env())
    except FlowerProbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
