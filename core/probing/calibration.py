"""Calibration of a probe's confidence: does "90 %" mean right nine times in ten?

On the test part of a run, before and after temperature scaling:

- expected calibration error (ECE): 15 equal-width confidence bins, L1, exactly torchmetrics'
  ``multiclass_calibration_error`` (its defaults; computed by torchmetrics itself);
- negative log-likelihood (NLL, nats per image) and the multiclass Brier score (sum over classes of the
  squared difference between the probability and the one-hot label, mean over images: 0 is perfect, 2 the worst);
- the reliability diagram's bins: per confidence bin, its image count, mean confidence and accuracy.

Temperature scaling (Guo et al. 2017) divides a head's logits by one scalar T fitted on the validation part by
minimising NLL (scipy's bounded scalar minimiser on log T). Dividing every logit by the same positive T keeps each
row's order, so top-1 accuracy does not move; only the confidence does.

Which scores are probabilities (``SCORE_KINDS``): the softmax of a trained head (mlp, linear, logreg) is; NCM's
softmax of minus the squared distance to each class mean is a probability model with one free scale, so fitting
its temperature on validation is the same sound operation; k-NN's scores are shares of neighbour votes, which
are 0 for every class no neighbour voted for (infinite NLL, and no logit to scale), so they are reported as vote
shares (ECE and Brier of the shares, no NLL) and not calibrated.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torchmetrics.functional.classification import multiclass_calibration_error

from core.base.errors import FlowerProbeError

N_BINS = 15  # torchmetrics' default and the reference's (probing.md, Calibration)
# log T is searched in [-10, 10] (T from 4.5e-5 to 22,026): a trained head's temperature is usually 0.5-5, but NCM on
# collapsed features (distances differing by 1e-4) needs a tiny T, and a head that predicts one class for every image
# a huge one (the flattest probabilities); the bound stops a validation part the head fits perfectly from pushing T
# towards 0 forever. A temperature at a bound is recorded with a note saying so.
LOG_T_BOUNDS = (-10.0, 10.0)
# What a protocol's scores are, as the pages and the CLI say it.
SCORE_KINDS = {
    "mlp": "softmax probabilities",
    "linear": "softmax probabilities",
    "logreg": "softmax probabilities",
    "ncm": "softmax of minus the squared distance to each class mean",
    "knn": "shares of the neighbours' weighted votes (not probabilities)",
}
KNN_NOTE = (
    "k-NN's scores are shares of the k neighbours' weighted votes: a class no neighbour voted for gets exactly 0 "
    "(infinite NLL) and there is no logit to divide by a temperature, so the vote shares are shown as they are "
    "(ECE and Brier of the shares) and not calibrated."
)


def _check(probabilities_or_logits: np.ndarray, labels: np.ndarray, *, name: str) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(probabilities_or_logits, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 2 or scores.shape[1] < 2 or len(scores) != len(labels) or len(scores) == 0:
        raise FlowerProbeError(
            f"{name} must be of shape (n, classes) with n >= 1, classes >= 2 and one label each, "
            f"got {scores.shape} with {labels.shape} labels."
        )
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise FlowerProbeError(
            f"{name}'s labels must lie in 0..{scores.shape[1] - 1}, got {labels.min()}..{labels.max()}."
        )
    return scores, labels.astype(np.int64)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``: (n, classes) -> (n, classes)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, n_bins: int = N_BINS) -> float:
    """ECE (a fraction in [0, 1]): torchmetrics' ``multiclass_calibration_error``, L1 norm, ``n_bins`` bins.

    Parameters
    ----------
    probabilities : ndarray of shape (n, classes), rows summing to 1
    labels : ndarray of shape (n,)
    """
    probabilities, labels = _check(probabilities, labels, name="probabilities")
    return float(
        multiclass_calibration_error(
            torch.as_tensor(probabilities),
            torch.as_tensor(labels),
            num_classes=probabilities.shape[1],
            n_bins=n_bins,
            norm="l1",
        )
    )


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, *, n_bins: int = N_BINS) -> dict:
    """The reliability diagram's bins: equal-width confidence bins of the top-1 probability.

    Bin i holds confidences in [i / n_bins, (i + 1) / n_bins); a confidence of exactly 1 goes to the last bin
    (torchmetrics keeps it in a bin of its own; its ECE is the same either way to within that bin's gap, and
    ``expected_calibration_error`` is torchmetrics' own number). Empty bins have count 0 and None elsewhere.

    Returns
    -------
    dict with ``edges`` (n_bins + 1,), ``count``, ``confidence`` (mean top-1 probability) and ``accuracy``
    (fraction correct), each a list of n_bins.
    """
    probabilities, labels = _check(probabilities, labels, name="probabilities")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    index = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(index, weights=correct, minlength=n_bins)
    return {
        "edges": [float(e) for e in np.linspace(0, 1, n_bins + 1)],
        "count": [int(c) for c in count],
        "confidence": [float(s / c) if c else None for s, c in zip(confidence_sum, count)],
        "accuracy": [float(s / c) if c else None for s, c in zip(correct_sum, count)],
    }


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class) in nats; a probability of exactly 0 for the true class gives ``inf``."""
    probabilities, labels = _check(probabilities, labels, name="probabilities")
    with np.errstate(divide="ignore"):
        return float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels])))


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over images of sum over classes of (p - one_hot)^2, in [0, 2]."""
    probabilities, labels = _check(probabilities, labels, name="probabilities")
    one_hot = np.eye(probabilities.shape[1])[labels]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def _nll_of_logits(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    log_normaliser = np.log(np.exp(scaled - scaled.max(axis=1, keepdims=True)).sum(axis=1)) + scaled.max(axis=1)
    return float(np.mean(log_normaliser - scaled[np.arange(len(labels)), labels]))


def fit_temperature(valid_logits: np.ndarray, valid_labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the validation NLL of ``softmax(valid_logits / T)``.

    Parameters
    ----------
    valid_logits : ndarray of shape (n_valid, classes)
    valid_labels : ndarray of shape (n_valid,); at least two images of at least two classes

    Raises
    ------
    FlowerProbeError
        Fewer than two validation images, or all of one class: one temperature fitted to them would only
        learn to make that class certain, not to calibrate the head.
    """
    logits, labels = _check(valid_logits, valid_labels, name="valid_logits")
    if len(labels) < 2:
        raise FlowerProbeError(
            f"valid_labels must hold at least 2 validation images to fit a temperature on, got {len(labels)}."
        )
    present = np.unique(labels)
    if len(present) < 2:
        raise FlowerProbeError(
            f"valid_labels must hold at least 2 classes to fit a temperature on, got only class {int(present[0])} "
            f"({len(labels)} images)."
        )
    if not np.isfinite(logits).all():
        raise FlowerProbeError("valid_logits must be finite numbers to fit a temperature on; they hold NaN or inf.")
    result = minimize_scalar(
        lambda log_t: _nll_of_logits(logits, labels, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def scores_report(probabilities: np.ndarray, labels: np.ndarray, *, with_nll: bool = True) -> dict:
    """ECE (fraction), NLL (nats; None without ``with_nll``), Brier and the reliability bins of (n, classes) scores."""
    return {
        "ece": expected_calibration_error(probabilities, labels),
        "nll": negative_log_likelihood(probabilities, labels) if with_nll else None,
        "brier": brier_score(probabilities, labels),
        "bins": reliability_bins(probabilities, labels),
    }


def calibration_record(
    *,
    protocol: str,
    valid_logits: np.ndarray | None,
    valid_labels: np.ndarray,
    test_logits: np.ndarray | None,
    test_scores: np.ndarray,
    test_labels: np.ndarray,
) -> dict:
    """What a run records about its confidence on the test part (the registry's ``metrics["calibration"]``).

    Parameters
    ----------
    protocol : one of ``SCORE_KINDS``
    valid_logits, test_logits : ndarray of shape (n, classes), or None for k-NN (no logits)
        The head's logits (softmax of them gives the probabilities); NCM's minus squared distances.
    test_scores : ndarray of shape (n_test, classes)
        What the run shows: probabilities, or k-NN's vote shares.

    Returns
    -------
    dict with ``scores`` (what they are), ``temperature`` (None when not fitted), ``before`` and ``after``
    (``scores_report``; ``after`` None when not fitted) and ``note`` (why not, or what was fitted on).
    A validation part that cannot fit a temperature (one image, one class) is recorded with the reason
    instead of failing the run: the run's accuracy stands without it.
    """
    record = {"scores": SCORE_KINDS[protocol], "n_bins": N_BINS, "temperature": None, "after": None}
    if protocol == "knn" or valid_logits is None or test_logits is None:
        record.update(before=scores_report(test_scores, test_labels, with_nll=False), note=KNN_NOTE)
        return record
    record["before"] = scores_report(softmax(test_logits), test_labels)
    try:
        temperature = fit_temperature(valid_logits, valid_labels)
    except FlowerProbeError as exc:
        record["note"] = f"not calibrated: {exc}"
        return record
    note = f"one temperature fitted on the validation part ({len(valid_labels)} images) by minimising NLL"
    if min(abs(np.log(temperature) - bound) for bound in LOG_T_BOUNDS) < 1e-3:
        note += f"; it stopped at the search bound T = {temperature:.3g}: the validation part asks for " + (
            "flat (uniform) probabilities: the head is confidently wrong" if temperature > 1 else "certainty"
        )
    record.update(
        temperature=temperature,
        after=scores_report(softmax(test_logits, temperature), test_labels),
        note=note,
    )
    return record
