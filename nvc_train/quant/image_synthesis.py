"""Integer synthesis of CompressAI's image models: the pixel-exact half of an image decoder.

bmshj2018-hyperprior and mbt2018-mean share one synthesis ``g_s``::

    deconv(M, N), IGDN, deconv(N, N), IGDN, deconv(N, N), IGDN, deconv(N, 3)

with every deconv a 5×5 stride-2 transposed convolution (SSF's layer geometry) and IGDN
CompressAI's inverse GDN, ``out_i = x_i · sqrt(β_i + Σ_j γ_ij · x_j²)``. The integer
function (docs/integer-contract.md, "Image architectures", "Pixel-exact images"):

* the latent ``y_int = symbol·2**8 + mean_q`` enters the first layer as in SSF's synthesis
  (:data:`~nvc_train.quant.synthesis.INPUT_BOUND`);
* each transposed layer: int8 per-channel weights, exact int64 accumulators
  (:mod:`nvc_train.quant.exact_conv`), proven below 2**53 at export;
* each IGDN, on signed activations ``x`` in [−Q, Q] (Q = 2**15 − 1 at 16 bits):

  - ``x = requantize(acc)`` (fixed point, round half up, clamp);
  - ``norm = β_int + Σ_j γ_int · x_j²``: a 1×1 exact convolution of ``x²``
    (:mod:`nvc_train.quant.exact_conv2d`) with γ as integers in [0, :data:`GAMMA_QMAX`] per
    output channel and β at the norm's scale, proven below 2**53;
  - ``r = floor(sqrt(norm · 4**f))`` (``norm >> −2f`` when f < 0), an exact integer square
    root (:func:`floor_sqrt`), with f chosen at export so that r < 2**:data:`ROOT_BITS`;
  - ``out = requantize(x · r)`` into [−Q, Q];
* the last layer's accumulators are requantized onto the sample grid of SSF's pixel path
  (255·2**8 per unit) and :func:`nvc_train.codec.pixel_decoder.to_levels` makes the levels.

Every step is integer arithmetic whose result is unique (the square root included), so a
decoded image is bit-identical on every machine and GEMM path.

Training (:class:`FakeQuantImageSynthesis`) simulates it in float32 with straight-through
estimators, as SSF's synthesis QAT does: these layers decide pixels, not which probability
table the range decoder reads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from compressai.layers import GDN
from compressai.ops import quantize_ste
from torch import Tensor, nn

from nvc_train.quant import arith, exact_conv, exact_conv2d
from nvc_train.quant.config import MEAN_FRAC_BITS, QuantConfig
from nvc_train.quant.frozen import FrozenLayers
from nvc_train.quant.integer import ExportError
from nvc_train.quant.qat_conv import fake_quant_lsq, observed_quantile
from nvc_train.quant.synthesis import INPUT_BOUND, SAMPLE_BOUND, SAMPLE_UNITS, integer_layer

GAMMA_QMAX = 2**11 - 1
"""γ is stored as integers in [0, 2047] per output channel (rounded half to even, then
clamped): GDN's γ is a diagonal of ~0.1 with much smaller off-diagonal terms, which int8
would round to zero."""

ROOT_BITS = 24
"""The scaled square root r stays below 2**24: precise to 2**-24 of its range, and
``x · r`` stays below 2**39, far inside int64."""

SQRT_LIMIT = 2**62
""":func:`floor_sqrt` takes integers in [0, 2**62)."""

BETA_LIMIT = 2**50
"""β_int stays at or below about 2**50: where β dominates the norm (small activations), γ's
step is made coarser instead, so that the norm stays below 2**53 with Σ γ_int·Q² <= 2**50.
The terms γ loses that way are below 2**-50 of β."""


def synthesis_stages(g_s: nn.Module) -> list[tuple[nn.ConvTranspose2d, GDN | None]]:
    """(transposed convolution, the inverse GDN after it or None for the last) of ``g_s``.

    Raises ValueError for any other structure (a forward GDN, another kernel or stride, a
    module between them)."""
    stages: list[tuple[nn.ConvTranspose2d, GDN | None]] = []
    modules = list(g_s.children())
    for k, module in enumerate(modules):
        if isinstance(module, nn.ConvTranspose2d):
            if (module.kernel_size, module.stride, module.padding, module.output_padding) != ((5, 5), (2, 2), (2, 2), (1, 1)):
                raise ValueError(f"unsupported transposed convolution {module}")
            stages.append((module, None))
        elif isinstance(module, GDN) and module.inverse and stages and stages[-1][1] is None and k < len(modules) - 1:
            stages[-1] = (stages[-1][0], module)
        else:
            raise ValueError(f"unsupported synthesis module {module} (deconv and inverse GDN are defined)")
    if len(stages) < 2 or any(gdn is None for _, gdn in stages[:-1]):
        raise ValueError("the synthesis must alternate transposed convolutions and inverse GDNs")
    return stages


def gdn_parameters(gdn: GDN) -> tuple[Tensor, Tensor]:
    """(γ (C, C) float32 ≥ 0, β (C,) float32 > 0) after CompressAI's reparametrisation."""
    beta = gdn.beta_reparam(gdn.beta)
    gamma = gdn.gamma_reparam(gdn.gamma)
    return gamma.reshape(beta.numel(), beta.numel()), beta


