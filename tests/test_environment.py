"""Set-up files agree with each other."""
import re

import yaml

from lib import paths


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
