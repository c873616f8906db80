"""SSF model construction, strict loading, and the training forward."""
