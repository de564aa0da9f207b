"""Spectral clustering recovers planted clusters on both paths; bad input fails clearly."""
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from lib.tuningset import clustering
from lib.core.config import ClusterConfig


def planted(n, k, d=32, seed=0, spread=0.25):
    """k unit-norm centres plus noise, unequal cluster sizes; L2-normalised like CLIP vectors."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.choice(k, n, p=np.linspace(1, 3, k) / np.linspace(1, 3, k).sum())
    X = centres[y] + spread * rng.standard_normal((n, d)) / np.sqrt(d) * 2
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), y


def test_exact_path_recovers_planted_clusters():
    X, y = planted(400, 6)
    assert adjusted_rand_score(y, clustering.spectral(X, 6, seed=0)) >= 0.9


@pytest.mark.parametrize("solver", ["amg", "lobpcg"])
def test_sparse_path_recovers_planted_clusters(solver):
    X, y = planted(6000, 8, d=96, seed=1)      # > 5000: the inverted-file kNN search, PCA to 64 dims
    got = clustering.spectral(X, 8, seed=0, exact_below=0, solver=solver)
    assert adjusted_rand_score(y, got) >= 0.9


def test_sparse_path_agrees_with_exact_path_on_non_convex_clusters():
    # two concentric rings: k-means cannot separate them, spectral clustering must
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 2 * np.pi, 600)
    r = np.r_[np.ones(300), 3 * np.ones(300)] + 0.08 * rng.standard_normal(600)
    X, y = np.c_[r * np.cos(t), r * np.sin(t)], np.r_[np.zeros(300), np.ones(300)]
    assert adjusted_rand_score(y, clustering.spectral(X, 2, seed=0)) >= 0.9
    assert adjusted_rand_score(y, clustering.spectral(X, 2, seed=0, exact_below=0, n_neighbors=10)) >= 0.9
    assert adjusted_rand_score(y, clustering.kmeans(X, 2, seed=0)) < 0.5


def test_ivf_neighbours_match_exact_ones():
    X, _ = planted(7000, 10, d=16, seed=2)
    approx, _ = clustering.knn(X, 10, seed=0)
    exact, _ = clustering.knn(X, 10, seed=0, exact_up_to=10 ** 6)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)])
    assert recall >= 0.9
    assert not (approx == np.arange(len(X))[:, None]).any()      # never its own neighbour


def test_same_seed_same_clusters_and_ids_ordered_by_size():
    X, _ = planted(500, 5, seed=3)
    a, b = clustering.spectral(X, 5, seed=4), clustering.spectral(X, 5, seed=4)
    np.testing.assert_array_equal(a, b)
    sizes = np.bincount(a)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_per_label_clusters_each_label_separately():
    X, y = planted(300, 3, seed=5)
    labels = np.where(np.arange(300) % 2, "Unhealthy", "No Finding")
    got = clustering.per_label(X, labels, "kmeans", 3, 0, ClusterConfig(k=3))
    for label in ("No Finding", "Unhealthy"):
        r = labels == label
        assert set(got[r]) == {0, 1, 2}
        assert adjusted_rand_score(y[r], got[r]) >= 0.9


def test_k_larger_than_a_class_is_a_clear_error():
    X, _ = planted(60, 2)
    labels = np.r_[np.repeat("No Finding", 55), np.repeat("Unhealthy", 5)]
    with pytest.raises(clustering.ClusterError, match="label 'Unhealthy' has only 5 points"):
        clustering.per_label(X, labels, "spectral", 6, 0, ClusterConfig(k=6))


def test_nan_embeddings_are_rejected():
    X, _ = planted(50, 2)
    X[7, 3] = np.nan
    with pytest.raises(clustering.ClusterError, match="NaN"):
        clustering.spectral(X, 2)


def test_silhouette_is_high_for_planted_and_undefined_for_one_cluster():
    X, y = planted(300, 4, seed=6)
    assert clustering.silhouette(X, y) > 0.3
    assert np.isnan(clustering.silhouette(X, np.zeros(300, int)))
    q = clustering.quality(X, np.repeat(["a", "b"], 150), y)
    assert list(q["label"]) == ["a", "b"] and (q["n"] == 150).all()
