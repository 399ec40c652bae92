"""Recording a finished run: one ``record_run`` for every way a run is made.

The probe suite (``core.probing.suite``; ``compare`` is the suite with the reference head on the whole training
part) and the single run of ``core.probing.experiment.run_experiment`` both end here, so a run's record (its
config, timings, per-image predictions, metrics) and its head file (named by ``core.runs.files.head_file``) are
built one way. The record is written in one SQLite transaction, the head file inside it: a failure leaves neither.

``run_key`` is what makes two runs the same measurement when a suite resumes: the data (its fingerprint and split),
the backbone and its weights, the feature variant, the protocol, the shots level and the seed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from safetensors.torch import save_file

from core.base.errors import CancelledError, FlowerProbeError
from core.base.fileio import atomic_write
from core.base.workspace import Workspace
from core.data.datasets import Dataset
from core.probing.probes import ProbeResult, head_metadata
from core.runs.files import head_file, stored_path
from core.runs.registry import RunRegistry

VALIDATION_NOTE = "the whole validation part at every shots level"


class TerminatedError(Exception):
    """SIGTERM arrived: the run or group is recorded as interrupted, not failed."""


def _raise_terminated(signum, frame):
    raise TerminatedError()


@contextmanager
def ending_status(end: Callable[..., None]) -> Iterator[None]:
    """Record how the work inside ended, through ``end(status=..., error=...)`` (a run's or a group's), and re-raise.

    Cancelled (the job runner's cancel), interrupted (Ctrl-C, or SIGTERM, which reaches the caller as a
    KeyboardInterrupt so it stops the same way), or failed with the reason (a ``FlowerProbeError``'s own message,
    else the exception's type and text). A normal end records nothing: the caller marks completion itself. In the
    main thread SIGTERM is turned into an exception for the duration (signal handlers can only be set there).
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        yield
    except CancelledError:
        end(status="cancelled", error="Cancelled by the user.")
        raise
    except (KeyboardInterrupt, TerminatedError):
        end(status="interrupted", error="Interrupted (Ctrl-C or SIGTERM) before it finished.")
        raise KeyboardInterrupt from None
    except BaseException as exc:
        end(status="failed", error=str(exc) if isinstance(exc, FlowerProbeError) else f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def run_key(run: dict) -> tuple:
    """(dataset fingerprint, split, backbone, weights, features, protocol, shots, seed) of a run record."""
    return (
        run["dataset_fingerprint"],
        run["split"],
        run["backbone"],
        run["weights"],
        run["features"],
        run["protocol"],
        run["shots"],
        run["seed"],
    )


def prediction_rows(dataset: Dataset, rows: np.ndarray, result: ProbeResult) -> list[tuple]:
    """The registry's per-image predictions: (row, path relative to the dataset, label, predicted, confidence, scores).

    ``rows`` of shape (n_test,) are the dataset rows ``result``'s test scores belong to, in order.
    """
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


def record_run(
    registry: RunRegistry,
    *,
    workspace: Workspace,
    dataset: Dataset,
    backbone: str,
    weights: str,
    variant: str,
    split: str,
    shots: int | None,
    seed: int,
    result: ProbeResult,
    feature_set,
    features_seconds: float,
    test_rows: np.ndarray,
    train_images: int,
    settings: dict,
    device: str,
    precision: str,
    group_id: str | None,
    versions: dict,
    keep_head: bool,
    run_id: int | None = None,
) -> dict:
    """Record one finished run and return its record (``RunRegistry.get_run``).

    Parameters
    ----------
    feature_set : core.features.extract.FeatureSet
        The features the run was trained on (its cache path, device, precision, skipped images).
    test_rows : ndarray of shape (n_test,)
        Dataset rows of ``result``'s test scores.
    settings : dict
        The protocol's own settings as recorded (``config["probe"]``).
    device, precision : str
        As asked for (``auto``...); the record's ``device`` and ``precision`` columns hold what ran.
    keep_head : bool
        Write ``result.head_state`` to the run's head file (``core.runs.files.head_file``), inside the transaction.
    run_id : int or None
        A run created ``running`` before the work (``run_experiment``) is completed; None inserts it completed.
    """
    head = (
        result.head_config.to_dict()
        if result.head_config
        else {"architecture": None, "standardise": result.standardised}  # k-NN, NCM: nothing trained
    )
    run = {
        "dataset_key": dataset.key,
        "dataset_name": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "synthetic": dataset.synthetic,
        "class_names": list(dataset.class_names),
        "split": split,
        "backbone": backbone,
        "weights": weights,
        "seed": seed,
        "versions": versions,
        "group_id": group_id,
        "protocol": result.protocol,
        "features": variant,
        "shots": shots,
        "config": {
            "dataset": dataset.key,
            "split": split,
            "backbone": backbone,
            "weights": weights,
            "device": device,
            "precision": precision,
            "protocol": result.protocol,
            "features": variant,
            "shots": shots,
            "seed": seed,
            "train_images": train_images,
            "probe": settings,
            "head": head,
            # The images the user excluded (core.data.exclusions) are part of what the run was made on.
            "excluded_images": list(dataset.excluded),
            "validation": VALIDATION_NOTE,
        },
    }
    outcome = {
        "weights_tag": feature_set.weights_tag,
        "device": feature_set.device,
        "precision": feature_set.precision,
        "timings": {
            "features_s": features_seconds,
            "features_cached": feature_set.from_cache,
            # Which runtime computed the features (core.features.runtime): "torch" or "onnxruntime".
            "features_runtime": getattr(feature_set, "runtime", "torch"),
            "extraction_s": feature_set.seconds,
            "train_s": result.seconds,
            "total_s": features_seconds + result.seconds,
        },
        "best_epoch": result.hyperparameter["value"] if result.hyperparameter.get("name") == "epoch" else None,
        "test_acc": result.test.accuracy,
        "test_loss": result.test_loss,
        "per_class_acc": result.test.per_class_accuracy,
        "confusion": result.test.confusion,
        "skipped": [list(s) for s in feature_set.skipped],
        # Relative to the workspace and the dataset's folder (core.runs.files), so a moved workspace keeps its runs.
        "features_path": stored_path(feature_set.cache_path, base=workspace.root),
        "epochs": result.epochs,
        "predictions": prediction_rows(dataset, test_rows, result),
        "metrics": result.record_metrics(),
    }

    def write_head(new_id: int) -> str:
        path = head_file(workspace, new_id)
        with atomic_write(path) as tmp:
            save_file(
                {k: v.contiguous() for k, v in result.head_state.items()},
                str(tmp),
                metadata={"run_id": str(new_id), "protocol": result.protocol, **head_metadata(result.calibration)},
            )
        return stored_path(path, base=workspace.root)

    writer = write_head if keep_head and result.head_state is not None else None
    if run_id is None:
        run_id = registry.record_completed_run(run=run, result=outcome, head=writer)
    else:
        registry.complete_recorded_run(run_id, config=run["config"], result=outcome, head=writer)
    return registry.get_run(run_id)
