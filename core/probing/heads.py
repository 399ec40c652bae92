"""Heads on frozen features: the reference MLP head and a linear probe, trained from cached features.

The loss is cross-entropy on logits (no softmax before it), accuracy is plain top-1 over every
sample, the weights kept are those of the best epoch on the validation part, and the test part is
evaluated once, at the end, with them. Same config and seed give identical numbers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.base.errors import FlowerProbeError
from core.base.progress import ProgressCallback, report

# What a head is built of (``HeadConfig.architecture``); not a probe protocol: ``core.probing.probes``' "linear"
# protocol trains a linear layer its own way (SGD over DINOv2's learning rates), this "linear" is the reference
# recipe (AdamW, best epoch on validation) on a linear layer.
HEAD_ARCHITECTURES = ("mlp", "linear")
HEAD_TYPES = HEAD_ARCHITECTURES  # the older name, kept for callers not yet moved over


@dataclass(frozen=True)
class HeadConfig:
    # "mlp" is the reference head Linear(d,128)-ReLU-Linear(128,C); "linear" one Linear(d,C) layer. Recorded runs
    # made before the rename call it "head" (``from_dict`` reads both).
    architecture: str = "mlp"
    hidden_dim: int = 128  # the reference experiment's width
    epochs: int = 5  # the reference experiment's length; heads on cached features converge fast
    lr: float = 1e-3  # AdamW, as in the reference experiment
    weight_decay: float = 0.01  # AdamW's default
    batch_size: int = 64  # the reference experiment's batch
    seed: int = 0
    # Off in the reference protocol. On, the head first centres and scales each feature dimension by
    # the training part's mean and std: features whose scale swamps a 5-epoch AdamW head (a random-
    # weight ResNet-50's sit at norm ~1,000, all nearly parallel) become separable.
    standardise: bool = False

    def __post_init__(self) -> None:
        if self.architecture not in HEAD_ARCHITECTURES:
            raise FlowerProbeError(
                f"head architecture must be one of {', '.join(HEAD_ARCHITECTURES)}, got {self.architecture!r}."
            )
        for name in ("hidden_dim", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise FlowerProbeError(f"{name} must be a positive integer, got {value!r}.")
        if not self.lr > 0:
            raise FlowerProbeError(f"lr must be a positive number, got {self.lr!r}.")
        if self.weight_decay < 0:
            raise FlowerProbeError(f"weight_decay must be >= 0, got {self.weight_decay!r}.")
        if not isinstance(self.standardise, bool):
            raise FlowerProbeError(f"standardise must be True or False, got {self.standardise!r}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> HeadConfig:
        """A head config as a run recorded it; the older key ``head`` reads as ``architecture``."""
        values = dict(record)
        if "head" in values:
            values.setdefault("architecture", values.pop("head"))
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def head_architecture(record: dict) -> str | None:
    """The architecture a recorded head config names (``mlp``, ``linear``); the older key ``head`` too; None for a
    run without a trained head (k-NN, NCM)."""
    return record.get("architecture", record.get("head"))


class FeatureStandardiser(nn.Module):
    """``(features - mean) / std`` per dimension, with the training part's statistics as buffers.

    Buffers, so the head's safetensors file carries them and a prediction standardises a new image
    exactly as training did. A dimension constant over the training part keeps scale 1 (as
    scikit-learn's StandardScaler does) instead of dividing by zero.
    """

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """Set the statistics from ``features`` of shape (n_train, feature_dim)."""
        std = features.std(dim=0, correction=0)
        self.mean.copy_(features.mean(dim=0))
        self.std.copy_(torch.where(std < 10 * torch.finfo(std.dtype).eps, torch.ones_like(std), std))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


def build_head(config: HeadConfig, *, feature_dim: int, num_classes: int) -> nn.Module:
    """The classifier on top of frozen features; its output is logits of shape (n, num_classes).

    With ``config.standardise`` it is ``Sequential(FeatureStandardiser, classifier)``, unfitted.
    """
    if config.architecture == "linear":
        classifier = nn.Linear(feature_dim, num_classes)
    else:
        classifier = nn.Sequential(
            nn.Linear(feature_dim, config.hidden_dim), nn.ReLU(), nn.Linear(config.hidden_dim, num_classes)
        )
    return nn.Sequential(FeatureStandardiser(feature_dim), classifier) if config.standardise else classifier


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based, as printed
    train_loss: float
    train_acc: float  # percent
    valid_loss: float
    valid_acc: float  # percent


@dataclass(frozen=True)
class TestResult:
    """Evaluation of the best-on-valid head on the test part.

    probabilities : ndarray of shape (n_test, num_classes)
    confusion : ndarray of shape (num_classes, num_classes), rows = true class, columns = predicted
    """

    loss: float
    accuracy: float  # percent, plain top-1 over every test sample
    per_class_accuracy: list[float | None]  # percent; None for a class with no test image
    confusion: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray


@dataclass(frozen=True)
class TrainResult:
    epochs: list[EpochMetrics]
    best_epoch: int
    test: TestResult
    state_dict: dict[str, torch.Tensor]
    seconds: float


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of samples whose highest logit is the true class; every sample counts."""
    if len(labels) == 0:
        return 0.0
    return float((logits.argmax(dim=1) == labels).float().mean() * 100)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def per_class_accuracy(confusion: np.ndarray) -> list[float | None]:
    totals = confusion.sum(axis=1)
    return [float(confusion[i, i] / totals[i] * 100) if totals[i] else None for i in range(len(totals))]


@torch.no_grad()
def _evaluate(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    head.eval()
    logits = head(features)
    return float(F.cross_entropy(logits, labels)), top1_accuracy(logits, labels), logits


def _as_tensors(features: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(np.ascontiguousarray(features), dtype=torch.float32), torch.as_tensor(
        labels, dtype=torch.long
    )


def train_head(
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    num_classes: int,
    config: HeadConfig = HeadConfig(),
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train a head on (features, labels) pairs; keep the best epoch on ``valid``; evaluate ``test`` once.

    Parameters
    ----------
    train, valid, test : tuple of (ndarray of shape (n, dim), ndarray of shape (n,))
        Features and integer labels of each part.
    num_classes : int
    config : HeadConfig

    Returns
    -------
    TrainResult
    """
    for name, (features, labels) in (("train", train), ("valid", valid), ("test", test)):
        if len(features) == 0 or len(features) != len(labels):
            raise FlowerProbeError(
                f"the {name} part needs at least one image with one label each, "
                f"got {len(features)} features and {len(labels)} labels."
            )
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    x_train, y_train = _as_tensors(*train)
    x_valid, y_valid = _as_tensors(*valid)
    head = build_head(config, feature_dim=x_train.shape[1], num_classes=num_classes)
    if config.standardise:
        head[0].fit(x_train)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    history: list[EpochMetrics] = []
    best_state, best_key = None, None
    for epoch in range(1, config.epochs + 1):
        head.train()
        order = torch.randperm(len(x_train), generator=generator)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            logits = head(x_train[batch])
            loss = F.cross_entropy(logits, y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(dim=1) == y_train[batch]).sum())
        valid_loss, valid_acc, _ = _evaluate(head, x_valid, y_valid)
        metrics = EpochMetrics(epoch, loss_sum / len(order), correct / len(order) * 100, valid_loss, valid_acc)
        history.append(metrics)
        # Best = highest valid accuracy; ties go to the lower valid loss (accuracy moves in coarse steps).
        key = (valid_acc, -valid_loss)
        improved = best_key is None or key > best_key
        if improved:
            best_key, best_epoch = key, epoch
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        report(progress, "train", epoch, config.epochs, metrics={**metrics.__dict__, "saved_best": improved})

    head.load_state_dict(best_state)
    x_test, y_test = _as_tensors(*test)
    test_loss, test_acc, logits = _evaluate(head, x_test, y_test)
    predictions = logits.argmax(dim=1).numpy()
    confusion = confusion_matrix(y_test.numpy(), predictions, num_classes)
    return TrainResult(
        epochs=history,
        best_epoch=best_epoch,
        state_dict=best_state,
        seconds=time.perf_counter() - started,
        test=TestResult(
            loss=test_loss,
            accuracy=test_acc,
            per_class_accuracy=per_class_accuracy(confusion),
            confusion=confusion,
            labels=y_test.numpy(),
            predictions=predictions,
            probabilities=torch.softmax(logits, dim=1).numpy(),
        ),
    )
