"""Clustering embeddings per label: spectral clustering that scales to all of ChestX-ray14, and k-means.

Spectral clustering (Ng-Jordan-Weiss, with self-tuning local scales):
- small n (< ``exact_below``): the exact, dense rbf affinity and a dense eigensolver;
- large n: a sparse k-nearest-neighbour affinity (neighbours found through an inverted-file index on
  PCA-reduced vectors), and the k smallest eigenvectors of the normalised Laplacian by LOBPCG,
  preconditioned with algebraic multigrid (pyamg) by default. Memory stays O(n * n_neighbors).
Cluster ids are renumbered by size (0 = largest), so equal inputs give equal tables.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from scipy import linalg, sparse
from scipy.sparse import csgraph
from scipy.sparse.linalg import lobpcg
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from ..core.config import ClusterConfig

log = logging.getLogger(__name__)
SCALE_NEIGHBOR = 7       # local scale = distance to the 7th neighbour (Zelnik-Manor & Perona, 2004)


class ClusterError(ValueError):
    """Clustering input that cannot work; the message says what to change."""


def check_embeddings(X, what: str = "embeddings") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or len(X) == 0:
        raise ClusterError(f"{what} must be a non-empty N x D array, got shape {X.shape}.")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise ClusterError(f"{int(bad.sum())} of {len(X)} {what} contain NaN or inf (rows "
                           f"{np.flatnonzero(bad)[:5].tolist()}); re-embed those images or drop them.")
    return X


def _check_k(n: int, k: int, what: str = "the data") -> None:
    if k < 1:
        raise ClusterError(f"k = {k}: at least one cluster is needed.")
    if k > n:
        raise ClusterError(f"k = {k} clusters but {what} has only {n} points; lower cluster.k to at most {n} "
                           "or enlarge pools.tuning.")


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters so that 0 is the largest (ties by first appearance)."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = ids[np.lexsort((first, -counts))]
    remap = np.empty(ids.max() + 1, dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[labels]


def _sq_dists(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    d = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T)
    return np.maximum(d, 0.0)


def _safe_scale(sigma: np.ndarray) -> np.ndarray:
    """Local scales with zeros (duplicate points) lifted, so no 0/0 in the affinity."""
    pos = sigma[sigma > 0]
    floor = 1e-6 * (np.median(pos) if pos.size else 1.0)
    return np.maximum(sigma, floor)


# ---------------------------------------------------------------------------------- exact (dense)
def rbf_affinity(X: np.ndarray) -> np.ndarray:
    """Dense rbf affinity with local scales: W_ij = exp(-|xi - xj|^2 / (s_i s_j)), zero diagonal."""
    X = X.astype(np.float64)
    D2 = _sq_dists(X, X)
    m = min(SCALE_NEIGHBOR, len(X) - 1)
    sigma = _safe_scale(np.sqrt(np.partition(D2, m, axis=1)[:, m]))
    W = np.exp(-D2 / np.outer(sigma, sigma))
    np.fill_diagonal(W, 0.0)
    return W


def _dense_embedding(W: np.ndarray, k: int) -> np.ndarray:
    d = np.maximum(W.sum(1), 1e-12)
    M = W / np.sqrt(np.outer(d, d))
    n = len(W)
    _, vecs = linalg.eigh(M, subset_by_index=[n - k, n - 1])   # k largest of D^-1/2 W D^-1/2
    return vecs[:, ::-1]


# ---------------------------------------------------------------------------------- sparse (large n)
def pca(X: np.ndarray, dims: int) -> np.ndarray:
    """Projection on the top principal axes, via the D x D covariance (one pass, cheap for N >> D).

    kNN search in this subspace finds nearly the same neighbours, ~D/dims times cheaper.
    """
    X = X.astype(np.float32)
    Xc = X - X.mean(0)
    _, vecs = linalg.eigh((Xc.T @ Xc).astype(np.float64), subset_by_index=[X.shape[1] - dims, X.shape[1] - 1])
    return Xc @ vecs[:, ::-1].astype(np.float32)


def _knn_rows(Q: np.ndarray, C: np.ndarray, cand: np.ndarray, m: int, self_cols: np.ndarray | None):
    """For each query row: the m nearest candidates (global ids, distances), self excluded."""
    D = _sq_dists(Q, C)
    if self_cols is not None:
        D[np.arange(len(Q)), self_cols] = np.inf
    part = np.argpartition(D, m - 1, axis=1)[:, :m]
    pd_ = np.take_along_axis(D, part, 1)
    order = np.argsort(pd_, axis=1)
    return cand[np.take_along_axis(part, order, 1)], np.sqrt(np.take_along_axis(pd_, order, 1))


def knn(X: np.ndarray, m: int, seed: int = 0, n_probe: int = 8, exact_up_to: int = 5000,
        block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Approximate m nearest neighbours (n x m ids, distances), self excluded.

    Up to ``exact_up_to`` points: exact. Beyond: an inverted-file index (k-means cells of ~sqrt(n) points);
    each cell's points are compared with the points of its ``n_probe`` nearest cells only.
    """
    n = len(X)
    X = np.ascontiguousarray(X, dtype=np.float32)
    idx, dist = np.empty((n, m), np.int64), np.empty((n, m), np.float32)
    if n <= exact_up_to:
        allc = np.arange(n)
        for s in range(0, n, block):
            q = allc[s: s + block]
            idx[q], dist[q] = _knn_rows(X[q], X, allc, m, q)
        return idx, dist
    n_cells = int(np.clip(np.sqrt(n), 16, 1024))
    rng = np.random.default_rng(seed)
    sample = X[rng.choice(n, min(n, 40 * n_cells), replace=False)]
    with threadpool_limits(1, user_api="openmp"):
        centers = KMeans(n_cells, n_init=1, max_iter=25, random_state=seed).fit(sample).cluster_centers_
    centers = centers.astype(np.float32)
    cell = np.concatenate([_sq_dists(X[s: s + 8192], centers).argmin(1) for s in range(0, n, 8192)])
    members = [np.flatnonzero(cell == c) for c in range(n_cells)]
    near = np.argsort(_sq_dists(centers, centers), axis=1)
    with threadpool_limits(1, user_api="blas"):   # many small products: threads only add overhead
        _ivf_search(X, members, near, m, n_probe, block, idx, dist)
    return idx, dist


