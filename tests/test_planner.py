"""The planner (issue 22, item 4): seeds needed for a target difference, from pilot runs, with their cost."""
import json

import numpy as np
import pytest
from scipy import stats as sps

import standins
from lib.analyze import collection, comparisons, planner
from lib.core import config, stages


def test_the_plan_reaches_80_percent_power_and_costs_the_pilots_wall_time(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        for i, over in enumerate(({"finetune.method": "random"}, {"finetune.control": "no-fine-tune"})):
            cfg = config.load("params/smoke.yaml", {**over, "seed": seed})
            out = stages.stage_dir(cfg, "05_classifier", root)
            out.mkdir(parents=True)
            standins.write_fake_results(cfg, out)
            run = root / "smoke" / f"run{seed}{i}"          # the run's record: 100 s (random) or 40 s per seed
            run.mkdir(parents=True)
            (run / "run.json").write_text(json.dumps({"stages": {
                "03_dreambooth": {"seconds": 60.0 if i == 0 else 0.0},
                "05_classifier": {"stage_dir": str(out), "seconds": 40.0}}}))
    df = collection.collect(root)
    compared = comparisons.compare(df)
    t = planner.plan_table(df, compared, delta=0.05, root=root).set_index("comparison")
    row, c = t.loc["no-fine-tune − random"], compared.set_index("comparison").loc["no-fine-tune − random"]
    n, sd = int(row["seeds needed"]), c["sd_d_auroc_a"]
    assert row["sd of per-seed Δ"] == pytest.approx(sd) and row["seeds run"] == 3

    def simulated(k):       # the paired t-test over k seeds at this s.d., simulated
        d = np.random.default_rng(k).normal(0.05, sd, (20000, k))
        t_ = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(k))
        return np.mean(np.abs(t_) > sps.t.ppf(0.975, k - 1))

    assert simulated(n) >= 0.79 and (n == 3 or simulated(n - 1) < 0.81)
    assert row["hours"] == pytest.approx(n * (100 + 40) / 3600)
