"""Classify new photos with a trained run: its backbone and head, exactly as the run used them.

``Predictor.from_run`` rebuilds what a completed run trained on (backbone, weights checked against the
run's weights tag, preprocessing, precision, head from its safetensors file) and loads the run's
training features for neighbour search. ``Predictor.predict`` is the one prediction path: the
Classify page and ``python -m core predict`` both call it, so both give the same answer.

One unreadable file never fails a batch: it comes back as a ``Prediction`` whose ``error`` is the
one-line reason, and the other files are classified. Each prediction also says whether the image looks
like no training image (``Prediction.unfamiliar``): its nearest training neighbour is farther than
``Predictor.unfamiliar_distance``, the far-out fence of the training-to-training nearest-neighbour
distances, so a confident top class on a foreign photo comes with a warning. Nothing is written
anywhere; uploads stay in memory. Also here: small pure helpers the page uses on run records and results (default run,
summary rows; their CSV goes through ``core.base.csv_export.csv_text``).

An ``attentive`` run's head reads the backbone's final patch tokens (``core.probing.attentive``): they are kept
from the same forward pass by ``core.backbones.tokens.token_hook``, the hook the token cache is filled with, and
rounded to fp16 as the cache holds them, so a test image gets the probabilities the run recorded for it. Its
neighbours, its "unfamiliar" fence and the Classify page's map use the backbone's default pooled features (the
run trained on no pooled features of its own).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from core.backbones.resolved import ResolvedBackbone, resolve_backbone
from core.backbones.tokens import token_hook, token_layout
from core.base.errors import BadImageError, DatasetError, FlowerProbeError, MissingFileError
from core.base.progress import ProgressCallback
from core.base.workspace import Workspace
from core.data.datasets import Dataset, load_dataset
from core.data.images import ImageSource, load_image
from core.features.extract import (
    CacheEntry,
    compute_features,
    extract_features,
    prepare_model,
    read_features,
    select_device,
    select_precision,
)
from core.maps.projection import cosine_neighbours
from core.probing.attentive import load_attentive_head
from core.probing.heads import HeadConfig, build_head
from core.probing.probes import TEMPERATURE_KEY, TOKEN_PROTOCOLS
from core.runs.files import RunFiles
from core.runs.registry import RunRegistry
from core.runs.sanity import preference

TOP_K = 5  # classes listed per image: the spec's top-5
NEIGHBOURS = 6  # nearest training images shown per image: one row of the page's grid
# Images decoded and sent through the backbone together: bounds memory for a batch of hundreds of
# uploads (32 x 3 x 224 x 224 float32 = 19 MB) while keeping the forward batched.
_CHUNK = 32
# Longest side of the preview kept with each prediction: enough for the page, small next to the photo.
_PREVIEW_PX = 512
# "Far outside" the training-to-training nearest-neighbour distances: Tukey's far-out fence, Q3 + 3 IQR, a
# rule that needs no distribution assumed (these distances are skewed) and flags almost no in-domain image.
_FENCE_IQRS = 3.0

BackboneLoader = Callable[[dict], torch.nn.Module]


@dataclass(frozen=True)
class Neighbour:
    """A training image near a query image in the backbone's feature space."""

    path: Path
    class_name: str
    distance: float  # cosine distance, 1 - cosine similarity, in [0, 2]
    row: int  # the dataset row of the image


