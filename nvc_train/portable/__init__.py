"""The decoder outside PyTorch: integer ONNX graphs of a checkpoint, run by ONNX Runtime.

- :mod:`.graph`: a small ONNX graph builder and the contract's integer operations in ONNX
  operators (floor shifts, requantization, the exact transposed convolution as ConvInteger
  on 7-bit digit planes);
- :mod:`.networks`: the graphs of one checkpoint (hyper-decoders, synthesis decoders, the
  scale-space warp, reconstruction, output levels);
- :mod:`.export`: ``nvc-train export-onnx``: the graphs, ``onnx.json`` and the entropy tables;
- :mod:`.runtime`: loading a folder into ONNX Runtime sessions bound to its checkpoint, and
  the decoders that replace the PyTorch ones (``--runtime onnx``).
"""


def missing_packages() -> str:
    """"" when onnx and onnxruntime are installed, else one line saying what to install."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed (pip install 'nvc-train[onnx]')" if missing else ""
