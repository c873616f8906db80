"""SSF's stride, without torch (``nvc-train info`` and the container read it)."""

MODEL_MULTIPLE = 128
"""Frame sides are padded to multiples of this: 4 stride-2 analysis layers, then 3 hyper layers (2^7)."""
