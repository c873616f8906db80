"""Conformance records: the evidence an integer checkpoint carries, checkable on any machine.

Every checkpoint exported by this version carries three records (docs/integer-contract.md,
"Conformance"):

* ``small``: a 128×128 clip coded I P P. Its hyper-latents are 2×2, so it checks border
  taps only; it is the one record of format-1 checkpoints.
* ``realistic``: a 768×512 clip coded I P P: 12×8 hyper-latents, interior taps, GEMMs of a
  real frame's shape. Stored per frame: the SHA-256 of all decoded latents and of each part's,
  and for pixel-exact checkpoints the MD5 of the decoded frame (both clip records).
* ``stress``: for each of the six hyper-decoders and each of its three layers (and, in a
  pixel-exact checkpoint, each of the three synthesis decoders' four layers), an input built
  from that layer's own integer weights so that its accumulators reach the bound proven at
  export (signs follow the weights, magnitudes at the clamp limits: symbols ±2**15 for layer
  0, the activation ceiling for layers 1 and 2). Stored: the input, the SHA-256 of the
  layer's int64 accumulators and of the whole decoder's output on the layer-0 input. Those
  accumulators reach 2**36-2**40 on the models measured (the clip records' about 2**25): a
  float64 GEMM that is not IEEE-exact (emulated FP64 with too few slices, a replaced BLAS)
  rounds them where the clip records' smaller sums survive.

Loading a checkpoint runs :func:`self_test` (bounds recomputed, every layer at its stress
input on every GEMM path against int64 arithmetic, the stored layer-0 hashes);
``nvc-train conformance`` runs every record (:func:`run_checks`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterator, NamedTuple

import torch
from torch import Tensor

from nvc_train.codec.integer_codec import IntegerSSF
from nvc_train.errors import UserError
from nvc_train.models.ssf import PARTS
from nvc_train.quant import arith, exact_conv
from nvc_train.quant.exact_conv import parity_class_sums
from nvc_train.quant.config import SYMBOL_LIMIT
from nvc_train.quant.fake_quant import ROLES, input_bound, integer_hyper_input
from nvc_train.quant.frozen import FrozenLayers
from nvc_train.quant.synthesis import INPUT_BOUND

CLIP_RECORDS = {"small": (128, 128), "realistic": (512, 768)}
"""Bitstream records: name → (height, width) of the synthetic clip, coded I P P."""

CLIP_SEED = 20200614
STRESS_GRID = (12, 15)
"""Spatial size of each stress input: one target output per 3×3 input cell, 20 per layer."""



class Conformance(NamedTuple):
    """A checkpoint's conformance data.

    Attributes:
        records: JSON-able descriptions, in order (see :func:`build_records`).
        tensors: ``"<record>.bitstream"`` uint8 and ``"stress.<part>.<role>.layer<i>"`` int8.
    """

    records: list[dict]
    tensors: dict[str, Tensor]

    def bitstream(self, name: str) -> bytes:
        return self.tensors[f"{name}.bitstream"].numpy().tobytes()

    def describe(self) -> str:
        """One line for model cards: which records, of what size."""
        parts = []
        for rec in self.records:
            if rec["kind"] == "bitstream":
                parts.append(f"{rec['name']} ({rec['width']}×{rec['height']}, {len(rec['frames'])} frames "
                             f"{''.join(f['type'] for f in rec['frames'])})")
            else:
                share = min(c["peak"] / c["bound"] for c in rec["checks"] if c["layer"] == 0)
                synth = sum(c["decoder"].startswith("synth.") for c in rec["checks"])
                which = "the six hyper-decoders" + (f" ({len(rec['checks']) - synth}) and the three synthesis "
                                                    f"decoders ({synth})" if synth else "")
                parts.append(f"{rec['name']} ({len(rec['checks'])} checks of {which}; layer-0 "
                             f"accumulators reach ≥ {share:.1%} of the bound proven at export)")
        return "; ".join(parts)


class Check(NamedTuple):
    """One line of ``nvc-train conformance``: what was decoded, what it hashed to, what was expected."""

    record: str
    item: str
    got: str
    want: str

    @property
    def ok(self) -> bool:
        return bool(self.want) and self.got == self.want


def int_digest(t: Tensor) -> str:
    """SHA-256 (hex) of an integer tensor: its shape, then its values as little-endian int64."""
    h = hashlib.sha256(repr(tuple(t.shape)).encode())
    h.update(t.detach().to("cpu", torch.int64).contiguous().numpy().astype("<i8", copy=False).tobytes())
    return h.hexdigest()


def conformance_clip(height: int, width: int, num_frames: int = 3) -> list[Tensor]:
    """The fixed synthetic clip a bitstream record encodes: frames (1, 3, H, W) in [0, 1]."""
    from nvc_train.data.synthetic import synthetic_clip

    return [f.unsqueeze(0) for f in synthetic_clip(seed=CLIP_SEED, num_frames=num_frames, height=height, width=width)]


def _decoders(codec: IntegerSSF, synthesis: bool = False) -> Iterator[tuple[str, FrozenLayers]]:
    """The six integer hyper-decoders ("<part>.<role>") and, with ``synthesis`` on a
    pixel-exact codec, the three synthesis decoders ("synth.<name>")."""
    for part in PARTS:
        ihp = codec.hyperpriors[part]
        for role in ROLES:
            yield f"{part}.{role}", ihp.mean_decoder if role == "mean" else ihp.scale_decoder
    if synthesis and codec.pixels is not None:
        for name, dec in codec.pixels.decoders.items():
            yield f"synth.{name}", dec


def layer_input_bound(codec: IntegerSSF, decoder: str, dec: FrozenLayers, layer: int) -> int:
    """Largest |input| of ``layer`` any bitstream can give (the bound its accumulators are
    proven for): clamped symbols at layer 0, the previous activation's range after."""
    if layer > 0:
        return max(abs(v) for v in dec.activation_range(layer - 1))
    if decoder.startswith("synth."):
        return INPUT_BOUND
    ihp = codec.hyperpriors[decoder.split(".")[0]]
    return input_bound(ihp.median_q, ihp.input_frac_bits)


