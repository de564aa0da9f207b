"""The suite's figure style: LaTeX sizes, fixed method colours, embedded TrueType, byte-identical files."""
import re
from pathlib import Path

import numpy as np
import pytest

from lib.core import paths, style


def _draw():
    fig, ax = style.figure(0.5, 0.75)
    x = np.linspace(0, 1, 50)
    for m in ("random", "spectral-clip", "active-gating"):
        ax.plot(x, x ** (1 + style.METHODS.index(m)), color=style.color(m), label=m)
    ax.set(xlabel="AUROC (b)", ylabel="AUROC (a)", title="T-Gap")
    ax.legend()
    return fig


def test_saving_the_same_figure_twice_gives_identical_bytes(tmp_path):
    first = style.save(_draw(), "06_same", tmp_path / "one")
    second = style.save(_draw(), "06_same", tmp_path / "two")          # a fresh figure, same inputs
    again = style.save(_draw(), "06_same", tmp_path / "one")           # overwritten in place
    assert [p.suffix for p in first] == [".pdf", ".png"]
    for a, b, c in zip(first, second, again):
        assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    assert b"CreationDate" not in first[0].read_bytes()


def test_pdf_embeds_truetype_fonts_not_type3(tmp_path):
    pdf = style.save(_draw(), "06_fonts", tmp_path)[0].read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf


def test_sizes_follow_the_latex_text_width(monkeypatch):
    fig, _ = style.figure(0.5, 1.0, text_width_pt=500)
    assert fig.get_size_inches() == pytest.approx([500 / 72.27 / 2] * 2)
    monkeypatch.setattr(style, "TEXT_WIDTH_PT", style.TEXT_WIDTH_PT)
    style.set_text_width(345.0)
    assert style.figure()[0].get_size_inches()[0] == pytest.approx(345 / 72.27)
    with pytest.raises(ValueError, match="textwidth"):
        style.set_text_width(5)


def test_every_method_has_its_own_fixed_colour():
    colours = [style.color(m) for m in style.METHODS]
    assert len(set(colours)) == len(colours)
    assert style.color("active-gating") == style.METHOD_COLORS["active-gating"]
    assert style.color("something-new") == (0.5, 0.5, 0.5)


def test_figure_names_start_with_the_notebook_number(tmp_path):
    with pytest.raises(ValueError, match="notebook's number"):
        style.save(_draw(), "tgap_plane", tmp_path)


def test_viz_modules_draw_and_save_only_through_style():
    """Every figure of the suite comes from lib.core.style: no bare plt.subplots/plt.figure/savefig in lib/viz."""
    offenders = []
    for f in sorted((paths.ROOT / "lib" / "viz").glob("*.py")):
        for i, line in enumerate(Path(f).read_text().splitlines(), 1):
            if re.search(r"plt\.(subplots|figure)\(|\.savefig\(", line):
                offenders.append(f"{f.name}:{i}: {line.strip()}")
    assert not offenders, "draw with style.figure and save with style.save:\n" + "\n".join(offenders)


def test_every_class_gets_a_colour_the_thesis_classes_keep_theirs():
    assert style.label_color("Unhealthy", 5) == style.LABEL_COLORS["Unhealthy"]
    assert style.label_color("No Finding") == style.LABEL_COLORS["No Finding"]
    shapes = [style.label_color(c, i) for i, c in enumerate(["circle", "square", "triangle"])]
    assert len(set(shapes)) == 3 and shapes[:2] == [style.LABEL_COLORS["No Finding"], style.LABEL_COLORS["Unhealthy"]]
    assert style.label_color("circle") == style.label_color("circle") in style.CLASS_PALETTE   # no index: by name
