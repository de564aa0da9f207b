"""Reference generators of stage 04: each kind writes a stage-04 set whose right answer is known."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib.core import config, paths, stages
from lib.data import curation, images, nih, phantoms
from lib.finetune.prompts import slug
from lib.generate import manifest, reference_sources, references
from lib.core.config import ParamError
from lib.data.nih import DataError

N = 8


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Stage 01 once (smoke parameters) in a private runs root; every reference reads its tuning pool."""
    root = tmp_path_factory.mktemp("refs") / "runs"
    stages.run_stage(cfg_for(), "01_data_curation", curation.run, runs_root=root, progress=False)
    return root


@pytest.fixture(scope="module")
def pool(runs):
    return curation.load_pools(stages.require(cfg_for(), "01_data_curation", runs))["tuning"].set_index("image_id")


def cfg_for(kind="diffusion", **extra):
    return config.load("params/smoke.yaml", {"generation.n_per_label": N, "generation.kind": kind, **extra})


def build(kind, runs, out, **extra):
    summary = references.build(cfg_for(kind, **extra), out, runs_root=runs, progress=False)
    return summary, pd.read_csv(out / "manifest.csv", dtype={"source_image_id": str})


def pool_paths(runs) -> dict:
    """source image id -> path of the tuning pool's images."""
    pool = curation.load_pools(stages.require(cfg_for(), "01_data_curation", runs))["tuning"]
    return dict(zip(pool["image_id"].astype(str), pool["path"]))


def gray(path):
    return np.asarray(Image.open(paths.resolve(path)).convert("L"), dtype=int)


def nothing_written(out):
    return not out.exists() or not any(out.rglob("*"))


def test_kinds_and_config():
    assert list(references.GENERATORS) == ["real-holdout", "label-shuffled", "partly-shuffled", "collapsed",
                                           "findings-erased", "exaggerated", "vae-roundtrip", "folder"]
    assert references.is_reference(cfg_for("real-holdout")) and not references.is_reference(cfg_for())
    for over, match in (({"generation.exaggerate": 1.0}, "exaggerate"),
                        ({"generation.kind": "folder"}, "generation.folder"),
                        ({"generation.folder": "x"}, "only read by"),
                        ({"generation.kind": "collapsed", "generation.unique_images": N + 1}, "unique_images"),
                        ({"generation.unique_images": 0}, "unique_images"),
                        ({"generation.kind": "findings-erased", "data.source": "nih"}, "phantom")):
        with pytest.raises(ParamError, match=match):
            config.load("params/smoke.yaml", {"generation.n_per_label": N, **over})


def test_real_holdout_is_a_byte_copy_of_unseen_images_and_resumes(runs, pool, tmp_path):
    out = tmp_path / "real"
    summary, m = build("real-holdout", runs, out)
    assert list(m.columns) == references.manifest_columns() + ["patient"]   # the source patient, for patient splits
    assert m["label"].value_counts().to_dict() == {lab: N for lab in nih.LABELS}
    assert m["image_id"].is_unique and m["image_id"].str.startswith("ref-real-holdout_").all()
    assert m["source_image_id"].is_unique and set(m["source_image_id"]) <= set(pool.index)
    for _, r in m.iterrows():
        src = pool.loc[r["source_image_id"]]
        assert r["label"] == src["label"]
        assert paths.resolve(r["path"]).read_bytes() == paths.resolve(src["path"]).read_bytes()
        assert r["hash"] == images.content_hash(paths.resolve(r["path"]).read_bytes())
        assert r["seed"] == manifest.image_seed(0, r["label"], r["index"])
    assert summary["reference"] and summary["kind"] == summary["model"] == "real-holdout"
    assert summary["n_images"] == 2 * N and summary["generated_this_call"] == 2 * N
    assert set(manifest.MANIFEST_COLUMNS) <= set(m.columns)  # what stage 05 reads of any synthetic set
    (out / m["file"][0]).unlink()
    again, m2 = build("real-holdout", runs, out)
    assert again["generated_this_call"] == 1 and again["model_hash"] == summary["model_hash"]
    pd.testing.assert_frame_equal(m, m2)


