"""JupyterLab as a person uses it (issue 25), the parts that need no browser: every figure shown once, a
finished run opened by its folder, the threshold slider's line following the slider. The browser test
itself is tests/browser/test_lab_browser.py."""
import ast
import importlib
import inspect
import json
from pathlib import Path

import pytest

from lib.core import paths, run_folder, stages

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _viz_aliases(cells: list[str]) -> dict[str, str]:
    """Names the notebook binds to lib.viz modules (``from lib.viz import analysis as viz``)."""
    out = {}
    for src in cells:
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ImportFrom) and node.module == "lib.viz":
                out.update({a.asname or a.name: f"lib.viz.{a.name}" for a in node.names})
    return out


def _returns_figure(module: str, name: str) -> bool:
    fn = getattr(importlib.import_module(module), name, None)
    return fn is not None and "return fig" in inspect.getsource(fn)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_shows_a_figure_twice(path):
    # A cell whose last line returns a figure shows it twice: the inline backend draws every open figure
    # (display_data) and IPython the returned value (execute_result). A trailing ';' keeps only the first.
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    aliases, twice = _viz_aliases(cells), []
    for src in cells:
        body = ast.parse(src).body
        last = body[-1] if body else None
        if (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
                and isinstance(last.value.func, ast.Attribute) and isinstance(last.value.func.value, ast.Name)
                and last.value.func.value.id in aliases and not src.rstrip().endswith(";")
                and _returns_figure(aliases[last.value.func.value.id], last.value.func.attr)):
            twice.append(src.strip().splitlines()[-1])
    assert not twice, f"{path.name}: these cells show their figure twice (end them with ';'): {twice}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_run_on_the_kernel_set_up_registers(path):
    from lib.runs import setup_env

    assert json.loads(path.read_text())["metadata"]["kernelspec"]["name"] == setup_env.KERNEL


# ------------------------------------------------------------------ a finished run opened by its folder
def _fake_run(root: Path, status: dict) -> Path:
    d = root / "smoke" / "spectral-clip_n12_seed0"
    d.mkdir(parents=True)
    (d / "params.yaml").write_text((paths.ROOT / "params" / "smoke.yaml").read_text())
    (d / "run.json").write_text(json.dumps(status))
    return d


def test_run_dir_gives_the_runs_params_and_runs_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SUITE_BATCH", "1")           # no session record: only the resolution is under test
    d = _fake_run(tmp_path / "runs", {"done_through": "05_classifier", "finished": None})
    cfg, root, figures = stages.notebook_config("03_dreambooth", "params/demo.yaml", {}, None, None, run_dir=str(d))
    assert root == tmp_path / "runs" and cfg.experiment == "smoke"      # params.yaml of the run, not demo.yaml
    assert figures == d / "figures-lab"                                # the run's own figures stay as made
    assert run_folder.finished(tmp_path / "runs") == [str(d)]


def test_a_folder_that_is_no_run_or_overrides_on_top_are_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("SUITE_BATCH", "1")
    with pytest.raises(FileNotFoundError, match=r"run_dir .*holds no params.yaml.*finished\('runs/demo'\)"):
        stages.notebook_config("03_dreambooth", "params/smoke.yaml", {}, None, None, run_dir=str(tmp_path))
    d = _fake_run(tmp_path / "runs", {"done_through": "05_classifier"})
    with pytest.raises(ValueError, match="overrides"):
        stages.notebook_config("03_dreambooth", "params/smoke.yaml", {"seed": 1}, None, None, run_dir=str(d))


def test_only_runs_through_stage_05_are_listed(tmp_path):
    _fake_run(tmp_path / "runs", {"done_through": "03_dreambooth", "finished": None})
    assert run_folder.finished(tmp_path / "runs") == []


# ------------------------------------------------------------------ the threshold slider, without a browser
def test_the_slider_returns_nothing_and_its_line_follows_it(tmp_path, monkeypatch):
    # The old explorer returned its box (shown again as Out[]) and printed a line that kept the first threshold.
    import pandas as pd
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import Pretty
    from lib.viz import dreambooth

    pd.DataFrame({"step": range(6), "score": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}).to_csv(tmp_path / "gating_log.csv")
    pd.DataFrame({"step": range(6), "loss": [1.0] * 6}).to_csv(tmp_path / "loss_log.csv")
    (tmp_path / "train_summary.json").write_text(json.dumps({"threshold": 0.45}))
    monkeypatch.delenv("SUITE_BATCH", raising=False)
    InteractiveShell.instance()
    shown, lines = [], []

    class Handle:
        def update(self, obj):
            lines.append(obj.data)

    def display(obj, display_id=None):
        shown.append(obj)
        if isinstance(obj, Pretty):
            lines.append(obj.data)
        return Handle() if display_id else None

    monkeypatch.setattr("IPython.display.display", display)
    assert dreambooth.threshold_explorer(tmp_path) is None
    slider = next(o for o in shown if hasattr(o, "value"))
    assert len(shown) == 2 and lines == ["threshold 0.4500: would skip 2 of 6 batches (33%); steps [4, 5]"]
    slider.value = 0.25
    assert lines[-1].startswith("threshold 0.2500: would skip 4 of 6"), lines


# ------------------------------------------------------------------ lab settings and make lab
def test_set_up_makes_lab_save_widget_state(tmp_path):
    from lib.runs import setup_env

    target = tmp_path / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"other:plugin": {"x": 1}}))
    assert setup_env.write_lab_settings(tmp_path) == target
    assert json.loads(target.read_text()) == {"other:plugin": {"x": 1},
                                              "@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": True}}


def test_make_lab_takes_a_port_no_browser_and_runs_as_root():
    import subprocess

    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "lab", "LAB_PORT=9123", "NO_BROWSER=1"],
                         cwd=paths.ROOT, capture_output=True, text=True).stdout
    assert "--port=9123" in out and "--no-browser" in out
    import os
    assert ("--allow-root" in out) == (os.getuid() == 0)
