"""Label issues: out-of-sample class probabilities from K-fold cross-validated logistic regression on the training
and validation images (the test part stays untouched), handed to cleanlab's confident learning
(``cleanlab.filter.find_label_issues``, ``cleanlab.rank.get_label_quality_scores``)."""

from __future__ import annotations

import warnings

import numpy as np

from core.base.errors import DatasetError


def out_of_sample_probabilities(
    features: np.ndarray, labels: np.ndarray, *, folds: int, seed: int, regularisation: float
) -> np.ndarray:
    """Class probabilities of each image from a logistic regression that never saw it (K-fold cross-validation).

    Parameters
    ----------
    features : ndarray of shape (n, dim)
    labels : ndarray of shape (n,), int in [0, n_classes)

    Returns
    -------
    ndarray of shape (n, n_classes)
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    # Standardised: a random-weight backbone's raw features are nearly parallel vectors of norm ~1,000.
    model = make_pipeline(StandardScaler(), LogisticRegression(C=regularisation, max_iter=500))
    # One BLAS/OpenMP thread: these fits are small (a few hundred x 1,280), and threads spinning on a busy
    # machine made one fit 20 s of CPU instead of 0.26 s (measured: 270 x 1,280, 17 classes, 2 loaded cores).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # An unconverged fold still ranks images usefully; the warning would only flood the log.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cross_val_predict(
            model,
            features,
            labels,
            cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed),
            method="predict_proba",
        )


def _check_folds(labels: np.ndarray, class_names: tuple[str, ...], folds: int) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise DatasetError(
            f"Label issues need at least two classes with images in the training and validation parts; "
            f"this dataset has {len(present)}. Add images of other classes."
        )
    single = [class_names[c] for c in present if counts[c] == 1]
    if single:
        raise DatasetError(
            f"Class(es) {', '.join(repr(c) for c in single)} have a single image in the training and validation parts: "
            f"cross-validation cannot hold it out and still learn the class. Add images to them, or exclude them."
        )
    small = [(class_names[c], int(counts[c])) for c in present if counts[c] < folds]
    if small:
        fewest = min(count for _, count in small)
        raise DatasetError(
            f"The dataset is too small for folds={folds}: class(es) "
            f"{', '.join(f'{name!r} ({count})' for name, count in small)} have fewer training and validation images "
            f"than folds. Use folds={max(2, fewest)} or fewer (--folds), or add images."
        )


def label_issues(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: tuple[str, ...],
    folds: int,
    seed: int,
    regularisation: float,
) -> dict[str, np.ndarray]:
    """cleanlab's label issues from out-of-sample probabilities.

    Parameters
    ----------
    features : ndarray of shape (n, dim)
    labels : ndarray of shape (n,), given class indices into ``class_names``

    Returns
    -------
    dict of ndarray of shape (n,)
        ``score`` (cleanlab's self-confidence label quality: low = likely wrong), ``suggested`` (the most probable
        class, an index into ``class_names``), ``flagged`` (bool: cleanlab's ``find_label_issues``).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    _check_folds(labels, class_names, folds)
    # cleanlab wants labels 0..K-1 with every class present: renumber the classes that have images here.
    present, compact = np.unique(labels, return_inverse=True)
    probabilities = out_of_sample_probabilities(
        features, compact, folds=folds, seed=seed, regularisation=regularisation
    )
    score = get_label_quality_scores(compact, probabilities)
    flagged = find_label_issues(compact, probabilities, n_jobs=1)  # n_jobs=1: no process pool inside a server thread
    return {
        "score": score,
        "suggested": present[probabilities.argmax(axis=1)],
        "flagged": np.asarray(flagged, dtype=bool),
    }
