"""Section 4, head training from cached features with ``core.probing.heads.train_head``.

The reference run's size (5 epochs, 680 train / 340 valid / 340 test, 17 classes) for both of the
reference backbones' feature sizes, and a large one: 50 epochs on 20,000 384-d feature vectors.
Features are synthetic class clusters; training cost does not depend on their values.
"""

from __future__ import annotations

import numpy as np

from .common import Context, Target, seconds

CLASSES = 17


def clustered_features(n: int, dim: int, *, classes: int = CLASSES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of shape (n, dim), float32, in ``classes`` Gaussian clusters; and their labels (n,)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    return (centres[labels] + rng.normal(scale=2.0, size=(n, dim))).astype(np.float32), labels


def time_training(*, train_samples: int, dim: int, epochs: int, repeats: int) -> dict:
    from core.probing.heads import HeadConfig, train_head

    features, labels = clustered_features(2 * train_samples, dim)
    half, quarter = train_samples, train_samples + train_samples // 2
    parts = (
        (features[:half], labels[:half]),
        (features[half:quarter], labels[half:quarter]),
        (features[quarter:], labels[quarter:]),
    )
    config = HeadConfig(epochs=epochs)
    best = min(seconds(lambda: train_head(*parts, num_classes=CLASSES, config=config)) for _ in range(repeats))
    return {
        "train_samples": train_samples,
        "valid_samples": quarter - half,
        "test_samples": len(features) - quarter,
        "dim": dim,
        "epochs": epochs,
        "seconds": best,
    }


def run(context: Context) -> tuple[dict, list[Target]]:
    sizes = context.sizes
    results = {
        "reference_384d": time_training(
            train_samples=sizes.head_samples, dim=384, epochs=5, repeats=sizes.head_repeats
        ),
        "reference_2048d": time_training(
            train_samples=sizes.head_samples, dim=2048, epochs=5, repeats=sizes.head_repeats
        ),
        "large_384d": time_training(train_samples=sizes.big_head_samples, dim=384, epochs=50, repeats=1),
    }
    for name, result in results.items():
        context.log(f"  head {name}: {result['seconds']:.3f} s")
    slowest = max(results["reference_384d"]["seconds"], results["reference_2048d"]["seconds"])
    targets = [
        Target(
            f"Head training, 5 epochs on {sizes.head_samples} samples (slower of 384-d, 2048-d)", slowest, "<", 1, "s"
        )
    ]
    return results, targets
