"""Notebooks 03 and 06 in JupyterLab, in headless Chromium, as a person uses them (issue 25).

On finished smoke runs (opened through the notebooks' run_dir parameter) every cell runs, notebook 03's
threshold slider moves and notebook 06's explorer changes its selections. Asserted: no cell fails, every
figure and widget is shown once, the outputs follow the widgets, the explorer's redraw is the same picture
as the same subset drawn outside the notebook, and the browser console logs no error.
LAB_SCREENSHOTS=docs/screenshots writes the before/after screenshots there.
Skipped only where Chromium is absent (.ci/run installs Debian's chromium).
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

import lab_harness as lab

pytestmark = pytest.mark.skipif(not Path(lab.CHROMIUM).exists(),
                                reason=f"no Chromium at {lab.CHROMIUM}: apt-get install chromium (.ci/run does)")
WIDGET = "application/vnd.jupyter.widget-view+json"
SHOTS = os.environ.get("LAB_SCREENSHOTS")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    t0 = time.monotonic()
    root = lab.runs_root()
    runs = lab.finished_runs(root)
    t_runs = time.monotonic() - t0
    server = lab.Lab(root, tmp_path_factory.mktemp("lab"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=lab.CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        console = []
        messages = []
        page.on("console", lambda m: (messages.append(m.text), console.append(m.text) if m.type == "error" else None))
        page.on("pageerror", lambda e: console.append(str(e)))
        try:
            yield {"root": root, "runs": runs, "lab": server, "page": page, "console": console,
                   "messages": messages}
        finally:
            browser.close()
            server.close()
            print(f"\nbrowser test: smoke runs ready in {t_runs:.0f} s, all in {time.monotonic() - t0:.0f} s")


def _shot(page, locator, name: str) -> None:
    """With LAB_SCREENSHOTS: the notebook cell holding ``locator``, its input and every output."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        cell = page.locator(".jp-CodeCell", has=locator).last
        cell.scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        cell.screenshot(path=str(Path(SHOTS) / name))


def _shown_once(cells: list[dict]) -> None:
    for c in cells:
        for mime in ("image/png", WIDGET):
            kinds = lab.shown(c, mime)
            assert kinds in ([], ["display_data"]), f"{mime} shown as {kinds} by {c['source'][-80:]!r}"


def _wait_text(page, cell_index: int, old: str, timeout_s: float = 30) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        now = lab.text(lab.cell_outputs(page)[cell_index])
        if now != old:
            return now
        page.wait_for_timeout(200)
    raise AssertionError(f"the output stayed {old!r}")


def test_notebook_03_threshold_slider(session):
    from lib.core import config, stages
    from lib.viz import dreambooth as viz

    page, console = session["page"], session["console"]
    nb = lab.parameterized("03_dreambooth_active_gating.ipynb", session["root"] / "lab",
                           run_dir=str(session["runs"]["gated"]))
    cells = lab.open_and_run_all(page, session["lab"], nb, timeout_s=120)
    assert not lab.errors(cells), lab.errors(cells)
    _shown_once(cells)
    assert sum(bool(lab.shown(c, "image/png")) for c in cells) >= 4, "the figures did not draw"
    i = next(i for i, c in enumerate(cells) if "threshold_explorer" in c["source"])
    assert lab.shown(cells[i], WIDGET) == ["display_data"]
    assert "execute_result" not in [o["output_type"] for o in cells[i]["outputs"]], "the slider shows again as Out[]"
    before = lab.text(cells[i])
    assert before.count("would skip") == 1, before
    slider = page.locator(".widget-slider").first
    _shot(page, slider, "03_threshold_slider_before.png")

    cfg = config.load(session["runs"]["gated"] / "params.yaml")
    log = viz.read_logs(stages.stage_dir(cfg, "03_dreambooth", session["root"]))[1].dropna(subset=["score"])
    target = float(np.quantile(log["score"], 0.2))       # a threshold that skips most batches
    readout = slider.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(f"{target:.6f}")
    page.keyboard.press("Enter")
    after = _wait_text(page, i, before)
    _shot(page, slider, "03_threshold_slider_after.png")

    assert after.count("would skip") == 1, f"the line is shown more than once: {after!r}"
    m = re.search(r"threshold ([0-9.]+): would skip (\d+) of (\d+)", after)
    t, k, n = float(m[1]), int(m[2]), int(m[3])
    assert abs(t - target) < 0.02 * (log["score"].max() - log["score"].min()) + 1e-4, (t, target)
    offline = {int(viz.would_skip(log, t + d).sum()) for d in (-5e-5, 5e-5)}   # the line rounds t to 4 decimals
    assert k in offline and n == len(log), (after, offline)
    assert after != before
    assert not console, f"browser console errors: {console}"

    # saved, kernel shut down, reopened: the widget state saved with the notebook draws the slider as it was left
    page.evaluate("async () => { const nb = window.jupyterapp.shell.currentWidget;"
                  " await window.jupyterapp.commands.execute('docmanager:save'); await nb.sessionContext.shutdown(); }")
    assert json.loads(nb.read_text())["metadata"].get("widgets"), "no widget state saved with the notebook"
    page.goto(session["lab"].url(nb))
    page.wait_for_function("() => { const r = document.querySelector('.widget-slider .widget-readout');"
                           " return r && r.textContent.trim(); }", timeout=60_000)
    assert page.locator(".widget-slider .widget-readout").first.text_content().strip() == f"{t:.4f}"
    page.wait_for_timeout(1000)
    missing = [m for m in session["messages"] if "not found" in m.lower()]
    assert not missing and not console, f"reopened: {missing} {console}"


