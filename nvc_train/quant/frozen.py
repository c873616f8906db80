"""Frozen integer decoder layers: exported tensors held as buffers, exact accumulators.

The common base of :class:`nvc_train.quant.integer.IntegerHyperDecoder` and
:class:`nvc_train.quant.synthesis.IntegerSynthesis`. The tensors are those their
``convert_*`` functions export (``layer{i}.weight``, ``layer{i}.bias``,
``layer{i}.multiplier``, ``layer{i}.shift``, ``layer{i}.saturation``, …); buffers move with
``.to(device)`` and are part of the state dict under the same names with "." → "_".
"""

from __future__ import annotations

from torch import Tensor, nn

from nvc_train.quant import arith


class FrozenLayers(nn.Module):
    """Exported integer tensors of one decoder, as buffers, and its per-layer arithmetic."""

    def __init__(self, tensors: dict[str, Tensor]):
        super().__init__()
        for key, value in tensors.items():
            self.register_buffer(key.replace(".", "_"), value.clone())

    def _t(self, key: str) -> Tensor:
        return getattr(self, key.replace(".", "_"))

    def _fixed_point(self, i: int) -> arith.FixedPoint:
        return arith.FixedPoint(self._t(f"layer{i}.multiplier"), self._t(f"layer{i}.shift"),
                                self._t(f"layer{i}.saturation"))

    def layer_weight(self, i: int) -> Tensor:
        """(C_in, C_out, 5, 5) integer weights of layer ``i``."""
        return self._t(f"layer{i}.weight")

    def layer_bias(self, i: int) -> Tensor:
        """(C_out,) int64 bias of layer ``i`` at its accumulator scale."""
        return self._t(f"layer{i}.bias")

    def layer_accumulator(self, i: int, x: Tensor) -> Tensor:
        """Exact int64 accumulators (bias included) of layer ``i``: (N, C, h, w) → (N, C, 2h, 2w)."""
        return arith.add_bias(arith.conv_transpose_exact(x, self.layer_weight(i)), self.layer_bias(i))
