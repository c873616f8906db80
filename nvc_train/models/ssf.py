"""CompressAI's ScaleSpaceFlow, unforked: construction, strict loading, and a training forward.

The model object is a :class:`FlowReferenceSSF`: CompressAI's ``ScaleSpaceFlow`` with one
override (``forward_prediction`` rescales the decoded flow to the frame, CompressAI issue
#307) and an identical state dict, so it stays loadable by CompressAI's own tools. :func:`ssf_forward` mirrors
``ScaleSpaceFlow.forward`` but lets the caller decide how each hyperprior runs (float, as
in CompressAI, or through the QAT fake-quant hyper-decoders) and keeps the entropy
parameters out of reduced-precision autocast.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.models.video import ScaleSpaceFlow
from torch import Tensor, nn

from nvc_train.errors import UserError, require_file
from nvc_train.models.entropy import resize_entropy_buffers  # noqa: F401 (re-exported)
from nvc_train.models.geometry import MODEL_MULTIPLE  # noqa: F401 (re-exported)

PARTS = ("keyframe", "motion", "residual")
"""Names of the three hyperpriors, as CompressAI's likelihood dicts call them."""

HYPERPRIOR_ATTR = {"keyframe": "img_hyperprior", "motion": "motion_hyperprior", "residual": "res_hyperprior"}



def rescale_flow(motion_info: Tensor, flow_reference: int) -> Tensor:
    """Motion-decoder output with its flow rescaled from the reference size to this frame.

    ``ScaleSpaceFlow.warp_volume`` adds the flow to a grid spanning [-1, 1] across the frame,
    so one flow unit is half the frame's width (height): a motion decoder trained on R-pixel
    crops means ``f·R/2`` pixels by an output ``f``, but moves ``f·W/2`` pixels on a W-wide
    frame. Multiplying x by R/W and y by R/H keeps the pixel displacement; at W = H = R the
    factors are exactly 1 and the result is bit-identical to the stock warp.

    Args:
        motion_info: (N, 3, H, W) flow x, flow y, scale field, at the (padded) frame size.
        flow_reference: R, the square size in pixels at which flow units are defined.
    """
    height, width = motion_info.shape[-2:]
    # Python-number factors (not a tensor made from a list): on a GPU, a tensor built from
    # host values is a blocking copy. The kernels cast the number to float32 first, so the
    # products are those of a float32 factor tensor.
    return torch.cat((motion_info[:, :1] * (flow_reference / width), motion_info[:, 1:2] * (flow_reference / height),
                      motion_info[:, 2:]), dim=1)


