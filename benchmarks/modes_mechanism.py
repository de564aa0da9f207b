"""Issue 27's mechanism, measured before any fine-tuning: in the phantom mode world (data.phantom_modes), how far each
tuning-set selection moves the acquisition-mode mix away from the test pool's, and how far each embedding's clusters
follow the modes. Stages 01-02 of params/demo.yaml per seed, in runs/.modes-check (not a test; ~1 min per seed).
With --generated ROOT, after fine-tuning instead: whether each finished run's generator kept its tuning set's mode
mix (lib/analyze/generated_modes.py: a mode classifier fitted on the real training pool, checked on the test
pool, applied to the real tuning set and the synthetic set).

    .venv/bin/python benchmarks/modes_mechanism.py [--seeds 0 1] [--out benchmarks/results/modes_mechanism.txt]
    .venv/bin/python benchmarks/modes_mechanism.py --generated runs/modes [--conspicuity 0.25] [--seeds 2 3 ...] [--out ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_seed(seed: int, root: str) -> str:
    from lib.analyze import subgroups
    from lib.core import config, stages
    from lib.data import curation
    from lib.tuningset import selection

    cfg = config.load("params/demo.yaml", {"data.phantom_modes": True, "seed": seed, "experiment": "modes-check"})
    t = time.perf_counter()
    d01 = stages.run_stage(cfg, "01_data_curation", curation.run, root, progress=False)
    d02 = stages.run_stage(cfg, "02_clustering", selection.run, root, progress=False)
    pools, res, pool = curation.load_pools(d01), selection.load(d02), selection.tuning_pool(cfg, root)
    modes = pool[["image_id", "mode"]]
    sets = {"test pool": pools["test"], "tuning pool": pools["tuning"]}
    sets |= {f"tuning {m}": df.merge(modes, on="image_id", how="left") if "mode" not in df else df
             for m, df in res["tuning_sets"].items()}
    lines = [f"== seed {seed} (stages 01-02 {time.perf_counter() - t:.0f} s): mode shares; last row the total "
             "variation distance from the test pool", subgroups.mode_shares(sets).round(3).to_string()]
    for m, df in res["clusters"].items():
        c = df.merge(modes, on="image_id", how="left")
        r = subgroups.clusters_against_modes(c["cluster"].to_numpy(), c["mode"].to_numpy())
        conc = ", ".join(f"{k} {v:.2f}" for k, v in r["rare_concentration"].items())
        lines.append(f"{m}: clusters against modes AMI {r['ami']:.3f}, ARI {r['ari']:.3f}; the largest share one "
                     f"cluster holds of each rare mode: {conc}")
    return "\n".join(lines)


def generated(root: str, conspicuity: float = 1.0, seeds: list[int] | None = None) -> str:
    import pandas as pd

    from lib.analyze import collection, generated_modes

    t = time.perf_counter()
    records = collection.collect(root)
    # one world at a time: the runs drawn at this data.mode_conspicuity (1.0: the key is absent)
    records = records[records["params"].map(lambda p: p.get("data", {}).get("mode_conspicuity", 1.0) == conspicuity)]
    if seeds is not None:                   # e.g. the reported seeds only, leaving a pilot's development seeds out
        records = records[records["seed"].isin(seeds)]
    shares, checks = generated_modes.table(records)
    control = generated_modes.roundtrip_control(records)
    pd.set_option("display.width", 200)
    per_method = shares.groupby(["method", "mode"], sort=False)[["tuning_true", "tuning_predicted",
                                                                 "synthetic_predicted"]].mean().unstack(0)
    return "\n".join([
        f"== {root}, data.mode_conspicuity {conspicuity:g} ({len(records)} runs): does the generator keep its tuning "
        f"set's acquisition modes? ({time.perf_counter() - t:.0f} s)",
        "mode classifier (logistic regression on 32 px pixels, fitted on the real training pool), held out on the "
        "real test pool, per seed:", checks.round(3).to_string(index=False),
        "\ncontrol: the real test pool's non-normal share before and after the frozen VAE's round trip (the same "
        "classifier; unchanged means the decoder alone does not make images read as non-normal)",
        control.round(3).to_string(index=False),
        "\nper method, seed means: the share of images outside the normal mode, and the total variation distance "
        "between the synthetic set's and the real tuning set's predicted mode shares",
        generated_modes.summary(shares).round(3).to_string(),
        "\nper mode (seed means): tuning set true / predicted share, synthetic set predicted share",
        per_method.round(3).to_string()])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="the seeds (default 0 1; with --generated: all)")
    ap.add_argument("--runs-root", default="runs/.modes-check")
    ap.add_argument("--out", default=None)
    ap.add_argument("--generated", metavar="ROOT", default=None, help="the finished runs under ROOT instead")
    ap.add_argument("--conspicuity", type=float, default=1.0, help="with --generated: the runs of this "
                    "data.mode_conspicuity only (default 1.0, the first mode world)")
    a = ap.parse_args()
    text = (generated(a.generated, a.conspicuity, a.seeds) if a.generated
            else "\n\n".join(one_seed(s, a.runs_root) for s in a.seeds or [0, 1]))
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
