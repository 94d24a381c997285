"""scrna_denoise: denoise single-cell RNA counts, scored by molecular cross-validation."""