def _png(src: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"), dtype=np.int16)


def _offline_plane(s, methods, sizes, settings) -> np.ndarray:
    """The same subset drawn outside the notebook, rendered as the inline backend renders a displayed figure."""
    import matplotlib.pyplot as plt
    from IPython.core.pylabtools import print_figure
    from lib.viz import analysis

    keep = s["method"].isin(methods) & s["tuning_size"].isin(sizes) & s["setting"].isin(settings)
    fig = analysis.tgap_plane(s[keep])
    png = print_figure(fig, "png", bbox_inches="tight")
    plt.close(fig)
    return _png("data:image/png;base64," + base64.b64encode(png).decode())


def test_notebook_06_explorer(session):
    page, console = session["page"], session["console"]
    n_boot = 50
    nb = lab.parameterized("06_fter_analysis.ipynb", session["root"] / "lab", run_dir=str(session["runs"]["plain"]),
                           n_boot=n_boot)
    cells = lab.open_and_run_all(page, session["lab"], nb, timeout_s=240)
    assert not lab.errors(cells), lab.errors(cells)
    _shown_once(cells)
    assert sum(bool(lab.shown(c, WIDGET)) for c in cells) == 1, "the explorer is not shown exactly once"

    selects = page.locator(".widget-select-multiple select")
    assert selects.count() == 3
    methods, sizes, settings = (selects.nth(j) for j in range(3))
    labels = {name: [o.replace("\xa0", " ").strip() for o in sel.locator("option").all_inner_texts()]
              for name, sel in (("methods", methods), ("sizes", sizes), ("settings", settings))}
    assert "" not in labels["settings"] and "0" not in labels["sizes"], labels
    assert len(labels["methods"]) >= 2 and len(labels["sizes"]) >= 2, labels
    image = page.locator(".widget-output img")
    _shot(page, selects.first, "06_explorer_before.png")

    from lib.analyze import aggregate, collection
    summary = aggregate.summary(collection.collect(session["root"] / "smoke"), n_boot)
    size_of = {("reference (none)" if n == 0 else f"{n} per label"): n for n in summary["tuning_size"].unique()}
    setting_of = {(st or "ungated"): st for st in summary["setting"].unique()}
    chosen = dict(labels)

    def choose(name: str, select, picked: list[str]) -> None:
        """Change one selection, wait for the plane to be redrawn, compare it with the subset drawn offline."""
        old = image.first.get_attribute("src")
        select.select_option(label=picked)
        chosen[name] = picked
        page.wait_for_function("(old) => { const i = document.querySelector('.widget-output img');"
                               " return i && i.src !== old; }", arg=old, timeout=30_000)
        page.wait_for_timeout(300)
        assert image.count() == 1, f"{image.count()} planes in the explorer"
        drawn = _png(image.first.get_attribute("src"))
        expected = _offline_plane(summary, chosen["methods"], [size_of[x] for x in chosen["sizes"]],
                                  [setting_of[x] for x in chosen["settings"]])
        assert drawn.shape == expected.shape and np.abs(drawn - expected).mean() < 1.0, \
            f"after choosing {name} = {picked}, the plane differs from the same subset drawn offline"

    # every redraw after a change of the methods selection (issue 25: only iso-lines and a few ticks), then the sizes
    choose("methods", methods, labels["methods"][:1])
    choose("methods", methods, labels["methods"][1:2])
    choose("methods", methods, labels["methods"])
    choose("sizes", sizes, labels["sizes"][-1:])
    _shot(page, image.first, "06_explorer_after.png")
    assert not console, f"browser console errors: {console}"