def _ivf_search(X, members, near, m, n_probe, block, idx, dist) -> None:
    for c in range(len(members)):
        q = members[c]
        if q.size == 0:
            continue
        probes = [c] + [p for p in near[c] if p != c]
        sizes = np.cumsum([members[p].size for p in probes])
        reach = max(n_probe, int(np.searchsorted(sizes, m + 1)) + 1)   # enough candidates even near tiny cells
        cand = np.concatenate([members[p] for p in probes[:reach]])    # the cell's own points come first
        for s in range(0, q.size, block):
            qq = q[s: s + block]
            idx[qq], dist[qq] = _knn_rows(X[qq], X[cand], cand, m, np.arange(s, s + qq.size))


def knn_affinity(X: np.ndarray, n_neighbors: int, seed: int = 0) -> sparse.csr_matrix:
    """Symmetric sparse affinity over the kNN graph, with local scales; components bridged weakly."""
    n = len(X)
    m = min(n_neighbors, n - 1)
    idx, dist = knn(X, m, seed)
    sigma = _safe_scale(dist[:, min(SCALE_NEIGHBOR, m) - 1].astype(np.float64))
    w = np.exp(-(dist.astype(np.float64) ** 2) / (sigma[:, None] * sigma[idx]))
    W = sparse.csr_matrix((w.ravel(), (np.repeat(np.arange(n), m), idx.ravel())), shape=(n, n))
    W = W.maximum(W.T).tocsr()
    n_comp, comp = csgraph.connected_components(W, directed=False)
    if n_comp > 1:
        # A disconnected graph makes the eigenproblem singular; weak bridges keep it solvable and are
        # the first thing the spectral cut removes again.
        log.info("kNN graph has %d components; bridging them with weak edges (raise cluster.n_neighbors "
                 "to avoid this).", n_comp)
        reps = np.array([np.flatnonzero(comp == c)[0] for c in range(n_comp)])
        main = reps[np.bincount(comp).argmax()]
        others = reps[reps != main]
        eps = 1e-3 * W.data.min()
        B = sparse.csr_matrix((np.full(2 * others.size, eps), (np.r_[others, np.full(others.size, main)],
                                                               np.r_[np.full(others.size, main), others])),
                              shape=(n, n))
        W = (W + B).tocsr()
    return W


def _sparse_embedding(W: sparse.csr_matrix, k: int, solver: str, seed: int) -> np.ndarray:
    """The k smallest eigenvectors of L = I - D^-1/2 W D^-1/2 by LOBPCG (AMG-preconditioned for 'amg')."""
    n = W.shape[0]
    d = np.asarray(W.sum(1)).ravel()
    s = 1.0 / np.sqrt(np.maximum(d, 1e-12))
    L = (sparse.identity(n, format="csr") - sparse.diags(s) @ W @ sparse.diags(s)).tocsr()
    rng = np.random.default_rng(seed)
    X0 = rng.standard_normal((n, k + 1))
    X0[:, 0] = np.sqrt(d)                      # the known eigenvector of eigenvalue 0
    M = None
    if solver == "amg":
        from pyamg import smoothed_aggregation_solver

        ml = smoothed_aggregation_solver((L + 1e-5 * sparse.identity(n)).tocsr(), max_coarse=max(10, 4 * k))
        M = ml.aspreconditioner()
    elif solver != "lobpcg":
        raise ClusterError(f"cluster.solver = {solver!r}; use 'amg' or 'lobpcg'.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vals, vecs = lobpcg(L, X0, M=M, tol=1e-5, largest=False,
                                          maxiter=200 if M is not None else 2000)
    if caught:
        log.warning("eigensolver (%s): %s", solver, caught[-1].message)
    return vecs[:, np.argsort(vals)[:k]]


