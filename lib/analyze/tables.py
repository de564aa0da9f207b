"""The analysis's tables of a seed summary (lib.analyze.aggregate.summary): the trainability matrix with FTER,
the chance-corrected FTER and TR (``fter_table``, and ``explain_ratios`` in sentences), the thesis's Tables
4.4-4.13 (``thesis_tables``) and the fidelity table per method (``fidelity_table``); saved as CSV and LaTeX.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..core import atomic, paths
from .aggregate import FIDELITY
from .collection import METHOD_ORDER
from .matrix import RATIOS


def _pm(mean, std, pct=False) -> str:
    if pd.isna(mean):
        return "–"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
    return f(mean) + ("" if pd.isna(std) else f" ± {f(std)}".replace("%", "") + ("%" if pct else ""))


def _label(r) -> str:
    return f"{r['tuning_size']:,}" + (f" ({r['setting']})" if r["setting"] else "")


THESIS_TABLES = {"random": "4.4", "spectral-pixel": "4.6", "spectral-clip": "4.8", "textbook": "4.10",
                 "active-gating": "4.12"}


def table_classes(s: pd.DataFrame, direction: str) -> list[str]:
    """The classes of a summary's per-class columns of one direction, as the thesis's tables order them:
    two classes with class 1 first (Unhealthy, No Finding), more in label-index order."""
    pat = re.compile(rf"(?:acc|auroc)_{re.escape(direction)}_(.+)_mean$")
    found = list(dict.fromkeys(m.group(1) for c in s.columns if (m := pat.match(c))))
    return found[::-1] if len(found) == 2 else found


def direction_table(s: pd.DataFrame, direction: str, with_fter: bool = False) -> pd.DataFrame:
    """Thesis layout: rows = tuning size; Accuracy and AUROC, overall and per class, mean ± std over seeds,
    and the bootstrap 95% CI of the overall AUROC's seed mean."""
    classes = table_classes(s, direction)
    cols, out = pd.MultiIndex.from_product([["Accuracy", "AUROC"], ["Overall", *classes]]), []
    for _, r in s.iterrows():
        vals = []
        for metric, pct in (("acc", True), ("auroc", False)):
            for cls in ["", *(f"_{c}" for c in classes)]:
                c = f"{metric}_{direction}{cls}"
                vals.append(_pm(r.get(f"{c}_mean"), r.get(f"{c}_std"), pct))
        out.append(vals)
    t = pd.DataFrame(out, columns=cols, index=pd.Index([_label(r) for _, r in s.iterrows()],
                                                       name="Fine-tune images per label"))
    t[("AUROC", "95% CI")] = [f"[{r[f'auroc_{direction}_ci_low']:.3f}, {r[f'auroc_{direction}_ci_high']:.3f}]"
                              for _, r in s.iterrows()]
    if with_fter:
        t[("FTER", "mean ± std")] = [_pm(r["fter_mean"], r["fter_std"]) for _, r in s.iterrows()]
        t[("FTER", "95% CI")] = [f"[{r['fter_ci_low']:.3f}, {r['fter_ci_high']:.3f}]" for _, r in s.iterrows()]
        t[("", "seeds")] = list(s["n_seeds"])
    return t


