"""Rate-distortion metrics."""
