"""The notebooks as committed: thin, parameterised, and without outputs (nbval runs them separately)."""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs_and_has_a_parameters_cell(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    with_output = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count")]
    assert not with_output, f"{path.name}: code cells {with_output} carry outputs; clear them before committing."
    assert any("parameters" in c["metadata"].get("tags", []) for c in code), f"{path.name}: no 'parameters' cell"


def test_there_is_one_notebook_per_stage():
    # 01-06: the pipeline (lib.core.stages.ORDER); 07: the mixing experiments over finished runs (lib/analyze/mixing.py);
    # 08: the source x target matrix (lib/analyze/transfer.py)
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


# ---------------------------------------------------------------------- one run configuration (issue 14)
def _cells(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    i = next(i for i, c in enumerate(code) if "parameters" in c["metadata"].get("tags", []))
    return "".join(code[i]["source"]), "".join(code[i + 1]["source"])


def test_every_notebook_takes_the_same_run_configuration():
    # No per-notebook shortcuts (gating = True in 03 alone): the same four lines open every parameters cell,
    # and stages 01-05 take nothing else; each notebook's configuration comes from stages.notebook_config.
    heads = {p.name: _cells(p)[0].splitlines()[:4] for p in NOTEBOOKS}
    assert len({tuple(h) for h in heads.values()}) == 1, heads
    assert [line.split("=")[0].strip() for line in next(iter(heads.values()))] == \
        ["params_file", "overrides", "runs_root", "figures_dir"]
    for p in NOTEBOOKS[:5]:
        params, setup = _cells(p)
        # the fifth: run_dir, a finished run folder to open instead (issue 25, lib.core.run_folder)
        assert len(params.splitlines()) == 5 and params.splitlines()[4].startswith("run_dir = None"), \
            f"{p.name} has parameters of its own: {params}"
        assert f'stages.notebook_config("{p.name[:2]}_' in setup and "run_dir=run_dir" in setup, p.name


def test_a_notebook_whose_parameters_drifted_from_the_previous_one_is_refused(tmp_path, monkeypatch):
    from lib.core import config, stages

    monkeypatch.delenv("SUITE_BATCH", raising=False)
    root = tmp_path / "runs"
    gated = {"gating.enabled": True}
    # Notebook 03 ran with gating on; notebook 04 as stored (gating off) would read another stage-03 folder.
    stages.notebook_config("03_dreambooth", "params/smoke.yaml", gated, root)
    with pytest.raises(stages.ParamsDrift, match=r"would read stage 03_dreambooth made with other parameters than "
                       r"notebooks/03_dreambooth_active_gating\.ipynb .*gating\.enabled \(notebook 03: True, here: "
                       r"False\).*overrides = \{'gating\.enabled': True\}"):
        stages.notebook_config("04_generation", "params/smoke.yaml", {}, root)
    # The same parameters pass; so does a setting stage 03 is not keyed by (04's own generation.steps) ...
    cfg, runs_root, figures = stages.notebook_config("04_generation", "params/smoke.yaml",
                                                     {**gated, "generation.steps": 6}, root)
    assert cfg.gating.enabled and runs_root == root and figures == root / "smoke" / "figures"
    # ... but notebook 05 must then use it too, since it reads that stage-04 folder.
    with pytest.raises(stages.ParamsDrift, match=r"generation\.steps \(notebook 04: 6, here: 4\)"):
        stages.notebook_config("05_classifier", "params/smoke.yaml", gated, root)
    # Going back to an earlier notebook starts a new configuration; a gate setting an ungated run cannot use is
    # no drift; batch runs (one params.yaml for every notebook) are not checked.
    stages.notebook_config("03_dreambooth", "params/smoke.yaml", {"gating.threshold": 0.5}, root)
    stages.notebook_config("04_generation", "params/smoke.yaml", {}, root)
    monkeypatch.setenv("SUITE_BATCH", "1")
    stages.notebook_config("05_classifier", "params/smoke.yaml", gated, root)
    assert json.loads((root / stages.SESSION).read_text())["stage"] == "04_generation"
    assert config.load("params/smoke.yaml").gating.enabled is False


def test_a_missing_stage_names_an_existing_notebook_and_the_closest_finished_folder(tmp_path):
    from lib.core import atomic, config, paths, stages

    root = tmp_path / "runs"
    gated = config.load("params/smoke.yaml", {"gating.enabled": True})
    atomic.write_json(stages.stage_dir(gated, "03_dreambooth", root) / "DONE.json", {"params": gated.to_dict()})
    with pytest.raises(FileNotFoundError) as err:
        stages.require(config.load("params/smoke.yaml"), "03_dreambooth", root)
    named = re.search(r"Run (notebooks/\S+\.ipynb) with the same params_file and overrides", str(err.value))
    assert named and (paths.ROOT / named.group(1)).is_file(), str(err.value)
    assert "gating.enabled (there: True, here: False)" in str(err.value)


def test_papermill_reads_every_parameter_of_every_notebook():
    """A parameter papermill cannot parse (e.g. a second '=' in its comment) is passed as 'unknown' and warned
    about on every batch run (notebook 06's `runs` was)."""
    import re

    import nbformat
    from papermill.translators import PythonTranslator

    for nb_path in sorted(Path("notebooks").glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assigned = re.findall(r"^(\w+)\s*=", cell.source, flags=re.M)
        assert [p.name for p in PythonTranslator.inspect(cell)] == assigned, nb_path.name
