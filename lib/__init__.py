"""Synthetic-trainability suite: can a fine-tuned diffusion model's images train a classifier as well as real ones?

One module per concern; notebooks in ``notebooks/`` call into these.
"""
__version__ = "0.1.0"
