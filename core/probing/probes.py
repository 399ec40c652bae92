"""The probes: five ways to measure frozen features, each a plain function of cached (features, labels) parts.

Every probe chooses its one hyperparameter on the validation part and scores the test part once:

- ``mlp``: the reference head of ``core.probing.heads`` (Linear-ReLU-Linear, AdamW, best epoch on validation),
  unchanged.
- ``linear``: a linear layer for each of DINOv2's 13 learning rates, all trained together in one pass over the
  data (the heads are one stacked weight tensor, so a batch costs one batched matmul), SGD with momentum and a
  cosine schedule as in DINOv2's ``eval/linear.py``; the best learning rate on validation is tested.
- ``logreg``: scikit-learn's L-BFGS multinomial logistic regression on standardised features (the training
  part's mean and std), L2 strength ``C`` over a log grid of 15 values (DINOv2's ``eval/log_regression.py``
  sweeps C the same way).
- ``knn``: DINOv2's weighted k-NN vote: L2-normalised features, cosine similarity, each of the top k neighbours
  votes for its class with weight exp(similarity / 0.07); k from {10, 20, 100, 200}.
- ``ncm``: nearest class mean on L2-normalised features, the no-training baseline.

Each returns a ``ProbeResult``: scores per test image and class, the chosen hyperparameter, the validation
accuracy behind the choice, and the test metrics (top-1, top-5, mean per-class accuracy, a 95 % bootstrap
interval of top-1). Accuracies are in percent.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from core.base.errors import FlowerProbeError
from core.base.progress import ProgressCallback
from core.base.vectors import unit_rows
from core.probing.attentive import AttentiveConfig, attentive_probe
from core.probing.calibration import calibration_record
from core.probing.heads import HeadConfig, build_head, confusion_matrix, per_class_accuracy, train_head
from core.probing.stats import bootstrap_interval

PROTOCOLS = ("mlp", "linear", "logreg", "knn", "ncm")
# Protocols on other inputs, asked for by name only (never in the default set): ``attentive`` trains on cached patch
# tokens (core.probing.attentive; ``extract --tokens`` first), ``zeroshot`` uses a CLIP model's text tower
# (core.probing.zeroshot).
TOKEN_PROTOCOLS = ("attentive",)
ZERO_SHOT_PROTOCOL = "zeroshot"
ALL_PROTOCOLS = PROTOCOLS + TOKEN_PROTOCOLS + (ZERO_SHOT_PROTOCOL,)
# The protocol a run of the reference recipe (``mlp_probe``: AdamW, best epoch on validation) is recorded under, per
# head architecture (``HeadConfig.architecture``): "mlp" is the reference head; a linear layer trained that way
# (``compare --head-architecture linear``) is not the "linear" probe (SGD over DINOv2's learning rates), so it has
# a name of its own. ``core.runs.registry`` reads runs recorded before this name the same way.
REFERENCE_PROTOCOLS = {"mlp": "mlp", "linear": "reference_linear"}
# DINOv2's eval/linear.py default grid (13 values), scaled like DINOv2 by batch size / 256.
LINEAR_LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
# 15 values, one every 0.79 decade from very strong to almost no regularisation of standardised features.
LOGREG_C_GRID = tuple(float(c) for c in np.logspace(-6, 5, 15))
KNN_KS = (10, 20, 100, 200)  # DINOv2's eval/knn.py
KNN_TEMPERATURE = 0.07  # DINOv2's eval/knn.py
TOP_K = 5


@dataclass(frozen=True)
class LinearConfig:
    learning_rates: tuple[float, ...] = LINEAR_LEARNING_RATES
    epochs: int = 100  # full passes; 1,100 SGD steps on 680 images, enough for the larger rates to converge
    batch_size: int = 64  # the reference head's batch; learning rates scale by batch_size / 256 as in DINOv2
    momentum: float = 0.9  # DINOv2's linear probe


@dataclass(frozen=True)
class LogregConfig:
    c_grid: tuple[float, ...] = LOGREG_C_GRID
    max_iter: int = 1000  # L-BFGS iterations; the weakly regularised end of the grid needs several hundred


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of every probe; one record per run (``to_dict`` goes into the run's config)."""

    mlp: HeadConfig = field(default_factory=HeadConfig)  # the reference head, unchanged
    linear: LinearConfig = field(default_factory=LinearConfig)
    logreg: LogregConfig = field(default_factory=LogregConfig)
    knn_ks: tuple[int, ...] = KNN_KS
    knn_temperature: float = KNN_TEMPERATURE
    attentive: AttentiveConfig = field(default_factory=AttentiveConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def settings(self, protocol: str) -> dict:
        """The recorded settings of ``protocol`` (a run's ``config["probe"]``)."""
        if protocol == "knn":
            return {"ks": list(self.knn_ks), "temperature": self.knn_temperature}
        if protocol == "ncm":
            return {}
        return self.to_dict()[protocol]


@dataclass(frozen=True)
class TestMetrics:
    accuracy: float  # top-1, percent
    accuracy_interval: tuple[float, float]  # 95 % bootstrap over test images
    top5: float  # percent; top-k with k = min(5, classes)
    mean_class_accuracy: float  # mean over classes with test images, percent
    per_class_accuracy: list[float | None]
    confusion: np.ndarray  # (n_classes, n_classes), rows true


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome.

    scores : ndarray of shape (n_test, n_classes); rows sum to 1 (softmax, or normalised votes)
    predictions : ndarray of shape (n_test,)
    """

    protocol: str
    hyperparameter: dict  # {"name": ..., "value": ...}; name None for ncm, which has none
    valid_accuracy: float  # percent, of the chosen hyperparameter
    scores: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    test: TestMetrics
    standardised: bool  # whether the features were standardised before the probe
    seconds: float
    test_loss: float | None = None  # cross-entropy where the probe has probabilities (mlp, linear, logreg)
    epochs: list[dict] = field(default_factory=list)  # per-epoch metrics (mlp)
    head_config: HeadConfig | None = (
        None  # the head as core.probing.heads builds it, when the probe is one (mlp, linear, logreg)
    )
    head_state: dict | None = None  # its weights (safetensors-ready tensors)
    # core.probing.calibration.calibration_record of the test part: ECE, NLL, Brier before and after temperature
    # scaling; its "temperature" goes with the head file (None: not fitted, and "note" says why).
    calibration: dict | None = None

    @classmethod
    def from_scores(
        cls,
        scores: np.ndarray,
        labels: np.ndarray,
        *,
        protocol: str,
        num_classes: int,
        seed: int,
        started: float,
        calibration_inputs: tuple[np.ndarray | None, np.ndarray, np.ndarray | None] | None = None,
        **fields,
    ) -> ProbeResult:
        """The result of a probe that scored the test part itself: predictions, test metrics, seconds and calibration
        follow from its scores.

        Parameters
        ----------
        scores : ndarray of shape (n_test, num_classes)
            Rows sum to 1 (softmax, or normalised votes).
        labels : ndarray of shape (n_test,)
        seed : int
            The test metrics' bootstrap seed.
        started : float
            ``time.perf_counter()`` when the probe began: ``seconds`` counts from there to its test metrics.
        calibration_inputs : (valid logits, valid labels, test logits), or None
            For ``core.probing.calibration.calibration_record`` (logits None for k-NN); None: no calibration.
        fields
            The rest of ``ProbeResult``'s fields: hyperparameter, valid_accuracy, standardised, ...
        """
        test = test_metrics(scores, labels, num_classes=num_classes, seed=seed)
        seconds = time.perf_counter() - started
        calibration = None
        if calibration_inputs is not None:
            valid_logits, valid_labels, test_logits = calibration_inputs
            calibration = calibration_record(
                protocol=protocol,
                valid_logits=valid_logits,
                valid_labels=valid_labels,
                test_logits=test_logits,
                test_scores=scores,
                test_labels=labels,
            )
        return cls(
            protocol=protocol,
            scores=scores,
            predictions=scores.argmax(axis=1),
            labels=labels,
            test=test,
            seconds=seconds,
            calibration=calibration,
            **fields,
        )

    def record_metrics(self) -> dict:
        """What a run record keeps beyond top-1 (the registry's ``metrics``)."""
        return metrics_record(
            self.test,
            valid_accuracy=self.valid_accuracy,
            hyperparameter=self.hyperparameter,
            standardised=self.standardised,
            calibration=self.calibration,
        )


def metrics_record(
    test: TestMetrics,
    *,
    valid_accuracy: float,
    hyperparameter: dict,
    standardised: bool,
    calibration: dict | None = None,
) -> dict:
    """The registry's ``metrics`` of a run: top-1's interval, top-5, mean per-class accuracy, the validation choice,
    and the test part's calibration (``core.probing.calibration.calibration_record``) when given."""
    record = {
        "test_acc_ci": list(test.accuracy_interval),
        "top5": test.top5,
        "mean_class_acc": test.mean_class_accuracy,
        "valid_acc": valid_accuracy,
        "hyperparameter": hyperparameter,
        "standardised": standardised,
    }
    if calibration is not None:
        record["calibration"] = calibration
    return record


TEMPERATURE_KEY = "temperature"  # the head file's metadata entry: the temperature its logits are divided by


def head_metadata(calibration: dict | None) -> dict[str, str]:
    """The safetensors metadata that carries a head's fitted temperature (``{}`` when none was fitted), so that
    whatever loads the head (``core.predict.classify``, exports) divides its logits by it."""
    temperature = (calibration or {}).get("temperature")
    return {} if temperature is None else {TEMPERATURE_KEY: repr(float(temperature))}


def head_logits(
    config: HeadConfig, state: dict, parts: tuple[np.ndarray, ...], *, num_classes: int
) -> list[np.ndarray]:
    """Logits of a trained ``core.probing.heads`` head on each of ``parts`` ((n, dim) features) -> [(n, classes)].

    float32 on the CPU, as ``train_head`` evaluates, so their softmax is the probabilities it reports.
    """
    head = build_head(config, feature_dim=parts[0].shape[1], num_classes=num_classes)
    head.load_state_dict(state)
    head.eval()
    with torch.no_grad():
        return [head(torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)).double().numpy() for x in parts]


Part = tuple[np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------------------------- metrics


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Percent of rows whose true class is among the ``k`` highest scores (ties broken by class order)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)) * 100)


