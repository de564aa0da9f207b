"""Tuning-set selection (stage 02): random, textbook, or an equal (or proportional) quota per embedding cluster.

Methods are named ``random``, ``textbook`` or ``<algorithm>-<embedding>`` (``spectral-pixel``,
``spectral-clip``, ``kmeans-clip`` ...). ``textbook`` stands in for the thesis's Experiment 5 (typical
textbook cases): it draws at random from the typical cases of the pool only, PA views with no finding
or exactly one. The thesis's method takes the same number of images from each cluster of a label,
duplicating images at random where a cluster is short (Experiments 3-4); each selected row records its
cluster and whether it is a duplicate. Rows come only from the stage-01 tuning pool, except for ``external``
(the thesis's real Experiment 5: a folder of unlabelled images pseudo-labelled by a classifier trained on
the real training pool, lib/tuningset/external.py), whose rows also record each pseudo-label's confidence.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..core import atomic, config, stages
from . import clustering, embeddings
from ..data import curation, phantoms
from ..core.config import Config

log = logging.getLogger(__name__)
ALGORITHMS = ("spectral", "kmeans")
SUMMARY_COLUMNS = ["method", "label", "cluster", "size", "taken", "duplicates"]
QUALITY_COLUMNS = ["method", "label", "n", "k", "smallest", "largest", "silhouette"]


class SelectionError(ValueError):
    """A selection request that cannot be met; the message says what to change."""


def take(rows: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n of ``rows``: distinct while they last, then random duplicates spread evenly (no image twice
    more than another). Returns (chosen rows, is-duplicate flags)."""
    rows = np.asarray(rows)
    if n <= len(rows):
        return rng.choice(rows, n, replace=False), np.zeros(n, bool)
    if len(rows) == 0:
        raise SelectionError(f"cannot take {n} images from an empty group.")
    full, extra = divmod(n - len(rows), len(rows))
    dups = [rng.permutation(rows) for _ in range(full)] + [rng.choice(rows, extra, replace=False)]
    return np.concatenate([rng.permutation(rows), *dups]), np.r_[np.zeros(len(rows), bool), np.ones(n - len(rows), bool)]


def quotas(sizes: np.ndarray, per_label: int, mode: str = "equal") -> np.ndarray:
    """Images to take from each cluster: the same count (equal) or shares of per_label (proportional)."""
    sizes = np.asarray(sizes)
    k = len(sizes)
    if per_label < 1:
        raise SelectionError(f"a quota of {per_label} images per label selects nothing; set selection.per_label >= 1.")
    if mode == "equal":
        q = per_label // k
        if q == 0:
            raise SelectionError(f"selection.per_label = {per_label} over {k} clusters is a quota of 0 per cluster; "
                                 f"raise selection.per_label to at least {k} or lower cluster.k.")
        if q * k != per_label:
            log.warning("per_label = %d is not a multiple of k = %d: taking %d per cluster, %d per label.",
                        per_label, k, q, q * k)
        return np.full(k, q)
    if mode == "proportional":   # largest remainder, so the counts add up to per_label exactly
        raw = per_label * sizes / sizes.sum()
        out = np.floor(raw).astype(int)
        out[np.argsort(-(raw - out), kind="stable")[: per_label - out.sum()]] += 1
        return out
    raise SelectionError(f"selection.quota = {mode!r}; use 'equal' or 'proportional'.")


def _label_order(pool: pd.DataFrame) -> list:
    return sorted(pd.unique(pool["label"]))


def select(pool: pd.DataFrame, clusters: np.ndarray | None, per_label: int, seed: int,
           quota: str = "equal") -> pd.DataFrame:
    """The tuning set: pool rows plus ``cluster`` (-1 for random) and ``duplicate``, per label."""
    pool = pool.reset_index(drop=True)
    parts = []
    for li, label in enumerate(_label_order(pool)):
        rows = np.flatnonzero((pool["label"] == label).to_numpy())
        if clusters is None:
            if len(rows) < per_label:
                log.warning("label '%s' has %d images in the tuning pool, fewer than per_label = %d; "
                            "duplicating at random.", label, len(rows), per_label)
            groups, counts = {-1: rows}, [per_label]
        else:
            ids = np.asarray(clusters)[rows]
            groups = {int(c): rows[ids == c] for c in np.unique(ids)}
            counts = quotas(np.array([len(g) for g in groups.values()]), per_label, quota)
        for (c, members), n in zip(groups.items(), counts):
            rng = np.random.default_rng([seed, li, c + 1])   # one stream per (label, cluster): order-independent
            chosen, dup = take(members, int(n), rng)
            parts.append(pool.iloc[chosen].assign(cluster=c, duplicate=dup))
    return pd.concat(parts, ignore_index=True)