def _kmeans(X: np.ndarray, k: int, seed: int, n_init: int = 10) -> np.ndarray:
    # One OpenMP thread below 50k points: on shared cores sklearn's spinning threads cost 10-100x.
    with threadpool_limits(1 if len(X) < 50000 else None, user_api="openmp"):
        return KMeans(k, n_init=n_init, random_state=seed).fit_predict(X)


def _discretise(U: np.ndarray, k: int, seed: int) -> np.ndarray:
    U = U / np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)   # NJW row normalisation
    return _kmeans(U, k, seed, 10 if len(U) <= 20000 else 4)


# ---------------------------------------------------------------------------------- public
def spectral(X, k: int, seed: int = 0, n_neighbors: int = 15, exact_below: int = 3000, solver: str = "amg",
             pca_dims: int = 64) -> np.ndarray:
    """Spectral clustering into k clusters: exact rbf below ``exact_below`` points, sparse kNN + AMG above."""
    X = check_embeddings(X)
    n = len(X)
    _check_k(n, k)
    if k == 1:
        return np.zeros(n, np.int64)
    # Small problems run single-threaded: on shared cores, BLAS threads waiting for each other cost more
    # than they save.
    with threadpool_limits(1 if n < 20000 else None):
        return _spectral(X, k, seed, n_neighbors, exact_below, solver, pca_dims)


def _spectral(X, k, seed, n_neighbors, exact_below, solver, pca_dims) -> np.ndarray:
    n = len(X)
    if n < exact_below or n <= k + 2:
        U = _dense_embedding(rbf_affinity(X), k)
    else:
        if pca_dims and X.shape[1] > pca_dims:
            X = pca(X, pca_dims)
        U = _sparse_embedding(knn_affinity(X, n_neighbors, seed), k, solver, seed)
    return _by_size(_discretise(U, k, seed))


def kmeans(X, k: int, seed: int = 0) -> np.ndarray:
    X = check_embeddings(X)
    _check_k(len(X), k)
    return _by_size(_kmeans(X, k, seed))


def cluster(X, algorithm: str, k: int, seed: int, ccfg: ClusterConfig) -> np.ndarray:
    if algorithm == "spectral":
        return spectral(X, k, seed, ccfg.n_neighbors, ccfg.exact_below, ccfg.solver, ccfg.pca_dims)
    if algorithm == "kmeans":
        return kmeans(X, k, seed)
    raise ClusterError(f"unknown clustering algorithm {algorithm!r}; use 'spectral' or 'kmeans'.")


def per_label(X, labels, algorithm: str, k: int, seed: int, ccfg: ClusterConfig) -> np.ndarray:
    """Cluster each label's points separately (ids 0..k-1 within each label)."""
    X = check_embeddings(X)
    labels = np.asarray(labels)
    if len(labels) != len(X):
        raise ClusterError(f"{len(X)} embeddings but {len(labels)} labels.")
    out = np.full(len(X), -1, np.int64)
    for label in pd.unique(labels):
        rows = np.flatnonzero(labels == label)
        _check_k(len(rows), k, f"label '{label}'")
        out[rows] = cluster(X[rows], algorithm, k, seed, ccfg)
    return out


def silhouette(X, clusters, seed: int = 0, sample: int = 5000) -> float:
    """Mean silhouette (Euclidean) on at most ``sample`` points; NaN where it is undefined."""
    X, clusters = np.asarray(X), np.asarray(clusters)
    if not 2 <= len(np.unique(clusters)) <= len(X) - 1:
        return float("nan")
    size = min(len(X), sample)
    return float(silhouette_score(X, clusters, sample_size=size if size < len(X) else None, random_state=seed))


def quality(X, labels, clusters, seed: int = 0, sample: int = 5000) -> pd.DataFrame:
    """Per label: points, clusters, smallest and largest cluster, silhouette."""
    rows = []
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    for label in pd.unique(labels):
        r = labels == label
        sizes = np.bincount(clusters[r])
        rows.append({"label": label, "n": int(r.sum()), "k": int((sizes > 0).sum()), "smallest": int(sizes.min()),
                     "largest": int(sizes.max()), "silhouette": silhouette(X[r], clusters[r], seed, sample)})
    return pd.DataFrame(rows)
