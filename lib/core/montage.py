"""Image grids for notebooks and figures."""
from __future__ import annotations

import numpy as np


def grid(images: np.ndarray, ncols: int, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """N x H x W grayscale images -> one padded (rows*H) x (ncols*W) array."""
    n, h, w = images.shape
    nrows = max(1, -(-n // ncols))
    out = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad), fill, dtype=np.float32)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = im
    return out


def show_rows(ax_rows, titled_stacks: dict, ncols: int) -> None:
    """One axis per row: a title and a strip of images."""
    for ax, (title, stack) in zip(np.atleast_1d(ax_rows), titled_stacks.items()):
        ax.imshow(grid(np.asarray(stack)[:ncols], ncols), cmap="gray", vmin=0, vmax=1)
        ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=7)
        ax.set_xticks([]); ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
