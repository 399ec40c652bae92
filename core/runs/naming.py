"""One name for a run, used by every page, every CSV and ``python -m core runs``.

A run used to be named three ways (Compare added the protocol, Home, Explorer and Classify left it out, the CLI
printed its own columns), so five different runs read "efficientnet_lite0, random weights" at five accuracies. A run's
name now says everything that tells it apart from the runs beside it, always in the same order:

    ``#12 efficientnet_lite0 · random weights · gap · logreg · all shots · split 1 · 75.0 % test``

A name the user gave (``RunRegistry.rename_run``) comes first and the generated name follows in brackets, so a
renamed run still says what it is; tags follow at the end. The name is plain text: pages escape it (``core.base.text``)
where it goes into Markdown or HTML.
"""

from __future__ import annotations

from pathlib import PurePath

from core.backbones.variants import default_variant
from core.base.errors import FlowerProbeError

PROTOCOL_NAMES = {
    "mlp": "reference MLP",
    "reference_linear": "reference linear head",  # the reference recipe on one Linear layer (compare's linear head)
    "linear": "linear probe",
    "logreg": "logistic regression",
    "knn": "k-NN",
    "ncm": "NCM",
}


def weights_name(weights: str) -> str:
    """``pretrained``, ``random weights``, or ``checkpoint <file name>`` (two checkpoints stay apart)."""
    if weights in ("pretrained", "random"):
        return "random weights" if weights == "random" else "pretrained"
    return f"checkpoint {PurePath(weights).name}"


def features_name(run: dict) -> str:
    """The feature variant (``gap``, ``cls``, ``last4``...), ``· standardised`` added when the head standardised."""
    features = run.get("features")
    if features is None:  # a run from before feature variants: the backbone's default
        try:
            features = default_variant(run["backbone"])
        except FlowerProbeError:  # a backbone this version no longer knows
            features = "default features"
    head = (run.get("config") or {}).get("head") or {}
    return features + (" standardised" if head.get("standardise") else "")


def protocol_name(protocol: str | None) -> str:
    """``reference MLP``, ``logistic regression``, ``k-NN``... (runs before probes were the reference MLP)."""
    protocol = protocol or "mlp"
    return PROTOCOL_NAMES.get(protocol, protocol)


def shots_name(shots: int | None) -> str:
    """``5-shot`` or ``all shots`` (the whole training part)."""
    return "all shots" if shots is None else f"{shots}-shot"


def accuracy_name(run: dict) -> str:
    """``75.0 % test``, or the run's status when it has no accuracy (``failed``, ``running``)."""
    acc = run.get("test_acc")
    return f"{acc:.1f} % test" if acc is not None else str(run.get("status") or "no result")


def generated_name(run: dict) -> str:
    """What the run is, without any name the user gave: id, backbone, weights, features, protocol, shots, split,
    accuracy."""
    return " · ".join(
        (
            f"#{run['id']} {run['backbone']}",
            weights_name(run["weights"]),
            features_name(run),
            protocol_name(run.get("protocol")),
            shots_name(run.get("shots")),
            f"split {run['split']}",
            accuracy_name(run),
        )
    )


def run_name(run: dict) -> str:
    """The one name of a run (a ``RunRegistry`` row), plain text; see the module docstring.

    Parameters
    ----------
    run : dict
        A run as ``RunRegistry.get_run`` or ``list_runs`` returns it (``title`` and ``tags`` may be absent).

    Returns
    -------
    str
        ``#12 efficientnet_lite0 · random weights · gap · logreg · all shots · split 1 · 75.0 % test``, or
        ``My name (#12 ...)`` for a renamed run, then `` [tag, tag]`` when it has tags.
    """
    name = generated_name(run)
    title = (run.get("title") or "").strip()
    if title:
        name = f"{title} ({name})"
    tags = run.get("tags") or []
    if tags:
        name += f" [{', '.join(tags)}]"
    return name
