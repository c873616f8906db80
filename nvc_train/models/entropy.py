"""CompressAI entropy models inside other modules: what loading a state dict needs."""

from __future__ import annotations

from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn


def resize_entropy_buffers(model: nn.Module, state_dict: dict[str, Tensor], prefix: str = "") -> None:
    """Resize the entropy models' CDF buffers to those in ``state_dict`` (no recomputation).

    CompressAI sizes these buffers in ``update()``; a plain ``nn.Module.load_state_dict`` of a
    parent module (e.g. Lightning restoring a checkpoint) would otherwise reject them.
    """
    for name, module in model.named_modules():
        if isinstance(module, EntropyBottleneck):
            buffers = ["_quantized_cdf", "_offset", "_cdf_length"]
        elif isinstance(module, GaussianConditional):
            buffers = ["_quantized_cdf", "_offset", "_cdf_length", "scale_table"]
        else:
            continue
        for buf in buffers:
            key = f"{prefix}{name}.{buf}"
            if key in state_dict:
                getattr(module, buf).resize_(state_dict[key].shape)