def typical_cases(pool: pd.DataFrame) -> pd.DataFrame:
    """The textbook candidates: PA views with "No Finding" or exactly one finding, for every label."""
    typical = pool[(pool["view"] == "PA") & ~pool["findings"].astype(str).str.contains("|", regex=False)]
    empty = sorted(set(pool["label"]) - set(typical["label"]))
    if empty:
        raise SelectionError(f"the tuning pool has no typical case (PA, at most one finding) labelled {empty}; "
                             "use another selection method or a larger pools.tuning.")
    return typical


def summarise(method: str, pool: pd.DataFrame, clusters: np.ndarray | None, selected: pd.DataFrame) -> pd.DataFrame:
    """One row per (label, cluster): its size in the pool, how many were taken, how many of those are duplicates."""
    groups = pd.DataFrame({"label": pool["label"].to_numpy(),
                           "cluster": -1 if clusters is None else np.asarray(clusters)})
    size = groups.value_counts().rename("size")
    got = selected.groupby(["label", "cluster"]).agg(taken=("duplicate", "size"), duplicates=("duplicate", "sum"))
    out = pd.concat([size, got], axis=1).fillna(0).astype(int).reset_index().sort_values(["label", "cluster"])
    return out.assign(method=method)[SUMMARY_COLUMNS].reset_index(drop=True)