def test_metrics(scores: np.ndarray, labels: np.ndarray, *, num_classes: int, seed: int = 0) -> TestMetrics:
    """Top-1 with its bootstrap interval, top-5 and per-class accuracy of ``scores`` (n_test, n_classes)."""
    predictions = scores.argmax(axis=1)
    confusion = confusion_matrix(labels, predictions, num_classes)
    per_class = per_class_accuracy(confusion)
    present = [a for a in per_class if a is not None]
    correct = predictions == labels
    return TestMetrics(
        accuracy=float(correct.mean() * 100),
        accuracy_interval=bootstrap_interval(correct, seed=seed),
        top5=top_k_accuracy(scores, labels, TOP_K),
        mean_class_accuracy=float(np.mean(present)),
        per_class_accuracy=per_class,
        confusion=confusion,
    )


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(scores.argmax(axis=1) == labels) * 100)


# ----------------------------------------------------------------------------------------------- validation


def check_parts(train: Part, valid: Part, test: Part, *, num_classes: int) -> None:
    """Each part non-empty, features 2-d and finite with one label each in range, one dimension for all."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise FlowerProbeError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    dims = set()
    for name, (features, labels) in (("train", train), ("valid", valid), ("test", test)):
        features, labels = np.asarray(features), np.asarray(labels)
        if features.ndim != 2 or len(features) == 0 or len(features) != len(labels):
            raise FlowerProbeError(
                f"the {name} part needs features of shape (n, dim) with n >= 1 and one label each, "
                f"got features {features.shape} and {labels.shape} labels."
            )
        if labels.min() < 0 or labels.max() >= num_classes:
            raise FlowerProbeError(
                f"{name} labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}."
            )
        if not np.isfinite(features).all():
            raise FlowerProbeError(f"the {name} features hold NaN or infinite values; the backbone's output is broken.")
        dims.add(features.shape[1])
    if len(dims) != 1:
        raise FlowerProbeError(f"the train, valid and test features must have one dimension, got {sorted(dims)}.")
    if len(np.unique(train[1])) < 2:
        raise FlowerProbeError(f"the train part must hold at least two classes, got only class {int(train[1][0])}.")


@contextmanager
def _one_thread() -> Iterator[None]:
    """One BLAS and one torch thread for the probes' small matrices, restored afterwards.

    On a busy 2-core machine (load average 12) the threads of a pool spin-wait on each other: an L-BFGS fit of
    680 x 384 features ran 50x slower with two BLAS threads than with one, and the reference MLP head 100x
    slower with two torch threads (24 s against 0.2 s, identical numbers). Idle (load 1.7), one thread still
    won: the 130-run suite of ``python -m bench --only probes`` took 6.8-7.6 s against 14.6-16.6 s with two.
    torch's thread count is process-wide, so another thread's torch work meanwhile also runs on one thread.
    """
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(torch_threads)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, None))))


# ----------------------------------------------------------------------------------------------- probes


def mlp_probe(
    train: Part,
    valid: Part,
    test: Part,
    *,
    num_classes: int,
    config: HeadConfig = HeadConfig(),
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> ProbeResult:
    """The reference head (``core.probing.heads.train_head``) unchanged; its hyperparameter: the best epoch on
    validation.
    """
    check_parts(train, valid, test, num_classes=num_classes)
    with _one_thread():
        result = train_head(train, valid, test, num_classes=num_classes, config=config, progress=progress)
        valid_logits, test_logits = head_logits(
            config, result.state_dict, (np.asarray(valid[0]), np.asarray(test[0])), num_classes=num_classes
        )
    best = result.epochs[result.best_epoch - 1]
    return ProbeResult(
        protocol=REFERENCE_PROTOCOLS[config.architecture],
        hyperparameter={"name": "epoch", "value": result.best_epoch},
        valid_accuracy=best.valid_acc,
        scores=result.test.probabilities,
        predictions=result.test.predictions,
        labels=result.test.labels,
        # The reference's own top-1 (torch, float32) is the number recorded: the reference's numbers do not move.
        test=replace(
            test_metrics(result.test.probabilities, result.test.labels, num_classes=num_classes, seed=seed),
            accuracy=result.test.accuracy,
        ),
        standardised=config.standardise,
        seconds=result.seconds,
        test_loss=result.test.loss,
        epochs=[e.__dict__ for e in result.epochs],
        head_config=config,
        head_state=result.state_dict,
        calibration=calibration_record(
            protocol="mlp",
            valid_logits=valid_logits,
            valid_labels=np.asarray(valid[1]),
            test_logits=test_logits,
            test_scores=result.test.probabilities,
            test_labels=result.test.labels,
        ),
    )


def cross_entropy_gradient(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Gradient of each head's mean softmax cross-entropy with respect to its logits.

    Parameters
    ----------
    logits : ndarray of shape (batch, n_heads, classes)
    labels : ndarray of shape (batch,)

    Returns
    -------
    ndarray of shape (batch, n_heads, classes): (softmax - one_hot) / batch
    """
    gradient = np.exp(logits - logits.max(axis=2, keepdims=True))
    gradient /= gradient.sum(axis=2, keepdims=True)
    gradient[np.arange(len(labels)), :, labels] -= 1
    return gradient / len(labels)


