"""Step 2, the tuning set: CLIP and pixel embeddings, spectral clustering, selection methods, external folders."""