# ------------------------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class Request:
    """What a selection method is given: the run's parameters, the stage-01 tuning pool, the stage folder."""
    cfg: Config
    method: str
    pool: pd.DataFrame
    out_dir: Path
    runs_root: Path | str
    progress: bool = False

    @property
    def target(self) -> Path:
        return self.out_dir / f"tuning_{self.method}.csv"

    def once(self, make: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """The tuning set an earlier call wrote (a resumed stage), else ``make()``, written now."""
        if self.target.exists():
            return read_tuning_set(self.target)
        chosen = make()
        atomic.write_csv(self.target, chosen)
        return chosen


@dataclass(frozen=True)
class Selection:
    """A method's answer: the tuning set (pool rows + ``cluster``, ``duplicate``), the rows it was chosen
    from (selection_summary.csv counts group sizes over them), and its clusters and their quality, if any."""
    chosen: pd.DataFrame
    source: pd.DataFrame
    clusters: np.ndarray | None = None
    quality: pd.DataFrame | None = None


@dataclass(frozen=True)
class Method:
    choose: Callable[[Request], Selection]
    embedding: str | None = None                    # the embedding it reads (embeddings.json, notebook 02's maps)
    check: Callable[[Config], str | None] | None = None   # load-time check: what is wrong with cfg, or None


METHODS: dict[str, Method] = {}


def register(name: str, embedding: str | None = None, check: Callable[[Config], str | None] | None = None):
    """Decorator: ``choose(request) -> Selection`` becomes the selection method ``name`` (selection.methods,
    finetune.method). ``check(cfg)`` returns what a run naming it must change, or None."""
    def add(choose: Callable[[Request], Selection]):
        if name in METHODS:
            raise ValueError(f"selection method {name!r} is registered twice.")
        METHODS[name] = Method(choose, embedding, check)
        return choose
    return add


def method(name: str) -> Method:
    if name not in METHODS:
        raise SelectionError(f"unknown selection method {name!r}; registered: {', '.join(METHODS)}.")
    return METHODS[name]


@config.checks.register("selection")
def problems(cfg: Config) -> list[str]:
    """What is wrong with the selection section against the registry: lib.core.config reports the first at load
    time (a check registered there), and stage 02 again before it selects anything."""
    s = cfg.selection
    bad = [m for m in s.methods if m not in METHODS]
    if bad or not s.methods:
        return [f"selection.methods = {s.methods}: use one or more of {', '.join(METHODS)}."
                f"{config.did_you_mean(bad[0], list(METHODS)) if bad else ''}"]
    return [p for m in dict.fromkeys(s.methods) if METHODS[m].check for p in [METHODS[m].check(cfg)] if p]


@register("random")
def _random(req: Request) -> Selection:
    cfg = req.cfg
    return Selection(req.once(lambda: select(req.pool, None, cfg.selection.per_label, cfg.seed)), req.pool)


def _typical_domain(cfg: Config) -> str | None:
    if cfg.data.source not in ("phantom", "nih"):
        return (f"selection method 'textbook' picks typical X-ray cases (PA view, at most one finding) and needs "
                f"data.source phantom or nih (got {cfg.data.source!r}); for another domain use random, "
                "spectral-*/kmeans-* or external.")
    return None


@register("textbook", check=_typical_domain)
def _textbook(req: Request) -> Selection:
    cfg = req.cfg
    return Selection(req.once(lambda: select(typical_cases(req.pool), None, cfg.selection.per_label, cfg.seed)),
                     req.pool)


def _external_dir(cfg: Config) -> str | None:
    if not cfg.selection.external_dir:
        return ("selection.methods lists 'external' but selection.external_dir is not set: give the folder of "
                "unlabelled images (e.g. textbook cases) to pseudo-label.")
    return None


@register("external", check=_external_dir)
def _external(req: Request) -> Selection:
    """The confident pseudo-labelled images of selection.external_dir (lib.tuningset.external), and the tuning
    set drawn from them; both written once and then read back."""
    from . import external

    labels = req.out_dir / "external_labels.csv"
    if req.target.exists() and labels.exists():
        kept = pd.read_csv(labels, dtype={"patient": str})
        return Selection(read_tuning_set(req.target), kept[kept["kept"]].reset_index(drop=True))
    candidates = external.candidates(req.cfg, req.out_dir, req.runs_root, req.progress)
    chosen = select(candidates, None, req.cfg.selection.per_label, req.cfg.seed)
    atomic.write_csv(req.target, chosen)
    return Selection(chosen, candidates)


def _quota_per_cluster(cfg: Config) -> str | None:
    s, k = cfg.selection, cfg.cluster.k
    if s.quota == "equal" and s.per_label < k:
        return (f"selection.per_label = {s.per_label} < cluster.k = {k} gives a quota of 0 per cluster; raise "
                "selection.per_label to at least cluster.k or lower cluster.k.")
    return None


def _clustered(algo: str, kind: str) -> Callable[[Request], Selection]:
    """``<algo>-<kind>``: the thesis's method, an equal (or proportional) quota per cluster of each label."""
    def choose(req: Request) -> Selection:
        cfg = req.cfg
        ids, q = method_clusters(cfg, req.pool, req.method, req.out_dir, req.progress, algo, kind)
        chosen = req.once(lambda: select(req.pool, ids, cfg.selection.per_label, cfg.seed, cfg.selection.quota))
        return Selection(chosen, req.pool, ids, q)
    return choose


for _algo in ALGORITHMS:
    for _kind in embeddings.KINDS:
        register(f"{_algo}-{_kind}", embedding=_kind, check=_quota_per_cluster)(_clustered(_algo, _kind))


# ------------------------------------------------------------- known-answer selections of the mode world (issue 27)
RARE_SHARE = phantoms.RARE_SHARE     # a mode under this share of the tuning pool is rare (MODE_PREVALENCE: 2-5%)


def _needs_modes(cfg: Config) -> str | None:
    if not (cfg.data.source == "phantom" and cfg.data.phantom_modes):
        return ("selection methods 'mode-matched' and 'rare-modes' select by acquisition mode: they need "
                "data.source: phantom with data.phantom_modes: true.")
    return None


def _mode_codes(pool: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    if "mode" not in pool:
        raise SelectionError("the tuning pool has no 'mode' column: draw the data with data.phantom_modes: true.")
    names = sorted(pool["mode"].unique())
    return pool["mode"].map({m: i for i, m in enumerate(names)}).to_numpy(), names


@register("mode-matched", check=_needs_modes)
def _mode_matched(req: Request) -> Selection:
    """Each label's tuning images in the tuning pool's own mode shares (proportional quotas over the modes): the
    pools are patient splits of one population, so this is the test pool's acquisition mix, without sampling noise."""
    codes, _ = _mode_codes(req.pool)
    chosen = req.once(lambda: select(req.pool, codes, req.cfg.selection.per_label, req.cfg.seed, "proportional"))
    return Selection(chosen, req.pool)


@register("rare-modes", check=_needs_modes)
def _rare_modes(req: Request) -> Selection:
    """Each label's tuning images from the rare modes only (under RARE_SHARE of the pool), an equal quota per mode:
    a mix far from the test pool's by construction, the known-worse side of the known-answer pair."""
    codes, names = _mode_codes(req.pool)
    shares = req.pool["mode"].value_counts(normalize=True)
    rare = req.pool["mode"].map(shares < RARE_SHARE).to_numpy()
    if not rare.any():
        raise SelectionError(f"no mode is under {RARE_SHARE:.0%} of the tuning pool: nothing rare to select.")
    pool = req.pool[rare].reset_index(drop=True)
    chosen = req.once(lambda: select(pool, codes[rare], req.cfg.selection.per_label, req.cfg.seed, "equal"))
    return Selection(chosen, pool)


# ------------------------------------------------------------------------------------------- stage 02
def tuning_pool(cfg: Config, runs_root="runs") -> pd.DataFrame:
    return curation.read_manifest(stages.require(cfg, "01_data_curation", runs_root) / "tuning.csv")


def method_clusters(cfg: Config, pool: pd.DataFrame, method: str, out_dir: Path, progress: bool, algo: str,
                    kind: str):
    """Cluster ids of the pool by ``algo`` on ``kind`` embeddings (written once to clusters_<method>.csv), and
    their quality."""
    target, qfile = out_dir / f"clusters_{method}.csv", out_dir / f"quality_{method}.csv"
    if target.exists() and qfile.exists():   # resume
        saved = pd.read_csv(target)
        if saved["image_id"].tolist() == pool["image_id"].tolist():
            return saved["cluster"].to_numpy(), pd.read_csv(qfile)
    X = embeddings.embed_manifest(pool, kind, cfg.embedding, cfg.data.image_size, progress)
    ids = clustering.per_label(X, pool["label"].to_numpy(), algo, cfg.cluster.k, cfg.seed, cfg.cluster)
    q = clustering.quality(X, pool["label"].to_numpy(), ids, cfg.seed, cfg.cluster.silhouette_sample)
    q.insert(0, "method", method)
    atomic.write_csv(qfile, q)
    atomic.write_csv(target, pd.DataFrame({"image_id": pool["image_id"], "label": pool["label"], "cluster": ids}))
    return ids, q


def run(cfg: Config, out_dir, runs_root=None, progress: bool = True) -> dict:
    """Stage 02: embed and cluster the tuning pool, write tuning_<method>.csv for every method and
    selection_summary.csv / cluster_quality.csv. Artefacts already written are reused (resume).

    ``runs_root`` defaults to the root ``out_dir`` lies in (stages.run_stage keeps that name for itself).
    """
    out_dir = Path(out_dir)
    if runs_root is None:
        runs_root = out_dir.parents[2]       # <runs_root>/<experiment>/stages/<stage>-<key>
        if stages.stage_dir(cfg, "02_clustering", runs_root) != out_dir:
            runs_root = "runs"
    wrong = problems(cfg)
    if wrong:
        raise SelectionError(" ".join(wrong))
    pool = tuning_pool(cfg, runs_root)
    summaries, quality = [], []
    for name in cfg.selection.methods:
        got = method(name).choose(Request(cfg, name, pool, out_dir, runs_root, progress))
        if got.quality is not None:
            quality.append(got.quality)
        summaries.append(summarise(name, got.source, got.clusters, got.chosen))
    summary = pd.concat(summaries, ignore_index=True)
    atomic.write_csv(out_dir / "selection_summary.csv", summary)
    quality_df = pd.concat(quality, ignore_index=True) if quality else pd.DataFrame(columns=QUALITY_COLUMNS)
    atomic.write_csv(out_dir / "cluster_quality.csv", quality_df)
    kinds = sorted({method(m).embedding for m in cfg.selection.methods} - {None})
    atomic.write_json(out_dir / "embeddings.json", {k: embeddings.describe(k, cfg.embedding) for k in kinds})
    return {"pool": pool, "summary": summary, "quality": quality_df}


def read_tuning_set(path) -> pd.DataFrame:
    df = curation.read_manifest(path)
    missing = [c for c in ("cluster", "duplicate") if c not in df.columns]
    if missing:
        raise SelectionError(f"tuning set {path} lacks column(s) {missing}; it was not written by stage 02.")
    return df


def load(out_dir) -> dict:
    """What a finished stage 02 wrote: summary, quality, embedding notes, tuning sets and cluster ids."""
    out_dir = Path(out_dir)
    sets = {p.stem.removeprefix("tuning_"): read_tuning_set(p) for p in sorted(out_dir.glob("tuning_*.csv"))}
    clusters = {p.stem.removeprefix("clusters_"): pd.read_csv(p) for p in sorted(out_dir.glob("clusters_*.csv"))}
    return {"summary": pd.read_csv(out_dir / "selection_summary.csv"),
            "quality": pd.read_csv(out_dir / "cluster_quality.csv"),
            "embeddings": json.loads((out_dir / "embeddings.json").read_text()),
            "tuning_sets": sets, "clusters": clusters}


def method_vectors(cfg: Config, pool: pd.DataFrame, methods: list[str]) -> dict[str, np.ndarray]:
    """The (cached) embeddings each clustering method used, for maps and checks."""
    return {m: embeddings.embed_manifest(pool, method(m).embedding, cfg.embedding, cfg.data.image_size,
                                         progress=False) for m in methods if method(m).embedding}
