"""Tiny stand-ins for notebooks 01-06 and for the evaluation's results records.

They follow the real interface (a `parameters` cell, stages.run_stage, the results format) but run in
a second, so runner, sweep and analysis tests do not depend on the heavy pipeline notebooks.
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd

from lib import atomic, stages

HERE = Path(__file__).resolve().parent
LABELS = ["No Finding", "Unhealthy"]


def _auroc(y, s):
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, s))


def fake_predictions(n: int, quality: float, seed: int) -> pd.DataFrame:
    """Scores that separate the two labels by ``quality`` (0 = chance)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = 1 / (1 + np.exp(-(quality * (2 * y - 1) + rng.normal(0, 1, n))))
    return pd.DataFrame({"image_id": [f"img{seed}_{i:04d}" for i in range(n)],
                         "label": [LABELS[v] for v in y], "score": score})


def _direction(pred: pd.DataFrame, d: str) -> dict:
    y = (pred["label"] == "Unhealthy").to_numpy()
    s = pred["score"].to_numpy()
    hit = (s >= 0.5) == y
    row = {f"auroc_{d}": _auroc(y, s), f"acc_{d}": float(hit.mean()),
           f"auroc_{d}_ci_low": 0.0, f"auroc_{d}_ci_high": 1.0, f"collapsed_{d}": False}
    for lab in LABELS:
        m = (pred["label"] == lab).to_numpy()
        row[f"acc_{d}_{lab}"] = float(hit[m].mean())
        row[f"auroc_{d}_{lab}"] = _auroc(y == (lab == "Unhealthy"), s if lab == "Unhealthy" else 1 - s)
    return row


def write_fake_results(cfg, out: Path, method: str | None = None, n: int = 120) -> None:
    """A results record in the evaluation's format, with quality depending on method and seed."""
    method = method or (cfg.finetune.control if cfg.finetune.control != "none" else
                        "active-gating" if cfg.gating.enabled else cfg.finetune.method)
    base = {"random": 0.3, "spectral-clip": 0.8, "active-gating": 1.2}.get(method, 0.1)
    pa = fake_predictions(n, base, 100 + cfg.seed)
    pb = fake_predictions(n, 2.0, 200 + cfg.seed)
    atomic.write_csv(out / "predictions_a.csv", pa)
    atomic.write_csv(out / "predictions_b.csv", pb)
    row = {"method": method, "tuning_size": cfg.selection.per_label, "seed": cfg.seed,
           "threshold": cfg.gating.threshold, "gating": cfg.gating.enabled, "control": cfg.finetune.control,
           **_direction(pa, "a"), **_direction(pb, "b"), "code_version": "test", "data_hash": "d",
           "model_hash": "m", "params_json": json.dumps(cfg.to_dict(), sort_keys=True)}
    row["fter"] = row["auroc_a"] / row["auroc_b"]
    row["fter_ci_low"], row["fter_ci_high"] = row["fter"] - 0.1, row["fter"] + 0.1
    atomic.write_csv(out / "results.csv", pd.DataFrame([row]))


def _stage_code(stage: str) -> str:
    extra = {
        "03_dreambooth": (
            "    import pandas as pd\n"
            "    rate = cfg.gating.skip_rate if cfg.finetune.control == 'random-skip' else "
            "(0.25 if cfg.gating.enabled else 0.0)\n"
            "    (out / 'train_summary.json').write_text(json.dumps({'skip_rate': rate}))\n"
            "    pd.DataFrame({'step': range(8), 'score': [0.1 * i for i in range(8)], "
            "'threshold': cfg.gating.threshold, 'skipped': [i % 4 == 0 for i in range(8)], "
            "'seconds': 0.01}).to_csv(out / 'gating_log.csv', index=False)\n"),
        "05_classifier": "    standins.write_fake_results(cfg, out)\n",
    }.get(stage, "")
    return (f"import json, pathlib, sys\nsys.path.insert(0, {str(HERE)!r})\nimport standins\n"
            "from lib import config, stages\n"
            "cfg = config.load(params_file, overrides)\n"
            "def fn(cfg, out, runs_root=None):\n"
            f"    with open(pathlib.Path(runs_root) / 'calls.log', 'a') as fh: fh.write('{stage}\\n')\n"
            "    (out / 'artefact.txt').write_text('x')\n"
            f"{extra}"
            f"out = stages.run_stage(cfg, {stage!r}, fn, runs_root)\n")


