"""Fidelity metrics (lib/evaluate/fidelity_metrics.py, the table of lib/evaluate/fidelity.py) and feature extractors (lib/evaluate/features.py), checked against independent
computations: scipy's sqrtm, torchmetrics' MMD, brute-force k-NN balls, known distributions."""
import json

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from PIL import Image

from fidelity_fixtures import fidelity_cfg, phantom_set
from lib.evaluate import features, fidelity, fidelity_metrics
from lib.data import images
from lib.core.config import FidelityConfig
from lib.evaluate.fidelity_metrics import TooFewImages


def gaussian(n, d, seed, shift=0.0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((n, d)) * scale + shift).astype(np.float32)


# ----------------------------------------------------------------------------------------------- FID
def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise():
    x = gaussian(600, 12, 0)
    assert fidelity_metrics.fid(x, x) < 1e-8
    noise = gaussian(600, 12, 1)
    values = [fidelity_metrics.fid(x, x + s * noise) for s in (0.05, 0.2, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[0] < 0.05 < values[-1]


def test_fid_equals_the_scipy_sqrtm_formula_and_the_gaussian_closed_form():
    a, b = gaussian(500, 10, 0), gaussian(400, 10, 1, shift=0.3, scale=1.5)
    mu1, c1 = np.mean(a, 0, dtype=np.float64), np.cov(a.astype(np.float64), rowvar=False)
    mu2, c2 = np.mean(b, 0, dtype=np.float64), np.cov(b.astype(np.float64), rowvar=False)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
    assert fidelity_metrics.fid(a, b) == pytest.approx(direct, rel=1e-6)
    # N(0, I) against N(0.3, 1.5^2 I) in 10 dims: 10 * 0.09 + 10 * (1.5 - 1)^2 = 3.4, up to sampling error
    big = fidelity_metrics.fid(gaussian(20000, 10, 2), gaussian(20000, 10, 3, shift=0.3, scale=1.5))
    assert big == pytest.approx(3.4, abs=0.1)


def test_fid_on_principal_components_needs_fewer_images():
    real, fake = gaussian(40, 64, 0), gaussian(40, 64, 1, shift=0.5)
    with pytest.raises(TooFewImages, match="fid_dims"):
        fidelity_metrics.fid(real, fake)
    assert fidelity_metrics.fid(real, fake, dims=8) > fidelity_metrics.fid(real, gaussian(40, 64, 2), dims=8)


# ----------------------------------------------------------------------------------------------- KID
def slow_mmd2(x, y, wx=None, wy=None):
    """Unbiased MMD^2 by explicit loops over positions of the multisets, pairs of one image left out."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = x.shape[1]
    px = np.repeat(np.arange(len(x)), np.ones(len(x), int) if wx is None else wx.astype(int))
    py = np.repeat(np.arange(len(y)), np.ones(len(y), int) if wy is None else wy.astype(int))

    def k(a, b):
        return (a @ b / d + 1) ** 3

    def within(z, pos):
        vals = [k(z[i], z[j]) for i in pos for j in pos if i != j]
        return sum(vals) / len(vals)

    cross = np.mean([k(x[i], y[j]) for i in px for j in py])
    return within(x, px) + within(y, py) - 2 * cross


def test_kid_matches_a_direct_slow_computation_and_torchmetrics():
    from torchmetrics.image.kid import poly_mmd

    x, y = gaussian(14, 5, 0), gaussian(14, 5, 1, shift=0.4)
    full = fidelity_metrics.mmd2_rows(x, y, np.ones((1, 14)), np.ones((1, 14)))[0]
    assert full == pytest.approx(slow_mmd2(x, y), rel=1e-5)
    assert full == pytest.approx(float(poly_mmd(torch.from_numpy(x).double(), torch.from_numpy(y).double())), rel=1e-5)
    # the subset estimator with one subset of every image is the full-set statistic
    assert fidelity_metrics.kid(x, y, subset_size=14, n_subsets=1)[0] == pytest.approx(full, rel=1e-6)
    # rows of a resample (duplicates) against the explicit multiset; unequal sizes too
    rng = np.random.default_rng(0)
    wx, wy = rng.multinomial(14, np.full(14, 1 / 14), 2), rng.multinomial(10, np.full(14, 1 / 14), 2)
    got = fidelity_metrics.mmd2_rows(x, y, wx, wy)
    assert got == pytest.approx([slow_mmd2(x, y, wx[i], wy[i]) for i in range(2)], rel=1e-5)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    base = gaussian(400, 8, 0)
    same = fidelity_metrics.kid(base, gaussian(400, 8, 1), 100, 20)[0]
    shifted = [fidelity_metrics.kid(base, gaussian(400, 8, 1, shift=s), 100, 20)[0] for s in (0.3, 1.0)]
    assert abs(same) < 0.05 and same < shifted[0] < shifted[1]


# ---------------------------------------------------------------------- precision, recall, density, coverage
def brute_prdc(real, fake, k):
    """Naeem et al. 2020, straight from the definitions with scipy's full distance matrices."""
    from scipy.spatial.distance import cdist

    rr, ff, rf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    r_real, r_fake = np.sort(rr, 1)[:, k], np.sort(ff, 1)[:, k]
    inside = rf <= r_real[:, None]                       # real i's ball holds fake j
    return {"precision": inside.any(0).mean(), "recall": (rf <= r_fake[None, :]).any(1).mean(),
            "density": inside.sum(0).mean() / k, "coverage": (rf.min(1) <= r_real).mean()}


def test_prdc_matches_the_brute_force_definitions():
    real, fake = gaussian(300, 4, 0), gaussian(250, 4, 1, shift=0.5, scale=1.2)
    got, want = fidelity_metrics.prdc(real, fake, 5), brute_prdc(real, fake, 5)
    assert got == pytest.approx(want, abs=1e-9)


def test_precision_and_recall_on_known_distributions():
    rng = np.random.default_rng(0)
    box = lambda n, x0, x1: np.column_stack([rng.uniform(x0, x1, n), rng.uniform(0, 1, n)])  # noqa: E731
    # a subset: fakes fill half of the real support (mode dropping) -> precision 1, recall and coverage 1/2
    sub = fidelity_metrics.prdc(box(3000, 0, 2), box(1500, 0, 1), 5)
    assert sub["precision"] > 0.97 and sub["recall"] == pytest.approx(0.5, abs=0.05)
    assert sub["coverage"] == pytest.approx(0.5, abs=0.05)
    # half overlap: both 1/2
    half = fidelity_metrics.prdc(box(2000, 0, 1), box(2000, 0.5, 1.5), 5)
    assert half["precision"] == pytest.approx(0.5, abs=0.05) and half["recall"] == pytest.approx(0.5, abs=0.05)
    # one Gaussian: density about 1, coverage about 1 - 2^-k (Naeem et al.); disjoint: all zero
    same = fidelity_metrics.prdc(gaussian(3000, 2, 1), gaussian(3000, 2, 2), 5)
    assert same["density"] == pytest.approx(1.0, abs=0.1) and same["coverage"] == pytest.approx(1 - 2 ** -5, abs=0.02)
    apart = fidelity_metrics.prdc(gaussian(500, 2, 1), gaussian(500, 2, 2, shift=20.0), 5)
    assert apart == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


# ------------------------------------------------------------------------------------------ diversity
def test_diversity_uses_ssim_below_the_ms_ssim_size_and_ranks_sets():
    assert fidelity_metrics.ssim_measure(175) == "ssim" and fidelity_metrics.ssim_measure(176) == "ms-ssim"
    with pytest.raises(TooFewImages, match="11 px"):
        fidelity_metrics.ssim_measure(8)
    rng = np.random.default_rng(0)
    noise = rng.random((20, 32, 32)).astype(np.float32)
    labels = ["a"] * 10 + ["b"] * 10
    collapsed = np.repeat(noise[:1], 20, axis=0)
    assert fidelity_metrics.pair_scores(collapsed, labels, 20)["score"].to_numpy() == pytest.approx(1.0)
    varied = fidelity_metrics.pair_scores(noise, labels, 20)
    assert (varied["i"] != varied["j"]).all() and varied["score"].mean() < 0.2 and set(varied["measure"]) == {"ssim"}
    big = fidelity_metrics.pair_scores(rng.random((4, 176, 176)).astype(np.float32), ["a"] * 4, 3)
    assert set(big["measure"]) == {"ms-ssim"} and np.isfinite(big["score"]).all()


# ------------------------------------------------------------------------------------------ the table
def test_evaluate_gives_every_metric_per_class_with_cis_and_no_nan():
    labels = np.repeat(["No Finding", "Unhealthy"], 60)
    real, fake = gaussian(120, 6, 0), gaussian(120, 6, 1, shift=0.3)
    f = FidelityConfig(kid_subset_size=30, kid_subsets=10, kid_bootstrap_subsets=3, bootstrap=30)
    table = fidelity.evaluate(real, fake, labels, labels, f, seed=0)
    assert set(table["group"]) == {"No Finding", "Unhealthy", "all"}
    assert set(table["metric"]) == {"fid", "kid", "precision", "recall", "density", "coverage"}
    assert len(table) == 18 and np.isfinite(table[["value", "ci_low", "ci_high"]].to_numpy()).all()
    assert (table["ci_low"] <= table["value"] + 1e-12).all() and (table["value"] <= table["ci_high"] + 1e-12).all()
    again = fidelity.evaluate(real, fake, labels, labels, f, seed=0)
    pd.testing.assert_frame_equal(table, again)                      # seeded: the same table
    fid_unhealthy = table.query("metric == 'fid' and group == 'Unhealthy'")["value"].item()
    assert fidelity.flat(table)["fidelity.fid.Unhealthy"] == fid_unhealthy


def test_too_few_images_raise_clear_errors_never_nan():
    f = FidelityConfig(kid_subset_size=50, bootstrap=5)
    labels = np.repeat(["a", "b"], 20)
    with pytest.raises(TooFewImages, match="kid_subset_size"):            # subset larger than a class
        fidelity.evaluate(gaussian(40, 3, 0), gaussian(40, 3, 1), labels, labels, f)
    with pytest.raises(TooFewImages, match="more than the 8 feature dimensions"):
        fidelity_metrics.fid(gaussian(8, 8, 0), gaussian(30, 8, 1))
    with pytest.raises(TooFewImages, match="prdc_k"):
        fidelity_metrics.prdc(gaussian(5, 2, 0), gaussian(30, 2, 1), k=5)
    with pytest.raises(TooFewImages, match="kid_subset_size"):
        fidelity_metrics.kid(gaussian(10, 2, 0), gaussian(30, 2, 1), subset_size=20)
    with pytest.raises(TooFewImages, match="class 'b'"):
        fidelity_metrics.pair_scores(np.zeros((3, 16, 16)), ["a", "a", "b"], 4)


# ---------------------------------------------------------------------------------------- extractors
def test_resize_rule_matches_reading_the_png(tmp_path):
    arr = np.random.default_rng(0).random((1, 40, 40)).astype(np.float32)
    path = tmp_path / "im.png"
    Image.fromarray(np.round(arr[0] * 255).astype(np.uint8)).save(path)
    np.testing.assert_array_equal(features.resize(arr, 24)[0], images.load_gray(path, 24))


def test_classifier_features_are_the_penultimate_layer(tmp_path):
    from lib.evaluate.classifier import CheXNet

    torch.manual_seed(0)
    model = CheXNet("densenet-mini", "none", 2).eval()
    torch.save(model.state_dict(), tmp_path / "classifier_real.pt")
    cfg = fidelity_cfg(tmp_path, **{"fidelity.extractor": "classifier", "classifier.arch": "densenet-mini"})
    ex = features.extractor(cfg, classifier_weights=tmp_path / "classifier_real.pt")
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    f = ex.embed(x)
    assert f.shape == (4, model.net.classifier.in_features) and ex.input_size == cfg.classifier.input_size
    with torch.no_grad():
        np.testing.assert_allclose(model.net.classifier(torch.from_numpy(f)).numpy(), model(x).numpy(), atol=1e-5)


def test_missing_weights_errors_name_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = fidelity_cfg(tmp_path, **{"fidelity.extractor": "inception"})
    with pytest.raises(features.FeatureUnavailable) as err:
        features.extractor(cfg)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert features.INCEPTION_FILE in str(err.value) and str(folder) in str(err.value)
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:             # the file is there but the package is not: say which package
        target = folder / features.INCEPTION_FILE
        target.parent.mkdir(parents=True)
        target.write_bytes(b"not really weights")
        with pytest.raises(features.FeatureUnavailable, match="pip install torch-fidelity"):
            features.extractor(cfg)
    with pytest.raises(features.FeatureUnavailable, match="classifier_real.pt"):
        features.extractor(fidelity_cfg(tmp_path), "classifier", classifier_weights=tmp_path / "nowhere.pt")
    import torchxrayvision as xrv

    monkeypatch.setattr(xrv.utils, "get_cache_dir", lambda: str(tmp_path / "xrv") + "/")
    with pytest.raises(features.FeatureUnavailable) as err:
        features.extractor(fidelity_cfg(tmp_path, **{"embedding.xrv_weights": "densenet121-res224-all"}), "xrv")
    assert str(tmp_path / "xrv") in str(err.value) and ".pt" in str(err.value)


# ------------------------------------------------------------------------- saved features, whole run
def test_every_metric_recomputes_from_the_saved_features(tmp_path):
    cfg = fidelity_cfg(tmp_path)
    sets = {k: phantom_set(tmp_path / k, k, n) for k, n in (("real", 30), ("synthetic", 30), ("tuning", 10),
                                                               ("holdout", 20))}
    record = fidelity.run(cfg, tmp_path, sets["synthetic"], sets["real"], sets["tuning"], sets["holdout"],
                          figures_dir=tmp_path / "fig", figure_name="06_memorization_test")
    table = pd.read_csv(tmp_path / "fidelity.csv", keep_default_na=False)
    assert {"fid", "kid", "precision", "recall", "density", "coverage", "diversity_synthetic",
            "diversity_real"} == set(table["metric"]) and np.isfinite(table["value"]).all()
    again, (per_image, info, summary) = fidelity.recompute(tmp_path, cfg)
    np.testing.assert_allclose(again[["value", "ci_low", "ci_high"]].to_numpy(),
                               table[["value", "ci_low", "ci_high"]].to_numpy(), rtol=1e-12)
    saved = pd.read_csv(tmp_path / "memorization.csv")
    np.testing.assert_allclose(per_image["d_tuning"], saved["d_tuning"], rtol=1e-12)
    assert json.loads((tmp_path / "memorization.json").read_text())["threshold"] == pytest.approx(info["threshold"])
    assert record["memorization.copy_fraction"] == 0.0 and record["fidelity.extractor"].startswith("pixel-")
    assert (tmp_path / "fig" / "06_memorization_test.png").exists()
    stats = {}
    features.extract(sets["real"], cfg, stats=stats)            # cached by content hash
    assert stats["computed"] == 0 and stats["cached"] == len(sets["real"])


# ------------------------------------------------------------------------------ fine-tuning trace
def test_validation_trace_is_the_unbiased_kid_against_the_tuning_features(tmp_path):
    cfg = fidelity_cfg(tmp_path)
    ex = features.extractor(cfg, "pixel")
    rng = np.random.default_rng(0)
    stack = (rng.random((2, 3, 32, 32)) * 255).astype(np.uint8)
    ref = {"No Finding": gaussian(6, 64, 1, 0.5, 0.2), "Unhealthy": gaussian(5, 64, 2, 0.5, 0.2)}
    trace = fidelity.validation_trace(stack, ["No Finding", "Unhealthy"], ref, ex)
    val = features.embed_array(ex, stack[1])
    assert trace["groups"]["Unhealthy"]["kid"] == pytest.approx(slow_mmd2(ref["Unhealthy"], val), rel=1e-4)
    assert trace["groups"]["all"]["n_val"] == 6 and trace["features"] == ex.key
    (tmp_path / "validation").mkdir()
    meta = {"step": 10, "model": "model", "trace": trace}
    (tmp_path / "validation" / "step_000010.json").write_text(json.dumps(meta))
    log = fidelity.trace_log(tmp_path / "validation")
    assert sorted(log["group"]) == ["No Finding", "Unhealthy", "all"] and (log["step"] == 10).all()


def test_loss_figure_draws_the_trace_next_to_the_loss(tmp_path):
    from lib.viz import dreambooth as viz

    pd.DataFrame({"model": "model", "step": range(6), "loss": np.linspace(1, 0.5, 6), "loss_prior": 0.0,
                  "lr": 1e-3, "train_seconds": 0.1}).to_csv(tmp_path / "loss_log.csv", index=False)
    pd.DataFrame(columns=["model", "step", "score", "threshold", "skipped", "generated", "seconds"]).to_csv(
        tmp_path / "gating_log.csv", index=False)
    (tmp_path / "train_summary.json").write_text("{}")
    pd.DataFrame({"model": "model", "step": [0, 3, 6, 0, 3, 6], "group": ["all"] * 3 + ["Unhealthy"] * 3,
                  "kid": [0.3, 0.2, 0.1, 0.4, 0.2, 0.15], "n_val": 4, "n_ref": 10, "features": "pixel-x"}).to_csv(
        tmp_path / "validation_log.csv", index=False)
    fig = viz.loss_curve(tmp_path, tmp_path / "fig")
    assert len(fig.axes) == 2 and "KID" in fig.axes[1].get_ylabel()
    assert (tmp_path / "fig" / "03_loss.pdf").exists()
    (tmp_path / "validation_log.csv").unlink()                  # runs from before the trace: loss alone
    assert len(viz.loss_curve(tmp_path, tmp_path / "fig").axes) == 1


def test_fine_tuning_writes_the_kid_trace_at_each_validation_save(tmp_path, runs_root):
    from dreambooth_fixtures import fake_stage02, tiny_cfg
    from lib.finetune import dreambooth

    cfg = tiny_cfg(tmp_path, **{"gating.enabled": False, "finetune.steps": 2, "finetune.validation_every": 1,
                                "finetune.validation_images": 2, "finetune.checkpoint_every": 100})
    fake_stage02(cfg, runs_root, tmp_path)
    dreambooth.run(cfg, tmp_path / "03", runs_root, progress=False)
    log = pd.read_csv(tmp_path / "03" / "validation_log.csv")
    assert sorted(set(log["step"])) == [0, 1, 2] and set(log["group"]) == {"No Finding", "Unhealthy", "all"}
    assert np.isfinite(log["kid"]).all() and (log.query("group == 'all'")["n_val"] == 4).all()
    step1 = json.loads((tmp_path / "03" / "validation" / "step_000001.json").read_text())
    logged = log.query("step == 1 and group == 'all'")["kid"].item()
    assert step1["trace"]["groups"]["all"]["kid"] == pytest.approx(logged)


def test_fid_interval_holds_the_estimate_despite_the_resampling_bias():
    # 30 dims, 100 images per class: a resample (with duplicates) inflates FID well past the estimate,
    # so a plain percentile interval would miss it; the centred one is the sampling spread around it
    labels = np.repeat(["a", "b"], 100)
    f = FidelityConfig(kid_subset_size=50, kid_subsets=5, kid_bootstrap_subsets=2, bootstrap=40)
    table = fidelity.evaluate(gaussian(200, 30, 0), gaussian(200, 30, 1, shift=0.2), labels, labels, f)
    fid_rows = table[table["metric"] == "fid"]
    assert ((fid_rows["ci_low"] < fid_rows["value"]) & (fid_rows["value"] < fid_rows["ci_high"])).all()


def test_fidelity_parameters_are_checked(tmp_path):
    from lib.core.config import ParamError

    assert fidelity_cfg(tmp_path).fidelity.extractor == "pixel"
    for key, value in (("copy_threshold", 1.5), ("kid_subset_size", 1), ("extractor", "vgg"), ("fid_dims", 0)):
        with pytest.raises(ParamError, match=f"fidelity.{key}"):
            fidelity_cfg(tmp_path, **{f"fidelity.{key}": value})
