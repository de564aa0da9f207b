"""Reliability (issue 15): stage fingerprints, data-aware curation keys, failures that name the right
cell, dead kernels recorded, merged run records, reproducible generator hashes, smaller edges."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import standins
from PIL import Image

from lib.core import atomic, config, paths, stages
from lib.data import curation
from lib.generate import manifest
from lib.runs import runner, sweep_spec, sweeps
from lib.data.nih import DataError

RUN = "spectral-clip_n12_seed0"


# ------------------------------------------------------------------------------ stage fingerprints
def _curate(cfg, out, runs_root=None):
    atomic.write_csv(out / "train.csv", pd.DataFrame({"image_id": ["a", "b"], "patient": ["p1", "p2"]}))
    atomic.write_csv(out / "test.csv", pd.DataFrame({"image_id": ["c"], "patient": ["p3"]}))


def _evaluator(calls):
    def fn(cfg, out, runs_root=None):      # like an evaluation that trusts a results.json left from before
        calls.append(out.name)
        if not (out / "results.json").exists():
            atomic.write_json(out / "results.json", {"auroc": 0.9})
    return fn


def _plant_test_patient(d01):
    train = pd.read_csv(d01 / "train.csv")
    train.loc[0, "patient"] = "p3"
    train.to_csv(d01 / "train.csv", index=False)


def test_a_deleted_done_marker_never_bypasses_the_check(smoke_cfg, runs_root):
    calls = []
    d01 = stages.run_stage(smoke_cfg, "01_data_curation", _curate, runs_root)
    d05 = stages.run_stage(smoke_cfg, "05_classifier", _evaluator(calls), runs_root)
    assert stages.is_done(d05) and calls == [d05.name]
    assert set(json.loads((d05 / "DONE.json").read_text())["inputs"]) == {"01_data_curation"}

    (d05 / "DONE.json").unlink()
    _plant_test_patient(d01)                      # a test patient now sits in the training pool
    assert not stages.is_done(d05) and not stages.is_done(d01)
    with pytest.raises(stages.StageChanged, match=r"started from other inputs.*train\.csv changed"):
        stages.run_stage(smoke_cfg, "05_classifier", _evaluator(calls), runs_root)
    with pytest.raises(stages.StageChanged, match=r"train\.csv changed.*Delete"):
        stages.require(smoke_cfg, "01_data_curation", runs_root)
    assert calls == [d05.name] and not (d05 / "DONE.json").exists()   # the old results were not returned


def test_a_sealed_stage_whose_inputs_changed_is_refused_not_reused(smoke_cfg, runs_root):
    calls = []
    d01 = stages.run_stage(smoke_cfg, "01_data_curation", _curate, runs_root)
    d05 = stages.run_stage(smoke_cfg, "05_classifier", _evaluator(calls), runs_root)
    train_bytes = (d01 / "train.csv").read_bytes()
    shutil.rmtree(d01)                                                  # deleted to recompute it ...
    stages.run_stage(smoke_cfg, "01_data_curation",
                     lambda c, o, runs_root=None: (_curate(c, o), _plant_test_patient(o)), runs_root)
    assert stages.is_done(d01) and not stages.is_done(d05)           # 01 recomputed with other content
    with pytest.raises(stages.StageChanged, match=r"01_data_curation-\w+/train\.csv changed"):
        stages.run_stage(smoke_cfg, "05_classifier", _evaluator(calls), runs_root)
    assert calls == [d05.name]
    (d01 / "train.csv").write_bytes(train_bytes)                      # restored: 05 is valid again
    assert not stages.is_done(d01)                                     # ... but 01 was sealed on other bytes


def test_a_resumed_stage_with_unchanged_inputs_runs_its_function_again(smoke_cfg, runs_root):
    calls = []
    stages.run_stage(smoke_cfg, "01_data_curation", _curate, runs_root)
    d05 = stages.run_stage(smoke_cfg, "05_classifier", _evaluator(calls), runs_root)
    (d05 / "DONE.json").unlink()
    assert not stages.is_done(d05)
    assert stages.run_stage(smoke_cfg, "05_classifier", _evaluator(calls), runs_root) == d05
    assert calls == [d05.name, d05.name] and stages.is_done(d05)      # checked by its function, then sealed
    (d05 / "DONE.json").unlink()
    (d05 / "INPUTS.json").unlink()                                     # no record of what the results came from
    with pytest.raises(stages.StageChanged, match="no record of the inputs"):
        stages.run_stage(smoke_cfg, "05_classifier", _evaluator(calls), runs_root)


def test_a_stage_sealed_before_fingerprints_is_taken_as_it_is(smoke_cfg, runs_root):
    d = stages.stage_dir(smoke_cfg, "01_data_curation", runs_root)
    d.mkdir(parents=True)
    atomic.write_json(d / "DONE.json", {"stage": "01_data_curation"})
    assert stages.is_done(d) and stages.require(smoke_cfg, "01_data_curation", runs_root) == d


# ------------------------------------------------------------------------------- curation keys
def _fake_nih(root: Path, n: int = 20) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        name = f"{i:08d}_000.png"
        Image.fromarray((np.random.default_rng(i).random((32, 32)) * 255).astype("uint8")).save(root / "images" / name)
        rows.append({"Image Index": name, "Finding Labels": "No Finding" if i % 2 else "Effusion",
                     "Patient ID": i, "View Position": "PA"})
    pd.DataFrame(rows).to_csv(root / "Data_Entry_2017.csv", index=False)
    return root


def _nih_cfg(root, **data):
    return config.load("params/smoke.yaml", {"data.source": "nih", "data.nih_root": str(root),
                                             **{f"data.{k}": v for k, v in data.items()}})


def test_changed_nih_data_gives_a_new_curation_key(tmp_path):
    root = _fake_nih(tmp_path / "nih")
    cfg = _nih_cfg(root)
    keys = lambda: (stages.key(cfg, "01_data_curation"), stages.key(cfg, "05_classifier"))  # noqa: E731
    seen = [keys()]
    assert keys() == seen[0]                                            # stable while nothing changes
    img = root / "images" / "00000003_000.png"
    Image.fromarray(np.zeros((32, 32), "uint8")).save(img)              # an image repaired/changed
    seen.append(keys())
    Image.fromarray(np.zeros((32, 32), "uint8")).save(root / "images" / "00000099_000.png")   # one added
    seen.append(keys())
    csv = root / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().replace("Effusion", "Mass", 1))      # the metadata edited
    seen.append(keys())
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))          # only touched
    seen.append(keys())
    assert len({k[0] for k in seen}) == len(seen) and len({k[1] for k in seen}) == len(seen)
    phantom = config.load("params/smoke.yaml")
    from lib.data.phantoms import GENERATOR_VERSION
    assert stages.key(phantom, "01_data_curation").endswith(f"p{GENERATOR_VERSION}")


def test_missing_images_above_the_threshold_stop_curation(tmp_path, caplog):
    root = _fake_nih(tmp_path / "nih")
    (root / "images" / "00000004_000.png").unlink()                    # 1 of 20 = 5%
    with pytest.raises(DataError, match=r"1 of 20 images .*missing.*max_missing_fraction.*00000004_000\.png"):
        curation.curate(_nih_cfg(root), progress=False)
    cur = curation.curate(_nih_cfg(root, max_missing_fraction=0.1), progress=False)
    assert cur.missing == ["00000004_000.png"] and len(cur.table) == 19
    assert "1 of 20 images named in the CSV are missing" in caplog.text
    with pytest.raises(config.ParamError, match=r"max_missing_fraction = 1.5 must be in \[0, 1\]"):
        _nih_cfg(root, max_missing_fraction=1.5)


# -------------------------------------------------------------------------------------- the runner
def _notebooks_with(tmp_path, cells: list[str]) -> Path:
    """Stand-in notebooks whose 01 is: a title, the parameters, then ``cells``."""
    nb_dir = standins.write_notebooks(tmp_path / "nb")
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    params = nbformat.v4.new_code_cell("params_file = ''\nruns_root = ''\nfigures_dir = ''\noverrides = {}")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# Curation"), params, *map(nbformat.v4.new_code_cell, cells)]
    nbformat.write(nb, nb_dir / "01_data_curation.ipynb")
    return nb_dir


def test_a_failing_cell_is_named_by_its_index_and_first_line(tmp_path, runs_root):
    nb_dir = _notebooks_with(tmp_path, ["raise ValueError('planted failure')\n# more", "x = 1"])
    with pytest.raises(runner.RunFailed) as err:
        runner.run("params/smoke.yaml", {}, runs_root, nb_dir, kernel="python3")
    msg, out_nb = str(err.value), runs_root / "smoke" / RUN / "01_data_curation.ipynb"
    assert "01_data_curation.ipynb failed in cell 2 (\"raise ValueError('planted failure')\"" in msg
    assert "# Parameters" not in msg and str(out_nb) in msg and out_nb.exists()


def test_a_killed_kernel_is_recorded_in_run_json_and_the_run_resumes(tmp_path, runs_root):
    nb_dir = _notebooks_with(tmp_path, ["x = 1", "import os\nos._exit(9)  # the kernel dies"])
    with pytest.raises(runner.RunFailed) as err:
        runner.run("params/smoke.yaml", {}, runs_root, nb_dir, kernel="python3")
    msg = str(err.value)
    assert "kernel died in cell 3 ('import os')" in msg and "resumes" in msg
    rec = json.loads((runs_root / "smoke" / RUN / "run.json").read_text())
    st = rec["stages"]["01_data_curation"]
    assert st["status"] == "failed" and "kernel died" in st["error"] and not rec["finished"]
    assert [e["status"] for e in rec["history"]] == ["running", "failed"]
    done = runner.run("params/smoke.yaml", {}, runs_root, standins.write_notebooks(tmp_path / "ok"),
                      engine=standins.exec_engine)
    assert done.status["finished"] and done.status["stages"]["01_data_curation"]["status"] == "executed"


_CONCURRENT = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import standins
from lib.runs import runner

ready = Path({runs!r}).parent / "ready"
ready.mkdir(exist_ok=True)
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < 2:      # start together
    time.sleep(0.01)

def engine(*args):
    time.sleep(0.3)
    standins.exec_engine(*args)

runner.run("params/smoke.yaml", {{}}, {runs!r}, {nb!r}, engine=engine)
"""


