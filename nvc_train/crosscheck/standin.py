"""Untrained, calibrated integer checkpoints: stand-ins where no trained one is at hand.

The integer arithmetic does not care whether the weights are trained: a freshly initialised
SSF (seed 0) whose activation ranges are calibrated on one synthetic clip exports an integer
checkpoint with every layer, bound and conformance record a trained one has. Used by
``nvc-train cross-check`` without a demo checkpoint and by the GPU and speed benchmarks.
"""

from __future__ import annotations

from pathlib import Path


def untrained_checkpoint(out_dir: Path, pixel_exact: bool = False, name: str | None = None) -> Path:
    """Export the stand-in into ``out_dir`` (hyperprior scope, or with ``pixel_exact`` the
    whole decoder: a format-3 checkpoint); returns the checkpoint's path."""
    import torch
    from compressai.models.video import ScaleSpaceFlow

    from nvc_train.data.synthetic import synthetic_clip
    from nvc_train.models.ssf import PARTS, SYNTHESIS_ATTR, hyperprior
    from nvc_train.quant.config import QuantConfig
    from nvc_train.quant.export import export_integer_checkpoint
    from nvc_train.quant.fake_quant import HyperpriorQAT

    torch.manual_seed(0)
    model = ScaleSpaceFlow().eval()
    qat = HyperpriorQAT(QuantConfig(scope="decoder" if pixel_exact else "hyperprior")).eval()
    frames = [f.unsqueeze(0) for f in synthetic_clip(1, 2, 256, 256)]
    with torch.no_grad():
        latents = {"keyframe": model.img_encoder(frames[0]),
                   "motion": model.motion_encoder(torch.cat(frames[::-1], dim=1)),
                   "residual": model.res_encoder(frames[1] - frames[0])}
        for part in PARTS:
            qat.hyperprior_forward(part, hyperprior(model, part), latents[part])
        if pixel_exact:
            inputs = {"img": latents["keyframe"], "motion": latents["motion"],
                      "res": torch.cat((latents["residual"], latents["motion"]), dim=1)}
            for decoder, attr in SYNTHESIS_ATTR.items():
                y = torch.round(inputs[decoder] * 256) / 256  # the 2**-8 grid of decoded latents
                qat.synthesis.decoder_forward(decoder, getattr(model, attr), y)
    name = name or ("gpu-check-pixel" if pixel_exact else "gpu-check")
    return export_integer_checkpoint(model, qat, out_dir, name, {"quality": None, "note": "untrained"})
