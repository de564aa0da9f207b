"""Issue 25's figure items 05/07/08, on small hand-made tables (no training): the confusion counts are readable
on dark and light cells and panel (b) keeps clear of panel (a); notebook 07's figures draw diffusion methods and
references as separate groups and say whether their bars are CIs (over what) or s.d.; 08's caption does not call
the diagonal a bound when other cells beat it."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import standins

from lib.core import style


def _texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(plt.Text))


# ------------------------------------------------------------------------------------------- 05
def test_confusion_counts_take_the_ink_their_cell_needs_and_panel_b_keeps_clear_of_a(tmp_path):
    from lib.viz import evaluation as viz

    row = {"method": "random", "a_auroc": 0.6, "b_auroc": 0.9, "a_collapsed": False, "b_collapsed": False,
           "a_support[No Finding]": 289, "a_support[Unhealthy]": 211}
    for k, cm in (("a", [[289, 0], [204, 7]]), ("b", [[44, 56], [0, 100]])):
        for (i, j), v in np.ndenumerate(cm):
            row[f"{k}_cm[{standins.LABELS[i]}->{standins.LABELS[j]}]"] = v
    pred = standins.fake_predictions(60, 1.0, 0)
    fig = viz.roc_and_confusion(pred, pred, row, tmp_path)
    a, b = fig.axes[1], fig.axes[2]
    ink = {t.get_text(): t.get_color() for t in a.texts}
    assert ink["289"] == "white" and ink["0"] == "black"           # darkest and lightest cell of (a)
    assert {t.get_text(): t.get_color() for t in b.texts}["100"] == "white"
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    assert b.get_tightbbox(r).x0 > a.get_window_extent(r).x1      # nothing of (b) reaches into (a)
    assert a.get_ylabel() == "true" and b.get_ylabel() == ""
    assert style.ink((0.03, 0.19, 0.42)) == "white" and style.ink((0.97, 0.98, 1.0)) == "black"


# ------------------------------------------------------------------------------------------- 07
def _diffs(gens):
    rows = [{"generator": g, "metric": "accuracy", "n_seeds": 3, "arm": f"{'oversampled' if g == 'oversampling' else 'synthetic'}+{n}",
             "diff_pp": 1.0, "ci_low_pp": -1.0, "ci_high_pp": 3.0} for g in gens for n in (25, 50)]
    d = pd.DataFrame(rows)
    return d, d.assign(n_synthetic=[0 if a.startswith("over") else int(a.split("+")[1]) for a in d["arm"]],
                       n_copies=[int(a.split("+")[1]) if a.startswith("over") else 0 for a in d["arm"]])


def test_brackets_draw_methods_and_references_as_groups_and_name_their_interval(tmp_path):
    from lib.viz import mixing as viz

    fig = viz.brackets(*_diffs(["real-holdout", "random", "active-gating", "oversampling"]), tmp_path)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    lines = {label: h[0] for h, label in zip(handles, labels)}          # an errorbar container's data line
    assert list(lines) == ["random", "active-gating", "[ref.] real-holdout", "random oversampling (real)"]
    assert lines["random"].get_linestyle() == "-" and lines["[ref.] real-holdout"].get_linestyle() == ":"
    text = _texts(fig)
    assert "95% CI" in text and "two-level bootstrap (seeds, then the same real test images)" in text
    assert "3 seeds" in text and "2 diffusion method(s), 1 reference generator(s)" in text
    only_refs = viz.brackets(*_diffs(["real-holdout", "label-shuffled", "oversampling"]), tmp_path)
    assert "references only: no diffusion method" in _texts(only_refs)


def test_ratios_say_their_bars_are_standard_deviations_not_cis(tmp_path):
    from lib.viz import mixing as viz

    t = pd.DataFrame([{"generator": g, "synthetic_share": s, "n_seeds": 2, "accuracy_mean": 0.8, "accuracy_sd": 0.02,
                       "auroc_mean": 0.9, "auroc_sd": 0.01} for g in ("real", "random", "label-shuffled")
                      for s in ((0.0,) if g == "real" else (0.0, 0.5))])
    text = _texts(viz.ratios(t, tmp_path))
    assert "± 1 s.d. over 2 seeds" in text and "not a CI" in text
    assert "1 diffusion method(s), 1 reference generator(s)" in text


# ------------------------------------------------------------------------------------------- 08
def test_the_source_target_caption_never_calls_the_diagonal_a_bound(tmp_path):
    from lib.analyze import transfer
    from lib.viz import transfer as viz

    auroc = {("real", "real"): 0.86, ("real", "spectral-clip"): 0.91,        # the demo's cells: an off-diagonal
             ("spectral-clip", "real"): 0.76, ("spectral-clip", "spectral-clip"): 0.98}   # cell above its diagonal
    t = pd.DataFrame([{"source": s, "target": g, "diagonal": s == g, "n_train": 340, "n_test": 200, "n_excluded": 0,
                       "auroc": v, "auroc_ci_low": v - 0.04, "auroc_ci_high": v + 0.04, "balanced_accuracy": v - 0.05,
                       "balanced_accuracy_ci_low": v - 0.1, "balanced_accuracy_ci_high": v, "collapsed": False,
                       "predicted_class": ""} for (s, g), v in auroc.items()])
    assert viz.above_diagonal(t, "auroc") == (1, 2)
    text = _texts(viz.heatmap(t, tmp_path))
    assert "upper bound" not in text and "it is not a bound" in text and "AUROC 1 of 2" in text
    assert "upper bound" not in " ".join(transfer.display_table(t)["within set"])