def quantize_gamma(gamma: Tensor, beta: Tensor, s_x: Tensor) -> tuple[Tensor, Tensor]:
    """γ (C_out, C_in) ≥ 0 → integer-valued float32 in [0, GAMMA_QMAX] and (C_out,) float32
    scales, divided in float64 as the weights are.

    The step of row i is ``max_j γ_ij / GAMMA_QMAX``, or ``β_i / (s_x²·BETA_LIMIT)`` where that
    is coarser (β then dominates every norm of that channel)."""
    g = gamma.detach()
    max_abs = g.abs().amax(dim=1).double()
    beta_floor = beta.detach().double() / (float(s_x.detach()) ** 2 * BETA_LIMIT)
    scale = torch.maximum(max_abs / GAMMA_QMAX, beta_floor)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).float()
    g_int = g.double().div(scale.double().view(-1, 1)).round_().clamp_(0, GAMMA_QMAX)
    return g_int.float(), scale


SQRT_CORRECTIONS = 512
"""Most correction steps :func:`floor_sqrt` takes each way: a float32 estimate below 2**62 is
off by at most a few hundred (203 measured), a float64 one by one."""


def floor_sqrt(v: Tensor, estimate_dtype: torch.dtype | None = None) -> Tensor:
    """``floor(sqrt(v))`` of int64 ``v`` in [0, 2**62), exact on every device.

    A float estimate (float64, or float32 where a backend has no float64; ``estimate_dtype``
    chooses) is corrected with integer comparisons until ``r² <= v < (r + 1)²``; that
    integer is unique, so the result does not depend on how the estimate was rounded.
    Raises ValueError for values outside [0, 2**62)."""
    if v.numel() and (bool((v < 0).any()) or bool((v >= SQRT_LIMIT).any())):
        raise ValueError("integer square roots are defined on [0, 2**62)")
    dtype = estimate_dtype or (torch.float32 if v.device.type == "mps" else torch.float64)
    r = torch.sqrt(v.to(dtype)).floor_().long().clamp_(0, 2**31 - 1)
    for step, test in ((-1, lambda r: r * r > v), (1, lambda r: (r + 1) * (r + 1) <= v)):
        for _ in range(SQRT_CORRECTIONS):
            wrong = test(r)
            if not bool(wrong.any()):
                break
            r.add_(wrong.long() * step)
        else:
            raise ValueError("integer square root did not converge")  # an estimate off by > 512: a broken sqrt
    return r


def root_shift(norm_bound: int) -> int:
    """f such that ``floor(sqrt(norm · 4**f))`` stays below 2**ROOT_BITS for norm <= norm_bound."""
    return ROOT_BITS - (int(norm_bound).bit_length() + 1) // 2


