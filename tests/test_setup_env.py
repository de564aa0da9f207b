"""python -m lib.runs.setup_env (conda users' `make setup`): the .pth file and the kernel spec, in a given prefix."""
import json
import subprocess
import sys

from lib.core import paths
from lib.runs import setup_env


def test_writes_the_pth_and_the_kernel_into_the_given_prefix(tmp_path):
    prefix = tmp_path / "env"
    pth, kernel = setup_env.main(["--prefix", str(prefix)])
    assert pth == setup_env.site_packages(prefix) / "synth_suite.pth" and prefix in pth.parents
    assert pth.read_text().strip() == str(paths.ROOT)
    spec = json.loads((kernel / "kernel.json").read_text())
    assert kernel == prefix / "share" / "jupyter" / "kernels" / "synth-suite"
    assert spec["display_name"] == "Python (synth-suite)" and spec["argv"][0] == sys.executable
    assert "ipykernel_launcher" in spec["argv"]
    # Again: the same two files, rewritten in place.
    assert setup_env.main(["--prefix", str(prefix)]) == (pth, kernel)
    assert [p.name for p in pth.parent.iterdir()] == ["synth_suite.pth"]


def test_the_pth_makes_lib_importable_from_elsewhere(tmp_path):
    pth = setup_env.write_pth(tmp_path / "env")
    # -S: no site-packages of this interpreter (whose own .pth names the project too); only the new one's.
    code = f"import site, sys; site.addsitedir({str(pth.parent)!r}); import lib.core.paths; print(lib.core.paths.ROOT)"
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(paths.ROOT)
    bare = subprocess.run([sys.executable, "-S", "-c", "import lib"], cwd=tmp_path, capture_output=True, text=True)
    assert bare.returncode != 0       # without the .pth, lib is not importable from there


def test_default_prefix_is_the_running_environment():
    assert setup_env.site_packages() == setup_env.site_packages(sys.prefix)


def test_readme_documents_it_and_make_setup_uses_it():
    assert "python -m lib.runs.setup_env" in (paths.ROOT / "README.md").read_text()
    assert "-m lib.runs.setup_env" in (paths.ROOT / "Makefile").read_text()