def stress_pattern(weight_int: Tensor, bias_int: Tensor, signed: bool, grid: tuple[int, int] = STRESS_GRID) -> Tensor:
    """Input pattern that drives one transposed-conv layer's accumulators to their extremes.

    Each 3×3 cell of the (H, W) grid feeds one target output (the cell's centre times two,
    plus a parity offset): the output channel and parity class with the largest reachable
    |accumulator| not yet used. Every input tap of that output gets the sign of its weight
    (times the sign that makes the bias add up), so all taps add with one sign.

    Args:
        weight_int: (C_in, C_out, 5, 5) integers.
        bias_int: (C_out,) integers.
        signed: True for layer 0 (inputs ±m: pattern in {-1, 0, 1}), False for layers after a
            ReLU (inputs 0 or m: pattern in {0, 1}).

    Returns:
        (1, C_in, H, W) int8 pattern; the input is pattern · m (layer 0: m = 2**15 symbols;
        later layers: m = the activation ceiling).
    """
    w = weight_int.detach().cpu().long()
    b = bias_int.detach().cpu().long()
    c_in = w.shape[0]
    # Reach and sign of every (parity class, output channel); classes in (py, px) order.
    positive = parity_class_sums(w.clamp(min=0)).reshape(4, -1)  # (4 classes in (py, px) order, C_out)
    negative = parity_class_sums((-w).clamp(min=0)).reshape(4, -1)
    if signed:
        reach = positive + negative
        sign = torch.where(b >= 0, 1, -1).expand_as(reach)
    else:
        reach = torch.maximum(positive, negative)
        sign = torch.where(positive >= negative, 1, -1)
    # Each channel's best class (the first of equal reach), channels by reach then index.
    best_reach, best_class = reach.max(dim=0)
    best_class = torch.argmax((reach == best_reach).int(), dim=0)  # first maximal class
    order = torch.sort(-best_reach, stable=True).indices
    cells = [(1 + 3 * a, 1 + 3 * e) for a in range(grid[0] // 3) for e in range(grid[1] // 3)]
    pattern = torch.zeros(1, c_in, *grid, dtype=torch.int8)
    for (i0, j0), c in zip(cells, order.tolist()):
        k = int(best_class[c])
        py, px, sgn = k // 2, k % 2, int(sign[k, c])
        for ky in range(py, 5, 2):
            for kx in range(px, 5, 2):
                i, j = i0 + (py + 2 - ky) // 2, j0 + (px + 2 - kx) // 2
                value = sgn * torch.sign(w[:, c, ky, kx])
                pattern[0, :, i, j] = value if signed else (value > 0).to(torch.int8)
    return pattern


def stress_input(codec: IntegerSSF, decoder: str, dec: FrozenLayers, layer: int, pattern: Tensor) -> Tensor:
    """The integer input a stress pattern stands for (int64, pattern's shape): symbols ±2**15
    at layer 0 (hyper-decoders: plus the medians; synthesis: ±the latent bound), the
    activation ceiling after."""
    if layer > 0:
        return pattern.long() * dec.activation_range(layer - 1)[1]
    if decoder.startswith("synth."):
        return pattern.long() * INPUT_BOUND
    ihp = codec.hyperpriors[decoder.split(".")[0]]
    return integer_hyper_input(pattern.long() * SYMBOL_LIMIT, ihp.median_q.to(pattern.device), ihp.input_frac_bits)


def _stress_value(codec: IntegerSSF, conf_tensors: dict[str, Tensor], check: dict, device: torch.device) -> Tensor:
    layer = check["layer"]
    dec = dict(_decoders(codec, synthesis=True))[check["decoder"]]
    first = 0 if layer == "output" else layer
    pattern = conf_tensors[f"stress.{check['decoder']}.layer{first}"].to(device)
    x = stress_input(codec, check["decoder"], dec, first, pattern)
    return dec(x) if layer == "output" else dec.layer_accumulator(layer, x)


def build_records(codec: IntegerSSF) -> Conformance:
    """Encode the clip records and build the stress record with ``codec`` (on the CPU), as
    it will be loaded; the expected hashes are what this machine computes."""
    from nvc_train.codec.bitstream import write_bitstream_bytes

    records, tensors = [], {}
    for name, (height, width) in CLIP_RECORDS.items():
        frames = conformance_clip(height, width)
        coded, recon = codec.compress(frames)
        data = write_bitstream_bytes(coded, width=width, height=height, checkpoint_sha256=None)
        tensors[f"{name}.bitstream"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        records.append({"name": name, "kind": "bitstream", "width": width, "height": height, "frames": [
            {"type": c.frame_type, "latent_sha256": r.latent_sha256, "parts": r.part_sha256,
             **({"md5": r.md5} if r.md5 else {})}
            for c, r in zip(coded, recon)]})
    checks = []
    for decoder, dec in _decoders(codec, synthesis=True):
        for layer in range(dec.num_layers):
            pattern = stress_pattern(dec.layer_weight(layer), dec.layer_bias(layer), signed=layer == 0)
            tensors[f"stress.{decoder}.layer{layer}"] = pattern
        for layer in (*range(dec.num_layers), "output"):
            check = {"decoder": decoder, "layer": layer}
            value = _stress_value(codec, tensors, check, torch.device("cpu"))
            check["sha256"] = int_digest(value)
            if layer != "output":
                check["peak"] = int(value.abs().max())
                check["bound"] = int(dec._t(f"layer{layer}.acc_bound"))
            checks.append(check)
    records.append({"name": "stress", "kind": "stress", "grid": list(STRESS_GRID), "checks": checks})
    return Conformance(records, tensors)


def to_payload(conf: Conformance) -> dict:
    """What the checkpoint stores (``torch.save`` with ``weights_only`` loading)."""
    return {"records": json.dumps(conf.records, sort_keys=True), "tensors": dict(conf.tensors)}


def from_payload(payload: dict) -> Conformance:
    """Read what :func:`to_payload` stored, or a format-1 checkpoint's single small record."""
    if "records" in payload:
        return Conformance(json.loads(payload["records"]), dict(payload["tensors"]))
    hashes = json.loads(payload["latent_sha256"])
    legacy = {"name": "small", "kind": "bitstream", "width": 128, "height": 128,
              "frames": [{"type": "", "latent_sha256": h, "parts": {}} for h in hashes]}
    return Conformance([legacy], {"small.bitstream": payload["bitstream"]})


def _bitstream_checks(codec: IntegerSSF, conf: Conformance, rec: dict, device: torch.device) -> Iterator[Check]:
    from nvc_train.codec.bitstream import read_bitstream_bytes

    name, expected = rec["name"], rec["frames"]
    _, coded = read_bitstream_bytes(conf.bitstream(name))
    if not expected or len(coded) != len(expected):
        yield Check(name, f"frame count: {len(coded)} coded", f"{len(expected)} expected", "")
        return
    for t, (cf, frame, want) in enumerate(zip(coded, codec.decompress_iter(coded, device), expected)):
        if want["parts"]:
            for part, sha in want["parts"].items():
                yield Check(name, f"frame {t} {cf.frame_type} {part}", frame.part_sha256.get(part, "missing"), sha)
        else:
            yield Check(name, f"frame {t} {cf.frame_type}", frame.latent_sha256, want["latent_sha256"])
        if "md5" in want:  # pixel-exact checkpoints: the decoded frame itself
            yield Check(name, f"frame {t} {cf.frame_type} pixels (MD5)", frame.md5 or "float synthesis", want["md5"])


def run_checks(codec: IntegerSSF, conf: Conformance, device: torch.device | str = "cpu") -> Iterator[Check]:
    """Decode every record on ``device`` and compare with the stored hashes, one
    :class:`Check` per frame and part (clip records) or per decoder and layer (stress).
    An empty or short record yields a failing check: no evidence is not a pass."""
    device = torch.device(device)
    if not conf.records:
        yield Check("checkpoint", "conformance records", "none", "")
    for rec in conf.records:
        if rec["kind"] == "bitstream":
            yield from _bitstream_checks(codec, conf, rec, device)
            continue
        expected = {(c["decoder"], c["layer"]) for c in rec["checks"]}
        # Format-3 checkpoints have no synthesis stress checks; the load-time
        # self-test still drives their synthesis layers to their bounds.
        with_synthesis = any(d.startswith("synth.") for d, _ in expected)
        missing = {(d, layer) for d, dec in _decoders(codec, with_synthesis)
                   for layer in (*range(dec.num_layers), "output")} - expected
        if missing:
            yield Check(rec["name"], f"{len(missing)} stress checks missing", "", "")
        for check in rec["checks"]:
            item = f"{check['decoder']} " + ("output" if check["layer"] == "output" else f"layer {check['layer']}")
            got = int_digest(_stress_value(codec, conf.tensors, check, device))
            yield Check(rec["name"], item, got, check["sha256"])


def reference_accumulators(x: Tensor, weight_int: Tensor, bias_int: Tensor) -> Tensor:
    """``conv_transpose(x, w) + b`` on the host as one float64 GEMM and ``fold`` (col2im),
    sharing nothing with the GEMM paths (no digits, no shifted views): the self-test's
    reference, exact because :func:`bound_problems` has proven every sum below 2**53 first;
    rounded, never truncated. (N, C_in, h, w) → (N, C_out, 2h, 2w) int64."""
    x, w = x.detach().cpu().to(torch.float64), weight_int.detach().cpu().to(torch.float64)
    n, c_in, h, wd = x.shape
    c_out = w.shape[1]
    cols = torch.matmul(w.reshape(c_in, c_out * 25).t(), x.reshape(n, c_in, h * wd))
    acc = torch.nn.functional.fold(cols, (2 * h, 2 * wd), kernel_size=5, stride=2, padding=2)
    return torch.round(acc).long() + bias_int.detach().cpu().long().view(1, -1, 1, 1)


def device_paths(device: torch.device) -> list[str]:
    """GEMM paths a decode on ``device`` may take: the default one, and the float32 fallback
    (also what ``NVC_TRAIN_EXACT_GEMM=float32`` selects)."""
    default = exact_conv.default_path(device)
    return [default] + (["float32"] if default != "float32" else [])


def bound_problems(codec: IntegerSSF) -> list[str]:
    """Each layer's accumulator bound recomputed from its stored integers (weights, bias, the
    input bound), against the stored one and 2**53; requantization products against int64."""
    problems = []
    for decoder, dec in _decoders(codec, synthesis=True):
        for layer in range(dec.num_layers):
            bound = arith.accumulator_bound(dec.layer_weight(layer), dec.layer_bias(layer),
                                            layer_input_bound(codec, decoder, dec, layer))
            key = f"layer{layer}.acc_bound".replace(".", "_")
            stored = int(getattr(dec, key)) if hasattr(dec, key) else bound
            if bound != stored:
                problems.append(f"{decoder} layer {layer}: accumulator bound {bound} recomputed from its weights, "
                                f"{stored} stored (edited checkpoint?)")
            elif bound >= arith.EXACT_FLOAT64:
                problems.append(f"{decoder} layer {layer}: accumulators may reach {bound:.3g} >= 2**53")
            if hasattr(dec, f"layer{layer}_multiplier"):
                try:
                    arith.check_fixed_point(dec._fixed_point(layer))
                except ValueError as exc:
                    problems.append(f"{decoder} layer {layer}: {exc}")
    return problems


def path_problems(codec: IntegerSSF, device: torch.device, paths: list[str] | None = None) -> list[str]:
    """Every layer of every integer decoder, driven to its proven bound by a stress input built
    from its weights, on each GEMM path the device may use, against :func:`reference_accumulators`."""
    problems = []
    for decoder, dec in _decoders(codec, synthesis=True):
        for layer in range(dec.num_layers):
            w, b = dec.layer_weight(layer), dec.layer_bias(layer)
            pattern = stress_pattern(w, b, signed=layer == 0)
            x = stress_input(codec, decoder, dec, layer, pattern)
            want = reference_accumulators(x, w, b)
            for path in paths or device_paths(device):
                try:
                    got = dec.layer_accumulator(layer, x.to(device), path).cpu()
                    ok = torch.equal(got, want)
                except (RuntimeError, ValueError) as exc:
                    ok, path = False, f"{path} ({exc})"
                if not ok:
                    problems.append(f"{decoder} layer {layer} on the {path} path")
    return problems


@torch.no_grad()
def self_test(codec: IntegerSSF, conf: Conformance, device: torch.device | str, source: str) -> None:
    """What loading checks before a checkpoint decodes anything on ``device`` (tenths of a second):

    * every layer's accumulator bound, recomputed from the stored integers;
    * every layer of all nine integer decoders at a bound-reaching stress input, on each GEMM
      path the device may use, against int64 tap loops on the host;
    * layer 0 of each hyper-decoder on the stored stress input, against the hash the
      exporting machine stored (checkpoints without a stress record have none).

    Raises :class:`UserError`, one line naming every layer that fails.
    """
    device = torch.device(device)
    problems = bound_problems(codec)
    if not problems:
        problems = [f"computes {p} differently from int64 arithmetic" for p in path_problems(codec, device)]
    for rec in conf.records:
        if rec["kind"] != "stress":
            continue
        for check in rec["checks"]:
            if check["layer"] != 0 or check["decoder"].startswith("synth."):
                continue
            if int_digest(_stress_value(codec, conf.tensors, check, device)) != check["sha256"]:
                problems.append(f"computes {check['decoder']} layer 0 differently from the exporting machine")
    if problems:
        raise UserError(f"{source}: refused on {device}: " + "; ".join(problems)
                        + " — it would mis-decode; `nvc-train conformance` shows every check")
