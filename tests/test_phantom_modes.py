"""The phantom mode world (lib.data.phantoms' acquisition modes): off by default, with every image and stage key as
before; on, modes at their documented prevalences, each changing the pixels its documented way, hiding the findings
it is documented to hide, and recorded in every pool's manifest."""
import hashlib

import numpy as np
import pytest

from lib.core import config, stages
from lib.data import curation, phantoms as P


def _sha(arr) -> str:
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]


# draw() outputs of the code before the modes existed (commit 981ea78), and its stage keys for the default config.
_BEFORE = [(("00000001_000.png", "1", ["Effusion"], "PA", 64, 0, False), "b8f02ab16fba5dda"),
           (("00000002_000.png", "2", [], "AP", 32, 3, False), "8d610e727f3d42e0"),
           (("00000003_001.png", "3", ["Nodule", "Consolidation"], "PA", 48, 0, True), "7a7d5a9f81a3cfb1")]
_KEYS_BEFORE = {"01_data_curation": "2ca5c2abffp4", "02_clustering": "0be116613fp4",
                "05_classifier": "44a86d3562p4", "05_real_baseline": "5414693e36p4"}


def test_default_world_images_folders_and_keys_are_unchanged():
    for args, digest in _BEFORE:
        assert _sha(P.draw(*args)) == digest
        assert _sha(P.draw(*args, mode="normal")) == digest      # the normal mode is the default image
    assert P.phantom_dir(100, 32, 0, False).name == "v4-n100-s32-seed0"
    assert P.phantom_dir(100, 32, 0, False, modes=True).name == f"v4-n100-s32-seed0-modes{P.MODES_VERSION}"
    cfg = config.from_dict({})
    assert {s: stages.key(cfg, s) for s in _KEYS_BEFORE} == _KEYS_BEFORE
    on = config.from_dict({"data": {"phantom_modes": True}})
    assert all(stages.key(on, s) != k for s, k in _KEYS_BEFORE.items())   # the mode world is other data


def test_mode_sampler_shares_match_the_documented_prevalences():
    n = 4000
    drawn = [P.sample_mode(f"{i:08d}_000.png", seed=0) for i in range(n)]
    assert drawn == [P.sample_mode(f"{i:08d}_000.png", seed=0) for i in range(n)]     # deterministic
    assert abs(sum(p for p in P.MODE_PREVALENCE.values()) - 1) < 1e-12
    assert 0.6 <= P.MODE_PREVALENCE["normal"] <= 0.8
    assert all(0.01 <= p <= 0.05 for m, p in P.MODE_PREVALENCE.items() if m not in ("normal", "devices"))
    for mode, p in P.MODE_PREVALENCE.items():
        share = drawn.count(mode) / n
        assert abs(share - p) <= 4 * np.sqrt(p * (1 - p) / n), (mode, share, p)


def _img(mode, image="m.png", patient="4", findings=(), size=64):
    return P.draw(image, patient, list(findings), size=size, mode=mode)


