"""Does the generator keep its tuning set's acquisition modes? Issue 27's mechanism after fine-tuning.

A selection can only change what a synthetic-trained classifier learns if the generator passes the tuning set's
mode mix on to its images. A mode classifier is fitted on real images whose modes are known (the run's real
training pool), checked on the real test pool, and then applied to two held-out sets: the real tuning set the
generator was tuned on, and the synthetic set it drew. Both go through the same classifier, so its errors bias
both alike; the tuning set's *true* shares sit beside them as the reference. Logistic regression on the pixels
at the generator's resolution, standardised (multinomial; balanced class weights, since rare modes hold 2-5%).
"""
from __future__ import annotations


import numpy as np
import pandas as pd

from ..data import curation, images
from ..data.nih import DataError
from ..data.phantoms import MODES
from ..tuningset import selection
from . import subgroups, upstream

MODE = "mode"


def _pixels(paths, size: int) -> np.ndarray:
    return images.load_stack(list(paths), size).reshape(len(paths), -1)


def fit(train: pd.DataFrame, test: pd.DataFrame, size: int = 32, seed: int = 0):
    """(classifier, held-out figures): fitted on ``train``'s images and modes, scored on ``test``'s."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    for name, df in (("training", train), ("test", test)):
        if MODE not in df:
            raise DataError(f"the {name} pool has no {MODE!r} column: draw the data with data.phantom_modes: true.")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000, class_weight="balanced",
                                                             random_state=seed))
    clf.fit(_pixels(train["path"], size), train[MODE])
    pred = clf.predict(_pixels(test["path"], size))
    recall = {m: float((pred[test[MODE].to_numpy() == m] == m).mean()) for m in MODES if (test[MODE] == m).any()}
    return clf, {"accuracy": float((pred == test[MODE].to_numpy()).mean()),
                 "balanced_accuracy": float(balanced_accuracy_score(test[MODE], pred)), "recall": recall}


def shares(labels) -> pd.Series:
    """Share of each mode, every mode listed (0 where absent)."""
    return pd.Series(labels).value_counts(normalize=True).reindex(MODES, fill_value=0.0)


def run_sets(row: pd.Series) -> dict:
    """A results record's real pools (stage 01), tuning set (stage 02) and synthetic manifest (stage 04)."""
    pools = curation.load_pools(upstream.upstream_dir(row, "01_data_curation"))
    tuning = selection.load(upstream.upstream_dir(row, "02_clustering"))["tuning_sets"].get(row["tuning_method"])
    synthetic = upstream._manifest(upstream.upstream_dir(row, "04_generation"))
    if tuning is None or synthetic is None:
        raise DataError(f"{row['results_dir']}: its tuning set ({row['tuning_method']}) or synthetic manifest is "
                        "missing upstream; run stages 02-04 for it.")
    pool = pools["tuning"][["image_id", "path", MODE]]
    tuning = tuning.drop(columns=[c for c in ("path", MODE) if c in tuning]).merge(pool, on="image_id", how="left")
    return {"train": pools["train"], "test": pools["test"], "tuning": tuning, "synthetic": synthetic}


_FITTED: dict = {}     # one mode classifier per curation folder and size, shared by table and roundtrip_control


def _classifier(r: pd.Series, sets: dict, size: int):
    """(classifier, held-out figures the first time this curation's classifier is fitted, else None)."""
    key = (str(upstream.upstream_dir(r, "01_data_curation")), size)
    if key in _FITTED:
        return _FITTED[key], None
    _FITTED[key], held_out = fit(sets["train"], sets["test"], size, int(r["seed"]))
    return _FITTED[key], held_out


def table(records: pd.DataFrame, size: int = 32) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(shares, classifier checks): per diffusion record and mode, the tuning set's true share, the mode
    classifier's predicted share of the real tuning set and of the synthetic set; and per seed the classifier's
    held-out accuracy on the real test pool. One classifier per seed (its curation)."""
    rows, checks = [], []
    for _, r in records[records["generator_kind"] == "diffusion"].iterrows():
        sets = run_sets(r)
        clf, held_out = _classifier(r, sets, size)
        if held_out is not None:
            checks.append({"seed": int(r["seed"]), **{k: v for k, v in held_out.items() if k != "recall"},
                           **{f"recall[{m}]": v for m, v in held_out["recall"].items()}})
        true_ = shares(sets["tuning"][MODE])
        pred_tuning = shares(clf.predict(_pixels(sets["tuning"]["path"], size)))
        pred_syn = shares(clf.predict(_pixels(sets["synthetic"]["_path"], size)))
        method = subgroups.label(r["method"], bool(r.get("gating", False)))
        for m in MODES:
            rows.append({"method": method, "seed": int(r["seed"]), MODE: m, "tuning_true": true_[m],
                         "tuning_predicted": pred_tuning[m], "synthetic_predicted": pred_syn[m]})
    return pd.DataFrame(rows), pd.DataFrame(checks)


def roundtrip_control(records: pd.DataFrame, size: int = 32) -> pd.DataFrame:
    """Is "non-normal" the generator's or the classifier's reading of any decoded image? Per seed, the real test
    pool's non-normal share: true, predicted on the images, and predicted after the frozen VAE's round trip
    (encode -> latent mode -> decode, as the vae-roundtrip reference does). A round trip that left the share
    where it was puts the synthetic sets' shift on the sampling, not on the decoder or the classifier."""
    import torch
    from diffusers import AutoencoderKL

    rows = []
    diffusion = records[records["generator_kind"] == "diffusion"]
    for seed, g in diffusion.groupby("seed"):
        r = g.iloc[0]
        sets = run_sets(r)
        clf, _ = _classifier(r, sets, size)
        vae = AutoencoderKL.from_pretrained(upstream.upstream_dir(r, "03_dreambooth") / "model" / "vae").eval()
        x = torch.from_numpy(images.load_stack(list(sets["test"]["path"]), size))
        with torch.no_grad():
            y = vae.decode(vae.encode((x * 2 - 1)[:, None].expand(-1, 3, -1, -1).contiguous()).latent_dist.mode()).sample
        decoded = ((y.clamp(-1, 1) + 1) / 2).mean(1).numpy().reshape(len(x), -1)
        non_normal = lambda labels: 1 - shares(labels)["normal"]  # noqa: E731
        rows.append({"seed": int(seed), "test non-normal (true)": non_normal(sets["test"][MODE]),
                     "predicted on the images": non_normal(clf.predict(_pixels(sets["test"]["path"], size))),
                     "predicted after the VAE round trip": non_normal(clf.predict(decoded))})
    return pd.DataFrame(rows)


def summary(shares_: pd.DataFrame) -> pd.DataFrame:
    """Seed means per method: the share of images outside the normal mode, and the total variation distance
    between the synthetic set's predicted shares and the real tuning set's predicted shares (0: the generator
    keeps the mix as far as the classifier sees it)."""
    out = []
    for (method, seed), g in shares_.groupby(["method", "seed"]):
        g = g.set_index(MODE)
        out.append({"method": method, "seed": seed,
                    "tuning non-normal (true)": 1 - g.loc["normal", "tuning_true"],
                    "tuning non-normal (predicted)": 1 - g.loc["normal", "tuning_predicted"],
                    "synthetic non-normal (predicted)": 1 - g.loc["normal", "synthetic_predicted"],
                    "TV synthetic vs tuning (predicted)":
                        0.5 * float((g["synthetic_predicted"] - g["tuning_predicted"]).abs().sum())})
    return pd.DataFrame(out).groupby("method").mean(numeric_only=True).drop(columns="seed")