def test_label_shuffled_permutes_the_labels_of_the_same_images(runs, pool, tmp_path):
    _, real = build("real-holdout", runs, tmp_path / "real")
    s, m = build("label-shuffled", runs, tmp_path / "shuffled")
    assert m["label"].value_counts().to_dict() == {lab: N for lab in nih.LABELS}
    true = pool.loc[m["source_image_id"], "label"].to_numpy()
    assert sorted(m["label"]) == sorted(true) and (m["label"].to_numpy() != true).any()
    assert set(m["source_image_id"]) == set(real["source_image_id"])       # paired with the other kinds
    assert s["model_hash"] != build("real-holdout", runs, tmp_path / "real")[0]["model_hash"]


def test_collapsed_repeats_few_unique_images(runs, tmp_path):
    _, m = build("collapsed", runs, tmp_path / "collapsed", **{"generation.unique_images": 3})
    assert m["label"].value_counts().to_dict() == {lab: N for lab in nih.LABELS}
    assert m.groupby("label")["hash"].nunique().to_dict() == {lab: 3 for lab in nih.LABELS}
    assert m["file"].is_unique


def test_finding_scale_one_redraws_stage01_pixels_exactly(pool):
    cfg = cfg_for()
    d = cfg.data
    sick = pool[pool["label"] == "Unhealthy"].head(6)
    for image_id, r in pd.concat([sick, pool[pool["findings"].str.contains("Cardiomegaly")].head(2)]).iterrows():
        arr = phantoms.draw(image_id, str(r["patient"]), r["findings"].split("|"), r["view"], d.image_size,
                            d.phantom_seed, d.phantom_textbook, finding_scale=1.0)
        assert np.array_equal((arr * 255).round().astype(int), gray(r["path"])), image_id
    for sick in (["Cardiomegaly"], ["Cardiomegaly", "Effusion", "Mass"]):
        default = phantoms.draw("c.png", "7", sick, size=32)
        assert np.array_equal(default, phantoms.draw("c.png", "7", sick, size=32, finding_scale=1.0))
        assert np.abs(default - phantoms.draw("c.png", "7", sick, size=32, finding_scale=2.0)).max() > 0.05


def test_findings_erased_and_exaggerated_redraw_the_same_rows(runs, pool, tmp_path):
    _, erased = build("findings-erased", runs, tmp_path / "erased")
    _, exag = build("exaggerated", runs, tmp_path / "exag")
    assert (erased["source_image_id"] == exag["source_image_id"]).all()
    for m in (erased, exag):
        assert m["label"].value_counts().to_dict() == {lab: N for lab in nih.LABELS}
        assert (m["label"].to_numpy() == pool.loc[m["source_image_id"], "label"].to_numpy()).all()
    d_orig, d_exag = [], []
    for (_, e), (_, x) in zip(erased.iterrows(), exag.iterrows()):
        orig, er, ex = gray(pool.loc[e["source_image_id"], "path"]), gray(e["path"]), gray(x["path"])
        if e["label"] == "No Finding":
            assert np.array_equal(er, orig) and np.array_equal(ex, orig)
        else:
            assert not np.array_equal(er, orig)
            d_orig.append(np.abs(orig - er).mean()); d_exag.append(np.abs(ex - er).mean())
    assert np.mean(d_exag) > np.mean(d_orig), (d_exag, d_orig)


