"""Per-subgroup trainability: AUROC(a) and TR per acquisition mode of the real test images (issue 27).

In the phantom mode world (``data.phantom_modes``, lib.data.phantoms) every test image carries its ``mode``.
From a finished stage-05 folder, the synthetic-trained classifier's predictions on the real test sample
(``predictions_a.csv``) and the real-trained one's on the same images (``predictions_trtr.csv``), joined with the
test sample's modes (``test_a.csv``), give per mode AUROC(a), AUROC(trtr) and TR = (AUROC(a) - 0.5) /
(AUROC(trtr) - 0.5); a mode whose images hold one class only has NaN AUROCs. Over runs (seeds) of one method,
each mode's seed-level mean and t-interval (lib.core.stats.seed_summary) are written to ``06_by_subgroup.csv``,
the per-run rows beside it in ``06_by_subgroup_runs.csv``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core import atomic, stats
from ..data.nih import DataError
from ..evaluate import metrics, results

MODE = "mode"
SUMMARY_FILE, RUNS_FILE = "06_by_subgroup.csv", "06_by_subgroup_runs.csv"


def _auroc(pred: pd.DataFrame) -> float:
    """AUROC as stage 05 computes it: of the binary score for two classes, the macro AUROC for more."""
    if pred["label"].nunique() < 2:
        return float("nan")
    y, outputs = results.arrays(pred)
    if outputs.ndim == 1 or outputs.shape[1] == 2:
        return metrics.auroc(y, metrics.score_of(outputs))
    return metrics.macro_auroc(y, outputs)


def tr(auroc_a: float, auroc_trtr: float) -> float:
    """Chance-corrected trainability ratio; NaN when the real-trained classifier is at chance or below."""
    den = auroc_trtr - 0.5
    return float((auroc_a - 0.5) / den) if np.isfinite(den) and den > 0 else float("nan")


def _modes(stage_dir: Path, manifest: pd.DataFrame | None) -> pd.Series:
    """image_id -> mode, from the stage's test sample, else from the given test manifest."""
    src, name = (pd.read_csv(stage_dir / "test_a.csv"), stage_dir / "test_a.csv") if manifest is None \
        else (manifest, "the given test manifest")
    if MODE not in src.columns:
        raise DataError(f"{name} has no '{MODE}' column: per-subgroup trainability needs the phantom mode world "
                        "(data.phantom_modes: true) or a test manifest with a mode per image.")
    return src.set_index("image_id")[MODE]