def _stacked_linear_training(
    x: np.ndarray, y: np.ndarray, *, num_classes: int, config: LinearConfig, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train one linear head per learning rate at once; returns weights (n_lr, dim, classes) and biases (n_lr, classes).

    The heads sit side by side in one (dim, n_lr * classes) matrix, so a batch's forward for all of them is one
    matmul and so is its gradient (softmax cross-entropy's gradient written out: the heads need per-head
    learning rates, which torch's optimisers give only per tensor). SGD with momentum and a cosine schedule.
    """
    rng = np.random.default_rng(seed)
    n_heads, dim = len(config.learning_rates), x.shape[1]
    bound = 1 / math.sqrt(dim)  # nn.Linear's initialisation
    weight = rng.uniform(-bound, bound, size=(dim, n_heads * num_classes)).astype(np.float32)
    bias = rng.uniform(-bound, bound, size=n_heads * num_classes).astype(np.float32)
    base_lr = np.repeat(
        np.asarray(config.learning_rates, np.float32) * config.batch_size / 256, num_classes
    )  # DINOv2's scaling
    velocity_weight, velocity_bias = np.zeros_like(weight), np.zeros_like(bias)
    total_steps, step = config.epochs * math.ceil(len(x) / config.batch_size), 0
    for _ in range(config.epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            logits = (x[batch] @ weight + bias).reshape(len(batch), n_heads, num_classes)
            gradient = cross_entropy_gradient(logits, y[batch]).reshape(len(batch), -1)
            lr = base_lr * np.float32(0.5 * (1 + math.cos(math.pi * step / total_steps)))
            velocity_weight = config.momentum * velocity_weight + x[batch].T @ gradient
            velocity_bias = config.momentum * velocity_bias + gradient.sum(axis=0)
            weight -= lr * velocity_weight
            bias -= lr * velocity_bias
            step += 1
    return weight.reshape(dim, n_heads, num_classes).transpose(1, 0, 2), bias.reshape(n_heads, num_classes)


def linear_probe(
    train: Part, valid: Part, test: Part, *, num_classes: int, config: LinearConfig = LinearConfig(), seed: int = 0
) -> ProbeResult:
    """Linear layers for a grid of learning rates trained together; the best on validation is tested once."""
    check_parts(train, valid, test, num_classes=num_classes)
    if not config.learning_rates or any(not lr > 0 for lr in config.learning_rates):
        raise FlowerProbeError(f"learning_rates must be positive numbers, got {config.learning_rates!r}.")
    started = time.perf_counter()
    x_train, x_valid, x_test = (np.ascontiguousarray(p[0], dtype=np.float32) for p in (train, valid, test))
    with _one_thread(), np.errstate(over="ignore", invalid="ignore"):  # a diverging rate overflows; it is dropped below
        weight, bias = _stacked_linear_training(
            x_train, np.asarray(train[1]), num_classes=num_classes, config=config, seed=seed
        )
        valid_logits = np.einsum("nd,hdc->hnc", x_valid, weight) + bias[:, None, :]
    y_valid = np.asarray(valid[1])
    keys = []
    for logits in valid_logits:
        finite = np.isfinite(logits).all()  # a rate too large for these features diverges: never chosen
        keys.append((_accuracy(logits, y_valid), -_log_loss(_softmax(logits), y_valid)) if finite else (-1.0, -np.inf))
    best = max(range(len(keys)), key=lambda i: keys[i])  # highest valid accuracy, ties to the lower valid loss
    if keys[best][0] < 0:
        raise FlowerProbeError(
            "every learning rate of the linear probe diverged on these features; "
            "try the logreg probe (it standardises)."
        )
    test_logits = x_test @ weight[best] + bias[best]
    scores = _softmax(test_logits)
    labels = np.asarray(test[1])
    # Stored as nn.Linear's (classes, dim) weight, so core.probing.heads's linear head loads it for predictions.
    head_state = {
        "weight": torch.as_tensor(np.ascontiguousarray(weight[best].T)),
        "bias": torch.as_tensor(np.ascontiguousarray(bias[best])),
    }
    return ProbeResult.from_scores(
        scores,
        labels,
        protocol="linear",
        num_classes=num_classes,
        seed=seed,
        started=started,
        calibration_inputs=(valid_logits[best], y_valid, test_logits),
        hyperparameter={"name": "lr", "value": config.learning_rates[best]},
        valid_accuracy=keys[best][0],
        standardised=False,
        test_loss=_log_loss(scores, labels),
        head_config=HeadConfig(architecture="linear"),
        head_state=head_state,
    )


def logreg_probe(
    train: Part, valid: Part, test: Part, *, num_classes: int, config: LogregConfig = LogregConfig(), seed: int = 0
) -> ProbeResult:
    """scikit-learn L-BFGS logistic regression on standardised features, C chosen on validation, test once."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    check_parts(train, valid, test, num_classes=num_classes)
    if not config.c_grid or any(not c > 0 for c in config.c_grid):
        raise FlowerProbeError(f"c_grid must be positive numbers, got {config.c_grid!r}.")
    started = time.perf_counter()
    scaler = StandardScaler().fit(train[0])
    x_train, x_valid, x_test = (scaler.transform(p[0]) for p in (train, valid, test))
    y_valid = np.asarray(valid[1])
    best_key, best_model = None, None

    def fit(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, solver="lbfgs", max_iter=config.max_iter).fit(x_train, train[1])

    with _one_thread(), warnings.catch_warnings():
        # The weakest regularisation of the grid may stop at max_iter; validation judges the result.
        warnings.simplefilter("ignore", ConvergenceWarning)
        # The grid's fits are independent: one per core, each on one BLAS thread (set above for the whole process), so
        # the numbers are those of fitting them one after the other. 2 threads on 2 cores: 2.4 -> 1.8 s for the
        # offline demo's two backbones (the fits' Python between BLAS calls holds the GIL, hence not 2x).
        with ThreadPoolExecutor(max_workers=min(len(config.c_grid), os.cpu_count() or 1)) as pool:
            models = list(pool.map(fit, config.c_grid))
        for model in models:  # in grid order: ties go to the stronger regularisation, as before
            probabilities = _expand_classes(model.predict_proba(x_valid), model.classes_, num_classes)
            key = (_accuracy(probabilities, y_valid), -_log_loss(probabilities, y_valid))
            if best_key is None or key > best_key:
                best_key, best_model = key, model
        scores = _expand_classes(best_model.predict_proba(x_test), best_model.classes_, num_classes)
    labels = np.asarray(test[1])
    weight = np.zeros((num_classes, x_train.shape[1]), np.float32)
    bias = np.full(num_classes, -1e4, np.float32)  # a class absent from training is never predicted
    if len(best_model.classes_) == 2:  # binary: scikit-learn keeps one row, the logit of the second class
        weight[best_model.classes_[1]], bias[best_model.classes_[1]] = best_model.coef_[0], best_model.intercept_[0]
        bias[best_model.classes_[0]] = 0.0
    else:
        weight[best_model.classes_], bias[best_model.classes_] = best_model.coef_, best_model.intercept_
    # The same model as core.probing.heads's standardised linear head, so predictions can load it.
    head_state = {
        "0.mean": torch.as_tensor(scaler.mean_, dtype=torch.float32),
        "0.std": torch.as_tensor(scaler.scale_, dtype=torch.float32),
        "1.weight": torch.as_tensor(weight),
        "1.bias": torch.as_tensor(bias),
    }
    return ProbeResult.from_scores(
        scores,
        labels,
        protocol="logreg",
        num_classes=num_classes,
        seed=seed,
        started=started,
        # The head's own logits (standardised features times its weights): their softmax is predict_proba's.
        calibration_inputs=(
            x_valid @ weight.T.astype(np.float64) + bias,
            y_valid,
            x_test @ weight.T.astype(np.float64) + bias,
        ),
        hyperparameter={"name": "C", "value": float(best_model.C)},
        valid_accuracy=best_key[0],
        standardised=True,
        test_loss=_log_loss(scores, labels),
        head_config=HeadConfig(architecture="linear", standardise=True),
        head_state=head_state,
    )


def _expand_classes(probabilities: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """scikit-learn's columns cover the classes seen in training; place them among all ``num_classes``."""
    full = np.zeros((len(probabilities), num_classes))
    full[:, classes] = probabilities
    return full


def knn_votes(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray,
    *,
    num_classes: int,
    ks: tuple[int, ...],
    temperature: float,
) -> dict[int, np.ndarray]:
    """DINOv2's weighted vote for each k: ``{k: votes of shape (n_query, num_classes)}``, each row summing to 1.

    The top ``max(ks)`` neighbours are found once; each smaller k uses their prefix.
    """
    similarity = unit_rows(query_features) @ unit_rows(train_features).T  # cosine, (n_query, n_train)
    k_max = max(ks)
    neighbours = (
        np.argpartition(-similarity, k_max - 1, axis=1)[:, :k_max]
        if k_max < similarity.shape[1]
        else np.tile(np.arange(similarity.shape[1]), (len(similarity), 1))
    )
    top_similarity = np.take_along_axis(similarity, neighbours, axis=1)
    order = np.argsort(-top_similarity, axis=1, kind="stable")
    neighbours, top_similarity = (
        np.take_along_axis(neighbours, order, axis=1),
        np.take_along_axis(top_similarity, order, axis=1),
    )
    # Weights exp(s / T) relative to the nearest neighbour's: the same vote, without overflow at T = 0.07.
    weights = np.exp((top_similarity - top_similarity[:, :1]) / temperature)
    one_hot = np.eye(num_classes)[train_labels[neighbours]]  # (n_query, k_max, classes)
    cumulative = np.cumsum(weights[:, :, None] * one_hot, axis=1)
    return {k: cumulative[:, k - 1] / cumulative[:, k - 1].sum(axis=1, keepdims=True) for k in ks}


def _training_free_result(
    *,
    protocol: str,
    hyperparameter: dict,
    valid_scores: np.ndarray,
    scores: np.ndarray,
    valid,
    test,
    logits: tuple[np.ndarray | None, np.ndarray | None],
    num_classes: int,
    seed: int,
    started: float,
) -> ProbeResult:
    """The result of a probe that trains nothing (k-NN, NCM): ``scores`` (n_test, num_classes) on the test part,
    ``valid_scores`` (n_valid, num_classes) for its validation accuracy, ``logits`` (valid, test) for calibration."""
    return ProbeResult.from_scores(
        scores,
        np.asarray(test[1]),
        protocol=protocol,
        num_classes=num_classes,
        seed=seed,
        started=started,
        calibration_inputs=(logits[0], np.asarray(valid[1]), logits[1]),
        hyperparameter=hyperparameter,
        valid_accuracy=_accuracy(valid_scores, np.asarray(valid[1])),
        standardised=False,
    )


def knn_probe(
    train: Part,
    valid: Part,
    test: Part,
    *,
    num_classes: int,
    ks: tuple[int, ...] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
    seed: int = 0,
) -> ProbeResult:
    """DINOv2's weighted k-NN; k chosen on validation (ties to the smaller k), test once."""
    check_parts(train, valid, test, num_classes=num_classes)
    if not ks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise FlowerProbeError(f"ks must be positive integers, got {ks!r}.")
    too_many = [k for k in ks if k > len(train[0])]
    if too_many:
        raise FlowerProbeError(
            f"k must be at most the training set's size ({len(train[0])} images), got k = {too_many}."
        )
    if not temperature > 0:
        raise FlowerProbeError(f"temperature must be a positive number, got {temperature!r}.")
    started = time.perf_counter()
    train_labels = np.asarray(train[1])
    with _one_thread():
        valid_votes = knn_votes(
            train[0], train_labels, valid[0], num_classes=num_classes, ks=tuple(ks), temperature=temperature
        )
        best = max(sorted(ks), key=lambda k: (_accuracy(valid_votes[k], np.asarray(valid[1])), -k))
        scores = knn_votes(
            train[0], train_labels, test[0], num_classes=num_classes, ks=(best,), temperature=temperature
        )[best]
    return _training_free_result(
        protocol="knn",
        hyperparameter={"name": "k", "value": int(best)},
        valid_scores=valid_votes[best],
        scores=scores,
        valid=valid,
        test=test,
        logits=(None, None),  # vote shares are not logits: shown as they are, not temperature-scaled
        num_classes=num_classes,
        seed=seed,
        started=started,
    )


def ncm_logits(
    train_features: np.ndarray, train_labels: np.ndarray, query_features: np.ndarray, *, num_classes: int
) -> np.ndarray:
    """Minus the squared distance from each L2-normalised query to each class mean: (n_query, num_classes).

    ``ncm_scores`` is their softmax; temperature scaling divides them. A class without training images gets
    -1e4 (distances lie in [0, 4], so its softmax share is exactly 0, as ``ncm_scores`` gives it).
    """
    train_unit, query_unit = unit_rows(train_features), unit_rows(query_features)
    present = np.unique(train_labels)
    means = np.stack([train_unit[train_labels == c].mean(axis=0) for c in present])
    logits = np.full((len(query_features), num_classes), -1e4)
    logits[:, present] = -((query_unit[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    return logits


def ncm_scores(
    train_features: np.ndarray, train_labels: np.ndarray, query_features: np.ndarray, *, num_classes: int
) -> np.ndarray:
    """Softmax over classes of minus the squared distance from each L2-normalised query to each class mean.

    Distances rank the classes (the nearest mean is the prediction); the softmax only makes rows sum to 1
    and is no calibrated probability. A class without training images gets score 0.
    """
    train_unit, query_unit = unit_rows(train_features), unit_rows(query_features)
    present = np.unique(train_labels)
    means = np.stack([train_unit[train_labels == c].mean(axis=0) for c in present])
    distances = ((query_unit[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    scores = np.zeros((len(query_features), num_classes))
    scores[:, present] = _softmax(-distances)
    return scores


def ncm_probe(train: Part, valid: Part, test: Part, *, num_classes: int, seed: int = 0) -> ProbeResult:
    """Nearest class mean; nothing to choose, the validation accuracy is reported alongside."""
    check_parts(train, valid, test, num_classes=num_classes)
    started = time.perf_counter()
    train_labels = np.asarray(train[1])
    with _one_thread():
        valid_scores = ncm_scores(train[0], train_labels, valid[0], num_classes=num_classes)
        scores = ncm_scores(train[0], train_labels, test[0], num_classes=num_classes)
        valid_logits = ncm_logits(train[0], train_labels, valid[0], num_classes=num_classes)
        test_logits = ncm_logits(train[0], train_labels, test[0], num_classes=num_classes)
    return _training_free_result(
        protocol="ncm",
        hyperparameter={"name": None, "value": None},
        valid_scores=valid_scores,
        scores=scores,
        valid=valid,
        test=test,
        logits=(valid_logits, test_logits),
        num_classes=num_classes,
        seed=seed,
        started=started,
    )


def recorded_protocol(protocol: str, config: ProbeConfig) -> str:
    """The protocol name a run of ``protocol`` under ``config`` is recorded with (``REFERENCE_PROTOCOLS``)."""
    return REFERENCE_PROTOCOLS[config.mlp.architecture] if protocol == "mlp" else protocol


def check_protocols(protocols: list[str] | tuple[str, ...]) -> list[str]:
    """The protocol names, validated; an unknown one names the allowed ones."""
    unknown = [p for p in protocols if p not in ALL_PROTOCOLS]
    if unknown or not protocols:
        raise FlowerProbeError(
            f"protocols must be among {', '.join(ALL_PROTOCOLS)}, got {', '.join(map(str, protocols)) or 'none'}."
        )
    return list(dict.fromkeys(protocols))


def run_probe(
    protocol: str,
    train: Part,
    valid: Part,
    test: Part,
    *,
    num_classes: int,
    config: ProbeConfig = ProbeConfig(),
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> ProbeResult:
    """Run one probe by name with ``seed`` (the training seed of mlp and linear, the bootstrap's seed for all)."""
    check_protocols([protocol])
    if protocol == "attentive":  # train, valid, test: (core.probing.attentive.TokenPart, labels)
        return attentive_probe(
            train, valid, test, num_classes=num_classes, config=config.attentive, seed=seed, progress=progress
        )
    if protocol == ZERO_SHOT_PROTOCOL:
        raise FlowerProbeError(
            "protocols: 'zeroshot' has no training part; it runs through core.probing.zeroshot.run_zero_shot."
        )
    if protocol == "mlp":
        head = HeadConfig(**{**config.mlp.to_dict(), "seed": seed})
        return mlp_probe(train, valid, test, num_classes=num_classes, config=head, seed=seed, progress=progress)
    if protocol == "linear":
        return linear_probe(train, valid, test, num_classes=num_classes, config=config.linear, seed=seed)
    if protocol == "logreg":
        return logreg_probe(train, valid, test, num_classes=num_classes, config=config.logreg, seed=seed)
    if protocol == "knn":
        # The grid's k values that fit this training set (few-shot sets are small); all of it when none does.
        ks = tuple(k for k in config.knn_ks if k <= len(train[0])) or (len(train[0]),)
        return knn_probe(
            train, valid, test, num_classes=num_classes, ks=ks, temperature=config.knn_temperature, seed=seed
        )
    return ncm_probe(train, valid, test, num_classes=num_classes, seed=seed)
