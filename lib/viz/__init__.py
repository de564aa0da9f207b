"""Figures and tables for the notebooks, one module per notebook; all drawn with ``lib.core.style``."""
