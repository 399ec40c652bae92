"""Tests for core.maps.projection: t-SNE maps, cosine neighbours, placing new points, Plotly selections."""

from __future__ import annotations

import numpy as np
import pytest

from core.base.errors import FlowerProbeError
from core.maps import projection
from core.maps.projection import cosine_neighbours, embed_new_points, tsne_embedding


def _clusters(n_per_cluster: int = 30, n_clusters: int = 4, dim: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 4
    labels = np.repeat(np.arange(n_clusters), n_per_cluster)
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def _neighbour_label_agreement(embedding: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of points whose nearest 2-D neighbour has the same label."""
    distances = np.linalg.norm(embedding[:, None] - embedding[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    return float(np.mean(labels[distances.argmin(axis=1)] == labels))


@pytest.mark.parametrize("method", ["sklearn", "opentsne"])
def test_tsne_is_deterministic_and_keeps_clusters(method):
    features, labels = _clusters()
    first = tsne_embedding(features, perplexity=10, method=method, seed=3)
    second = tsne_embedding(features, perplexity=10, method=method, seed=3)
    assert first.shape == (len(features), 2)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    assert _neighbour_label_agreement(first, labels) > 0.95


def test_tsne_reports_progress_from_start_to_end():
    features, _ = _clusters(n_per_cluster=20, dim=8)  # 8-d: PCA is skipped
    events = []
    tsne_embedding(features, perplexity=5, method="opentsne", progress=events.append)
    assert {event.stage for event in events} == {"tsne"}
    assert events[0].done == 0 and events[-1].done == events[-1].total > 0
    assert len(events) > 3, "openTSNE callbacks should report during the optimisation"
    assert [event.done for event in events] == sorted(event.done for event in events)


def test_a_large_map_fits_a_sample_and_places_the_other_points_in_their_clusters(monkeypatch):
    # The thresholds shrunk so the large-map path runs in a second: 400 points, t-SNE fitted on 150.
    monkeypatch.setattr(projection, "TSNE_SAMPLE_FROM", 300)
    monkeypatch.setattr(projection, "TSNE_SAMPLE_POINTS", 150)
    features, labels = _clusters(n_per_cluster=100)
    events = []
    first = tsne_embedding(features, perplexity=10, seed=3, progress=events.append)
    second = tsne_embedding(features, perplexity=10, seed=3)
    sample = projection.tsne_sample_rows(len(features), seed=3)
    assert len(sample) == 150 and np.all(np.diff(sample) > 0)
    assert first.shape == (400, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    # Every placed point lands among its own class's sampled points.
    placed = np.setdiff1d(np.arange(400), sample)
    distances = np.linalg.norm(first[placed, None] - first[None, sample], axis=-1)
    assert np.mean(labels[sample][distances.argmin(axis=1)] == labels[placed]) > 0.95
    assert "fitted on 150" in events[0].message and events[-1].done == events[-1].total
    assert projection.tsne_sample_rows(299, seed=3) is None


@pytest.mark.parametrize("perplexity", [0, -1.0, 13.5, 40, 41.5])
def test_tsne_rejects_perplexity_outside_zero_to_a_third_of_n(perplexity):
    features, _ = _clusters(n_per_cluster=10)  # 40 points
    with pytest.raises(FlowerProbeError, match="perplexity") as error:
        tsne_embedding(features, perplexity=perplexity)
    assert str(perplexity) in str(error.value) and "40" in str(error.value)


def test_tsne_rejects_unknown_method_and_bad_features():
    features, _ = _clusters(n_per_cluster=10)
    with pytest.raises(ValueError, match="method"):
        tsne_embedding(features, perplexity=5, method="umap")
    with pytest.raises(ValueError, match="2-D"):
        tsne_embedding(features[0], perplexity=5)
    features[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tsne_embedding(features, perplexity=5)


def test_auto_method_is_opentsne_as_the_docstring_says():
    # Only the documented choice: which library is faster is measured by python -m bench (section tsne), not here.
    assert projection._resolve_method("auto") == "opentsne"
    assert projection._resolve_method("sklearn") == "sklearn"


def _brute_force_cosine(reference, query):
    unit_reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    unit_query = query / np.linalg.norm(query, axis=1, keepdims=True)
    distances = 1 - unit_query @ unit_reference.T
    order = np.argsort(distances, axis=1)
    return order, np.take_along_axis(distances, order, axis=1)


@pytest.mark.parametrize("chunk", [7, 1_024])
def test_cosine_neighbours_match_brute_force(monkeypatch, chunk):
    monkeypatch.setattr(projection, "_NEIGHBOUR_CHUNK", chunk)
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(200, 16))
    query = rng.normal(size=(30, 16))
    indices, distances = cosine_neighbours(reference, query, k=5)
    expected_indices, expected_distances = _brute_force_cosine(reference, query)
    np.testing.assert_array_equal(indices, expected_indices[:, :5])
    np.testing.assert_allclose(distances, expected_distances[:, :5], atol=1e-5)
    assert (np.diff(distances, axis=1) >= 0).all()


def test_cosine_neighbours_clip_k_and_handle_zero_rows():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(6, 4))
    query = np.vstack([rng.normal(size=(1, 4)), np.zeros((1, 4))])
    indices, distances = cosine_neighbours(reference, query, k=50)
    assert indices.shape == distances.shape == (2, 6)
    assert sorted(indices[0]) == list(range(6))
    np.testing.assert_allclose(distances[1], 1.0)  # a zero vector is orthogonal to everything
    with pytest.raises(ValueError, match="k must be"):
        cosine_neighbours(reference, query, k=0)
    with pytest.raises(ValueError, match="dimension"):
        cosine_neighbours(reference, rng.normal(size=(2, 5)), k=1)


def test_embed_new_points_puts_a_duplicate_on_its_original():
    features, _ = _clusters(n_per_cluster=10, dim=16)
    embedding = np.random.default_rng(4).normal(size=(len(features), 2)) * 10
    new = features[[7, 23]] * 3.0  # scaled copies: cosine distance 0
    placed = embed_new_points(features, embedding, new, k=10)
    np.testing.assert_allclose(placed, embedding[[7, 23]], atol=1e-9)


def test_embed_new_points_lands_among_its_neighbours():
    features, labels = _clusters(n_per_cluster=15, dim=16)
    embedding = np.c_[labels * 100.0, np.zeros(len(labels))] + np.random.default_rng(5).normal(size=(len(labels), 2))
    rng = np.random.default_rng(6)
    new = features[labels == 2][:3] + rng.normal(size=(3, 16)) * 0.1
    placed = embed_new_points(features, embedding, new, k=5)
    assert placed.shape == (3, 2)
    np.testing.assert_allclose(placed[:, 0], 200.0, atol=5.0)
    with pytest.raises(ValueError, match="reference_embedding"):
        embed_new_points(features, embedding[:-1], new)


# ----------------------------------------------------------------------------------------------- map methods


def _counting_fit(monkeypatch) -> list[str]:
    """Record each real computation of a map (``cached_map`` goes through ``fit_map``)."""
    calls: list[str] = []
    real = projection.fit_map

    def counting(features, **kwargs):
        calls.append(kwargs["method"])
        return real(features, **kwargs)

    monkeypatch.setattr(projection, "fit_map", counting)
    monkeypatch.setattr(projection, "_memory", projection.OrderedDict())
    return calls


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_each_map_is_cached_in_memory_and_on_disk(method, tmp_path, monkeypatch):
    features, _ = _clusters(n_per_cluster=15, dim=16)
    calls = _counting_fit(monkeypatch)
    params = projection.MapParams(perplexity=5)
    first = projection.cached_map(features, method=method, params=params, cache_dir=tmp_path)
    events = []
    again = projection.cached_map(features, method=method, params=params, cache_dir=tmp_path, progress=events.append)
    assert calls == [method], "a rerun computes nothing"
    assert "cache" in events[-1].message
    projection._memory.clear()  # a new server process: the file on disk answers
    from_disk = projection.cached_map(features, method=method, params=params, cache_dir=tmp_path)
    assert calls == [method]
    np.testing.assert_array_equal(first.embedding, from_disk.embedding)
    np.testing.assert_array_equal(first.embedding, again.embedding)
    # Other parameters of this method, or other features, are another map.
    other = projection.MapParams(perplexity=6, seed=1)
    projection.cached_map(features, method=method, params=other, cache_dir=tmp_path)
    projection.cached_map(features[1:], method=method, params=params, cache_dir=tmp_path)
    assert calls == [method] * 3


def test_the_cache_key_ignores_parameters_the_method_does_not_use():
    features, _ = _clusters(n_per_cluster=5, dim=8)
    key = projection.map_cache_key
    assert key(features, method="pca", params=projection.MapParams(perplexity=5)) == key(
        features, method="pca", params=projection.MapParams(perplexity=9, n_neighbors=4)
    )
    assert key(features, method="tsne", params=projection.MapParams(n_neighbors=4)) == key(
        features, method="tsne", params=projection.MapParams(n_neighbors=9)
    )
    assert key(features, method="tsne", params=projection.MapParams()) != key(
        features, method="umap", params=projection.MapParams()
    )


def test_pca_map_is_scikit_learn_pca_and_places_a_training_image_on_its_own_point(tmp_path):
    from sklearn.decomposition import PCA

    features, _ = _clusters(n_per_cluster=20, dim=12)
    feature_map = projection.fit_map(features, method="pca")
    expected = PCA(n_components=2, random_state=0).fit_transform(features)
    np.testing.assert_allclose(np.abs(feature_map.embedding), np.abs(expected), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(feature_map.place(features[[3, 50]]), feature_map.embedding[[3, 50]], atol=1e-6)
    assert feature_map.place(features[:1] + 100).shape == (1, 2)


def test_tsne_map_places_a_training_image_on_its_own_point():
    features, _ = _clusters(n_per_cluster=15, dim=16)
    feature_map = projection.fit_map(features, method="tsne", params=projection.MapParams(perplexity=5))
    np.testing.assert_allclose(feature_map.place(features[[7]]), feature_map.embedding[[7]])


@pytest.mark.slow  # numba compiles umap-learn on first use: ~30-60 s on a shared 2-core CPU
def test_umap_map_is_seeded_cached_and_places_training_images_next_to_their_own_points(tmp_path, monkeypatch):
    features, labels = _clusters(n_per_cluster=50, n_clusters=4, dim=32)  # 200 points
    calls = _counting_fit(monkeypatch)
    params = projection.MapParams(n_neighbors=10)
    first = projection.cached_map(features, method="umap", params=params, cache_dir=tmp_path)
    projection.cached_map(features, method="umap", params=params, cache_dir=tmp_path)
    assert calls == ["umap"]
    assert _neighbour_label_agreement(first.embedding, labels) > 0.95

    probe = np.arange(0, 200, 10)
    placed = first.place(features[probe])
    span = np.ptp(first.embedding, axis=0).max()
    own = np.linalg.norm(placed - first.embedding[probe], axis=1)
    nearest = np.linalg.norm(placed[:, None] - first.embedding[None], axis=-1).argmin(axis=1)
    assert (labels[nearest] == labels[probe]).all(), "each training image lands in its own cluster"
    assert np.median(own) < 0.05 * span, f"median distance to its own point {np.median(own):.3f}, map span {span:.1f}"

    projection._memory.clear()  # from disk: the embedding is read back; placing refits the seeded model once
    from_disk = projection.cached_map(features, method="umap", params=params, cache_dir=tmp_path)
    assert calls == ["umap"]
    np.testing.assert_array_equal(from_disk.embedding, first.embedding)
    np.testing.assert_allclose(from_disk.place(features[probe]), placed, atol=1e-3 * span)


@pytest.mark.parametrize(
    ("method", "params", "words"),
    [
        ("tsne", projection.MapParams(perplexity=14), ["perplexity", "13", "14", "40 points"]),
        ("umap", projection.MapParams(n_neighbors=40), ["n_neighbors", "39", "40"]),
        ("umap", projection.MapParams(n_neighbors=1), ["n_neighbors", "2", "1"]),
        ("umap", projection.MapParams(min_dist=1.5), ["min_dist", "0 to 1", "1.5"]),
        ("lle", projection.MapParams(), ["method", "tsne, umap, pca", "lle"]),
    ],
)
def test_bad_map_parameters_are_named_with_their_range_and_value(method, params, words):
    features, _ = _clusters(n_per_cluster=10)  # 40 points
    with pytest.raises(FlowerProbeError) as error:
        projection.fit_map(features, method=method, params=params)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_too_few_images_for_a_map():
    with pytest.raises(FlowerProbeError, match="at least 5 images; got 4"):
        projection.fit_map(np.eye(4, dtype=np.float32), method="pca")
