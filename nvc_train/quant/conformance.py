"""Conformance records: the evidence an integer checkpoint carries, checkable on any machine.

Every checkpoint exported by this version carries three records (docs/integer-contract.md,
"Conformance"):

* ``small``: a 128×128 clip coded I P P. Its hyper-latents are 2×2, so it checks border
  taps only; it is the one record of format-1 checkpoints.
* ``realistic``: a 768×512 clip coded I P P: 12×8 hyper-latents, interior taps, GEMMs of a
  real frame's shape. Stored per frame: the SHA-256 of all decoded latents and of each part's,
  and for pixel-exact checkpoints the MD5 of the decoded frame (both clip records).
* ``stress``: for each of the six hyper-decoders and each of its three layers, an input built
  from that layer's own integer weights so that its accumulators reach the bound proven at
  export (signs follow the weights, magnitudes at the clamp limits: symbols ±2**15 for layer
  0, the activation ceiling for layers 1 and 2). Stored: the input, the SHA-256 of the
  layer's int64 accumulators and of the whole decoder's output on the layer-0 input. Those
  accumulators reach 2**36-2**40 on the models measured (the clip records' about 2**25): a
  float64 GEMM that is not IEEE-exact (emulated FP64 with too few slices, a replaced BLAS)
  rounds them where the clip records' smaller sums survive.

Loading a checkpoint runs the stress record's layer-0 checks (:func:`self_test`, a few
milliseconds); ``nvc-train conformance`` runs everything (:func:`run_checks`).
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
from nvc_train.quant.config import SYMBOL_LIMIT
from nvc_train.quant.fake_quant import ROLES, integer_hyper_input
from nvc_train.quant.integer import IntegerHyperDecoder

CLIP_RECORDS = {"small": (128, 128), "realistic": (512, 768)}
"""Bitstream records: name → (height, width) of the synthetic clip, coded I P P."""

CLIP_SEED = 20200614
STRESS_GRID = (12, 15)
"""Spatial size of each stress input: one target output per 3×3 input cell, 20 per layer."""

NUM_LAYERS = 3


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
                parts.append(f"{rec['name']} ({len(rec['checks'])} checks of the six hyper-decoders; layer-0 "
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


def _decoders(codec: IntegerSSF) -> Iterator[tuple[str, IntegerHyperDecoder]]:
    for part in PARTS:
        ihp = codec.hyperpriors[part]
        for role in ROLES:
            yield f"{part}.{role}", ihp.mean_decoder if role == "mean" else ihp.scale_decoder


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
    c_in, c_out = w.shape[:2]
    scores = []  # (reach, channel, py, px, sign)
    for py in range(2):
        for px in range(2):
            taps = w[:, :, py::2, px::2]  # (C_in, C_out, ·, ·)
            positive = taps.clamp(min=0).sum(dim=(0, 2, 3))
            negative = (-taps).clamp(min=0).sum(dim=(0, 2, 3))
            for c in range(c_out):
                if signed:
                    sign = 1 if int(b[c]) >= 0 else -1
                    scores.append((int(positive[c] + negative[c]), c, py, px, sign))
                else:
                    sign = 1 if int(positive[c]) >= int(negative[c]) else -1
                    scores.append((int(max(positive[c], negative[c])), c, py, px, sign))
    scores.sort(key=lambda s: (-s[0], s[1], s[2], s[3]))
    cells = [(1 + 3 * a, 1 + 3 * e) for a in range(grid[0] // 3) for e in range(grid[1] // 3)]
    pattern = torch.zeros(1, c_in, *grid, dtype=torch.int8)
    best: dict[int, tuple] = {}  # each channel's best parity class, in order of reach
    for score in scores:
        best.setdefault(score[1], score)
    for (i0, j0), (_, c, py, px, sign) in zip(cells, best.values()):
        for ky in range(py, 5, 2):
            for kx in range(px, 5, 2):
                i, j = i0 + (py + 2 - ky) // 2, j0 + (px + 2 - kx) // 2
                value = sign * torch.sign(w[:, c, ky, kx])
                pattern[0, :, i, j] = value if signed else (value > 0).to(torch.int8)
    return pattern


def stress_input(dec: IntegerHyperDecoder, layer: int, pattern: Tensor, median_q: Tensor, frac_bits: int) -> Tensor:
    """The integer input a stress pattern stands for (int64, pattern's shape)."""
    if layer == 0:
        return integer_hyper_input(pattern.long() * SYMBOL_LIMIT, median_q, frac_bits)
    return pattern.long() * dec.activation_range(layer - 1)[1]


def _stress_tensors(codec: IntegerSSF, conf_tensors: dict[str, Tensor], decoder: str, layer: int,
                    device: torch.device) -> tuple[IntegerHyperDecoder, Tensor]:
    part = decoder.split(".")[0]
    dec = dict(_decoders(codec))[decoder]
    ihp = codec.hyperpriors[part]
    pattern = conf_tensors[f"stress.{decoder}.layer{layer}"].to(device)
    return dec, stress_input(dec, layer, pattern, ihp.median_q, ihp.input_frac_bits)


def _stress_value(codec: IntegerSSF, conf_tensors: dict[str, Tensor], check: dict, device: torch.device) -> Tensor:
    layer = check["layer"]
    dec, x = _stress_tensors(codec, conf_tensors, check["decoder"], 0 if layer == "output" else layer, device)
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
    for decoder, dec in _decoders(codec):
        for layer in range(NUM_LAYERS):
            pattern = stress_pattern(dec.layer_weight(layer), dec.layer_bias(layer), signed=layer == 0)
            tensors[f"stress.{decoder}.layer{layer}"] = pattern
        for layer in (*range(NUM_LAYERS), "output"):
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
        missing = {(d, layer) for d, _ in _decoders(codec) for layer in (*range(NUM_LAYERS), "output")} - expected
        if missing:
            yield Check(rec["name"], f"{len(missing)} stress checks missing", "", "")
        for check in rec["checks"]:
            item = f"{check['decoder']} " + ("output" if check["layer"] == "output" else f"layer {check['layer']}")
            got = int_digest(_stress_value(codec, conf.tensors, check, device))
            yield Check(rec["name"], item, got, check["sha256"])


@torch.no_grad()
def self_test(codec: IntegerSSF, conf: Conformance, device: torch.device | str, source: str) -> None:
    """Layer 0 of each hyper-decoder on its stress input, against the stored hash (ms).

    Raises :class:`UserError` naming the first layer this machine does not reproduce.
    Checkpoints without a stress record (format 1) have nothing to test.
    """
    device = torch.device(device)
    for rec in conf.records:
        if rec["kind"] != "stress":
            continue
        for check in rec["checks"]:
            if check["layer"] != 0:
                continue
            if int_digest(_stress_value(codec, conf.tensors, check, device)) != check["sha256"]:
                raise UserError(
                    f"{source}: this machine computes {check['decoder']} layer 0 differently from the "
                    f"exporting one on {device} (its float64 arithmetic is not IEEE-exact?): it would "
                    f"mis-decode; `nvc-train conformance` shows every check")
