"""JupyterLab in headless Chromium for the browser test: the smoke runs it opens, the server, the page.

The runs live in a runs root of their own (``<SUITE_RUNS_ROOT>-browser``). When the notebooks' nbval run
of ``make test`` has filled SUITE_RUNS_ROOT, its finished stage folders (curation, clustering and the
ungated spectral-CLIP point) are copied in first, so only the gated point's training and one reference
generator run.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from lib.core import paths

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# The points and the stage each runs through: the gated run's training (03's slider needs gate scores), and for
# 06's explorer nbval's own point (reused from its copied stages) and a reference generator (a second method,
# tuning size 0). label-shuffled needs more synthetic images than classifier.n_train_per_class (40) and at most
# the 42 the smoke pool holds of its smaller class.
POINTS = {"gated": (["gating.enabled=true"], "03_dreambooth"), "plain": ([], "05_classifier"),
          "reference": (["generation.kind=label-shuffled", "generation.n_per_label=42"], "05_classifier")}


def runs_root() -> Path:
    base = paths.runs_root()
    return base.with_name(base.name + "-browser")


def finished_runs(root: Path) -> dict[str, Path]:
    """Make (or find, when finished) the smoke points under ``root``: {name: run folder}."""
    seed_from(paths.runs_root() / "smoke" / "stages", root / "smoke" / "stages")
    with ThreadPoolExecutor(len(POINTS)) as pool:     # two cores: the points in parallel, stage locks keep order
        done = dict(zip(POINTS, pool.map(lambda point: _run(root, *point), POINTS.values())))
    return done


def seed_from(src: Path, dst: Path) -> None:
    """Copy nbval's finished stage folders (01-05): the runner reuses a sealed folder of the same key."""
    if not src.is_dir():
        return
    for d in sorted(src.iterdir()):
        if d.is_dir() and d.name[:3] in {"01_", "02_", "03_", "04_", "05_"} and (d / "DONE.json").exists() \
                and not (dst / d.name).exists():
            shutil.copytree(d, dst / d.name, ignore=shutil.ignore_patterns("*.lock"))


def _run(root: Path, sets: list[str], until: str) -> Path:
    args = [sys.executable, "-m", "lib.runs.runner", "params/smoke.yaml", "--runs-root", str(root),
            "--until", until] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(args, cwd=paths.ROOT, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    from lib.runs import runner
    from lib.core import overrides

    return runner.prepare("params/smoke.yaml", overrides.parse_sets(sets), root, create=False).directory


def parameterized(notebook: str, dest: Path, **params) -> Path:
    """The committed notebook with its parameters injected (as papermill does), for the browser to open."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(paths.ROOT / "notebooks" / notebook)), params)
    for i, cell in enumerate(nb.cells):
        cell.setdefault("id", f"injected-{i}")      # papermill's injected cell has none
    dest.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest / notebook)
    return dest / notebook


class Lab:
    """``jupyter lab`` on a free localhost port, from this environment, with its own settings and workspaces."""

    def __init__(self, root: Path, scratch: Path):
        self.token, self.port = secrets.token_hex(16), _free_port()
        env = {**os.environ, "SUITE_RUNS_ROOT": str(root), "JUPYTERLAB_SETTINGS_DIR": str(scratch / "settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(scratch / "workspaces"), "TQDM_DISABLE": "1"}
        env.pop("SUITE_BATCH", None)
        news = scratch / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        news.parent.mkdir(parents=True, exist_ok=True)
        news.write_text('{"fetchNews": "false", "checkForUpdates": false}')   # no pop-up asking to fetch news
        self.log = open(scratch / "lab.log", "w")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--allow-root",
             f"--port={self.port}", "--ip=127.0.0.1", f"--ServerApp.token={self.token}",
             f"--ServerApp.root_dir={paths.ROOT}", "--LabApp.expose_app_in_browser=True",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--ContentsManager.allow_hidden=True"],   # the tests' runs roots are hidden folders (runs/.test*)
            cwd=paths.ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait()

    def url(self, notebook: Path) -> str:
        return f"http://127.0.0.1:{self.port}/lab/tree/{notebook.relative_to(paths.ROOT)}?token={self.token}&reset"

    def _wait(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                log = Path(self.log.name).read_text()[-2000:]
                raise RuntimeError(f"jupyter lab exited ({self.proc.returncode}): {log}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status?token={self.token}", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"jupyter lab did not answer in {timeout} s: {Path(self.log.name).read_text()[-2000:]}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- in the page
RUN_ALL = """async () => {
  const nb = window.jupyterapp.shell.currentWidget;
  await nb.context.ready; await nb.sessionContext.ready;
  await window.jupyterapp.commands.execute('notebook:run-all-cells');
}"""
DONE = """() => {
  const nb = window.jupyterapp.shell.currentWidget;
  const k = nb.sessionContext.session && nb.sessionContext.session.kernel;
  const cells = nb.content.widgets.filter(c => c.model.type === 'code');
  return !!k && k.status === 'idle' && cells.every(c => c.model.executionCount !== null);
}"""
OUTPUTS = """() => window.jupyterapp.shell.currentWidget.content.widgets
  .filter(c => c.model.type === 'code')
  .map(c => ({source: c.model.sharedModel.getSource(), outputs: c.model.outputs.toJSON()}))"""


def open_and_run_all(page, lab: Lab, notebook: Path, timeout_s: float) -> list[dict]:
    """Open the notebook, run every cell, wait for the kernel to finish: each code cell's source and outputs."""
    page.goto(lab.url(notebook))
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget && "
                           "window.jupyterapp.shell.currentWidget.content", timeout=60_000)
    page.evaluate(RUN_ALL)
    page.wait_for_function(DONE, timeout=timeout_s * 1000, polling=500)
    return page.evaluate(OUTPUTS)


def cell_outputs(page) -> list[dict]:
    return page.evaluate(OUTPUTS)


def errors(cells: list[dict]) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')} in {c['source'][:60]!r}"
            for c in cells for o in c["outputs"] if o["output_type"] == "error"]


def shown(cell: dict, mime: str) -> list[str]:
    """The output types of a cell's outputs carrying ``mime`` (image/png, the widget view)."""
    return [o["output_type"] for o in cell["outputs"] if mime in o.get("data", {})]


def text(cell: dict) -> str:
    return "".join(o.get("text", "") if o["output_type"] == "stream" else o.get("data", {}).get("text/plain", "")
                   for o in cell["outputs"])