def test_two_identical_concurrent_runs_keep_both_histories(tmp_path, runs_root):
    nb_dir = standins.write_notebooks(tmp_path / "nb")
    code = _CONCURRENT.format(tests=str(Path(__file__).parent), runs=str(runs_root), nb=str(nb_dir))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=paths.ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    rec = json.loads((runs_root / "smoke" / RUN / "run.json").read_text())
    # both started together: one ran the whole run, the other waited on the run's lock, then found it finished
    # (issue 20, hole 7: it used to rerun 02-06 and overwrite the first's notebooks with 'reusing' ones)
    assert rec["finished"] and len({e["pid"] for e in rec["history"]}) == 1
    assert sum("already finished" in o for o in outs) == 1, outs
    assert all(rec["stages"][s]["status"] == "executed" for s in stages.ORDER)
    assert standins.calls(runs_root) == stages.ORDER[:5]               # each stage function ran once


def test_merge_keeps_a_stage_another_process_finished():
    disk = {"run_id": "r", "finished": None, "stages": {"01": {"status": "executed", "notebook": "01.ipynb"}},
            "history": [{"stage": "01", "status": "executed", "pid": 1}]}
    ours = {"run_id": "r", "finished": None, "stages": {"01": {"status": "reused"}, "02": {"status": "running"}}}
    out = runner.merge_status(disk, ours, ours["stages"], [{"stage": "01", "status": "reused", "pid": 2}])
    assert out["stages"]["01"]["status"] == "executed" and out["stages"]["02"]["status"] == "running"
    assert [e["pid"] for e in out["history"]] == [1, 2]