def test_vae_roundtrip_of_an_untrained_tiny_base(runs, tmp_path):
    s, m = build("vae-roundtrip", runs, tmp_path / "vae", **{"model.tiny_pretrain_steps": 0})
    assert m["label"].value_counts().to_dict() == {lab: N for lab in nih.LABELS}
    assert all(gray(p).shape == (32, 32) for p in m["path"])
    assert s["params"]["vae_hash"] and "base" not in s["params"]
    # the reconstruction error, recomputed from the PNGs with PIL (the source resized to the VAE's 32 px)
    src = {str(i): Image.open(paths.resolve(p)).convert("L").resize((32, 32), Image.BILINEAR)
           for i, p in pool_paths(runs).items()}
    sq = [((gray(p) / 255.0 - np.asarray(src[str(i)], float) / 255.0) ** 2).mean()
          for p, i in zip(m["path"], m["source_image_id"])]
    rec = s["reconstruction"]
    assert rec["all"]["n"] == len(m) and set(rec) == {"all", *nih.LABELS}
    assert rec["all"]["mse"] == pytest.approx(np.mean(sq), rel=1e-5)
    assert rec["all"]["psnr_db"] == pytest.approx(10 * np.log10(1 / rec["all"]["mse"]))
    assert rec["all"]["mse"] > 1e-3                  # an untrained VAE does not give its input back


def make_folder(root, pool, names, per=3):
    for name in names:
        (root / name).mkdir(parents=True)
        label = next(lab for lab in nih.LABELS if slug(lab) == slug(name))
        for i, p in enumerate(pool[pool["label"] == label]["path"].head(per)):
            (root / name / f"g{i}.png").write_bytes(paths.resolve(p).read_bytes())
    return root


def test_folder_references_images_in_place(runs, pool, tmp_path):
    src = make_folder(tmp_path / "gan", pool, ["no-finding", "UNHEALTHY"])
    (src / "UNHEALTHY" / "notes.txt").write_text("not an image")
    s, m = build("folder", runs, tmp_path / "out", **{"generation.folder": str(src)})
    assert m["label"].value_counts().to_dict() == {lab: 3 for lab in nih.LABELS}   # min(n, available)
    assert all(p.startswith(str(src.resolve())) for p in m["path"])
    assert all(images.content_hash(open(p, "rb").read()) == h for p, h in zip(m["path"], m["hash"]))
    assert s["n_images"] == 6 and not (tmp_path / "out" / "images").exists()
    moved, _ = build("folder", runs, tmp_path / "out2", **{"generation.folder": str(src)})
    assert moved["model_hash"] == s["model_hash"]


@pytest.mark.parametrize("layout, match", [(None, "does not exist"), ([], "no class sub-folder"),
                                           (["No Finding"], "no sub-folder for class"),
                                           (["No Finding", "Unhealthy", "cats"], "'cats' names no class")])
def test_folder_errors_write_nothing(runs, pool, tmp_path, layout, match):
    src = tmp_path / "gan"
    if layout is not None:
        src.mkdir()
        make_folder(src, pool, [n for n in layout if n != "cats"])
        if "cats" in layout:
            (src / "cats").mkdir()
    out = tmp_path / "out"
    with pytest.raises(DataError, match=match) as err:
        build("folder", runs, out, **{"generation.folder": str(src)})
    assert str(src) in str(err.value) and "one sub-folder per class" in str(err.value)
    assert nothing_written(out)


def test_too_few_holdout_images_write_nothing(runs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"generation.n_per_label = 200.*pools.tuning"):
        references.build(cfg_for("real-holdout", **{"generation.n_per_label": 200}), out, runs_root=runs,
                         progress=False)
    assert nothing_written(out)


def test_folder_sub_folders_are_matched_to_the_runs_own_classes(tmp_path):
    src = tmp_path / "gan"
    for name in ("Circle", "square"):
        (src / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(src / name / "g0.png")
    cfg = cfg_for("folder", **{"data.source": "shapes", "generation.folder": str(src)})
    with pytest.raises(DataError, match=r"class\(es\) \['triangle'\].*'circle', 'square' and 'triangle'"):
        reference_sources.scan_folder(cfg)
    (src / "triangle").mkdir()
    Image.new("L", (8, 8)).save(src / "triangle" / "g0.png")
    assert set(reference_sources.scan_folder(cfg)) == {"circle", "square", "triangle"}
    (src / "No Finding").mkdir()                           # the thesis's classes are no class of this run
    with pytest.raises(DataError, match="'No Finding' names no class.*'circle'"):
        reference_sources.scan_folder(cfg)
