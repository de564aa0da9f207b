"""recompute.check on a record whose held-out cells were too small to estimate (a collapsed set, issue 23): the
record holds NaN with a reason, and the recomputation must agree from the files, not from the record's word."""
import numpy as np
import pandas as pd
import pytest

from lib.analyze import recompute
from lib.analyze.recompute import AnalysisMismatch


def _preds(d, cell, labels, p1):
    pd.DataFrame({"image_id": [f"{cell}{i}" for i in range(len(labels))], "label": labels, "score": p1,
                  "p[No Finding]": 1 - np.asarray(p1), "p[Unhealthy]": p1}).to_csv(d / f"predictions_{cell}.csv",
                                                                                    index=False)


def _record(tmp_path, held_out):
    labels = ["No Finding", "Unhealthy"] * 3
    _preds(tmp_path, "a", labels, [0.2, 0.7, 0.4, 0.9, 0.1, 0.6])
    _preds(tmp_path, "trtr", labels, [0.1, 0.8, 0.3, 0.9, 0.2, 0.7])
    b = ["No Finding", "Unhealthy"] if held_out == 1 else labels
    _preds(tmp_path, "b", b, [0.3, 0.9, 0.2, 0.8, 0.1, 0.7][:len(b)])
    pd.DataFrame({"image_id": [f"b{i}" for i in range(len(b))], "label": b,
                  "hash": [f"h{i}" for i in range(len(b))]}).to_csv(tmp_path / "test_b.csv", index=False)
    auroc_a = 1.0     # every Unhealthy score above every No Finding one
    return pd.DataFrame([{"results_dir": str(tmp_path), "decision_threshold": 0.5, "auroc_a": auroc_a,
                          "auroc_b": np.nan, "auroc_trtr": 1.0,
                          "held_out_note": "not estimable: 2 unique held-out image(s); 2 per class needed"}])


def test_a_not_estimable_record_agrees_with_its_files(tmp_path):
    # Before: the recomputation gave AUROC(b) 1.0 from the two held-out images and the demo's analysis stopped
    # ("auroc_b ... is nan in results.csv but 1.0 recomputed from the predictions").
    report = recompute.check(_record(tmp_path, held_out=1)).set_index("metric")
    assert report.loc["auroc_b", "max_abs_diff"] == 0.0 and report.loc["auroc_a", "checked"] == 1


def test_a_not_estimable_claim_that_its_test_file_contradicts_is_a_mismatch(tmp_path):
    with pytest.raises(AnalysisMismatch, match="records its held-out cells as not estimable"):
        recompute.check(_record(tmp_path, held_out=3))
