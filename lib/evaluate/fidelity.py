"""Fidelity and diversity of a synthetic set against real images, per class and overall (issue 12).

The metrics (FID, KID, precision/recall/density/coverage, diversity) and what each needs are in
lib.evaluate.fidelity_metrics; this module tabulates them per class and overall with bootstrap CIs, and
runs them for stage 05.

**Bootstrap CIs** (percentile, 95 %): a replicate resamples images with replacement within each class of
each set (the overall metrics use the union, so class sizes stay fixed). FID, KID and diversity are
recomputed on the replicate (images weighted by how often they were drawn; KID averages
``kid_bootstrap_subsets`` subsets per replicate). Precision, recall, density and coverage are means of
per-image indicators given the k-NN balls of the full sets; a replicate reweights those indicators (k-NN
balls recomputed on a resample would shrink to zero around duplicated images: the bootstrap is not
consistent for nearest-neighbour radii), so their CIs do not include the balls' own variability.
FID is biased upwards at finite n, and more so on a resample (duplicates): its interval is the percentile
interval of the replicates shifted by their mean's offset from the estimate (the sampling spread at this
n); compare FIDs only at equal n and extractor.

Cost (benchmarks/bench_fidelity.py): 2 x 10,000 vectors of 512 dims, 200 replicates, every metric per
class and overall: about 40 s on 2 cores. FID's replicates need one eigendecomposition per group: at
Inception's 2048 dims that is ~0.8 s each (~8 min for 200 replicates and 3 groups); lower
fidelity.bootstrap or set fidelity.fid_dims there.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.config import Config, FidelityConfig
from . import memorization
from .fidelity_metrics import (ALL, COLUMNS, SALT, check_fid, check_kid, ci, frechet_distance, mmd2_rows,
                               pair_mean, pair_scores, pca_basis, prdc_from_parts, prdc_parts, project,
                               resample_counts, subset_rows)


# ------------------------------------------------------------------------------------------ the table
def groups(real_labels, fake_labels) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, real rows, fake rows) of each class present in both sets, then 'all'."""
    rl, fl = np.asarray(real_labels).astype(str), np.asarray(fake_labels).astype(str)
    out = [(c, np.flatnonzero(rl == c), np.flatnonzero(fl == c)) for c in sorted(set(rl) & set(fl))]
    return out + [(ALL, np.arange(len(rl)), np.arange(len(fl)))]


def _row(group, metric, value, reps, n_real, n_fake, note="", centred: bool = False) -> dict:
    """One table row; ``centred``: the replicates are first shifted by their mean's offset from the estimate."""
    reps = np.asarray(reps, np.float64)
    lo, hi = ci(reps - reps.mean() + value if centred else reps)
    return {"group": group, "metric": metric, "value": float(value), "ci_low": lo, "ci_high": hi,
            "n_real": int(n_real), "n_fake": int(n_fake), "note": note}


def _label_moments(x: np.ndarray, labels: np.ndarray, w: np.ndarray | None) -> dict[str, tuple]:
    """(count, sum, uncentred second moment) of each label's rows, row i counted w[i] times; the
    second moments in float32 (x is centred on the real mean first, which keeps them accurate)."""
    w = np.ones(len(x), np.float32) if w is None else w.astype(np.float32)
    out = {}
    for label in np.unique(labels):
        i = labels == label
        xi, wi = x[i], w[i]
        out[label] = (float(wi.sum()), wi @ xi.astype(np.float64), ((xi.T * wi) @ xi).astype(np.float64))
    return out