def thesis_tables(s: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tables 4.4-4.13: per method, (a) trained on synthetic, (b) trained on real and tested on synthetic
    with FTER. The no-fine-tune control is the first row of the random table, as in Table 4.4."""
    out = {}
    nft = s[s["method"] == "no-fine-tune"]
    methods = [m for m in METHOD_ORDER if m in set(s["method"]) and m != "no-fine-tune"] + \
        sorted(set(s["method"]) - set(METHOD_ORDER))
    for m in methods or (["no-fine-tune"] if len(nft) else []):
        part = s[s["method"] == m]
        if m == "random" and len(nft):
            part = pd.concat([nft.assign(setting="no fine-tune"), part])
        num = THESIS_TABLES.get(m)
        ta = f"Table {num}" if num else "Table"
        tb = f"Table {num.split('.')[0]}.{int(num.split('.')[1]) + 1}" if num else "Table"
        out[f"{ta}: {m}, classifier trained on synthetic, tested on real"] = direction_table(part, "a")
        out[f"{tb}: {m}, classifier trained on real, tested on synthetic"] = direction_table(part, "b", True)
    return out


MATRIX_COLUMNS = {"auroc_trtr": "TRTR", "auroc_a": "TSTR (a)", "auroc_b": "TRTS (b)", "auroc_tsts": "TSTS",
                  "fter": "FTER", "cc_fter": "FTER (chance-corr.)", "tr": "TR", "auroc_det": "detection"}
# The tuning-set-only baseline (lib.analyze.tuning_only.add puts them in the summary): TSTR of the tuning set's own
# real images, on TR's scale, and TR minus it
TUNING_ONLY_COLUMNS = {"auroc_tun": "TSTR tuning-only", "tr_tun": "TR tuning-only", "generator_gain": "generator gain"}


def with_seed_interval(r, key: str) -> str:
    """The seed mean with its t-interval over seeds, "(n<3)" where there are too few seeds for one."""
    v, lo, hi = r.get(f"{key}_mean"), r.get(f"{key}_t_low"), r.get(f"{key}_t_high")
    if r.get(f"{key}_defined") is False or (key in RATIOS and pd.isna(v)):
        return "undefined"
    if v is None or pd.isna(v):
        return "–"
    return f"{v:.3f} [{lo:.2f}, {hi:.2f}]" if pd.notna(lo) else f"{v:.3f} (n<3)"


def fter_table(s: pd.DataFrame) -> pd.DataFrame:
    """The table `make demo` prints: every cell of the trainability matrix, FTER, the chance-corrected
    FTER, TR and detection AUROC, each the seed mean with its 95% t-interval over seeds ("(n<3)": too few
    seeds for one; "undefined" when a ratio's denominator is indistinguishable from chance)."""
    head = ["method", "tuning size", "setting", "seeds"]
    if s.empty:
        return pd.DataFrame(columns=head + list(MATRIX_COLUMNS.values()))
    out = pd.DataFrame({"method": s["method"], "tuning size": s["tuning_size"].map(lambda n: n or "–"),
                        "setting": s["setting"],
                        "seeds": s["n_seeds"]})
    for key, name in MATRIX_COLUMNS.items():
        out[name] = [with_seed_interval(r, key) for _, r in s.iterrows()]
        for k, n in (TUNING_ONLY_COLUMNS.items() if key == "tr" else ()):   # beside TR, once computed
            if f"{k}_mean" in s:
                out[n] = [with_seed_interval(r, k) for _, r in s.iterrows()]
    return out.reset_index(drop=True)


def explain_ratios(s: pd.DataFrame) -> str:
    """Why the plain FTER can mislead, in sentences built from this study's own numbers."""
    rows = [r for _, r in s.iterrows() if pd.notna(r.get("fter_pooled"))]
    if not rows:
        return "No results yet."
    out = []
    near_one = min(rows, key=lambda r: abs(r["fter_pooled"] - 1))
    out.append(f"The plain FTER closest to the thesis's ideal of 1 is {near_one['method']}'s "
               f"({near_one['fter_pooled']:.3f}), with AUROC(a) = {near_one['auroc_a_pooled']:.3f} and AUROC(b) = "
               f"{near_one['auroc_b_pooled']:.3f}: FTER is 1 whenever both directions are equally good, and also "
               "when both are at chance (0.5 / 0.5).")
    worse_b = sorted(rows, key=lambda r: r["auroc_b_pooled"])
    if len(worse_b) > 1 and worse_b[0]["fter_pooled"] > worse_b[-1]["fter_pooled"]:
        lo, hi = worse_b[0], worse_b[-1]
        out.append(f"FTER rises when the generator gets worse in direction (b): {lo['method']} has the lowest "
                   f"AUROC(b) ({lo['auroc_b_pooled']:.3f}) and an FTER of {lo['fter_pooled']:.3f}, above "
                   f"{hi['method']}'s {hi['fter_pooled']:.3f} with AUROC(b) {hi['auroc_b_pooled']:.3f}.")
    trs = [r for r in rows if r.get("tr_defined") is True or str(r.get("tr_defined")) == "True"]
    if trs:
        best = max(trs, key=lambda r: r["tr_pooled"])
        out.append(f"TR compares AUROC(a) with the real-data ceiling (TRTR {best['auroc_trtr_pooled']:.3f}), above "
                   f"chance: {best['method']} carries {100 * best['tr_pooled']:.0f}% "
                   f"[{100 * best['tr_ci_low']:.0f}%, {100 * best['tr_ci_high']:.0f}%] of real data's signal. "
                   "The chance-corrected FTER and TR are undefined when their denominator is indistinguishable "
                   "from chance, instead of growing without bound.")
    return "\n".join(out)


def _g3(v) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def _fidelity_cell(r, key: str) -> str:
    v, lo, hi = r.get(f"{key}_pooled"), r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")
    if v is None or pd.isna(v):
        return "–"
    return f"{_g3(v)} [{_g3(lo)}, {_g3(hi)}]"


def fidelity_table(s: pd.DataFrame) -> pd.DataFrame:
    """Per method, tuning size and setting: every fidelity, diversity and memorization metric of FIDELITY as
    the seed mean with its two-level 95% CI (lib.analyze.aggregate.fidelity_summary), columns named
    '<header>: <column>'.
    FID and KID: lower is closer to the real training sample; precision and density: synthetic images inside
    the real manifold; recall and coverage: the real manifold reached; (MS-)SSIM: mean similarity of random
    pairs within a class (higher is less diverse); copies: the fraction flagged as copies of a seen image;
    d seen / d unseen: the median ratio of the distances to the nearest seen and nearest unseen real image."""
    head = ["method", "tuning size", "setting", "seeds"]
    cols = [f"{h}: {c}" for h, c in FIDELITY.values()]
    if s.empty:
        return pd.DataFrame(columns=head + cols)
    out = pd.DataFrame({"method": s["method"], "tuning size": s["tuning_size"].map(lambda n: n or "–"),
                        "setting": s["setting"], "seeds": s["n_seeds"]})
    for key, col in zip(FIDELITY, cols):
        out[col] = [_fidelity_cell(r, key) for _, r in s.iterrows()]
    return out.reset_index(drop=True)


def save_fidelity_table(t: pd.DataFrame, out_dir: str | Path, name: str = "06_fidelity") -> list[Path]:
    """The fidelity table as <name>.csv and as a LaTeX tabular with grouped headers (<name>.tex)."""
    out_dir = paths.resolve(out_dir)
    latex = t.assign(row=[f"{m} {st}".strip() + (f" (n={n})" if n != "–" else "")
                          for m, st, n in zip(t["method"], t["setting"], t["tuning size"])]).set_index("row")
    latex = latex.drop(columns=["method", "tuning size", "setting"])
    latex.columns = pd.MultiIndex.from_tuples([("", c) if ": " not in c else tuple(c.split(": ", 1))
                                               for c in latex.columns])
    latex.index.name = "Method"
    caption = ("Fidelity, diversity and memorization of each synthetic set: seed means with two-level 95% CIs "
               "(seeds, then images)")
    return [atomic.write_csv(out_dir / f"{name}.csv", t),
            atomic.write_text(out_dir / f"{name}.tex", to_latex(latex, caption))]



def save_tables(tables: dict[str, pd.DataFrame], out_dir: str | Path, prefix: str = "06_table") -> list[Path]:
    """Each table as CSV and as a LaTeX tabular (booktabs) next to the figures."""
    out_dir, written = paths.resolve(out_dir), []
    for i, (title, t) in enumerate(tables.items()):
        stem = out_dir / f"{prefix}_{i:02d}_{re.sub(r'[^a-z0-9]+', '-', title.split(':')[1].lower()).strip('-')}"
        atomic.write_csv(stem.with_suffix(".csv"), t.reset_index())
        atomic.write_text(stem.with_suffix(".tex"), to_latex(t, title))
        written += [stem.with_suffix(".csv"), stem.with_suffix(".tex")]
    return written


def save_csvs(tables: dict[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Named tables (the matrix, the comparisons, the calibration) as figures/06_<name>.csv."""
    return [atomic.write_csv(paths.resolve(out_dir) / f"06_{name}.csv", t) for name, t in tables.items()]


def _spans(names: list[str]) -> list[str]:
    """Runs of equal top-level headers as one \\multicolumn each (never "Accuracy & Accuracy & Accuracy")."""
    out, i = [], 0
    while i < len(names):
        j = i
        while j + 1 < len(names) and names[j + 1] == names[i]:
            j += 1
        n = j - i + 1
        out.append(names[i] if n == 1 else rf"\multicolumn{{{n}}}{{c}}{{{names[i]}}}")
        i = j + 1
    return out


def to_latex(t: pd.DataFrame, caption: str) -> str:
    esc = lambda v: str(v).replace("%", r"\%").replace("±", r"$\pm$").replace("&", r"\&")  # noqa: E731
    head1 = [t.index.name or ""] + _spans([esc(c[0]) for c in t.columns])
    head2 = [""] + [esc(c[1]) for c in t.columns]
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * len(t.columns) + "}",
             r"\toprule", " & ".join(head1) + r" \\", " & ".join(head2) + r" \\", r"\midrule"]
    lines += [" & ".join([esc(i)] + [esc(v) for v in row]) + r" \\" for i, row in zip(t.index, t.to_numpy())]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(caption)}}}", r"\end{table}", ""]
    return "\n".join(lines)


def all_tables(records: pd.DataFrame, pairs: list[dict] | None = None, n_boot: int = 200, null: dict | None = None,
               floor: dict | None = None) -> dict[str, pd.DataFrame]:
    """Every table of the FTER analysis by one procedure, so the console report (lib.runs.report) and notebook 06
    print the same intervals and p-values for the same records: the seed summary (``n_boot`` two-level bootstrap
    replicates; notebook 06's default) with the tuning-only baseline, the matrix, the paired comparisons (with a
    sweep file's named ``pairs``, Holm across all rows), the calibration checks (``null``, ``floor``: as
    lib.analyze.calibration's permutation_null and view_floor give them) and orderings, the fidelity table and
    the variance components. Keys: summary, matrix, compared (numbers), comparisons (printed form),
    calibration_checks, calibration_orderings, fidelity, variance."""
    from . import aggregate, calibration, comparisons, tuning_only, variance   # heavy, and only needed here

    summary = tuning_only.add(aggregate.summary(records, n_boot), tuning_only.per_run(records))
    compared = comparisons.compare(records, pairs=pairs)
    return {"summary": summary, "matrix": fter_table(summary), "compared": compared,
            "comparisons": comparisons.table(compared), "calibration_checks": calibration.checks(summary, null, floor),
            "calibration_orderings": calibration.orderings(summary), "fidelity": fidelity_table(summary),
            "variance": variance.from_records(records)}
