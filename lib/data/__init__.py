"""Step 1, curation: the NIH metadata, phantoms and other image domains, patient-disjoint pools, leakage checks."""
