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

from . import atomic, paths

import os  # noqa: E402
import re  # noqa: E402
import zlib  # noqa: E402

# LaTeX \textwidth in points (\the\textwidth) of a standard 12pt thesis page. Every figure's size is a
# fraction of it: set SUITE_TEXT_WIDTH_PT, call set_text_width(), or pass text_width_pt to figure().
TEXT_WIDTH_PT = float(os.environ.get("SUITE_TEXT_WIDTH_PT", 426.79))
METHODS = ["random", "spectral-pixel", "spectral-clip", "textbook", "active-gating",
           "random-skip", "no-fine-tune", "real"]
_PALETTE = sns.color_palette("colorblind", len(METHODS) + 1)
METHOD_COLORS = dict(zip(METHODS, _PALETTE))
# The equal-updates control beside random-skip, in a colour of its own: the other methods keep theirs.
METHODS.insert(METHODS.index("random-skip") + 1, "equal-updates")
METHOD_COLORS["equal-updates"] = _PALETTE[-1]
# The mode world's known-answer selections (lib.tuningset, issue 27), after the thesis's methods.
for _name, _c in zip(["mode-matched", "rare-modes"], sns.color_palette("dark", 10)[2:4]):
    METHODS.append(_name)
    METHOD_COLORS[_name] = _c
# Reference generators (lib.generate.references): a palette of their own, so they never pass for a method.
REFERENCES = ["real-holdout", "vae-roundtrip", "exaggerated", "findings-erased", "collapsed", "label-shuffled",
              "folder"]
METHOD_COLORS.update(zip(REFERENCES, sns.color_palette("dark", len(REFERENCES))))
LABEL_COLORS = {"No Finding": _PALETTE[0], "Unhealthy": _PALETTE[3]}
# Any other domain's classes, by label index: the thesis's pair first, so a binary domain looks like it.
_FULL = sns.color_palette("colorblind", 10)
CLASS_PALETTE = [_FULL[0], _FULL[3]] + [c for i, c in enumerate(_FULL) if i not in (0, 3)]


SIZE_MARKERS = ["o", "s", "D", "^", "v", "P"]    # one marker per tuning size, in increasing order


def set_text_width(pt: float) -> None:
    """Size every later figure for a document whose \\textwidth is ``pt`` points."""
    global TEXT_WIDTH_PT
    if not 100 <= pt <= 2000:
        raise ValueError(f"text width {pt} pt is implausible; print \\the\\textwidth in your LaTeX document.")
    TEXT_WIDTH_PT = float(pt)


def method_order(methods) -> list[str]:
    """Methods in the suite's fixed order (unknown ones last, alphabetically)."""
    known = [m for m in METHODS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


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


def ink(rgba) -> str:
    """Black or white, whichever contrasts more with a cell of colour ``rgba`` (WCAG relative luminance:
    black above 0.179), so numbers printed on heat maps stay readable on dark and light cells alike."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in matplotlib.colors.to_rgb(rgba)]
    return "black" if 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2] > 0.179 else "white"


def label_color(name: str, i: int | None = None):
    """A class's colour: the thesis's for its two classes, else the i-th of CLASS_PALETTE (cycling). Without
    ``i`` the name picks one, the same in every figure (a checksum: Python's hash varies per process)."""
    if name in LABEL_COLORS:
        return LABEL_COLORS[name]
    if i is None:
        i = zlib.crc32(str(name).encode())
    return CLASS_PALETTE[i % len(CLASS_PALETTE)]


def figure(width_fraction: float = 1.0, aspect: float = 0.62, text_width_pt: float | None = None,
           nrows: int = 1, ncols: int = 1, **kw):
    """A figure sized to a fraction of the LaTeX text width (``aspect`` = height / width)."""
    apply()
    w = (text_width_pt or TEXT_WIDTH_PT) / 72.27 * width_fraction
    return plt.subplots(nrows, ncols, figsize=(w, w * aspect), **kw)


def save(fig, name: str, out_dir: str | Path = "figures") -> list[Path]:
    """Write ``name``.pdf and ``name``.png atomically; no timestamps, so identical inputs give identical files.

    ``name`` starts with the notebook's number (``06_tgap_plane``), so figures/ sorts by notebook.
    """
    if not re.fullmatch(r"0[1-9]_[A-Za-z0-9_\-]+", name):
        raise ValueError(f"figure name {name!r} must start with its notebook's number, e.g. '06_tgap_plane'.")
    out_dir = paths.resolve(out_dir)
    written = []
    for ext, meta in (("pdf", {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}),
                      ("png", {"Software": None})):
        target = out_dir / f"{name}.{ext}"
        with atomic.atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, metadata=meta)
        written.append(target)
    return written