@dataclass(frozen=True, eq=False)
class Prediction:
    """What a run says about one image; ``error`` is set (and the rest empty) when it could not be read.

    top : tuple of (class name, probability), most probable first, at most ``TOP_K``
    probabilities : ndarray of shape (num_classes,), sums to 1
    features : ndarray of shape (feature_dim,), the backbone's features of the image
    neighbours : nearest training images, nearest first
    preview : the upright RGB image, longest side at most 512 px, for display
    """

    name: str
    top: tuple[tuple[str, float], ...] = ()
    probabilities: np.ndarray | None = None
    features: np.ndarray | None = None
    neighbours: tuple[Neighbour, ...] = ()
    preview: Image.Image | None = None
    error: str | None = None
    unfamiliar: bool = False  # its nearest training image is beyond Predictor.unfamiliar_distance

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def predicted_class(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def confidence(self) -> float | None:
        return self.top[0][1] if self.top else None

    def to_dict(self) -> dict:
        """JSON-friendly summary (no features, no preview), as ``python -m core predict --json`` prints it."""
        return {
            "file": self.name,
            "top": [{"class": name, "probability": probability} for name, probability in self.top],
            "neighbours": [
                {"path": str(n.path), "class": n.class_name, "distance": n.distance} for n in self.neighbours
            ],
            "unfamiliar": self.unfamiliar,
            "error": self.error,
        }


def _check_run_id(run_id: object) -> int:
    if isinstance(run_id, bool) or not isinstance(run_id, (int, np.integer)) or run_id < 1:
        raise FlowerProbeError(
            f"run_id must be a positive whole number (a run id from the Compare page), got {run_id!r}."
        )
    return int(run_id)


def _head_file(run: dict, workspace: Workspace) -> Path:
    """The run's head file in this workspace (``core.runs.files``: it survives a moved workspace)."""
    path = RunFiles(run, workspace).head
    if path is None:
        # A run that never wrote a head (a few-shot point of a curve, a probe on another feature variant): say so,
        # and which runs can classify, instead of blaming a deletion.
        raise FlowerProbeError(
            f"Run {run['id']} keeps no head file: it is a {run.get('protocol') or 'mlp'} run "
            + (f"with {run['shots']} shots per class" if run.get("shots") is not None else "on other features")
            + ", recorded for its accuracy only. Runs on the whole training part with the backbone's own features "
            "can classify: the reference MLP, linear, logistic regression, k-NN and NCM, and attentive runs on its "
            "patch tokens (`python -m core runs`)."
        )
    if not path.is_file():
        raise MissingFileError(
            f"The head of run {run['id']} ({path.name}) is not in {workspace.heads_dir}; it was "
            f"deleted or the workspace is incomplete. Train the run again."
        )
    return path


MEMORY_PROTOCOLS = ("knn", "ncm")  # probes that predict from the training features themselves, no head file


class _MemoryHead(torch.nn.Module):
    """k-NN or NCM as a head: (N, feature_dim) features -> (N, num_classes) logits whose softmax is the probe's
    scores (``core.probing.probes.knn_votes`` / ``ncm_scores``), from the run's cached training features."""

    def __init__(self, protocol: str, train: np.ndarray, labels: np.ndarray, *, num_classes: int, k: int) -> None:
        super().__init__()
        self.protocol, self.train, self.labels, self.num_classes, self.k = protocol, train, labels, num_classes, k

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        from core.probing.probes import KNN_TEMPERATURE, knn_votes, ncm_logits

        query = features.detach().cpu().numpy().astype(np.float64)
        if self.protocol == "ncm":
            logits = ncm_logits(self.train, self.labels, query, num_classes=self.num_classes)
        else:
            votes = knn_votes(
                self.train, self.labels, query, num_classes=self.num_classes, ks=(self.k,), temperature=KNN_TEMPERATURE
            )[self.k]
            logits = np.log(np.clip(votes, 1e-30, None))  # softmax(log votes) = the votes (rows sum to 1)
        return torch.as_tensor(logits, dtype=torch.float32)


def memory_head(run: dict, train_features: np.ndarray, train_labels: np.ndarray) -> torch.nn.Module:
    """The head of a k-NN or NCM run: its training features and its k (chosen on validation, recorded)."""
    if run.get("shots") is not None:
        raise FlowerProbeError(
            f"Run {run['id']} is a {run['shots']}-shot {run['protocol']} run: it did not record which training images "
            "it drew, so it cannot classify. Use the same protocol's run on the whole training part."
        )
    hyperparameter = (run.get("metrics") or {}).get("hyperparameter") or {}
    k = int(hyperparameter.get("value") or 0) if run["protocol"] == "knn" else 0
    if run["protocol"] == "knn" and not 1 <= k <= len(train_features):
        raise FlowerProbeError(f"Run {run['id']} recorded no usable k ({hyperparameter!r}); run its k-NN probe again.")
    return _MemoryHead(
        run["protocol"],
        np.asarray(train_features, dtype=np.float64),
        np.asarray(train_labels),
        num_classes=len(run["class_names"]),
        k=k,
    )


def _memory_temperature(run: dict) -> float | None:
    """NCM's temperature, fitted on validation and kept in the run's calibration record (it has no head file);
    None for k-NN, whose vote shares are not calibrated (``core.probing.calibration.KNN_NOTE``)."""
    if run.get("protocol") != "ncm":
        return None
    temperature = ((run.get("metrics") or {}).get("calibration") or {}).get("temperature")
    return float(temperature) if temperature else None


def _load_head(run: dict, path: Path, *, feature_dim: int) -> torch.nn.Module:
    """The run's trained head: an MLP or linear head on ``feature_dim`` pooled features, or an attentive run's
    attention-pooling head on the backbone's patch tokens."""
    try:
        state = load_file(str(path), device="cpu")
        if run.get("protocol") in TOKEN_PROTOCOLS:
            head = load_attentive_head(state)
        else:
            config = HeadConfig.from_dict(run["config"]["head"])
            head = build_head(config, feature_dim=feature_dim, num_classes=len(run["class_names"]))
            head.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError, KeyError) as exc:
        raise FlowerProbeError(
            f"{path} is not the head run {run['id']} trained (damaged, or made for another backbone or class list): "
            f"{str(exc).splitlines()[0]}. Train the run again."
        ) from exc
    if run.get("protocol") in TOKEN_PROTOCOLS and head.dim != (tokens_dim := token_layout(run["backbone"]).dim):
        raise FlowerProbeError(
            f"{path} is not the head run {run['id']} trained: it reads {head.dim}-d tokens, and {run['backbone']}'s "
            f"are {tokens_dim}-d. Train the run again."
        )
    head.eval()
    head.requires_grad_(False)
    return head


