"""Step 6 and beyond: statistics over seeds, paired comparisons, calibration, mixing, source x target transfer."""