class HostFreeEntropyBottleneck(EntropyBottleneck):
    """CompressAI's EntropyBottleneck with the same forward, minus its reads back to the host.

    CompressAI builds the (C, N, …) permutation as a tensor on the input's device and
    permutes by it: on a GPU the tensor is a blocking copy and each of the 12 elements read
    back by the three permutations is a synchronisation, and a 3-frame SSF step makes five
    calls (tests/lit/test_gpu_step.py counted 125 synchronisations per step on an H100
    before this change). Here the permutation is a Python tuple: same order, same
    arithmetic, same results bit for bit (tests/models/test_ssf.py).
    """

    def forward(self, x: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        if training is None:
            training = self.training
        perm = (1, 0, *range(2, x.ndim))  # swaps N and C; its own inverse
        x = x.permute(*perm).contiguous()
        shape = x.size()
        values = x.reshape(x.size(0), 1, -1)
        outputs = self.quantize(values, "noise" if training else "dequantize", self._get_medians())
        likelihood, _, _ = self._likelihood(outputs)
        if self.use_likelihood_bound:
            likelihood = self.likelihood_lower_bound(likelihood)
        outputs = outputs.reshape(shape).permute(*perm).contiguous()
        likelihood = likelihood.reshape(shape).permute(*perm).contiguous()
        return outputs, likelihood


class FlowReferenceSSF(ScaleSpaceFlow):
    """ScaleSpaceFlow whose flow means the same pixel motion at every frame size.

    ``flow_reference`` (pixels) is the crop size the model was trained on; ``None`` keeps
    CompressAI's behaviour (flow in units of half the frame, CompressAI issue #307). It is a
    property of the weights, not of the state dict: checkpoints store it beside the weights.
    Every path that warps (training forward, CompressAI's ``compress``/``decompress``, the
    integer codec) goes through :meth:`forward_prediction`.
    """

    def __init__(self, flow_reference: int | None = None):
        super().__init__()
        self.flow_reference = check_flow_reference(flow_reference)
        for module in self.modules():
            if type(module) is EntropyBottleneck:
                module.__class__ = HostFreeEntropyBottleneck  # same parameters and buffers

    def forward_prediction(self, x_ref: Tensor, motion_info: Tensor) -> Tensor:
        if self.flow_reference is not None:
            motion_info = rescale_flow(motion_info, self.flow_reference)
        return super().forward_prediction(x_ref, motion_info)


def check_flow_reference(flow_reference: int | None) -> int | None:
    """``None`` or a positive number of pixels; anything else is a one-line error."""
    if flow_reference is None:
        return None
    if isinstance(flow_reference, bool) or not isinstance(flow_reference, int) or flow_reference < 1:
        raise UserError(f"flow_reference must be a positive number of pixels (the training crop size) or null, "
                        f"got {flow_reference!r}")
    return flow_reference


def build_ssf(flow_reference: int | None = None) -> FlowReferenceSSF:
    """A freshly initialised ScaleSpaceFlow with CompressAI's defaults."""
    return FlowReferenceSSF(flow_reference)


def hyperprior(model: ScaleSpaceFlow, part: str) -> nn.Module:
    """The Hyperprior sub-model of ``part`` ("keyframe", "motion" or "residual")."""
    return getattr(model, HYPERPRIOR_ATTR[part])


class FrameOutput(NamedTuple):
    """One frame of :func:`ssf_forward`: reconstruction (N, 3, H, W) and likelihoods per latent."""

    x_hat: Tensor
    likelihoods: dict[str, dict[str, Tensor]]


HyperpriorForward = Callable[[str, nn.Module, Tensor], tuple[Tensor, dict[str, Tensor]]]


def float_hyperprior_forward(part: str, hp: nn.Module, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """CompressAI's own Hyperprior.forward (noisy z for the hyper-decoders)."""
    return hp(y)


DecoderForward = Callable[[str, nn.Module, Tensor], Tensor]

SYNTHESIS_ATTR = {"img": "img_decoder", "motion": "motion_decoder", "res": "res_decoder"}


def ssf_forward(
    model: ScaleSpaceFlow,
    frames: list[Tensor],
    hyperprior_forward: HyperpriorForward = float_hyperprior_forward,
    autocast_dtype: torch.dtype | None = None,
    decoder_forward: DecoderForward | None = None,
) -> list[FrameOutput]:
    """ScaleSpaceFlow.forward with a pluggable hyperprior and optional autocast.

    Args:
        frames: T tensors (N, 3, H, W) in [0, 1]; the first is coded as a keyframe.
        hyperprior_forward: runs one hyperprior on a latent y (N, 192, H/16, W/16).
        autocast_dtype: e.g. torch.bfloat16 to run the analysis/synthesis transforms in
            reduced precision; hyperpriors (entropy parameters) always run in float32.
        decoder_forward: runs a synthesis decoder (``"img"``, ``"motion"``, ``"res"``, the
            module, its input) instead of the float module, in float32 outside autocast
            (the integer decoders' QAT: bf16 stays on the encoder side).

    Returns:
        T :class:`FrameOutput`; like CompressAI, the reference of frame t+1 is the detached
        reconstruction of frame t (no gradient through time, as in the SSF paper).
    """
    device_type = frames[0].device.type

    def transforms():
        return torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    def run_hyperprior(part: str, y: Tensor):
        with torch.autocast(device_type, enabled=False):
            return hyperprior_forward(part, hyperprior(model, part), y.float())

    def decode(name: str, y: Tensor) -> Tensor:
        module = getattr(model, SYNTHESIS_ATTR[name])
        if decoder_forward is None:
            with transforms():
                return module(y).float()
        with torch.autocast(device_type, enabled=False):
            return decoder_forward(name, module, y.float())

    outputs = []
    with transforms():
        y = model.img_encoder(frames[0])
    y_hat, lik = run_hyperprior("keyframe", y)
    x_hat = decode("img", y_hat)
    outputs.append(FrameOutput(x_hat, {"keyframe": lik}))
    x_ref = x_hat.detach()
    for x_cur in frames[1:]:
        with transforms():
            y_motion = model.motion_encoder(torch.cat((x_cur, x_ref), dim=1))
        y_motion_hat, lik_motion = run_hyperprior("motion", y_motion)
        motion_info = decode("motion", y_motion_hat)
        x_pred = model.forward_prediction(x_ref, motion_info)
        with transforms():
            y_res = model.res_encoder(x_cur - x_pred)
        y_res_hat, lik_res = run_hyperprior("residual", y_res)
        x_res_hat = decode("res", torch.cat((y_res_hat, y_motion_hat), dim=1))
        x_rec = x_pred + x_res_hat
        outputs.append(FrameOutput(x_rec, {"motion": lik_motion, "residual": lik_res}))
        x_ref = x_rec.detach()
    return outputs


class FloatCheckpoint(NamedTuple):
    """A float ScaleSpaceFlow file: its state dict and what it records of its training.

    Attributes:
        state_dict: the ScaleSpaceFlow weights and entropy tables.
        flow_reference: the flow reference it was trained with (pixels), or None.
        quality: its quality 1..9 (a fit run's, ``export-float``'s record, or the zoo file
            name ``ssf2020-mse-<q>-<sha8>``), or None.
        lmbda: its rate-distortion λ (a fit run's or ``export-float``'s record), or None.
    """

    state_dict: dict[str, Tensor]
    flow_reference: int | None
    quality: int | None = None
    lmbda: float | None = None


def read_state_dict(path: str | Path) -> FloatCheckpoint:
    """Load a ScaleSpaceFlow state dict from a file, with one-line errors for bad files.

    Accepts a plain state dict (CompressAI zoo, ``nvc-train export-float``), a CompressAI
    training checkpoint ``{"state_dict": ...}``, or the Lightning checkpoint of a float
    ``nvc-train fit`` run (its ``model.*`` weights); ``export-float`` of a model with a flow
    reference writes the latter with ``"flow_reference"`` beside it (CompressAI's
    ``eval_model`` reads the state dict and ignores the rest).
    """
    path = require_file(path, "checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise UserError(f"{path} is not a readable ScaleSpaceFlow state dict ({type(exc).__name__}); if it is a "
                        f"Lightning checkpoint, run `nvc-train export-float` on it first") from None
    record: dict = {}
    if isinstance(obj, dict) and "pytorch-lightning_version" in obj and isinstance(obj.get("state_dict"), dict):
        # A float run's last.ckpt: the model's weights are its "model." entries.
        hparams = obj.get("hyper_parameters")
        record = hparams if isinstance(hparams, dict) else {}
        obj = {k.removeprefix("model."): v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        record = obj
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    flow_reference, quality, lmbda = (record.get(k) for k in ("flow_reference", "quality", "lmbda"))
    if flow_reference is not None and not (isinstance(flow_reference, int) and flow_reference >= 1):
        raise UserError(f"{path} records an invalid flow_reference {flow_reference!r}")
    if quality is None:
        # CompressAI's zoo naming (``update_model``, ``export-float --zoo``; the hash and the
        # extension optional): the MSE model of quality q.
        from nvc_train.models.zoo_files import zoo_name_parts

        named = zoo_name_parts(Path(path).name)
        quality = named[1] if named is not None and named[0] == "mse" else None
    if not (isinstance(quality, int) and 1 <= quality <= 9):
        quality = None  # unreadable records are ignored: they only inform defaults
    lmbda = float(lmbda) if isinstance(lmbda, (int, float)) and lmbda > 0 else None
    return FloatCheckpoint(obj, flow_reference, quality, lmbda)


def load_ssf_state_dict(model: ScaleSpaceFlow, state_dict: dict[str, Tensor], source: str = "state dict") -> None:
    """Strictly load ``state_dict`` into ``model``; a mismatch names the offending keys.

    Entropy-model CDF buffers are resized by CompressAI's own loader, never recomputed.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    resizable = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
    wrong_shape = sorted(
        k
        for k in set(expected) & set(state_dict)
        if expected[k].shape != state_dict[k].shape and not k.endswith(resizable)
    )
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise UserError(f"{source} is not a ScaleSpaceFlow state dict: " + "; ".join(parts))
    model.load_state_dict(state_dict)


def load_ssf(path: str | Path, flow_reference: int | None = None) -> FlowReferenceSSF:
    """A ScaleSpaceFlow with the weights (and entropy tables, if present) from ``path``.

    ``flow_reference`` given here wins over one recorded in the file (with a warning if they
    differ: the weights were trained for the file's); ``None`` takes the file's, if any.
    """
    return ssf_from_checkpoint(read_state_dict(path), flow_reference, str(path))


def ssf_from_checkpoint(ckpt: FloatCheckpoint, flow_reference: int | None = None,
                        source: str = "state dict") -> FlowReferenceSSF:
    """:func:`load_ssf` of a file already read (``source`` names it in messages)."""
    if flow_reference is not None and ckpt.flow_reference not in (None, flow_reference):
        warnings.warn(f"{source} records flow_reference={ckpt.flow_reference} but {flow_reference} was asked for; "
                      f"using {flow_reference}", stacklevel=3)
    model = build_ssf(flow_reference if flow_reference is not None else ckpt.flow_reference)
    load_ssf_state_dict(model, ckpt.state_dict, source=source)
    return model