def head_temperature(path: Path) -> float | None:
    """The temperature saved with a head (``core.probing.probes.head_metadata``): its logits are divided by it before
    the softmax, so the probabilities are the calibrated ones. None for a head saved without one (older runs,
    or a validation part that could not fit one): its plain softmax is used, and the pages say it is uncalibrated.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            value = (handle.metadata() or {}).get(TEMPERATURE_KEY)
    except (SafetensorError, OSError):
        return None  # _load_head reports a damaged file
    try:
        temperature = float(value) if value is not None else None
    except ValueError:
        return None
    return temperature if temperature is not None and temperature > 0 else None


def _check_weights(
    run: dict, backbone: ResolvedBackbone, workspace: Workspace, progress: ProgressCallback | None
) -> ResolvedBackbone:
    """``backbone`` (the run's) located, refused when its weights are no longer the ones the run was trained with."""
    backbone = backbone.located(workspace=workspace, progress=progress)
    source = backbone.source
    if source.tag != run["weights_tag"]:
        raise FlowerProbeError(
            f"Run {run['id']} was trained with {run['backbone']} weights {run['weights_tag']}, but {run['weights']!r} "
            f"now gives {source.tag} ({source.path}): the weights file changed since. Put the original file back, "
            f"or train a new run with the current weights."
        )
    return backbone


def _check_dataset(run: dict, dataset: Dataset) -> None:
    # Feature rows and train-split rows are dataset rows: they only name the right photos if the
    # dataset is the one the run saw.
    if dataset.fingerprint != run["dataset_fingerprint"]:
        raise DatasetError(
            f"The images of {run['dataset_name']} changed (added, removed or modified) since run {run['id']} was "
            f"trained, so its nearest training images can no longer be found. Train a new run on the current images."
        )


_MIN_PREVIEW_PX = 96  # a smaller photo (a 1 x 1 upload) is enlarged to this, pixels kept sharp, so it can be seen


def _preview(image: Image.Image) -> Image.Image:
    preview = image.copy()
    preview.thumbnail((_PREVIEW_PX, _PREVIEW_PX), Image.Resampling.LANCZOS)
    longest = max(preview.size)
    if longest < _MIN_PREVIEW_PX:
        scale = _MIN_PREVIEW_PX / longest
        size = (max(1, round(preview.width * scale)), max(1, round(preview.height * scale)))
        preview = preview.resize(size, Image.Resampling.NEAREST)  # nearest: a tiny image shows as its own pixels
    return preview


class FeaturesMissingError(MissingFileError):
    """A run's training features are no longer cached; ``extraction`` holds the arguments that recompute them
    (``core.features.extract.extract_features(**extraction)``), for a page to queue as a job."""

    def __init__(self, message: str, *, extraction: dict) -> None:
        super().__init__(message)
        self.extraction = extraction


def unfamiliar_threshold(reference_features: np.ndarray) -> float:
    """The far-out fence (Q3 + 3 IQR) of the training images' cosine distances to their nearest other training image.

    Parameters
    ----------
    reference_features : ndarray of shape (n_train, dim), n_train >= 2
    """
    # k=2: each image finds itself first (distance 0), then its nearest other image
    _, distances = cosine_neighbours(reference_features, reference_features, k=2)
    q1, q3 = np.percentile(distances[:, 1], [25, 75])
    return float(q3 + _FENCE_IQRS * (q3 - q1))


def _reference_variant(run: dict, backbone: ResolvedBackbone) -> str | None:
    """The pooled features a run's neighbours and map use: its own, or the backbone's default for an attentive run
    (its head reads patch tokens, which are no vector to search)."""
    return backbone.default_variant if run.get("protocol") in TOKEN_PROTOCOLS else run.get("features")


def _training_features(run: dict, backbone: ResolvedBackbone, dataset: Dataset, workspace: Workspace, precision: str):
    """The run's cached features: its recorded file, else the cache an extraction of its settings writes now.

    An attentive run's recorded file is its token entry, which keeps the default pooled features of the same pass.
    """
    entry = CacheEntry.of(dataset, backbone, workspace=workspace, weights_tag=run["weights_tag"], precision=precision)
    variant = _reference_variant(run, backbone)
    for path in (RunFiles(run, workspace).features, entry.folder):
        if path is None:
            continue
        try:
            return read_features(path, variant=variant)
        except MissingFileError:
            continue
    raise FeaturesMissingError(
        f"Run {run['id']}'s training features ({run['backbone']} on {dataset.name}) are no longer cached; they must be "
        f"extracted again before it can classify.",
        extraction={
            "dataset": dataset,
            "backbone": backbone,
            "workspace": workspace,
            "precision": precision,
            "variant": variant,
        },
    )


# Forward hooks are per model, not per thread: while a token hook is on a backbone the Classify page shares between
# sessions, another session's forward would overwrite the tokens it keeps. One lock per model serialises them.
_MODEL_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


@contextmanager
def _model_lock(model: torch.nn.Module) -> Iterator[None]:
    with _LOCKS_LOCK:
        lock = _MODEL_LOCKS.setdefault(model, threading.RLock())
    with lock:
        yield


def tokens_as_cached(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens (N, T, dim) rounded to fp16, as the token cache stores them (what an attentive head trained on), as
    float32."""
    return tokens.to(torch.float16).to(torch.float32)


class Predictor:
    """A completed run ready to classify images: backbone, head, class names and training features.

    Build it with ``Predictor.from_run``. ``reference_features`` (n_train, feature_dim) are the run's
    training images' features, ``reference_rows`` (n_train,) their dataset rows; ``dataset`` is the
    run's dataset and ``run`` its record. Safe to share between threads (inference only).
    """

    def __init__(
        self,
        *,
        run: dict,
        model: torch.nn.Module,
        head: torch.nn.Module,
        device: torch.device,
        precision: str,
        dataset: Dataset,
        reference_features: np.ndarray,
        reference_rows: np.ndarray,
        temperature: float | None = None,
        backbone: ResolvedBackbone | None = None,
    ) -> None:
        self.run = run
        # Logits are divided by it before the softmax (temperature scaling fitted on the run's validation part).
        self.temperature = temperature
        # The backbone's onnxruntime graph when this workspace measured it faster here (``use_onnxruntime``).
        self.onnx_graph = None
        self.onnx_session = None
        self.model = model
        self.head = head
        self.device = device
        self.precision = precision
        self.dataset = dataset
        self.reference_features = reference_features
        self.reference_rows = reference_rows
        # Computed once per predictor: a k=2 neighbour search over the training features (70 ms at 680 x 2048).
        self.unfamiliar_distance = unfamiliar_threshold(reference_features) if len(reference_features) > 1 else np.inf
        self.class_names: tuple[str, ...] = tuple(run["class_names"])
        # An attentive head reads the backbone's patch tokens (N, T, dim) instead of its pooled features.
        self.reads_tokens = run.get("protocol") in TOKEN_PROTOCOLS
        # The run's backbone, resolved once (from_run passes its own; a hand-built predictor resolves the run's).
        self.backbone = backbone or resolve_backbone(run["backbone"], weights=run["weights"])
        self.config = self.backbone.config
        self.transform = self.backbone.transform()

    @classmethod
    def from_run(
        cls,
        run_id: int,
        *,
        workspace: Workspace,
        device: str = "auto",
        progress: ProgressCallback | None = None,
        backbone_loader: BackboneLoader | None = None,
        extract_missing: bool = False,
    ) -> Predictor:
        """Load completed run ``run_id`` of ``workspace``'s registry.

        The backbone is built with the run's weights (refused if the file changed since: its tag must
        match the run's), features are computed at the run's precision with its preprocessing, and
        the training features come from the run's feature cache. If that was deleted they are
        recomputed with ``extract_missing`` (the CLI); otherwise ``FeaturesMissingError`` says so, so
        that a page queues the extraction in the job runner instead of running it in its own thread.

        Parameters
        ----------
        backbone_loader : callable, optional
            Called with the run record, once its weights are checked, to get the backbone instead of
            building one: lets runs that share a backbone share one copy of it (the Classify page
            keeps one per backbone, weights tag and precision). It must return ``build_backbone``'s
            model for the run's backbone and weights; the predictor uses a converted copy when the
            run's device or precision differ from the model's (``prepare_model``), so the shared model
            itself is never changed.

        Raises
        ------
        FlowerProbeError
            Unknown or unfinished run, changed weights, changed dataset, missing or damaged head file;
            ``FeaturesMissingError`` for deleted training features without ``extract_missing``.
        """
        run = RunRegistry(workspace.registry_path).get_run(_check_run_id(run_id))
        if run["status"] != "completed":
            raise FlowerProbeError(
                f"Run {run['id']} is {run['status']}; only a completed run has a trained head to classify with."
            )
        backbone = _check_weights(run, resolve_backbone(run["backbone"], weights=run["weights"]), workspace, progress)
        dataset = load_dataset(run["dataset_key"], workspace)
        _check_dataset(run, dataset)
        torch_device = select_device(device)
        # The run's precision, so new images get features the way the head's training images did.
        precision = select_precision(torch_device, run["precision"])
        try:
            features = _training_features(run, backbone, dataset, workspace, precision)
        except FeaturesMissingError as missing:
            if not extract_missing:
                raise
            features = extract_features(**missing.extraction, device=device, progress=progress)
        reference_features, reference_rows = features.select(dataset.split(run["split"])["train"])
        head_path = None
        if run.get("protocol") in MEMORY_PROTOCOLS:
            # k-NN and NCM keep no head by design: their "head" is the training features, which are right here.
            head = memory_head(run, reference_features, dataset.labels[reference_rows])
        else:
            head_path = _head_file(run, workspace)
            head = _load_head(run, head_path, feature_dim=features.features.shape[1])
        if backbone_loader is None:
            model = backbone.build(workspace=workspace, progress=progress)
        else:
            model = backbone_loader(run)
        predictor = cls(
            run=run,
            model=prepare_model(model, device=torch_device, precision=precision),
            head=head,
            device=torch_device,
            precision=precision,
            dataset=dataset,
            reference_features=reference_features,
            reference_rows=reference_rows,
            temperature=head_temperature(head_path) if head_path is not None else _memory_temperature(run),
            backbone=backbone,
        )
        predictor.use_onnxruntime(workspace)  # the faster CPU runtime, when measured so and already exported here
        return predictor

    @property
    def calibrated(self) -> bool:
        """Whether the probabilities are temperature-scaled (a temperature was saved with the head)."""
        return self.temperature is not None

    @property
    def probabilities_note(self) -> str:
        """What the probabilities are, as the pages and the CLI say it."""
        if self.calibrated:
            return (
                f"calibrated probabilities: the head's logits divided by T = {self.temperature:.2f}, fitted on run "
                f"{self.run['id']}'s validation part (temperature scaling)"
            )
        if self.run.get("protocol") == "knn":
            return f"k-NN vote shares of run {self.run['id']} (the neighbours' weighted votes, not probabilities)"
        return f"uncalibrated probabilities: run {self.run['id']}'s head has no fitted temperature (plain softmax)"

    @property
    def weights_tag(self) -> str:
        return self.run["weights_tag"]

    def reference_paths(self) -> list[Path]:
        """Image file of each reference row, in ``reference_rows`` order."""
        return [self.dataset.image_paths[row] for row in self.reference_rows]

    def reference_labels(self) -> np.ndarray:
        """Label index of each reference row, shape (n_train,)."""
        return self.dataset.labels[self.reference_rows]

    def predict(self, images: Sequence[tuple[str, ImageSource]], *, neighbours: int = NEIGHBOURS) -> list[Prediction]:
        """Classify each image; unreadable ones come back with ``error`` set, the rest still classify.

        Parameters
        ----------
        images : sequence of (name, source)
            ``name`` labels the image in results and error messages; ``source`` is anything
            ``core.data.images.load_image`` takes: a path, bytes, or a binary file-like object (an upload).
        neighbours : int
            Nearest training images returned per image.

        Returns
        -------
        list of Prediction
            One per image, in order.
        """
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            raise FlowerProbeError(f"images must be a list of (name, source) pairs, got {type(images).__name__}.")
        for item in images:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise FlowerProbeError(f"images must hold (name, source) pairs with a string name, got {item!r:.120}.")
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
            raise FlowerProbeError(f"neighbours must be a positive whole number, got {neighbours!r}.")
        results: list[Prediction] = []
        for start in range(0, len(images), _CHUNK):
            results.extend(self._predict_chunk(images[start : start + _CHUNK], neighbours=neighbours))
        return results

    def _predict_chunk(self, images: Sequence[tuple[str, ImageSource]], *, neighbours: int) -> list[Prediction]:
        results: list[Prediction | None] = [None] * len(images)
        tensors, previews, positions = [], [], []
        for position, (name, source) in enumerate(images):
            try:
                # draft_size as in extraction: the same decode gives the same features as a dataset photo.
                image = load_image(source, draft_size=self.config.resize, name=name)
            except BadImageError as exc:
                results[position] = Prediction(name=name, error=str(exc))
                continue
            tensors.append(self.transform(image))
            previews.append(_preview(image))
            positions.append(position)
        if tensors:
            features, head_input = self.head_inputs_of(torch.stack(tensors))
            probabilities = self.probabilities_of(head_input)
            nearest, distances = cosine_neighbours(self.reference_features, features, k=neighbours)
            for i, position in enumerate(positions):
                results[position] = self._prediction(
                    images[position][0], features[i], probabilities[i], nearest[i], distances[i], previews[i]
                )
        return results

    def use_onnxruntime(self, workspace: Workspace) -> bool:
        """Compute features with onnxruntime from now on if that is faithful and faster here; returns whether it is.

        Only on a CPU at fp32 (onnxruntime's one precision, whose features equal PyTorch fp32's within 1e-4 by the
        graph's check), when the workspace already holds the backbone's checked graph (never exported here: that
        is long work) and its runtime choice measured onnxruntime faster on this CPU.
        """
        from core.features.runtime import prefers_onnxruntime
        from core.onnx.backbone import existing_graph

        backbone = self.backbone.located(workspace=workspace)
        # The backbone's graph outputs pooled features only, not the patch tokens an attentive head reads.
        if self.device.type != "cpu" or self.precision != "fp32" or self.reads_tokens:
            return False
        if not prefers_onnxruntime(workspace, backbone.name, input_size=backbone.input_size):
            return False
        from core.onnx.export import OnnxUnavailableError

        graph = existing_graph(backbone, workspace=workspace)
        if graph is None:
            return False
        try:
            self.onnx_graph, self.onnx_session = graph, graph.session()
        except OnnxUnavailableError:
            return False
        return True

    def features_of(self, batch: torch.Tensor) -> np.ndarray:
        """Backbone features of preprocessed images (N, 3, H, W) -> ndarray of shape (N, feature_dim)."""
        if self.onnx_session is not None:
            from core.onnx.backbone import graph_features

            default = self.onnx_graph.variants[0]
            return graph_features(self.onnx_session, batch.numpy(), (default,))[default]
        # compute_features takes any iterable of (images, rows, errors) batches: one in-memory batch
        # goes through the very forward (device, autocast, dtype) that made the training features.
        with _model_lock(self.model):
            features, _, _ = compute_features(
                self.model,
                [(batch, torch.arange(len(batch)), [""] * len(batch))],
                device=self.device,
                precision=self.precision,
                total=len(batch),
            )
        return features

    def head_inputs_of(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed images (N, 3, H, W) -> (pooled features (N, feature_dim), what the head reads).

        The head reads the pooled features themselves, or for an attentive run the patch tokens (N, T, dim) of the
        same forward pass, kept by the token cache's own hook and rounded as the cache holds them.
        """
        if not self.reads_tokens:
            features = self.features_of(batch)
            return features, features
        with _model_lock(self.model), token_hook(self.model) as last:
            features = self.features_of(batch)
            tokens = tokens_as_cached(last()).cpu().numpy()
        return features, tokens

    @torch.inference_mode()
    def probabilities_of(self, head_input: np.ndarray) -> np.ndarray:
        """Softmax of the head's logits (divided by ``temperature`` when the head has one): (N, feature_dim) features,
        or (N, T, dim) patch tokens for an attentive head -> (N, num_classes) probabilities."""
        # float32 on the CPU, as train_head evaluated the stored test predictions.
        logits = self.head(torch.as_tensor(np.ascontiguousarray(head_input), dtype=torch.float32))
        if self.temperature is not None:
            logits = logits / self.temperature
        return torch.softmax(logits, dim=1).numpy()

    def _prediction(
        self,
        name: str,
        features: np.ndarray,
        probabilities: np.ndarray,
        nearest: np.ndarray,
        distances: np.ndarray,
        preview: Image.Image,
    ) -> Prediction:
        order = np.argsort(-probabilities, kind="stable")[:TOP_K]
        labels = self.reference_labels()
        return Prediction(
            name=name,
            top=tuple((self.class_names[c], float(probabilities[c])) for c in order),
            probabilities=probabilities,
            features=features,
            neighbours=tuple(
                Neighbour(
                    path=self.dataset.image_paths[self.reference_rows[j]],
                    class_name=self.class_names[labels[j]],
                    distance=float(d),
                    row=int(self.reference_rows[j]),
                )
                for j, d in zip(nearest, distances)
            ),
            preview=preview,
            # distances are ascending: the first is the nearest training image
            unfamiliar=bool(len(distances) and distances[0] > self.unfamiliar_distance),
        )


# ----------------------------------------------------------------------------------------------- records


DEFAULT_RUN_RULE = (
    "the best run on validation on the dataset trained last (runs that predict one class come last; the test part "
    "is not used to choose)"
)


def default_run(runs: Sequence[dict]) -> dict | None:
    """``DEFAULT_RUN_RULE``: on the most recently used dataset, the completed run with the best validation accuracy
    (runs predicting one class last, then the newest on ties). Choosing by test accuracy would report a test figure
    that was used to pick it."""
    completed = [r for r in runs if r["status"] == "completed" and r.get("test_acc") is not None]
    if not completed:
        return None
    latest = max(completed, key=lambda r: (r["created_at"], r["id"]))
    return max((r for r in completed if r["dataset_key"] == latest["dataset_key"]), key=preference)


def summary_rows(predictions: Sequence[Prediction]) -> list[dict]:
    """One row per image (for the batch table and CSV): file, predicted class, confidence, nearest training
    distance, whether it looks unfamiliar, error. Values are None where an unreadable image has none."""
    return [
        {
            "file": p.name,
            "predicted class": p.predicted_class,
            "confidence": p.confidence,
            "nearest training distance": p.neighbours[0].distance if p.neighbours else None,
            "unfamiliar": p.unfamiliar if p.ok else None,
            "error": p.error,
        }
        for p in predictions
    ]
