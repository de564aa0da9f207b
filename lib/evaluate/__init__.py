"""Step 5, the two-way evaluation: classifiers and backbones, metrics, fidelity, memorization, results records."""
