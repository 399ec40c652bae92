"""The experiments Flower Probe offers ready-made, and the head defaults: one source for Home, Train and the CLI.

- ``REFERENCE``: the project's reference comparison, DINOv2 ViT-S/14 vs ResNet-50 on Oxford 17, split 1,
  the reference head for 5 epochs. Needs two dataset files and two weights files (downloads).
- ``OFFLINE_DEMO``: "how much does pretraining matter?" in its cleanest and cheapest form: the same
  architecture twice, EfficientNet-Lite0 with its ImageNet weights (shipped in a pip package) and with
  random weights, on Synthetic Flowers (generated here), by the reference head and then the field's
  protocols (linear, logistic regression, k-NN, NCM) on the cached features. Needs no network.
- ``OFFLINE_DEMO_RANDOM_RESNET``: the optional extra run of the offline demo, a random-weight ResNet-50
  (a bigger architecture, 3-4x slower to extract on a CPU).
- ``HEAD_DEFAULTS``: ``HeadConfig()``, the reference head, which the Train page's inputs and the CLI's
  options start from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from core.data.datasets import DEFAULT_SPLIT
from core.probing.heads import HeadConfig

HEAD_DEFAULTS = HeadConfig()


@dataclass(frozen=True)
class ComparisonPreset:
    """A comparison ready to run: ``core.probing.experiment.run_comparison(**preset.comparison_kwargs(),
    workspace=...)``.
    """

    title: str  # the job's title
    dataset: str
    backbones: tuple[str, ...]  # specs as core.probing.experiment.parse_backbone reads them ("name", "name@random")
    split: str = DEFAULT_SPLIT
    head: HeadConfig = field(default_factory=lambda: HEAD_DEFAULTS)
    # The field's protocols run after the reference head on the same (then cached) features, through
    # core.probing.suite.run_probe_suite: one head alone can mislead (random Lite0 features collapse the reference
    # MLP to one class, while logistic regression reads them at 75 %). Empty: the reference head only.
    probe_protocols: tuple[str, ...] = ()

    def comparison_kwargs(self) -> dict:
        return {"dataset": self.dataset, "backbones": list(self.backbones), "split": self.split, "head": self.head}

    def probe_kwargs(self) -> dict | None:
        """``run_probe_suite``'s arguments (whole training part) for ``probe_protocols``; None when there are none."""
        if not self.probe_protocols:
            return None
        return {
            "dataset": self.dataset,
            "backbones": list(self.backbones),
            "protocols": list(self.probe_protocols),
            "split": self.split,
        }

    def with_backbones(self, *extra: str, title: str) -> ComparisonPreset:
        return replace(self, backbones=(*self.backbones, *extra), title=title)


REFERENCE = ComparisonPreset(
    title="Reference: DINOv2 ViT-S/14 vs ResNet-50 on Oxford 17",
    dataset="oxford17",
    backbones=("dinov2_vits14", "resnet50"),
)
OFFLINE_DEMO = ComparisonPreset(
    title="Offline demo: EfficientNet-Lite0 pretrained vs random weights on Synthetic Flowers",
    dataset="synthetic",
    backbones=("efficientnet_lite0", "efficientnet_lite0@random"),
    probe_protocols=("linear", "logreg", "knn", "ncm"),
)
OFFLINE_DEMO_RANDOM_RESNET = OFFLINE_DEMO.with_backbones(
    "resnet50@random",
    title="Offline demo: EfficientNet-Lite0 pretrained vs random, and a random ResNet-50, on Synthetic Flowers",
)
