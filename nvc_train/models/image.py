"""CompressAI's image hyperpriors, unforked: construction, quality tables and a training forward.

``bmshj2018-hyperprior`` (:class:`compressai.models.ScaleHyperprior`: GDN analysis and
synthesis, a scale-only hyperprior) and ``mbt2018-mean``
(:class:`compressai.models.MeanScaleHyperprior`: the same transforms, a mean-scale
hyperprior). The model objects are CompressAI's own classes with their own state dicts, so
checkpoints stay loadable by CompressAI's tools. :func:`image_forward` mirrors their
``forward`` but lets the caller decide how the hyperprior runs (float, as in CompressAI, or
through the integer QAT hyper-decoder).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from compressai.models import MeanScaleHyperprior, ScaleHyperprior
from compressai.ops import quantize_ste
from torch import Tensor, nn

from nvc_train.errors import UserError, require_file

IMAGE_MODELS: dict[str, type[ScaleHyperprior]] = {
    "bmshj2018-hyperprior": ScaleHyperprior,
    "mbt2018-mean": MeanScaleHyperprior,
}
"""CompressAI's names of the image architectures nvc-train trains and makes exact."""

ZOO_CHANNELS: dict[str, dict[int, tuple[int, int]]] = {
    "bmshj2018-hyperprior": {q: (128, 192) if q <= 5 else (192, 320) for q in range(1, 9)},
    "mbt2018-mean": {q: (128, 192) if q <= 4 else (192, 320) for q in range(1, 9)},
}
"""(N, M) per quality, as ``compressai.zoo.image.cfgs`` has them."""

IMAGE_MULTIPLE = 64
"""Image height and width must be multiples of this (four stride-2 layers, then two more in
the hyperprior)."""


class ImageHyperprior(NamedTuple):
    """An image model's hyperprior, in the terms the integer codec uses for SSF's.

    Attributes:
        hyper_encoder: y → z (``h_a(|y|)`` for the scale-only model, ``h_a(y)`` otherwise).
        hyper_decoder: ``h_s``.
        entropy_bottleneck, gaussian_conditional: the model's entropy models.
        has_means: whether ``h_s`` predicts means as well as scales.
    """

    hyper_encoder: Callable[[Tensor], Tensor]
    hyper_decoder: nn.Module
    entropy_bottleneck: nn.Module
    gaussian_conditional: nn.Module
    has_means: bool


def architecture_of(model: nn.Module) -> str:
    """The CompressAI name of an image model object."""
    for name, cls in IMAGE_MODELS.items():
        if type(model) is cls:
            return name
    raise TypeError(f"not an image model nvc-train knows: {type(model).__name__}")


def build_image_model(architecture: str, channels: tuple[int, int]) -> ScaleHyperprior:
    """A freshly initialised CompressAI image model of ``architecture`` with (N, M) channels."""
    if architecture not in IMAGE_MODELS:
        raise ValueError(f"unknown image architecture {architecture!r}; choose one of {', '.join(IMAGE_MODELS)}")
    n, m = channels
    return IMAGE_MODELS[architecture](N=int(n), M=int(m))


def image_hyperprior(model: ScaleHyperprior) -> ImageHyperprior:
    has_means = isinstance(model, MeanScaleHyperprior)
    encoder = model.h_a if has_means else (lambda y: model.h_a(y.abs()))
    return ImageHyperprior(encoder, model.h_s, model.entropy_bottleneck, model.gaussian_conditional, has_means)


HyperpriorForward = Callable[[ImageHyperprior, Tensor], tuple[Tensor, dict[str, Tensor]]]


def image_forward(model: ScaleHyperprior, x: Tensor, hp_forward: HyperpriorForward | None = None,
                  synthesis: Callable[[nn.Module, Tensor], Tensor] | None = None) -> dict:
    """Training forward: CompressAI's ``model(x)`` when ``hp_forward`` is None, else the
    analysis, ``hp_forward(hyperprior, y) → (y_hat, likelihoods)`` and the synthesis
    (``synthesis(g_s, y_hat)`` when given, e.g. the simulated integer one, else ``g_s(y_hat)``).

    Args:
        x: (N, 3, H, W) float32 in [0, 1], H and W multiples of 64.

    Returns:
        ``{"x_hat": (N, 3, H, W), "likelihoods": {"y": …, "z": …}}`` as CompressAI's.
    """
    if hp_forward is None:
        return model(x)
    y = model.g_a(x)
    y_hat, likelihoods = hp_forward(image_hyperprior(model), y)
    x_hat = synthesis(model.g_s, y_hat) if synthesis is not None else model.g_s(y_hat)
    return {"x_hat": x_hat, "likelihoods": likelihoods}


def float_hyperprior_forward(hp: ImageHyperprior, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """CompressAI's float hyperprior with ``y_hat`` rounded straight through (as SSF's
    training forward does), for comparisons with the QAT forward."""
    z = hp.hyper_encoder(y)
    z_hat, z_likelihoods = hp.entropy_bottleneck(z)
    params = hp.hyper_decoder(z_hat)
    scales, means = params.chunk(2, 1) if hp.has_means else (params, None)
    _, y_likelihoods = hp.gaussian_conditional(y, scales, means=means)
    y_hat = quantize_ste(y - means) + means if means is not None else quantize_ste(y)
    return y_hat, {"y": y_likelihoods, "z": z_likelihoods}


def read_image_state_dict(path: str) -> dict[str, Tensor]:
    """A CompressAI image state dict (plain, ``{"state_dict": …}``, or a float fit run's
    ``model.*`` weights), with CompressAI's zoo key renaming applied."""
    from compressai.zoo.pretrained import load_pretrained

    path = require_file(path, "checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise UserError(f"{path} is not a readable state dict ({type(exc).__name__})") from None
    if isinstance(obj, dict) and "pytorch-lightning_version" in obj and isinstance(obj.get("state_dict"), dict):
        obj = {k.removeprefix("model."): v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    obj = load_pretrained(obj)
    if "g_a.0.weight" not in obj or "g_a.6.weight" not in obj:
        raise UserError(f"{path} is not an image hyperprior state dict (no g_a.0/g_a.6 weights; a video checkpoint?)")
    return obj


def load_image_state_dict(model, state_dict: dict[str, Tensor], source: str) -> None:
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise UserError(f"{source} is not a {type(model).__name__} state dict: "
                        + "; ".join(f"{label}: {', '.join(keys[:3])}" for label, keys in
                                    (("missing", missing), ("unexpected", unexpected)) if keys))
    model.load_state_dict(state_dict)  # CompressAI's loader resizes the entropy tables