def _gaussian(parts: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1) from summed (count, sum, second moment) parts."""
    n = sum(p[0] for p in parts)
    mu = sum(p[1] for p in parts) / n
    return mu, (sum(p[2] for p in parts) - n * np.outer(mu, mu)) / (n - 1)


def _fid_rows(real, fake, rl, fl, cr, cf) -> list[dict]:
    """FID of each class (in both sets) and overall, with replicates, from per-label moments: one pass
    over the images per replicate serves every group."""
    shift = real.mean(0)
    real, fake = real - shift, fake - shift
    names = groups(rl, fl)
    for name, ir, jf in names:
        check_fid(len(ir), len(jf), real.shape[1], f" (group '{name}')")

    def fids(a, b):
        mr, mf = _label_moments(real, rl, a), _label_moments(fake, fl, b)
        pick = {name: ([mr[name]], [mf[name]]) for name, _, _ in names[:-1]}
        pick[ALL] = (list(mr.values()), list(mf.values()))
        return {name: frechet_distance(*_gaussian(r), *_gaussian(f)) for name, (r, f) in pick.items()}

    value = fids(None, None)
    reps = [fids(a, b) for a, b in zip(cr, cf)]
    return [_row(name, "fid", value[name], [r[name] for r in reps], len(ir), len(jf),
                 f"{real.shape[1]} dims; CI centred (resampling bias removed)", centred=True) for name, ir, jf in names]


def _kid_rows(name, xr, xf, cr, cf, f: FidelityConfig, rng) -> list[dict]:
    m, s, sb = f.kid_subset_size, f.kid_subsets, f.kid_bootstrap_subsets
    check_kid(len(xr), len(xf), m, f" (group '{name}')")
    wr = [subset_rows(len(xr), m, s, rng)] + [subset_rows(len(xr), m, sb, rng, c) for c in cr]
    wf = [subset_rows(len(xf), m, s, rng)] + [subset_rows(len(xf), m, sb, rng, c) for c in cf]
    v = mmd2_rows(xr, xf, np.concatenate(wr), np.concatenate(wf))
    point, reps = v[:s], v[s:].reshape(len(cr), sb).mean(1)
    return [_row(name, "kid", point.mean(), reps, len(xr), len(xf),
                 f"std over {s} subsets of {m}: {point.std():.3g}")]


def _prdc_rows(name, xr, xf, cr, cf, k) -> list[dict]:
    parts = prdc_parts(xr, xf, k, f" (group '{name}')")
    value = prdc_from_parts(parts, k)
    reps = [prdc_from_parts(parts, k, a, b) for a, b in zip(cr, cf)]
    return [_row(name, m, value[m], [r[m] for r in reps], len(xr), len(xf), f"k = {k}") for m in value]


def diversity_rows(pairs: pd.DataFrame, n_images: int, n_boot: int, seed: int, metric: str) -> list[dict]:
    """Mean (MS-)SSIM per class and over every within-class pair, with image-resampling CIs."""
    rng = np.random.default_rng([seed, SALT, 2])
    labels = np.full(n_images, "", dtype=object)
    labels[pairs["i"].to_numpy()] = pairs["label"].to_numpy()
    labels[pairs["j"].to_numpy()] = pairs["label"].to_numpy()
    counts = resample_counts(labels.astype(str), n_boot, rng)
    rows = []
    for group, part in [*pairs.groupby("label", sort=True), (ALL, pairs)]:
        reps = [pair_mean(part, c) for c in counts]
        n = len(set(part["i"]) | set(part["j"]))      # images in the pairs
        n_real, n_fake = (n, 0) if metric.endswith("_real") else (0, n)
        rows.append(_row(group, metric, pair_mean(part), reps, n_real, n_fake,
                         f"{part['measure'].iloc[0]}, {len(part)} pairs"))
    return rows


def evaluate(real: np.ndarray, fake: np.ndarray, real_labels, fake_labels, f: FidelityConfig, seed: int = 0,
             real_pairs: pd.DataFrame | None = None, fake_pairs: pd.DataFrame | None = None,
             timings: dict | None = None) -> pd.DataFrame:
    """Every fidelity metric per class and overall, each with a bootstrap CI: one row per (group, metric).
    ``real_pairs``/``fake_pairs`` (pair_scores of each set's images) add the diversity rows; ``timings``,
    when given, receives the seconds spent per metric."""
    real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be two n x d arrays of one d; got {real.shape} and {fake.shape}.")
    clock = _Clock(timings)
    rng = np.random.default_rng([seed, SALT])
    cr, cf = resample_counts(real_labels, f.bootstrap, rng), resample_counts(fake_labels, f.bootstrap, rng)
    rl, fl = np.asarray(real_labels).astype(str), np.asarray(fake_labels).astype(str)
    with clock("fid"):
        basis = pca_basis(real, f.fid_dims) if f.fid_dims else None
        fr, ff = (project(real, basis), project(fake, basis)) if basis is not None else (real, fake)
        rows = _fid_rows(fr, ff, rl, fl, cr, cf)
    for name, ir, jf in groups(rl, fl):
        xr, xf, a, b = real[ir], fake[jf], cr[:, ir], cf[:, jf]
        with clock("kid"):
            rows += _kid_rows(name, xr, xf, a, b, f, rng)
        with clock("prdc"):
            rows += _prdc_rows(name, xr, xf, a, b, f.prdc_k)
    with clock("diversity"):
        for pairs, n, metric in ((fake_pairs, len(fake), "diversity_synthetic"),
                                 (real_pairs, len(real), "diversity_real")):
            if pairs is not None:
                rows += diversity_rows(pairs, n, f.bootstrap, seed, metric)
    return pd.DataFrame(rows, columns=COLUMNS)


class _Clock:
    """``with clock(name):`` adds the block's wall time to timings[name] (nothing when timings is None)."""

    def __init__(self, timings: dict | None):
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.timings is not None:
                self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t


def flat(table: pd.DataFrame, prefix: str = "fidelity.") -> dict:
    """One record: ``<prefix><metric>`` (overall) and ``<prefix><metric>.<class>``, each with _ci_low/_ci_high."""
    out = {}
    for r in table.itertuples():
        key = prefix + r.metric + ("" if r.group == ALL else f".{r.group}")
        out.update({key: r.value, f"{key}_ci_low": r.ci_low, f"{key}_ci_high": r.ci_high})
    return out


# ---------------------------------------------------------------------------------- stage-level helper
MEM = "memorization_"     # saved features of the memorization analysis (fidelity.memorization_extractor)


def run(cfg: Config, out_dir, synthetic: pd.DataFrame, real: pd.DataFrame, tuning: pd.DataFrame | None = None,
        holdout: pd.DataFrame | None = None, classifier_weights=None, figures_dir=None,
        figure_name: str = "06_memorization", progress: bool = False) -> dict:
    """Features (cached), fidelity and diversity of ``synthetic`` against ``real``, and memorization against
    ``tuning`` with ``holdout`` (real images the generator never saw) when both are given. Writes to out_dir:
    fidelity_features.npz, diversity_pairs.csv, fidelity.csv, and memorization.csv / memorization.json /
    the montage ``figure_name`` (in figures_dir, default out_dir). Returns the flat record."""
    from ..core import atomic
    from . import features
    from ..data import images

    out = Path(out_dir)
    ex = features.extractor(cfg, classifier_weights=classifier_weights)
    sets = {"real": real, "synthetic": synthetic}
    feats = {k: features.extract(df, cfg, ex, progress=progress) for k, df in sets.items()}
    labels = {f"{k}_labels": df["label"].astype(str).to_numpy() for k, df in sets.items()}
    extra = {}
    if tuning is not None and holdout is not None:      # a quota may repeat tuning images: count each once
        tuning, holdout = (df.drop_duplicates("path").reset_index(drop=True) for df in (tuning, holdout))
        mem_kind = cfg.fidelity.memorization_extractor
        mex = ex if mem_kind in ("same", ex.kind) else features.extractor(cfg, mem_kind, classifier_weights)
        extra = {f"{MEM}{k}": features.extract(df, cfg, mex, progress=progress)
                 for k, df in (("synthetic", synthetic), ("tuning", tuning), ("holdout", holdout))}
        extra[f"{MEM}extractor"] = np.array(mex.key)
    features.save(out / "fidelity_features.npz", **feats, **labels, **extra, extractor=np.array(ex.key))
    size = cfg.classifier.input_size
    pairs = pd.concat([pair_scores(images.load_stack(df["path"].tolist(), size), df["label"],
                                   cfg.fidelity.diversity_pairs, cfg.seed).assign(set=k)
                       for k, df in (("real", real), ("synthetic", synthetic))])
    atomic.write_csv(out / "diversity_pairs.csv", pairs)
    record = {"fidelity.extractor": ex.key}
    if extra:
        record["memorization.extractor"] = str(extra[f"{MEM}extractor"])
    table, mem = recompute(out, cfg)
    atomic.write_csv(out / "fidelity.csv", table)
    record.update(flat(table))
    if mem is not None:
        per_image, info, summary = mem
        per_image = per_image.assign(synthetic_path=synthetic["path"].to_numpy(),
                                     tuning_path=tuning["path"].to_numpy()[per_image["tuning_index"]])
        atomic.write_csv(out / "memorization.csv", per_image)
        atomic.write_json(out / "memorization.json", {**info, "summary": summary.to_dict("records")})
        import matplotlib.pyplot as plt

        plt.close(memorization.montage(per_image, figures_dir or out, figure_name, cfg.fidelity.montage_pairs, size))
        record.update(flat(summary, "memorization."))
    return record


def recompute(out_dir, cfg: Config):
    """The fidelity table and the memorization analysis from the saved features and pair scores alone:
    (table, (per_image, info, summary) or None)."""
    from . import features

    from threadpoolctl import threadpool_limits

    out = Path(out_dir)
    z = features.load(out / "fidelity_features.npz")
    pairs = pd.read_csv(out / "diversity_pairs.csv")
    # the thread count stage 05 used: BLAS sums in another order differ in the last bits
    with threadpool_limits(cfg.classifier.cpu_threads):
        table = evaluate(z["real"], z["synthetic"], z["real_labels"], z["synthetic_labels"], cfg.fidelity, cfg.seed,
                         pairs[pairs["set"] == "real"], pairs[pairs["set"] == "synthetic"])
        mem = None
        if f"{MEM}tuning" in z and f"{MEM}holdout" in z:
            per_image, info = memorization.analyse(z[f"{MEM}synthetic"], z[f"{MEM}tuning"], z[f"{MEM}holdout"],
                                                   cfg.fidelity.copy_threshold, cfg.seed, z["synthetic_labels"])
            mem = per_image, info, memorization.summary(per_image, cfg.fidelity.bootstrap, cfg.seed)
    return table, mem


# ------------------------------------------------------------------------------- fine-tuning trace
def validation_trace(stack: np.ndarray, labels: list[str], reference: dict[str, np.ndarray], ex) -> dict:
    """KID of one validation save (labels x n x H x W) against the tuning images' features (``reference``:
    label -> n x d, same extractor ``ex``), per label and pooled. With a handful of validation images FID's
    bias would swamp the trace, so it is KID on the full sets: the unbiased MMD^2 (polynomial kernel) of all
    validation images against all tuning images of the label (no subsets); a label needs >= 2 of each."""
    from . import features

    out = {"features": ex.key, "groups": {}}
    val = {lab: features.embed_array(ex, stack[i]) for i, lab in enumerate(labels)}
    pooled = (np.concatenate(list(val.values())), np.concatenate([reference[lab] for lab in labels]))
    for name, (v, r) in [*((lab, (val[lab], reference[lab])) for lab in labels), (ALL, pooled)]:
        if len(v) >= 2 and len(r) >= 2:
            kid_value = mmd2_rows(r, v, np.ones((1, len(r))), np.ones((1, len(v))))[0]
            out["groups"][name] = {"kid": float(kid_value), "n_val": len(v), "n_ref": len(r)}
    return out


def trace_log(validation_dir) -> pd.DataFrame:
    """validation/step_*.json traces as one table: model, step, group, kid, n_val, n_ref, features."""
    rows = []
    for meta in sorted(Path(validation_dir).glob("step_*.json")):
        m = json.loads(meta.read_text())
        trace = m.get("trace") or {}
        for group, v in trace.get("groups", {}).items():
            rows.append({"model": m["model"], "step": m["step"], "group": group, **v, "features": trace["features"]})
    return pd.DataFrame(rows, columns=["model", "step", "group", "kid", "n_val", "n_ref", "features"])
