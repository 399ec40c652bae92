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
from collections import defaultdict

import numpy as np

from .backbones import get_config, list_backbones
from .datasets import list_datasets, prepare_dataset
from .errors import FlowerProbeError
from .experiment import run_comparison
from .progress import ProgressEvent
from .runs import RunRegistry
from .training import HEAD_TYPES, HeadConfig
from .workspace import Workspace


class ConsoleProgress:
    """Prints epochs the way the reference experiment does, and a progress bar for long steps.

    On a terminal the bar redraws in place at most every 0.2 s; in a log file it prints a line per 10%.
    """

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.interactive = stream.isatty()
        self._last_draw = 0.0
        self._last_decile: tuple[str, int] = ("", -1)

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage == "train":
            m = event.metrics
            print(f"Epoch: {m['epoch']} | train loss: {m['train_loss']:.4f} | train acc: {m['train_acc']:.1f} | "
                  f"valid loss: {m['valid_loss']:.4f} | valid acc: {m['valid_acc']:.1f}", flush=True)
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
        total = f"{event.done}/{event.total}" if event.total else f"{event.done}"
        line = f"{event.stage:>9} [{'#' * filled}{'.' * (width - filled)}] {total}{rate} {event.message[:40]}"
        self.stream.write(f"\r{line:<90}" + ("\n" if finished else "") if self.interactive else line + "\n")
        self.stream.flush()


def _print_run(record: dict) -> None:
    print(f"Test loss: {record['test_loss']:.4f} | test acc: {record['test_acc']:.1f}")
    skipped = record.get("skipped") or []
    if skipped:
        print(f"Skipped {len(skipped)} unreadable image(s):")
        for path, reason in skipped:
            print(f"  {path}: {reason}")
    print()


def comparison_table(records: list[dict]) -> str:
    """Side-by-side table; with several splits per backbone, mean and std over them."""
    by_backbone: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        label = record["backbone"] + (" (random weights)" if record["weights"] == "random" else "")
        by_backbone[label].append(record)
    lines = [f"{'backbone':<34} {'splits':>6} {'test acc':>15} {'test loss':>15} {'features s':>10} {'train s':>8} device"]
    for label, runs in by_backbone.items():
        acc = np.array([r["test_acc"] for r in runs])
        loss = np.array([r["test_loss"] for r in runs])
        spread = (lambda v, f: f"{v.mean():{f}} ± {v.std(ddof=1) if len(v) > 1 else 0:{f}}") if len(runs) > 1 else (lambda v, f: f"{v[0]:{f}}")
        features_s = sum(r["timings"]["features_s"] for r in runs)
        train_s = sum(r["timings"]["train_s"] for r in runs)
        lines.append(f"{label:<34} {','.join(r['split'] for r in runs):>6} {spread(acc, '.1f'):>15} {spread(loss, '.4f'):>15} "
                     f"{features_s:>10.1f} {train_s:>8.2f} {runs[0]['device']}")
    return "\n".join(lines)


def _cmd_compare(args: argparse.Namespace, workspace: Workspace) -> None:
    head = HeadConfig(head=args.head, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, standardise=args.standardise)

    def on_run_start(config) -> None:
        print(f"=== {config.backbone}{' (random weights)' if config.weights == 'random' else ''} on {args.dataset}, split {config.split}", flush=True)

    records = run_comparison(
        dataset=args.dataset, backbones=args.backbones, split=args.split, head=head, random_weights_for=tuple(args.random_weights_for),
        device=args.device, precision=args.precision, workspace=workspace, progress=ConsoleProgress(),
        on_run_start=on_run_start, on_run=_print_run,
    )
    print(comparison_table(records))
    print(f"\nRecorded runs {', '.join(str(r['id']) for r in records)} in {workspace.registry_path}")


def _cmd_prepare(args: argparse.Namespace, workspace: Workspace) -> None:
    dataset = prepare_dataset(args.dataset, workspace, progress=ConsoleProgress())
    print(f"{dataset.name}: {len(dataset.image_paths)} images, {dataset.num_classes} classes, splits {sorted(dataset.splits)} in {dataset.root}")


