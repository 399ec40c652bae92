"""Section "probes": the full probe suite on cached features, and the cost of recording its runs.

Issue 10's target: the five protocols x six shots levels (1, 2, 4, 8, 16, all) x five seeds for one
backbone on 1,360 x 384 cached features (ViT-S/14's size; 680 train / 340 valid / 340 test, 17 classes)
in under 60 s on 2 cores. The features are Gaussian class clusters with heavy noise (the probes' cost
does not depend on the values, but k-NN ties and L-BFGS iterations do, so they are not trivially
separable). The grid is ``core.probing.suite.probe_grid``, the suite's own inner loop; recording is timed
separately: one ``record_completed_run`` transaction per run, with 340 per-image predictions each.
"""

from __future__ import annotations

import time

import numpy as np

from .common import Context, Target
from .heads import clustered_features

IMAGES, DIM, CLASSES = 1360, 384, 17
NOISE = 6.0  # cluster noise (unit-variance centres): probes land between 40 % and 70 %, far from 100 %


def _parts(seed: int = 0):
    features, labels = clustered_features(IMAGES, DIM, classes=CLASSES, seed=seed)
    features = features + np.random.default_rng(seed + 1).normal(scale=NOISE, size=features.shape).astype(np.float32)
    half, three_quarters = IMAGES // 2, IMAGES * 3 // 4
    return (
        (features[:half], labels[:half]),
        (features[half:three_quarters], labels[half:three_quarters]),
        (features[three_quarters:], labels[three_quarters:]),
    )


def time_suite(*, levels: list[int | None], seeds: int) -> dict:
    from core.probing.probes import PROTOCOLS
    from core.probing.suite import plan_suite, probe_grid

    train, valid, test = _parts()
    plan = plan_suite(backbones=["dinov2_vits14"], protocols=list(PROTOCOLS), features=None, shots=levels, seeds=seeds)
    per_protocol: dict[str, float] = dict.fromkeys(PROTOCOLS, 0.0)
    runs, started, last = 0, time.perf_counter(), time.perf_counter()
    results = []
    for _level, _seed, _images, result in probe_grid(train, valid, test, num_classes=CLASSES, plan=plan):
        now = time.perf_counter()
        per_protocol[result.protocol] += now - last
        last, runs = now, runs + 1
        results.append(result)
    return {
        "runs": runs,
        "seconds": time.perf_counter() - started,
        "per_protocol_s": per_protocol,
        "results": results,
        "test_n": len(test[1]),
    }


def time_recording(context: Context, results: list) -> dict:
    """Seconds to record ``results`` as runs, one transaction each (the suite's way), into the bench workspace."""
    from core.runs.registry import RunRegistry

    path = context.workspace_root / "probe-bench-runs.sqlite"
    for stale in context.workspace_root.glob("probe-bench-runs.sqlite*"):  # the size reported is one suite's
        stale.unlink()
    registry = RunRegistry(path)
    run = {
        "dataset_key": "bench",
        "dataset_name": "bench features",
        "dataset_fingerprint": "bench",
        "synthetic": True,
        "class_names": [f"class {i}" for i in range(CLASSES)],
        "split": "1",
        "backbone": "dinov2_vits14",
        "weights": "pretrained",
        "seed": 0,
        "config": {"head": {"head": "bench"}},
        "versions": {},
        "features": "cls",
    }
    started = time.perf_counter()
    for result in results:
        predictions = [
            (row, f"test/{row}.jpg", int(label), int(predicted), float(scores[predicted]), scores.tolist())
            for row, (label, predicted, scores) in enumerate(zip(result.labels, result.predictions, result.scores))
        ]
        registry.record_completed_run(
            run={**run, "protocol": result.protocol},
            result={
                "weights_tag": "bench",
                "device": "cpu",
                "precision": "fp32",
                "timings": {},
                "best_epoch": None,
                "test_acc": result.test.accuracy,
                "test_loss": result.test_loss,
                "per_class_acc": result.test.per_class_accuracy,
                "confusion": result.test.confusion,
                "skipped": [],
                "features_path": "features/bench",
                "epochs": result.epochs,
                "predictions": predictions,
                "metrics": {"test_acc_ci": list(result.test.accuracy_interval)},
            },
        )
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in context.workspace_root.glob("probe-bench-runs.sqlite*"))
    return {"runs": len(results), "seconds": seconds, "registry_bytes": size}


def run(context: Context) -> tuple[dict, list[Target]]:
    levels, seeds = ([1, None], 2) if context.quick else ([1, 2, 4, 8, 16, None], 5)
    suite = time_suite(levels=levels, seeds=seeds)
    recording = time_recording(context, suite.pop("results"))
    context.log(
        f"  probe suite: {suite['runs']} runs in {suite['seconds']:.1f} s "
        + ", ".join(f"{p} {s:.1f} s" for p, s in suite["per_protocol_s"].items())
    )
    megabytes = recording["registry_bytes"] / 1e6
    context.log(f"  recording {recording['runs']} runs: {recording['seconds']:.1f} s, registry {megabytes:.1f} MB")
    results = {
        "suite": suite,
        "recording": recording,
        "levels": ["all" if s is None else s for s in levels],
        "seeds": seeds,
    }
    grid = f"5 protocols x {len(levels)} shots levels x {seeds} seeds"
    name = f"Probe suite, {suite['runs']} runs ({grid}) on {IMAGES} x {DIM} features"
    targets = [Target(name, suite["seconds"], "<", 60, "s", note=f"recording them: {recording['seconds']:.1f} s more")]
    return results, targets
