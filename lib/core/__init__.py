"""What every step stands on: paths, atomic writes, configuration, stage folders and keys, provenance, statistics, the plotting style."""
