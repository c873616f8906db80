"""Checkpoints on the Hugging Face Hub: ``hf://`` references in, ``nvc-train publish`` out."""
