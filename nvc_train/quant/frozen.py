"""Frozen integer decoder layers: exported tensors held as buffers, exact accumulators.

The common base of :class:`nvc_train.quant.integer.IntegerHyperDecoder` and
:class:`nvc_train.quant.synthesis.IntegerSynthesis`. The tensors are those their
``convert_*`` functions export (``layer{i}.weight``, ``layer{i}.bias``,
``layer{i}.multiplier``, ``layer{i}.shift``, ``layer{i}.saturation``, …); buffers move with
``.to(device)`` and are part of the state dict under the same names with "." → "_".

A forward pass keeps activations as digit planes between layers (:mod:`nvc_train.quant.exact_conv`):
each layer's accumulators are requantized band by band and written straight into the next
layer's int8 planes, so no frame-sized int64 activation is held.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from nvc_train.quant import arith, exact_conv


class FrozenLayers(nn.Module):
    """Exported integer tensors of one decoder, as buffers, and its per-layer arithmetic.

    ``gemm_path``: "int8", "float32" or "float64" for every convolution of this decoder, or
    None for :func:`nvc_train.quant.exact_conv.default_path` of the input's device.
    """

    num_layers: int = 0

    def __init__(self, tensors: dict[str, Tensor]):
        super().__init__()
        for key, value in tensors.items():
            self.register_buffer(key.replace(".", "_"), value.clone())
        self.gemm_path: str | None = None
        self._prepared: dict[tuple, object] = {}

    def _t(self, key: str) -> Tensor:
        return getattr(self, key.replace(".", "_"))

    def _fp(self, prefix: str) -> arith.FixedPoint:
        """The fixed-point multiplier stored as ``{prefix}multiplier/shift/saturation``."""
        return arith.FixedPoint(self._t(prefix + "multiplier"), self._t(prefix + "shift"), self._t(prefix + "saturation"))

    def _fixed_point(self, i: int) -> arith.FixedPoint:
        return self._fp(f"layer{i}.")

    def layer_weight(self, i: int) -> Tensor:
        """(C_in, C_out, 5, 5) integer weights of layer ``i``."""
        return self._t(f"layer{i}.weight")

    def layer_bias(self, i: int) -> Tensor:
        """(C_out,) int64 bias of layer ``i`` at its accumulator scale."""
        return self._t(f"layer{i}.bias")

    def activation_range(self, i: int) -> tuple[int, int]:
        """Integer range [lo, hi] of the activation after intermediate layer ``i``."""
        raise NotImplementedError

    def path_for(self, device: torch.device) -> str:
        return self.gemm_path or exact_conv.default_path(device)

    def prepared_weights(self, i: int, path: str, device: torch.device) -> exact_conv.PreparedWeights:
        """Layer ``i``'s GEMM operands for ``path`` on ``device``, built once (rebuilt if the
        weight buffer was replaced or changed in place, e.g. by ``load_state_dict``)."""
        return self.prepared(f"layer{i}.weight", path, device, exact_conv.prepare_weights)

    def prepared(self, key: str, path: str, device: torch.device, prepare: Callable):
        """``prepare(buffer, path, device)`` of the buffer stored as ``key``, built once per
        path and device and rebuilt when the buffer is replaced or changed in place."""
        t = self._t(key)
        cache_key = (key, path, str(device), t.data_ptr(), t._version)
        if cache_key not in self._prepared:
            self._prepared = {k: v for k, v in self._prepared.items() if k[:3] != cache_key[:3]}
            self._prepared[cache_key] = prepare(t, path, device)
        return self._prepared[cache_key]

    def layer_accumulator(self, i: int, x: Tensor, path: str | None = None) -> Tensor:
        """Exact int64 accumulators (bias included) of layer ``i``: (N, C, h, w) → (N, C, 2h, 2w)."""
        path = path or self.path_for(x.device)
        return exact_conv.accumulators(x, self.prepared_weights(i, path, x.device), path, self.layer_bias(i))

    def run_layers(self, x: Tensor, last: Callable[[Tensor], Tensor] | None, path: str | None = None) -> Tensor:
        """All layers on integer input ``x`` (N, C, h, w): intermediate activations requantized
        into [lo, hi] and kept as digit planes; the last layer's int64 accumulators (bias
        included) go through ``last`` (in place, block by block) and are returned."""
        device = x.device
        path = path or self.path_for(device)
        planes = exact_conv.to_planes(x, path)
        n = x.shape[0]
        for i in range(self.num_layers):
            weights = self.prepared_weights(i, path, device)
            h, w = planes.height, planes.width
            if i < self.num_layers - 1:
                lo, hi = self.activation_range(i)
                fp = self._fixed_point(i)
                requantize = lambda acc, fp=fp, lo=lo, hi=hi: arith.requantize(acc, fp, lo, hi, inplace=True)  # noqa: E731
                sink = exact_conv.PlaneSink(n, weights.c_out, h, w, lo, hi, path, device, requantize)
            else:
                sink = exact_conv.AccumulatorSink(n, weights.c_out, h, w, device, last)
            planes = exact_conv.conv_transpose_planes(planes, weights, path, sink, self.layer_bias(i))
        return planes