def scaled_root(norm: Tensor, f: int) -> Tensor:
    """``floor(sqrt(norm · 4**f))`` (f >= 0) or ``floor(sqrt(norm >> −2f))`` (f < 0), int64.
    ``f`` is the exported :func:`root_shift` of the norm bound, so ``norm · 4**f`` < 2**49."""
    if not -32 < f < 32:
        raise ValueError(f"root shift {f} is outside (-32, 32)")
    scaled = norm << (2 * f) if f >= 0 else norm >> (-2 * f)
    return floor_sqrt(scaled)


def norm_bound(gamma_int: Tensor, beta_int: Tensor, x_bound: int) -> int:
    """Largest ``β_int + Σ_j γ_int · x_j²`` over |x| <= x_bound, in Python integers on the host
    (no int64 wrap, whatever device the tensors are on)."""
    rows = gamma_int.detach().long().reshape(gamma_int.shape[0], -1).sum(dim=1).cpu().tolist()
    return max(int(b) + int(g) * int(x_bound) ** 2 for g, b in zip(rows, beta_int.detach().cpu().tolist()))


class FakeQuantImageSynthesis(nn.Module):
    """QAT twin of an image synthesis: int8 weights, signed integer activations around each
    inverse GDN, γ on its integer grid, integer output samples.

    State: ``act_log_range`` (2G,) for G inverse GDNs, the log of the range (step × Q) of
    each GDN's input (even entries) and output (odd entries), learned as the image
    hyper-decoder's are; and ``calibrated``.
    """

    def __init__(self, num_gdns: int, config: QuantConfig):
        super().__init__()
        self.config = config
        self.act_log_range = nn.Parameter(torch.zeros(2 * num_gdns), requires_grad=config.act_range == "learned")
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    @property
    def qmax(self) -> int:
        """Q: activations are signed integers in [−Q, Q]."""
        return 2 ** (self.config.decoder_activation_bits - 1) - 1

    def act_step(self, k: int) -> Tensor:
        """Step of activation ``k`` (0-dim float32, positive; carries the LSQ gradient)."""
        return (torch.exp(self.act_log_range[k].double()) / self.qmax).float()

    @torch.no_grad()
    def _calibrate(self, k: int, value: Tensor) -> None:
        v = observed_quantile(value.detach().float().abs(), self.config.observe_quantile)
        self.act_log_range[k] = torch.log(torch.clamp(v * self.config.range_headroom, min=1e-3))

    def forward(self, g_s: nn.Module, y_hat: Tensor) -> Tensor:
        """``g_s``'s weights through the simulated integer model.

        Args:
            g_s: the float synthesis (its weights and GDN parameters are used).
            y_hat: (N, M, h, w) float32 latents on the 2**-8 grid.

        Returns:
            (N, 3, 16h, 16w) float32 on the sample grid (multiples of 1/(255·2**8)),
            gradients straight through.
        """
        if not bool(self.calibrated):
            with torch.no_grad():
                self._run(g_s, y_hat, calibrate=True)
            self.calibrated.fill_(True)
        return self._run(g_s, y_hat, calibrate=False)

    def _lsq(self, value: Tensor, k: int, calibrate: bool) -> tuple[Tensor, Tensor]:
        if calibrate:
            self._calibrate(k, value)
        s = self.act_step(k)
        q = self.qmax
        s_lsq = arith.lsq_grad_scale(s, 1.0 / math.sqrt(value[0].numel() * q))
        return fake_quant_lsq(value, s_lsq, -q, q), s

    def _run(self, g_s: nn.Module, x: Tensor, calibrate: bool) -> Tensor:
        s_in: Tensor = torch.tensor(2.0**-MEAN_FRAC_BITS)
        stages = synthesis_stages(g_s)
        for i, (conv, gdn) in enumerate(stages):
            w_int, s_w = arith.quantize_weight_per_channel(conv.weight)
            w_fq = conv.weight + (w_int * s_w.view(1, -1, 1, 1) - conv.weight).detach()
            acc_scale = arith.accumulator_scale(s_in, s_w)
            b_int = arith.quantize_bias(conv.bias, acc_scale)
            b_fq = conv.bias + ((b_int.double() * acc_scale).float() - conv.bias).detach()
            y = F.conv_transpose2d(x, w_fq, b_fq, stride=2, padding=2, output_padding=1)
            if gdn is None:
                return torch.clamp(quantize_ste(y * SAMPLE_UNITS), -SAMPLE_BOUND, SAMPLE_BOUND) / SAMPLE_UNITS
            x_q, s_x = self._lsq(y, 2 * i, calibrate)
            gamma, beta = gdn_parameters(gdn)
            g_int, s_g = quantize_gamma(gamma, beta, s_x)
            g_fq = gamma + (g_int * s_g.view(-1, 1) - gamma).detach()
            norm = F.conv2d(x_q * x_q, g_fq.reshape(*g_fq.shape, 1, 1), beta)
            x, s_out = self._lsq(x_q * torch.sqrt(norm), 2 * i + 1, calibrate)
            s_in = s_out.detach()
        raise AssertionError("unreachable")


