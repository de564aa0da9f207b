"""Whether the methods' fidelity (FID) and their trainability (TR, FTER) rank them alike: Spearman rank
correlations over a seed summary's methods (lib.analyze.aggregate.summary), and the verdict in sentences.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..core.style import REFERENCES


def fidelity_trainability(s: pd.DataFrame, fidelity: str = "fidelity.fid") -> pd.DataFrame:
    """Spearman rank correlation across methods (summary rows) between a fidelity metric's seed mean and TR
    and FTER (pooled), over every method and over the generators alone (reference generators left out: some
    are built to keep fidelity and lose the labels). Columns: methods, trainability, n, rho, p."""
    rows = []
    for subset, part in (("all", s), ("generators", s[~s["method"].isin(REFERENCES)] if len(s) else s)):
        for target in ("tr", "fter"):
            x = part.get(f"{fidelity}_pooled", pd.Series(dtype=float)).astype(float).to_numpy()
            y = part.get(f"{target}_pooled", pd.Series(dtype=float)).astype(float).to_numpy()
            ok = np.isfinite(x) & np.isfinite(y)
            rho = p = np.nan
            if ok.sum() >= 3 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
                rho, p = (float(v) for v in spearmanr(x[ok], y[ok]))
            rows.append({"methods": subset, "fidelity": fidelity, "trainability": target, "n": int(ok.sum()),
                         "rho": rho, "p": p})
    return pd.DataFrame(rows)


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _verdict(r) -> str:
    if not np.isfinite(r["rho"]):
        return f"cannot be compared ({r['n']} methods with both numbers; at least 3 are needed)"
    stat = f"Spearman ρ(FID, TR) = {r['rho']:+.2f}, {_p(r['p'])}, over {r['n']} methods"
    if r["rho"] < 0 and r["p"] < 0.05:
        return f"agree: methods with a lower FID carry more of real data's signal ({stat})"
    if r["rho"] < 0:
        return f"do not clearly agree: the rank correlation has the expected sign but is not significant ({stat})"
    return f"do not agree: a lower FID does not go with a higher TR ({stat})"


def fidelity_agreement(s: pd.DataFrame) -> str:
    """Whether fidelity (FID) and trainability (TR) rank the methods alike, in sentences with the numbers:
    agreement is a significantly negative Spearman correlation between FID and TR (p < 0.05)."""
    c = fidelity_trainability(s).set_index(["methods", "trainability"])
    gen, every = c.loc[("generators", "tr")], c.loc[("all", "tr")]
    out = [f"Among the generators (diffusion methods and controls), fidelity and trainability {_verdict(gen)}."]
    if every["n"] > gen["n"]:
        out.append(f"With the reference generators, fidelity and trainability {_verdict(every)}.")
    fter = c.loc[("all", "fter")]
    if np.isfinite(fter["rho"]):
        out.append(f"FID against the plain FTER: ρ = {fter['rho']:+.2f} ({_p(fter['p'])}, {fter['n']} methods); "
                   "FTER also rises when direction (b) gets worse, so it is no monotone measure of quality.")
    return " ".join(out)