def per_mode(stage_dir: str | Path, manifest: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per mode of one finished stage 05: images, positives, AUROC(a), AUROC(trtr), TR."""
    stage_dir = Path(stage_dir)
    test = pd.read_csv(stage_dir / "test_a.csv", dtype={"patient": str})
    pa = results.read_predictions(stage_dir / "predictions_a.csv", test)
    pt = results.read_predictions(stage_dir / "predictions_trtr.csv", test)
    modes = _modes(stage_dir, manifest)
    lacking = sorted(set(pa["image_id"]) - set(modes.index))
    if lacking:
        raise DataError(f"{len(lacking)} test image(s) of {stage_dir} have no mode, e.g. {lacking[:3]}.")
    pa, pt = pa.assign(**{MODE: pa["image_id"].map(modes)}), pt.set_index("image_id").loc[pa["image_id"]].reset_index()
    pt[MODE] = pa[MODE].to_numpy()
    positive = results.classes_of(pa)[-1]
    rows = []
    for mode, g in pa.groupby(MODE, sort=True):
        a, t = _auroc(g), _auroc(pt[pt[MODE] == mode])
        rows.append({MODE: mode, "images": len(g), "positives": int((g["label"] == positive).sum()),
                     "auroc_a": a, "auroc_trtr": t, "tr": tr(a, t)})
    return pd.DataFrame(rows)


def _run_info(stage_dir: Path, i: int) -> dict:
    """method and seed of a stage 05 from its results.csv (the folder's position when it has none)."""
    f = stage_dir / "results.csv"
    row = pd.read_csv(f).iloc[0] if f.exists() else pd.Series(dtype=object)
    return {"method": row.get("method", "run"), "seed": row.get("seed", i), "stage_dir": str(stage_dir)}


def by_subgroup(stage_dirs, level: float = 0.95, labels: list | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, per-run rows): per method and mode, the seed-level mean and t-interval of AUROC(a) and TR.
    ``labels`` names each folder's method (default: the method its results.csv records)."""
    info = [_run_info(Path(d), i) for i, d in enumerate(stage_dirs)]
    for row, label in zip(info, labels or []):
        row["method"] = label
    runs = pd.concat([per_mode(d).assign(**row) for d, row in zip(stage_dirs, info)], ignore_index=True)
    rows = []
    for (method, mode), g in runs.groupby(["method", MODE], sort=True):
        row = {"method": method, MODE: mode, "images_per_run": float(g["images"].mean())}
        for col in ("auroc_a", "auroc_trtr", "tr"):
            s = stats.seed_summary(g[col].to_numpy(float), level)
            row.update({col: s["mean"], f"{col}_sd": s["sd"], f"{col}_t_low": s["t_low"],
                        f"{col}_t_high": s["t_high"]})
        row["n_seeds"] = stats.seed_summary(g["tr"].to_numpy(float), level)["n"]
        rows.append(row)
    return pd.DataFrame(rows), runs


def write(stage_dirs, out_dir: str | Path, level: float = 0.95, labels: list | None = None) -> dict[str, Path]:
    """06_by_subgroup.csv (the seed-level table) and 06_by_subgroup_runs.csv (one row per run and mode)."""
    summary, runs = by_subgroup(stage_dirs, level, labels)
    out_dir = Path(out_dir)
    return {"summary": atomic.write_csv(out_dir / SUMMARY_FILE, summary),
            "runs": atomic.write_csv(out_dir / RUNS_FILE, runs)}


def mode_world_runs(records: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(stage-05 folders, method labels) of the records drawn in the mode world (data.phantom_modes); a gated
    run is labelled "<method> (gated)" so that it is not pooled with the same set ungated."""
    if records.empty:
        return [], []
    rows = records[records["params"].map(lambda p: bool(p.get("data", {}).get("phantom_modes")))]
    return list(rows["results_dir"]), [label(m, g) for m, g in zip(rows["method"], rows["gating"].astype(bool))]


def label(method: str, gated: bool) -> str:
    """A record's method, "(gated)" added when the gate ran and the name does not already say so."""
    return method + (" (gated)" if gated and "gating" not in method else "")


# ------------------------------------------------------------------ the mechanism: what selection does to the modes
def mode_shares(sets: dict[str, pd.DataFrame], reference: str = "test pool") -> pd.DataFrame:
    """Each set's share of every mode (rows: modes, columns: sets), and each set's total variation distance from
    ``reference`` (row 'TV distance'): how far a tuning set's acquisition mix sits from the test pool's."""
    for name, df in sets.items():
        if MODE not in df:
            raise DataError(f"set {name!r} has no {MODE!r} column: draw the data with data.phantom_modes: true.")
    shares = pd.DataFrame({name: df[MODE].value_counts(normalize=True) for name, df in sets.items()}).fillna(0.0)
    if reference in shares:
        shares.loc["TV distance"] = 0.5 * (shares.sub(shares[reference], axis=0)).abs().sum()
    return shares


def clusters_against_modes(clusters: np.ndarray, modes) -> dict:
    """How far clusters follow the modes: adjusted mutual information and adjusted Rand index (0: independent,
    1: the clusters are the modes), and the largest share any one cluster holds of each rare mode (< 10% of images)."""
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    modes = np.asarray(modes)
    table = pd.crosstab(pd.Series(modes, name=MODE), pd.Series(np.asarray(clusters), name="cluster"))
    rare = [m for m, share in pd.Series(modes).value_counts(normalize=True).items() if share < 0.10]
    return {"ami": float(adjusted_mutual_info_score(modes, clusters)), "ari": float(adjusted_rand_score(modes, clusters)),
            "rare_concentration": {m: float(table.loc[m].max() / table.loc[m].sum()) for m in rare},
            "table": table}
