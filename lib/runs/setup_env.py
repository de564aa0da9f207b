"""What `make setup` does after installing the packages, for any Python environment (conda users):

    conda env create -f environment.yml && conda activate synth-trainability
    python -m lib.runs.setup_env            # from the project root

It makes ``lib`` importable from anywhere in the environment (a .pth file in its site-packages naming the
project root) and registers the environment's Python as the Jupyter kernel the notebooks and nbval use
("synth-suite"), both inside the environment's prefix, so nothing outside it changes. Running it again
rewrites the same two files.
"""
from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

from ..core import atomic, paths

KERNEL = "synth-suite"
DISPLAY_NAME = "Python (synth-suite)"
PTH = "synth_suite.pth"


def site_packages(prefix: str | Path | None = None) -> Path:
    """The environment's site-packages (purelib) under ``prefix`` (None: the running Python's)."""
    if prefix is None:
        return Path(sysconfig.get_paths()["purelib"])
    prefix = str(Path(prefix).resolve())
    return Path(sysconfig.get_paths(vars={"base": prefix, "platbase": prefix, "installed_base": prefix,
                                          "installed_platbase": prefix})["purelib"])


def write_pth(prefix: str | Path | None = None, root: Path = paths.ROOT) -> Path:
    """A .pth file naming the project root: Python adds it to sys.path at start, so ``import lib`` works."""
    target = site_packages(prefix) / PTH
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_text(target, f"{Path(root).resolve()}\n")


def install_kernel(prefix: str | Path | None = None, name: str = KERNEL) -> Path:
    """The running Python as Jupyter kernel ``name``, in <prefix>/share/jupyter/kernels (None: sys.prefix)."""
    from ipykernel.kernelspec import install

    where = install(kernel_name=name, display_name=DISPLAY_NAME, prefix=str(prefix or sys.prefix))
    return Path(where)


# JupyterLab saves each widget's state with the notebook: reopened, the slider and the explorer draw as they were
# left instead of "widget model not found" (issue 25). Lab reads it from <prefix>/share/jupyter/lab/settings.
LAB_SETTINGS = {"@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": True}}


def write_lab_settings(prefix: str | Path | None = None) -> Path:
    """JupyterLab's settings overrides for this environment (merged into an existing overrides.json)."""
    import json

    target = Path(prefix or sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    current = json.loads(target.read_text()) if target.exists() else {}
    for plugin, values in LAB_SETTINGS.items():
        current[plugin] = {**current.get(plugin, {}), **values}
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_text(target, json.dumps(current, indent=2) + "\n")


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    ap = argparse.ArgumentParser(description="Make lib importable and register the synth-suite kernel "
                                             "in this Python environment (what `make setup` does after pip).")
    ap.add_argument("--prefix", help="environment prefix to write into (default: the running Python's, sys.prefix)")
    ap.add_argument("--name", default=KERNEL, help=f"kernel name (default {KERNEL}; the notebooks' tests use it)")
    args = ap.parse_args(argv)
    pth, kernel = write_pth(args.prefix), install_kernel(args.prefix, args.name)
    lab = write_lab_settings(args.prefix)
    print(f"lib importable: {pth} -> {paths.ROOT}\nkernel {args.name!r}: {kernel}\nJupyterLab settings: {lab}")
    return pth, kernel


if __name__ == "__main__":
    main()
