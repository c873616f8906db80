"""Small helpers shared by the quantization tests."""

from __future__ import annotations

from torch import Tensor

from nvc_train.quant.integer import IntegerHyperDecoder


def integer_decoder(tensors: dict[str, Tensor], part: str, role: str) -> IntegerHyperDecoder:
    """The frozen integer decoder ``<part>.<role>`` from ``integer_tensors`` output."""
    prefix = f"{part}.{role}."
    return IntegerHyperDecoder(role, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
