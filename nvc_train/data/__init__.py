"""Training and evaluation data: synthetic clips and the Lightning DataModule."""