def write_notebooks(directory: Path, fail: str | None = None) -> Path:
    """Stand-in notebooks 01..06 in ``directory``; ``fail`` names a stage whose second cell raises."""
    directory.mkdir(parents=True, exist_ok=True)
    names = {"03_dreambooth": "03_dreambooth_active_gating"}
    for stage in stages.ORDER:
        nb = nbformat.v4.new_notebook()
        nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
        params = nbformat.v4.new_code_cell('params_file = "params/smoke.yaml"\nruns_root = "runs"\n'
                                           'figures_dir = "runs/smoke/figures"\noverrides = {}\n'
                                           'results_root = None\nruns = None')
        params.metadata["tags"] = ["parameters"]
        body = ("print('analysis of', results_root)" if stage == "06_fter_analysis" else _stage_code(stage))
        nb.cells = [params, nbformat.v4.new_code_cell(body)]
        if stage == fail:
            nb.cells.append(nbformat.v4.new_code_cell("raise ValueError('planted failure')"))
        nbformat.write(nb, directory / f"{names.get(stage, stage)}.ipynb")
    return directory


def calls(runs_root: Path) -> list[str]:
    """Which stage functions ran, in order (each stand-in appends its stage name)."""
    p = Path(runs_root) / "calls.log"
    return p.read_text().split() if p.exists() else []


def exec_engine(nb_path: Path, out_nb: Path, parameters: dict, kernel: str) -> None:
    """Runner engine for fast tests: exec the cells in-process, parameters injected after the tagged cell.

    Writes the output notebook like papermill does (before running, so a failure leaves it behind).
    """
    from lib.runner import RunFailed

    nb = nbformat.read(nb_path, as_version=4)
    nbformat.write(nb, out_nb)
    ns: dict = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        try:
            exec(cell.source, ns)
            if "parameters" in cell.metadata.get("tags", []):
                ns.update(parameters)
        except Exception as exc:  # report like papermill does
            raise RunFailed(f"{nb_path.name} failed in cell {i} ({cell.source.splitlines()[0]!r}): {type(exc).__name__}: {exc}\n"
                            f"  partial output notebook kept: {out_nb}") from None


def fake_study(runs_root: Path, seeds=(0, 1)) -> Path:
    """Results records plus the stage-03 gating logs and stage-04 manifests (with images) figures read."""
    from PIL import Image

    from lib import config

    points = [{"finetune.method": "random"}, {"finetune.method": "spectral-clip"},
              {"finetune.method": "spectral-clip", "gating.enabled": True},
              {"finetune.method": "spectral-clip", "finetune.control": "random-skip", "gating.skip_rate": 0.25}]
    for p in points:
        for seed in seeds:
            cfg = config.load("params/smoke.yaml", {**p, "seed": seed})
            d3, d4, d5 = (stages.stage_dir(cfg, s, runs_root) for s in stages.ORDER[2:5])
            for d in (d3, d4, d5):
                d.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(seed)
            pd.DataFrame({"step": range(40), "score": 0.3 + 0.05 * rng.standard_normal(40),
                          "threshold": cfg.gating.threshold, "skipped": rng.random(40) < 0.25,
                          "seconds": 0.01}).to_csv(d3 / "gating_log.csv", index=False)
            rows = []
            for i in range(6):
                f = d4 / "images" / f"{i}.png"
                f.parent.mkdir(exist_ok=True)
                Image.fromarray((rng.random((32, 32)) * 255).astype("uint8")).save(f)
                rows.append({"image_id": f"s{i}", "file": f"images/{i}.png", "label": LABELS[i % 2]})
            pd.DataFrame(rows).to_csv(d4 / "manifest.csv", index=False)
            write_fake_results(cfg, d5)
    return Path(runs_root)
