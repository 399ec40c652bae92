"""Section 5, t-SNE maps with ``core.maps.projection.tsne_embedding``: scikit-learn and openTSNE, and "auto".

Points are 384-d features in 17 Gaussian clusters (ViT-S/14's size, Synthetic Flowers' class count);
each map includes the PCA to 50 dimensions the explorer does first. "auto" is what the explorer runs.
"""

from __future__ import annotations

from .common import Context, Target, seconds
from .heads import clustered_features

METHODS = ("sklearn", "opentsne")
TARGET_POINTS = 1_360


def run(context: Context) -> tuple[dict, list[Target]]:
    try:
        from core.maps.projection import tsne_embedding
    except ImportError as exc:
        context.log(f"  t-SNE: core.maps.projection.tsne_embedding is missing ({exc})")
        return {"missing": str(exc)}, [Target(f"t-SNE of {TARGET_POINTS:,} points", None, "<", 5, "s", "missing")]
    results: dict = {}
    for points in context.sizes.tsne_points:
        features, _ = clustered_features(points, 384)
        methods = METHODS + (("auto",) if points == TARGET_POINTS else ())
        results[str(points)] = {}
        for method in methods:
            elapsed = seconds(
                lambda features=features, method=method: tsne_embedding(
                    features, perplexity=30.0, pca_components=50, seed=0, method=method
                )
            )
            results[str(points)][method] = elapsed
            context.log(f"  t-SNE {points} points, {method}: {elapsed:.2f} s")
    auto = results.get(str(TARGET_POINTS), {}).get("auto")
    return results, [Target(f"t-SNE of {TARGET_POINTS:,} points (explorer's 'auto' choice)", auto, "<", 5, "s")]
