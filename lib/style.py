"""One figure style for the whole suite: LaTeX-sized, colourblind-safe, embedded TrueType fonts.

Every notebook draws through ``figure`` and saves through ``save``, so figures look alike, carry a
fixed colour per method, and re-running with the same inputs writes byte-identical files.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "ipympl")) else None
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from . import atomic, paths  # noqa: E402

TEXT_WIDTH_PT = 426.79  # LaTeX \textwidth of a standard 12pt thesis page; pass your own to figure()
METHODS = ["random", "spectral-pixel", "spectral-clip", "textbook", "active-gating",
           "random-skip", "no-fine-tune", "real"]
_PALETTE = sns.color_palette("colorblind", len(METHODS))
METHOD_COLORS = dict(zip(METHODS, _PALETTE))
LABEL_COLORS = {"No Finding": _PALETTE[0], "Unhealthy": _PALETTE[3]}


def apply(font_scale: float = 1.0) -> None:
    sns.set_theme(context="paper", style="ticks", palette="colorblind", font_scale=font_scale)
    plt.rcParams.update({
        "pdf.fonttype": 42, "ps.fonttype": 42,      # TrueType, embedded: editable text in the PDF
        "svg.hashsalt": "suite", "figure.dpi": 110, "savefig.dpi": 200,
        "savefig.bbox": "tight", "axes.spines.top": False, "axes.spines.right": False,
    })


def color(method: str):
    """The method's fixed colour (unknown methods get grey)."""
    return METHOD_COLORS.get(method, (0.5, 0.5, 0.5))


def figure(width_fraction: float = 1.0, aspect: float = 0.62, text_width_pt: float = TEXT_WIDTH_PT,
           nrows: int = 1, ncols: int = 1, **kw):
    """A figure sized to a fraction of the LaTeX text width."""
    apply()
    w = text_width_pt / 72.27 * width_fraction
    return plt.subplots(nrows, ncols, figsize=(w, w * aspect), **kw)


def save(fig, name: str, out_dir: str | Path = "figures") -> list[Path]:
    """Write ``name``.pdf and ``name``.png atomically; no timestamps, so identical inputs give identical files."""
    out_dir = paths.resolve(out_dir)
    written = []
    for ext, meta in (("pdf", {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}),
                      ("png", {"Software": None})):
        target = out_dir / f"{name}.{ext}"
        with atomic.atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, metadata=meta)
        written.append(target)
    return written
