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

from lib.core import atomic, stages

HERE = Path(__file__).resolve().parent
LABELS = ["No Finding", "Unhealthy"]


def _auroc(y, s):
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, s))


def fake_predictions(n: int, quality: float, seed: int, ids: str | None = None) -> pd.DataFrame:
    """Per-class outputs that separate the two labels by ``quality`` (0 = chance), and their score."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = 1 / (1 + np.exp(-(quality * (2 * y - 1) + rng.normal(0, 1, n))))
    p0 = 1 / (1 + np.exp(-(quality * (1 - 2 * y) + rng.normal(0, 1, n))))
    return pd.DataFrame({"image_id": [f"{ids or f'img{seed}'}_{i:04d}" for i in range(n)],
                         "label": [LABELS[v] for v in y], "score": p1 / (p0 + p1),
                         "p[No Finding]": p0, "p[Unhealthy]": p1})


def write_fake_results(cfg, out: Path, method: str | None = None, n: int = 120) -> None:
    """A results record in the evaluation's format (every matrix cell, the detector, the row from
    lib.evaluate.metrics.matrix), with quality depending on method and seed. Runs of one seed share the real
    test images, as stage 05's real baseline makes them."""
    from lib.evaluate import metrics, results

    method = method or results.method_name(cfg)
    base = {"random": 0.3, "spectral-clip": 0.8, "active-gating": 1.2}.get(method, 0.1)
    real = fake_predictions(n, 1.5, 300 + cfg.seed, ids=f"real{cfg.seed}")      # TRTR: the shared baseline
    a = _relabel_scores(real, base, 100 + cfg.seed)                               # same images and labels
    syn_b = fake_predictions(n, 2.0, 200 + cfg.seed, ids="syn")
    syn_t = _relabel_scores(syn_b, 1.0, 400 + cfg.seed)
    for k, df in {"a": a, "trtr": real, "b": syn_b, "tsts": syn_t}.items():
        atomic.write_csv(out / f"predictions_{k}.csv", df)
    atomic.write_csv(out / "test_a.csv", real[["image_id", "label"]])
    atomic.write_csv(out / "test_b.csv", syn_b[["image_id", "label"]])
    rng = np.random.default_rng(500 + cfg.seed)
    det = pd.DataFrame({"image_id": list(real["image_id"]) + list(syn_b["image_id"]),
                        "label": list(real["label"]) + list(syn_b["label"]),
                        "source": ["real"] * n + ["synthetic"] * n})
    det["score"] = 1 / (1 + np.exp(-(0.5 * (det["source"] == "synthetic") + rng.normal(0, 1, 2 * n))))
    atomic.write_csv(out / "predictions_det.csv", det)
    row = {"method": method, "tuning_per_label": cfg.selection.per_label, "tuning_size": 99, "seed": cfg.seed,
           "bootstrap_seed": cfg.seed, "code_version": "test",
           **metrics.matrix(results.cells_from(out), cfg.classifier.threshold, 50, cfg.seed,
                            detection=results.detection_from(out)),
           **results.flatten(cfg.to_dict(), "param.")}
    atomic.write_csv(out / "results.csv", pd.DataFrame([row]))


def _relabel_scores(pred: pd.DataFrame, quality: float, seed: int) -> pd.DataFrame:
    """Other outputs of given quality for the same images and labels."""
    rng = np.random.default_rng(seed)
    y = (pred["label"] == "Unhealthy").to_numpy().astype(int)
    p1 = 1 / (1 + np.exp(-(quality * (2 * y - 1) + rng.normal(0, 1, len(y)))))
    p0 = 1 / (1 + np.exp(-(quality * (1 - 2 * y) + rng.normal(0, 1, len(y)))))
    return pred.assign(score=p1 / (p0 + p1), **{"p[No Finding]": p0, "p[Unhealthy]": p1})


def _stage_code(stage: str) -> str:
    extra = {
        "03_dreambooth": (
            "    import pandas as pd\n"
            "    rate = cfg.gating.skip_rate if cfg.finetune.control == 'random-skip' else "
            "(0.25 if cfg.gating.enabled else 0.0)\n"
            "    trained = cfg.finetune.updates if cfg.finetune.control == 'equal-updates' else round(8 * (1 - rate))\n"
            "    (out / 'train_summary.json').write_text(json.dumps({'skip_rate': rate, 'trained': trained}))\n"
            "    pd.DataFrame({'step': range(8), 'score': [0.1 * i for i in range(8)], "
            "'threshold': cfg.gating.threshold, 'skipped': [i % 4 == 0 for i in range(8)], "
            "'seconds': 0.01}).to_csv(out / 'gating_log.csv', index=False)\n"),
        "05_classifier": "    standins.write_fake_results(cfg, out)\n",
    }.get(stage, "")
    return (f"import json, pathlib, sys\nsys.path.insert(0, {str(HERE)!r})\nimport standins\n"
            "from lib.core import config, stages\n"
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
    from lib.runs.runner import RunFailed

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

    from lib.core import config

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