# ------------------------------------------------------------------------------- generator hashes
def _model_folder(d: Path, weights: bytes, seconds: float) -> Path:
    (d / "unet").mkdir(parents=True)
    (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    (d / "unet" / "config.json").write_text(json.dumps({"_name_or_path": str(d / "unet"), "layers": 2}))
    (d / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    (d / "train_summary.json").write_text(json.dumps({"wall_seconds": seconds, "models": {"x": str(d)}}))
    return d


def test_identical_runs_give_identical_generator_hashes(tmp_path):
    weights = np.random.default_rng(0).bytes(4096)
    a = _model_folder(tmp_path / "run1" / "model", weights, 12.3)
    b = _model_folder(tmp_path / "run2" / "model", weights, 45.6)
    assert manifest.model_hash(str(a)) == manifest.model_hash(str(b))
    (b / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(weights[:-1] + b"\x00")
    assert manifest.model_hash(str(a)) != manifest.model_hash(str(b))          # weights count
    c = _model_folder(tmp_path / "run3" / "model", weights, 1.0)
    (c / "unet" / "config.json").write_text(json.dumps({"_name_or_path": "elsewhere", "layers": 3}))
    assert manifest.model_hash(str(a)) != manifest.model_hash(str(c))          # configs count


# ---------------------------------------------------------------------------------- smaller edges
def test_malformed_sweep_yaml_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: params/smoke.yaml\ngrid: {seed: [0, 1]\n")
    with pytest.raises(config.ParamError, match="bad.yaml is not valid YAML"):
        sweep_spec.load(bad)
    assert sweeps.main([str(bad), "--dry-run"]) == 1 and "not valid YAML" in capsys.readouterr().err
    bad.write_text("base: params/smoke.yaml\ngrid: [0, 1]\n")
    with pytest.raises(config.ParamError, match="`grid:` in bad.yaml must be a mapping"):
        sweep_spec.load(bad)


def test_a_relative_path_not_found_says_it_is_resolved_from_the_project_root():
    with pytest.raises(config.ParamError, match="resolved from the project root"):
        config.load("no/such/params.yaml")
    with pytest.raises(config.ParamError, match="resolved from the project root"):
        sweep_spec.load("no/such/sweep.yaml")


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_artefacts_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        f = atomic.write_json(tmp_path / "a.json", {"x": 1})
        g = atomic.write_csv(tmp_path / "b.csv", pd.DataFrame({"x": [1]}))
    finally:
        os.umask(old)
    assert (f.stat().st_mode & 0o777, g.stat().st_mode & 0o777) == (mode, mode)