def _checked(fp: arith.FixedPoint, where: str) -> arith.FixedPoint:
    try:
        arith.check_fixed_point(fp)
    except ValueError as exc:
        raise ExportError(f"synthesis {where}: {exc}") from None
    return fp


def convert_image_synthesis(g_s: nn.Module, fq: FakeQuantImageSynthesis) -> dict[str, Tensor]:
    """Integer tensors of an image synthesis, every bound proven.

    Returns, per layer i: ``layer{i}.weight`` int8 (C_in, C_out, 5, 5), ``.bias`` int64,
    ``.acc_bound``; the last layer ``.multiplier/.shift/.saturation`` onto the sample grid;
    per inverse GDN after layer i: ``gdn{i}.gamma`` int64 (C, C, 1, 1), ``.beta`` int64 (C,),
    ``.norm_bound``, ``.root_shift`` (f), ``.act_hi`` (Q), ``.in.*`` (accumulator → x) and
    ``.out.*`` (x·r → the next layer's input) fixed-point multipliers.
    """
    if not bool(fq.calibrated):
        raise ExportError("the image synthesis was never calibrated: train with model.qat.scope=decoder first")
    s_in: Tensor = torch.tensor(2.0**-MEAN_FRAC_BITS)
    bound, q = INPUT_BOUND, fq.qmax
    out: dict[str, Tensor] = {}
    stages = synthesis_stages(g_s)
    for i, (conv, gdn) in enumerate(stages):
        acc_scale = integer_layer(conv, s_in, bound, "synthesis", out, i)
        if gdn is None:
            fp = _checked(arith.fixed_point(acc_scale * SAMPLE_UNITS, SAMPLE_BOUND), f"layer {i}")
            out[f"layer{i}.multiplier"], out[f"layer{i}.shift"], out[f"layer{i}.saturation"] = fp
            return {k: v.cpu() for k, v in out.items()}  # host tensors, whichever device trained
        s_x, s_y = fq.act_step(2 * i).detach(), fq.act_step(2 * i + 1).detach()
        gamma, beta = gdn_parameters(gdn)
        g_int, s_g = quantize_gamma(gamma, beta, s_x)
        # β at the norm's scale s_g·s_x² (per output channel), on the host in float64.
        norm_scale = s_g.double().cpu() * float(s_x) ** 2
        beta_int = torch.round(beta.detach().double().cpu() / norm_scale).long()
        nb = norm_bound(g_int, beta_int, q)
        if nb >= arith.EXACT_FLOAT64:
            raise ExportError(f"synthesis GDN {i}: norms may reach {nb:.3g} >= 2**53")
        f = root_shift(nb)
        # out = x·sqrt(norm·s_g·s_x²) = (x·r)·s_x²·sqrt(s_g)·2**-f, in units of s_y.
        real = torch.tensor([float(s_x) ** 2 * math.sqrt(g) * 2.0**-f / float(s_y) for g in s_g.double().tolist()],
                            dtype=torch.float64)
        fixed = {"in.": arith.fixed_point(arith.requantization_multiplier(acc_scale, s_x), q),
                 "out.": arith.fixed_point(real, q)}
        for prefix, fp in fixed.items():
            fp = _checked(fp, f"GDN {i} ({prefix[:-1]})")
            key = f"gdn{i}.{prefix}"
            out[key + "multiplier"], out[key + "shift"], out[key + "saturation"] = fp
        c = g_int.shape[0]
        out[f"gdn{i}.gamma"] = g_int.long().reshape(c, c, 1, 1).cpu()
        out[f"gdn{i}.beta"] = beta_int
        out[f"gdn{i}.norm_bound"] = torch.tensor(nb, dtype=torch.int64)
        out[f"gdn{i}.root_shift"] = torch.tensor(f, dtype=torch.int64)
        out[f"gdn{i}.act_hi"] = torch.tensor(q, dtype=torch.int64)
        s_in, bound = s_y, q
    raise AssertionError("unreachable")