def _cmd_datasets(args: argparse.Namespace, workspace: Workspace) -> None:
    for entry in list_datasets(workspace):
        print(f"{entry.key:<30} {'prepared' if entry.prepared else 'not prepared':<13} {entry.name}")


def _cmd_backbones(args: argparse.Namespace, workspace: Workspace) -> None:
    for name in list_backbones():
        config = get_config(name)
        print(f"{name:<20} {config.feature_dim:>5}-d  {config.description}")


def _cmd_runs(args: argparse.Namespace, workspace: Workspace) -> None:
    for run in RunRegistry(workspace.registry_path).list_runs(limit=args.limit):
        acc = f"{run['test_acc']:.1f}" if run["test_acc"] is not None else "-"
        print(f"{run['id']:>5} {run['status']:<11} {run['dataset_key']:<22} split {run['split']:<2} {run['backbone']:<18} {run['weights']:<10} test acc {acc}")


def _cmd_predict(args: argparse.Namespace, workspace: Workspace) -> None:
    from .predict import Predictor  # only this command needs it

    predictor = Predictor.from_run(args.run, workspace=workspace, device=args.device, progress=ConsoleProgress())
    predictions = predictor.predict([(path, path) for path in args.images])
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2, ensure_ascii=False))
    else:
        for prediction in predictions:
            print(prediction.name)
            if not prediction.ok:
                print(f"  error: {prediction.error}")
            for rank, (class_name, probability) in enumerate(prediction.top, start=1):
                print(f"  {rank}. {class_name:<30} {probability:.4f}")
    if not any(p.ok for p in predictions):
        raise FlowerProbeError(f"None of the {len(predictions)} image(s) could be classified; the reasons are above.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Flower Probe: how good are a frozen backbone's features for my classes?")
    sub = parser.add_subparsers(dest="command", required=True)

    compare = sub.add_parser("compare", help="train a head on each backbone's frozen features and compare them")
    compare.add_argument("--dataset", default="oxford17", help="oxford17, synthetic, or folder:<name under the data root>")
    compare.add_argument("--backbones", nargs="+", default=["dinov2_vits14", "resnet50"], choices=list_backbones(), metavar="NAME")
    compare.add_argument("--random-weights-for", nargs="*", default=[], metavar="NAME", help="use random weights for these backbones")
    compare.add_argument("--split", default="1", help="1, 2, 3 or all (Oxford 17's official splits; other datasets have split 1)")
    compare.add_argument("--head", default="mlp", choices=HEAD_TYPES)
    compare.add_argument("--epochs", type=int, default=5)
    compare.add_argument("--lr", type=float, default=1e-3)
    compare.add_argument("--batch-size", type=int, default=64)
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--standardise", action="store_true", help="centre and scale each feature by the training part's mean and std before the head")
    compare.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    compare.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    compare.set_defaults(handler=_cmd_compare)

    prepare = sub.add_parser("prepare", help="download Oxford 17 or generate Synthetic Flowers")
    prepare.add_argument("--dataset", required=True)
    prepare.set_defaults(handler=_cmd_prepare)

    sub.add_parser("datasets", help="list datasets").set_defaults(handler=_cmd_datasets)
    sub.add_parser("backbones", help="list backbones").set_defaults(handler=_cmd_backbones)
    runs = sub.add_parser("runs", help="list recorded runs")
    runs.add_argument("--limit", type=int, default=30)
    runs.set_defaults(handler=_cmd_runs)

    predict = sub.add_parser("predict", help="classify images with a trained run (the Classify page's prediction)")
    predict.add_argument("--run", type=int, required=True, metavar="ID", help="a completed run's id (see `runs`)")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files: JPEG, PNG, WebP, HEIC, ...")
    predict.add_argument("--json", action="store_true", help="print the predictions as JSON")
    predict.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    predict.set_defaults(handler=_cmd_predict)
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
