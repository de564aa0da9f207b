"""Notebook 01's figures: label and finding distributions, a montage per finding."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import curation, domains, images
from ..core import montage, style


def describe_source(cfg, out_dir) -> None:
    src = "procedural phantoms drawn for real NIH metadata rows" if cfg.data.source == "phantom" else \
        f"NIH ChestX-ray14 images under {cfg.data.nih_root}"
    excluded = pd.read_csv(out_dir / "excluded.csv")
    print(f"source: {src}; views {cfg.data.views}; seed {cfg.seed}")
    print(f"excluded: {int((excluded['reason'] == 'missing').sum())} missing, "
          f"{int((excluded['reason'] == 'corrupt').sum())} corrupt (listed in excluded.csv)")
    for reason, group in excluded.groupby("reason"):
        print(f"  {reason}, e.g.: {', '.join(group['image_id'].astype(str).head(5))}")


def label_and_finding_figure(table: pd.DataFrame, figures_dir, name: str = "01_label_findings"):
    fig, (ax1, ax2) = style.figure(1.0, 0.4, ncols=2, gridspec_kw={"width_ratios": [1, 3]})
    counts = table["label"].value_counts().reindex(domains.order(table["label"]))
    ax1.bar(counts.index, counts.values, color=[style.label_color(l, i) for i, l in enumerate(counts.index)])
    ax1.set_ylabel("images")
    ax1.tick_params(axis="x", labelrotation=30 if len(counts) > 2 else 0, labelsize=6 if len(counts) > 2 else None)
    if (table["findings"].astype(str) == table["label"].astype(str)).all():
        # a domain without findings (folder, csv, shapes): how many images each group (patient) holds
        sizes = table.groupby("patient").size()
        ax2.hist(sizes, bins=np.arange(1, sizes.max() + 2) - 0.5, color=style.label_color("", 2))
        ax2.set_xlabel("images per group (a group stays in one pool)"); ax2.set_ylabel("groups")
    else:
        findings = curation.finding_counts(table).drop("No Finding", errors="ignore")
        ax2.barh(findings.index[::-1], findings.values[::-1], color=style.label_color("Unhealthy"))
        ax2.set_xlabel("images with the finding")
        ax2.tick_params(axis="y", labelsize=6)
    style.save(fig, name, figures_dir)
    return fig


def finding_montage(table: pd.DataFrame, size: int, figures_dir, per_row: int = 6,
                    name: str = "01_finding_montage", seed: int = 0):
    """One row per finding (single-finding images first, so each row shows its finding)."""
    rng = np.random.default_rng(seed)
    rows = {}
    for finding in ["No Finding", *curation.finding_counts(table).drop("No Finding", errors="ignore").index[:8]]:
        single = table[table["findings"] == finding]
        pool = single if len(single) >= per_row else table[table["findings"].str.contains(finding, regex=False)]
        pick = pool.iloc[rng.permutation(len(pool))[:per_row]]
        rows[finding] = images.load_stack(pick["path"].tolist(), size)
    fig, axes = style.figure(1.0, 0.16 * len(rows), nrows=len(rows))
    montage.show_rows(axes, rows, per_row)
    style.save(fig, name, figures_dir)
    return fig