class IntegerImageSynthesis(FrozenLayers):
    """Exact inference of a frozen image synthesis from :func:`convert_image_synthesis` tensors
    (``gemm_path`` as for every :class:`~nvc_train.quant.frozen.FrozenLayers`)."""

    def __init__(self, tensors: dict[str, Tensor]):
        super().__init__(tensors)
        self.num_layers = sum(1 for k in tensors if k.startswith("layer") and k.endswith(".weight"))

    def gamma_weights(self, i: int, path: str, device: torch.device) -> exact_conv2d.PreparedConv:
        """GDN ``i``'s γ as 1×1 GEMM operands for ``path``, built once per buffer version."""
        return self.prepared(f"gdn{i}.gamma", path, device, exact_conv2d.prepare_conv_weights)

    def inverse_gdn(self, i: int, acc: Tensor, path: str, trace: list[Tensor] | None = None) -> Tensor:
        """Layer ``i``'s accumulators (N, C, H, W) int64 → the next layer's input in [−Q, Q]."""
        q = int(self._t(f"gdn{i}.act_hi"))
        x = arith.requantize(acc, self._fp(f"gdn{i}.in."), -q, q, inplace=True)
        norm = exact_conv2d.conv_accumulators(x * x, self.gamma_weights(i, path, x.device), path,
                                              self._t(f"gdn{i}.beta"))
        if trace is not None:
            trace.append(norm)
        root = scaled_root(norm, int(self._t(f"gdn{i}.root_shift")))
        del norm
        return arith.requantize(x.mul_(root), self._fp(f"gdn{i}.out."), -q, q, inplace=True)

    @torch.compiler.disable
    def forward(self, y_int: Tensor) -> Tensor:
        """(N, M, h, w) int64 latents on the 2**-8 grid → (N, 3, 16h, 16w) int64 samples
        (255·2**8 per unit of pixel value, |sample| <= SAMPLE_BOUND)."""
        return self.run(y_int)

    def accumulators(self, y_int: Tensor) -> list[Tensor]:
        """Every layer's accumulators and every GDN's norms, in order: what the stress
        conformance record hashes."""
        trace: list[Tensor] = []
        self.run(y_int, trace)
        return trace

    def run(self, y_int: Tensor, trace: list[Tensor] | None = None) -> Tensor:
        path = self.path_for(y_int.device)
        x = y_int.long()
        for i in range(self.num_layers):
            acc = self.layer_accumulator(i, x, path)
            if trace is not None:
                trace.append(acc.clone())
            if i == self.num_layers - 1:
                return arith.requantize(acc, self._fp(f"layer{i}."), -SAMPLE_BOUND, SAMPLE_BOUND, inplace=True)
            x = self.inverse_gdn(i, acc, path, trace)
        raise AssertionError("unreachable")


def image_synthesis_tensors(model: nn.Module, fq: FakeQuantImageSynthesis) -> dict[str, Tensor]:
    """The converted synthesis of an image model, keys prefixed ``synthesis.``."""
    return {f"synthesis.{k}": v for k, v in convert_image_synthesis(model.g_s, fq).items()}


def gemm_paths(device: torch.device) -> list[str]:
    """The GEMM paths that run on ``device`` (int8 only where ``torch._int_mm`` passes its probe)."""
    return [p for p in exact_conv.PATHS if p != "int8" or exact_conv.int_mm_works(device.type, device.index)]