def test_each_mode_changes_the_pixels_its_documented_way():
    base = _img("normal")
    for mode in ("devices", "under_exposed", "collimated"):
        assert _img(mode).mean() > base.mean() + 0.01, mode
    assert _img("over_exposed").mean() < base.mean() - 0.03
    # pediatric: the chest (pixels well above the air) spans fewer columns and rows
    body = lambda a: (a > 0.25).any(axis=0).sum() + (a > 0.25).any(axis=1).sum()
    assert body(_img("pediatric")) < 0.85 * body(base)
    lat = _img("lateral_like")
    assert np.allclose(lat, lat[:, ::-1]) and not np.allclose(base, base[:, ::-1])   # both sides superimposed
    rot = _img("rotated")                          # turned, one hemithorax denser than the other
    halves = lambda a: abs(a[:, : a.shape[1] // 2].mean() - a[:, a.shape[1] // 2:].mean())
    assert np.abs(rot - base).mean() > 0.03 and halves(rot) > halves(base) + 0.03
    col = _img("collimated")                       # unexposed borders are white
    assert col[-1].min() > 0.9 and col[:, 0].min() > 0.9
    with pytest.raises(ValueError, match="'sideways' is not one of"):
        P.apply_mode(base, "sideways", "m.png")


def _visibility(mode, finding, n=6, size=48):
    """RMS of the finding-vs-erased difference (the same image without the finding painted), over n images."""
    d = [P.draw(f"v{i}.png", str(i), [finding], size=size, mode=mode)
         - P.draw(f"v{i}.png", str(i), [finding], size=size, mode=mode, erase=True) for i in range(n)]
    return float(np.sqrt(np.mean(np.square(d))))


@pytest.mark.parametrize("mode,finding", [("rotated", "Effusion"), ("under_exposed", "Effusion"),
                                          ("collimated", "Effusion"), ("over_exposed", "Pneumothorax"),
                                          ("devices", "Nodule"), ("lateral_like", "Consolidation"),
                                          ("pediatric", "Mass")])
def test_findings_are_less_visible_in_the_modes_documented_to_hide_them(mode, finding):
    assert _visibility(mode, finding) < 0.95 * _visibility("normal", finding)


def test_modes_hide_findings_selectively():
    """Not a uniform dimming: under-exposure hides dense Effusion, not the lung Nodule; a lateral-like view halves
    unilateral Consolidation's contrast, not bilateral Edema's."""
    ratio = lambda m, f: _visibility(m, f) / _visibility("normal", f)
    assert ratio("under_exposed", "Effusion") < ratio("under_exposed", "Nodule") - 0.15
    assert ratio("lateral_like", "Consolidation") < ratio("lateral_like", "Edema") - 0.1


@pytest.fixture(scope="module")
def mode_pools(tmp_path_factory):
    root = P.generate(n=700, size=32, seed=2, out_dir=tmp_path_factory.mktemp("pm") / "set", progress=False,
                      modes=True)
    cfg = config.from_dict({"data": {"image_size": 32, "phantom_n": 700, "phantom_seed": 2, "phantom_modes": True,
                                     "check_images": False},
                            "pools": {"tuning": 100, "train": 150, "test": 400}})
    seen = {}

    def generate(*a, **k):
        seen.update(k)
        return root
    mp = pytest.MonkeyPatch()
    mp.setattr(curation.phantoms, "generate", generate)
    out = tmp_path_factory.mktemp("cur")
    try:
        curation.run(cfg, out, progress=False)
    finally:
        mp.undo()
    return out, seen


def test_curation_with_modes_records_the_mode_in_every_pool_and_the_test_pool_keeps_the_prevalence(mode_pools):
    out, seen = mode_pools
    assert seen["modes"] is True
    pools = curation.load_pools(out)
    for name, df in pools.items():
        assert df["mode"].isin(P.MODES).all() and df["mode"].notna().all(), name
    test = pools["test"]
    n = len(test)
    for mode, p in P.MODE_PREVALENCE.items():
        share = (test["mode"] == mode).mean()
        assert abs(share - p) <= 4 * np.sqrt(p * (1 - p) / n), (mode, share, p)
    assert "mode" in curation.read_manifest(out / "all.csv").columns


def test_default_curation_writes_no_mode_column(tmp_path, monkeypatch):
    root = P.generate(n=60, size=32, seed=1, out_dir=tmp_path / "set", progress=False)
    monkeypatch.setattr(curation.phantoms, "generate", lambda *a, **k: root)
    cfg = config.from_dict({"data": {"image_size": 32, "check_images": False},
                            "pools": {"tuning": 15, "train": 15, "test": 15}})
    curation.run(cfg, tmp_path / "cur", progress=False)
    assert list(curation.read_manifest(tmp_path / "cur" / "test.csv").columns) == curation.MANIFEST_COLUMNS


def test_a_redrawn_mode_world_gets_new_stage_keys():
    """MODES_VERSION is in the keys of the mode world: bumping it must not reuse stages drawn by the old modes."""
    from lib.core import config, stages
    from lib.data import phantoms

    cfg = config.load("params/smoke.yaml", {"data.phantom_modes": True})
    for stage in ("01_data_curation", "03_dreambooth", "05_classifier"):
        assert stages.key(cfg, stage).endswith(f"p{phantoms.GENERATOR_VERSION}m{phantoms.MODES_VERSION}")
    default = config.load("params/smoke.yaml")
    assert stages.key(default, "01_data_curation").endswith(f"p{phantoms.GENERATOR_VERSION}")


def test_phantom_modes_with_another_source_is_refused_naming_the_keys():
    with pytest.raises(config.ParamError, match=r"data.phantom_modes = true.*data.source = 'nih'"):
        config.load("params/smoke.yaml", {"data.phantom_modes": True, "data.source": "nih"})


def test_references_redraw_a_mode_world_image_through_its_mode(mode_pools):
    """findings-erased/exaggerated redraw the pool's rows: at finding scale 1 the redraw is stage 01's image pixel
    for pixel, mode included (a redraw without the mode would differ for every non-normal row)."""
    from PIL import Image

    from lib.core import paths
    from lib.generate import references

    out, _ = mode_pools
    cfg = config.from_dict({"data": {"image_size": 32, "phantom_n": 700, "phantom_seed": 2, "phantom_modes": True}})
    pool = curation.load_pools(out)["tuning"]
    rows = pool[pool["mode"] != "normal"].head(4).assign(source_image_id=lambda d: d["image_id"])
    assert len(rows) == 4
    for _, r in rows.iterrows():
        stage01 = np.asarray(Image.open(paths.resolve(r["path"])).convert("L"), dtype=np.uint8)
        assert np.array_equal(references._redraw(r, cfg, 1.0), stage01), (r["image_id"], r["mode"])
        plain = config.from_dict({"data": {"image_size": 32, "phantom_n": 700, "phantom_seed": 2}})
        assert not np.array_equal(references._redraw(r, plain, 1.0), stage01)


def test_mode_conspicuity_fades_findings_in_the_rare_modes_only():
    """data.mode_conspicuity: a rare mode's findings at that share of their contrast; normal and devices images, the
    findings-erased twin and every key at 1.0 are as before."""
    assert set(P.RARE_MODES) == set(P.MODES) - {"normal", "devices"}
    for mode in ("normal", "devices"):
        assert _sha(P.draw("c.png", "5", ["Effusion"], mode=mode, conspicuity=0.2)) == \
            _sha(P.draw("c.png", "5", ["Effusion"], mode=mode))
    faint = lambda m, f, c: np.sqrt(np.mean([np.square(P.draw(f"c{i}.png", str(i), [f], size=48, mode=m, conspicuity=c)
                                                       - P.draw(f"c{i}.png", str(i), [f], size=48, mode=m, erase=True))
                                             for i in range(4)]))
    for mode, finding in (("lateral_like", "Consolidation"), ("rotated", "Effusion"), ("pediatric", "Nodule")):
        assert _sha(P.draw("c.png", "5", [finding], mode=mode, erase=True, conspicuity=0.2)) == \
            _sha(P.draw("c.png", "5", [finding], mode=mode, erase=True))
        assert faint(mode, finding, 0.2) < 0.3 * faint(mode, finding, 1.0), mode
    assert P.phantom_dir(100, 32, 0, False, modes=True, conspicuity=0.25).name.endswith("-c0.25")
    base = config.from_dict({"data": {"phantom_modes": True}})
    same = config.from_dict({"data": {"phantom_modes": True, "mode_conspicuity": 1.0}})
    faded = config.from_dict({"data": {"phantom_modes": True, "mode_conspicuity": 0.25}})
    assert stages.key(same, "01_data_curation") == stages.key(base, "01_data_curation")
    assert stages.key(faded, "01_data_curation") != stages.key(base, "01_data_curation")


@pytest.mark.parametrize("over,match", [({"data.phantom_modes": True, "data.mode_conspicuity": 1.5}, r"in \[0, 1\]"),
                                        ({"data.mode_conspicuity": 0.5}, "data.phantom_modes is off")])
def test_a_bad_mode_conspicuity_is_refused_saying_what_to_change(over, match):
    with pytest.raises(config.ParamError, match=match):
        config.load("params/smoke.yaml", over)
