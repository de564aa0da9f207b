"""Set-up files agree with each other."""
import re

import yaml

from lib.core import paths


def _pins(lines):
    return {re.split(r"==", l)[0].strip().lower().replace("_", "-"): l.split("==")[1].strip()
            for l in lines if "==" in l and not l.strip().startswith("#")}


def test_environment_yml_names_the_requirements():
    req = _pins((paths.ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((paths.ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == req
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"


def test_ci_calls_the_readme_test_command():
    readme = (paths.ROOT / "README.md").read_text()
    ci = (paths.ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert re.search(r"^make test$", ci, re.M)


def test_lib_has_no_machine_paths():
    for p in (paths.ROOT / "lib").rglob("*.py"):
        assert not re.search(r"/(work|tmp|root|home)/", p.read_text()), p


def test_make_test_uses_its_own_runs_root_and_deletes_nothing_else():
    # The notebooks' default parameters put interactive runs in runs/<experiment>; make test must leave them.
    import shutil
    import subprocess

    import pytest

    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    plan = subprocess.run(["make", "-n", "test"], cwd=paths.ROOT, capture_output=True,
                          text=True, check=True).stdout
    removed = [r for line in re.findall(r"rm -rf (.+)", plan) for r in line.split()]
    # runs/.test, and the browser test's own root beside it (tests/browser, issue 25)
    assert removed and all(r.strip('"').endswith(("/runs/.test", "/runs/.test-browser")) for r in removed), removed
    runs = [line for line in plan.splitlines() if "pytest" in line]
    assert len(runs) == 3 and all(f'SUITE_RUNS_ROOT="{paths.ROOT}/runs/.test"' in line for line in runs), runs


def test_notebooks_default_runs_root_follows_suite_runs_root(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.RUNS_ENV, raising=False)
    assert paths.runs_root() == paths.ROOT / "runs"
    monkeypatch.setenv(paths.RUNS_ENV, str(tmp_path / "elsewhere"))
    assert paths.runs_root() == tmp_path / "elsewhere"
    assert paths.runs_root("runs/mine") == paths.ROOT / "runs" / "mine"      # a given root wins
