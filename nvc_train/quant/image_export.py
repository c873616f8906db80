"""The integer image checkpoint: export, conformance records, load with a self-test.

The file is the integer checkpoint container of :mod:`nvc_train.quant.export` (magic,
version, length, SHA-256, payload) with format version 5, which only image-aware readers
accept: ``tensors`` holds CompressAI's image model state dict (``model.*``, entropy tables
computed once here) and the integer hyper-decoder (``int.*``, see
:func:`nvc_train.quant.image_hyper.image_integer_tensors`); ``metadata`` names the
architecture and its channels.

Conformance records (decoded on the exporting machine, checked on every other):

* ``small``: a generated 128×128 image coded by the checkpoint; its strings must decode to
  the stored latent SHA-256 (and, pixel-exact, to the stored MD5 of the 8-bit image);
* ``stress``: the hyper-decoder at two fixed inputs, symbols at the clamp (±2**15, a
  checkerboard of signs) and a ramp of ordinary symbols; SHA-256 of every layer's
  accumulators (a change of any weight or bias shows) and of the means and CDF indexes.
  Pixel-exact checkpoints add the synthesis at two fixed latents (the largest |y_int| a
  bitstream can give, in a checkerboard of signs, and a ramp): SHA-256 of every layer's
  accumulators, every inverse GDN's norms, and the output samples.

Loading runs a self-test before anything decodes: accumulator and norm bounds recomputed
from the stored integers, every layer (the synthesis's transposed layers and γ sums too) at
a bound-reaching input on every GEMM path against int64 tap sums on the host, the integer
square root against Python's ``math.isqrt``, and the stress record's hashes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from nvc_train.codec.image_codec import IntegerImageCodec, build_integer_image_codec
from nvc_train.errors import UserError
from nvc_train.io.atomic import atomic_write_bytes
from nvc_train.io.images import image_md5
from nvc_train.models.image import IMAGE_MODELS, architecture_of, build_image_model
from nvc_train.quant import arith, exact_conv
from nvc_train.quant.config import MEAN_BOUND, MEAN_FRAC_BITS, SYMBOL_LIMIT, QuantConfig
from nvc_train.quant.export import read_verified_payload, resolved_config_section
from nvc_train.quant.fake_quant import input_bound, integer_hyper_input
from nvc_train.quant.header import HEADER, IMAGE_FORMAT_VERSION, MAGIC
from nvc_train.quant.image_hyper import KINDS, ImageHyperpriorQAT, image_integer_tensors, layer_bound
from nvc_train.quant.synthesis import INPUT_BOUND as SYNTHESIS_INPUT_BOUND

SMALL_SIZE = 128
"""Side of the small record's generated image (pixels)."""

STRESS_SHAPE = (4, 6)
"""(h, w) of the stress record's hyper-latent."""


class ImageCheckpoint(NamedTuple):
    """A loaded integer image checkpoint."""

    codec: IntegerImageCodec
    metadata: dict
    records: list[dict]
    sha256: str


def int_digest(*tensors: Tensor | None) -> str:
    """SHA-256 of integer tensors: shapes and little-endian int64 values, in order (None: absent)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().to("cpu", torch.int64).contiguous()
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().astype("<i8", copy=False).tobytes())
    return h.hexdigest()


def stress_inputs(channels: int) -> dict[str, Tensor]:
    """The stress record's z symbols, (1, channels, 4, 6) int64, built without randomness."""
    h, w = STRESS_SHAPE
    idx = torch.arange(channels * h * w).reshape(1, channels, h, w)
    checker = (idx + idx // w) % 2 * 2 - 1  # ±1 alternating within rows and between rows
    return {"clamp": checker * SYMBOL_LIMIT, "ramp": (idx * 7) % 121 - 60}


def synthesis_stress_inputs(channels: int) -> dict[str, Tensor]:
    """The synthesis stress latents y_int, (1, channels, 4, 6) int64, built without randomness:
    ``clamp`` is ±INPUT_BOUND (the largest |y_int| a bitstream gives) in a checkerboard of
    signs, ``ramp`` ordinary symbols with fractional means."""
    h, w = STRESS_SHAPE
    idx = torch.arange(channels * h * w).reshape(1, channels, h, w)
    checker = (idx + idx // w) % 2 * 2 - 1
    return {"clamp": checker * SYNTHESIS_INPUT_BOUND, "ramp": ((idx * 7) % 121 - 60) * 256 + (idx * 37) % 256 - 128}


def build_records(codec: IntegerImageCodec) -> list[dict]:
    """The conformance records of ``codec``, decoded here (see the module docstring)."""
    from nvc_train.data.synthetic import synthetic_clip

    hp = codec.hyperprior
    x = synthetic_clip(0, 1, SMALL_SIZE, SMALL_SIZE)
    coded, decoded = codec.compress(x)
    records = [{"kind": "small", "size": SMALL_SIZE, "y_string": coded.y_string.hex(), "z_string": coded.z_string.hex(),
                "z_shape": list(coded.z_shape), "latent_sha256": decoded.latent_sha256}]
    if codec.pixel_exact:
        records[0]["image_md5"] = image_md5(decoded.levels(8, SMALL_SIZE, SMALL_SIZE), 8)
    checks = []
    for name, symbols in stress_inputs(hp.median_q.numel()).items():
        z_int = integer_hyper_input(symbols, hp.median_q, hp.input_frac_bits)
        checks.append({"input": name, "sha256": int_digest(*hp.scale_decoder(z_int)),
                       "layers_sha256": [int_digest(acc) for acc in hp.scale_decoder.accumulators(z_int)]})
    if codec.pixel_exact:
        for name, y_int in synthesis_stress_inputs(codec.synthesis.layer_weight(0).shape[0]).items():
            checks.append({"input": name, "synthesis": True, "sha256": int_digest(codec.synthesis(y_int)),
                           "layers_sha256": [int_digest(t) for t in codec.synthesis.accumulators(y_int)]})
    records.append({"kind": "stress", "checks": checks})
    return records


def run_records(codec: IntegerImageCodec, records: list[dict], device: torch.device | str = "cpu") -> list[tuple[str, bool]]:
    """(description, passed) of every check of ``records`` on ``device``."""
    from nvc_train.codec.frames import CodedLatent

    hp = codec.hyperprior
    results = []
    for rec in records:
        if rec["kind"] == "small":
            coded = CodedLatent(bytes.fromhex(rec["y_string"]), bytes.fromhex(rec["z_string"]), tuple(rec["z_shape"]))
            decoded = codec.decompress(coded, device)
            results.append((f"small record ({rec['size']}x{rec['size']} image): latent SHA-256",
                            decoded.latent_sha256 == rec["latent_sha256"]))
            if "image_md5" in rec:
                got = image_md5(decoded.levels(8, rec["size"], rec["size"]), 8) if codec.pixel_exact else None
                results.append((f"small record ({rec['size']}x{rec['size']} image): image MD5", got == rec["image_md5"]))
        elif rec["kind"] == "stress":
            inputs = stress_inputs(hp.median_q.numel())
            for check in rec["checks"]:
                if check.get("synthesis"):
                    results.extend(_synthesis_check(codec, check, device))
                    continue
                z_int = integer_hyper_input(inputs[check["input"]].to(device), hp.median_q.to(device), hp.input_frac_bits)
                got = int_digest(*hp.scale_decoder(z_int))
                results.append((f"stress record ({check['input']} symbols): means and CDF indexes", got == check["sha256"]))
                for i, (acc, want) in enumerate(zip(hp.scale_decoder.accumulators(z_int), check["layers_sha256"])):
                    results.append((f"stress record ({check['input']} symbols): layer {i} accumulators",
                                    int_digest(acc) == want))
    return results


def _synthesis_check(codec: IntegerImageCodec, check: dict, device) -> list[tuple[str, bool]]:
    where = f"stress record (synthesis, {check['input']} latents)"
    if not codec.pixel_exact:
        return [(f"{where}: the checkpoint has no integer synthesis", False)]
    syn = codec.synthesis
    y_int = synthesis_stress_inputs(syn.layer_weight(0).shape[0])[check["input"]].to(device)
    results = [(f"{where}: output samples", int_digest(syn(y_int)) == check["sha256"])]
    trace = syn.accumulators(y_int)
    if len(trace) != len(check["layers_sha256"]):
        return results + [(f"{where}: {len(check['layers_sha256'])} traced tensors", False)]
    names = [f"layer {i // 2} accumulators" if i % 2 == 0 else f"GDN {i // 2} norms" for i in range(len(trace))]
    return results + [(f"{where}: {name}", int_digest(t) == want)
                      for name, t, want in zip(names, trace, check["layers_sha256"])]


def _tap_sums(kind: str, x: Tensor, w: Tensor) -> Tensor:
    """int64 tap sums on the host (einsum per tap), independent of the GEMM paths."""
    x, w = x.cpu().long(), w.cpu().long()
    n, _, h, wd = x.shape
    if kind == "conv3":
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
        return sum(torch.einsum("nchw,dc->ndhw", padded[:, :, ky:ky + h, kx:kx + wd], w[:, :, ky, kx])
                   for ky in range(3) for kx in range(3))
    full = torch.zeros(n, w.shape[1], 2 * h + 4, 2 * wd + 4, dtype=torch.int64)
    for ky in range(5):
        for kx in range(5):
            full[:, :, ky:ky + 2 * h:2, kx:kx + 2 * wd:2] += torch.einsum("nchw,cd->ndhw", x, w[:, :, ky, kx])
    return full[:, :, 2:2 + 2 * h, 2:2 + 2 * wd]


def layer_problems(name: str, kind: str, w: Tensor, b: Tensor, stored_bound: int, in_bound: int,
                   device: torch.device, paths: list[str]) -> list[str]:
    """What is wrong with one stored layer: its accumulator bound recomputed from the stored
    integers, and its accumulators on every GEMM path against int64 tap sums on the host.

    The input is the input bound with alternating signs. It does not drive every accumulator
    to its bound (that needs sign(w)·bound per output) but uses every digit plane the bound
    needs, which is where a GEMM path that drops or saturates a plane shows."""
    from nvc_train.quant.image_hyper import layer_accumulators

    problems = []
    if layer_bound(kind, w, b, in_bound) != stored_bound or stored_bound >= 2**53:
        problems.append(f"{name}'s accumulator bound does not hold")
    c_in = w.shape[0] if kind == "transposed" else w.shape[1]
    idx = torch.arange(c_in * 3 * 5).reshape(1, c_in, 3, 5)
    x = ((idx + idx // 5) % 2 * 2 - 1) * in_bound
    expected = _tap_sums(kind, x, w) + b.cpu().view(1, -1, 1, 1)
    for path in paths:
        got = layer_accumulators(kind, x.to(device), w.to(device), b.to(device), path)
        if not torch.equal(got.cpu(), expected):
            problems.append(f"computes {name} on the {path} path differently from int64 arithmetic")
    return problems


def self_test_problems(codec: IntegerImageCodec, records: list[dict], device: torch.device | str) -> list[str]:
    """What is wrong on ``device`` (empty: nothing): bounds, layers on every GEMM path, the
    stress record's hashes."""
    device = torch.device(device)
    dec = codec.hyperprior.scale_decoder
    problems = []
    bound = input_bound(codec.hyperprior.median_q, codec.hyperprior.input_frac_bits)
    paths = [p for p in exact_conv.PATHS if p != "int8" or exact_conv.int_mm_works(device.type, device.index)]
    for i, (kind_code, _) in enumerate(dec._t("layout").tolist()):
        problems += layer_problems(f"layer {i}", KINDS[kind_code], dec._t(f"layer{i}.weight"), dec._t(f"layer{i}.bias"),
                                   int(dec._t(f"layer{i}.acc_bound")), bound, device, paths)
        if i < len(dec._t("layout")) - 1:
            bound = max(abs(int(dec._t(f"layer{i}.act_lo"))), abs(int(dec._t(f"layer{i}.act_hi"))))
        fixed = [f"layer{i}.", f"layer{i}.neg_"] if i < len(dec._t("layout")) - 1 else ["mean."]
        for prefix in fixed:
            if hasattr(dec, (prefix + "multiplier").replace(".", "_")):
                try:
                    arith.check_fixed_point(dec._fp(prefix))
                except ValueError as exc:
                    problems.append(f"layer {i}: {exc}")
    if codec.pixel_exact:
        fatal, others = synthesis_self_test(codec.synthesis, device, paths)
        if fatal:  # values outside the contract: running the records on them proves nothing (and may not end)
            return problems + fatal + others
        problems += others
    for description, passed in run_records(codec, [r for r in records if r["kind"] == "stress"], device):
        if not passed:
            problems.append(f"fails the {description}")
    return problems


SQRT_CASES = [0, 1, 2, 3, 4, 15, 16, 17, 2**52 - 1, 2**52, 2**53 + 1, (2**31 - 1) ** 2 - 1, (2**31 - 1) ** 2,
              (2**26 + 3) ** 2 - 1, (2**26 + 3) ** 2, (2**26 + 3) ** 2 + 1, 2**62 - 1]
"""Square-root self-test inputs: perfect squares and their neighbours, where a float square
root rounds up past the integer one (e.g. (2**31 − 1)**2 − 1 in float64), and both ends."""


def synthesis_self_test(syn, device: torch.device, paths: list[str]) -> tuple[list[str], list[str]]:
    """What is wrong with the integer synthesis on ``device``, as (values outside the contract:
    γ, β, activation range, root shift; other problems: bounds, every transposed layer and
    every γ sum on every GEMM path against int64 on the host, the integer square root)."""
    from nvc_train.quant import exact_conv2d
    from nvc_train.quant.image_synthesis import GAMMA_QMAX, floor_sqrt, norm_bound, root_shift

    problems, fatal = [], []
    bound = SYNTHESIS_INPUT_BOUND
    for i in range(syn.num_layers):
        problems += layer_problems(f"synthesis layer {i}", "transposed", syn.layer_weight(i), syn.layer_bias(i),
                                   int(syn._t(f"layer{i}.acc_bound")), bound, device, paths)
        prefixes = [f"layer{i}."] if i == syn.num_layers - 1 else [f"gdn{i}.in.", f"gdn{i}.out."]
        for prefix in prefixes:
            try:
                arith.check_fixed_point(syn._fp(prefix))
            except ValueError as exc:
                problems.append(f"synthesis {prefix[:-1]}: {exc}")
        if i == syn.num_layers - 1:
            break
        q = int(syn._t(f"gdn{i}.act_hi"))
        gamma, beta = syn._t(f"gdn{i}.gamma"), syn._t(f"gdn{i}.beta")
        nb, f = int(syn._t(f"gdn{i}.norm_bound")), int(syn._t(f"gdn{i}.root_shift"))
        if q not in (2**7 - 1, 2**15 - 1):
            fatal.append(f"synthesis GDN {i}'s activation range ±{q} is not 8- or 16-bit")
        if not (0 <= int(gamma.min()) and int(gamma.max()) <= GAMMA_QMAX and 0 <= int(beta.min())):
            fatal.append(f"synthesis GDN {i}'s γ or β is outside its range")
        if fatal:
            break
        if norm_bound(gamma, beta, q) != nb or nb >= 2**53:
            problems.append(f"synthesis GDN {i}'s norm bound does not hold")
        if f != root_shift(nb):
            fatal.append(f"synthesis GDN {i}'s root shift {f} is not the one of its norm bound ({root_shift(nb)})")
            break
        c = gamma.shape[0]
        # x² at the bound and at values whose digits are all non-zero (one of them −128 in the
        # balanced base-256 digits of the int8 path), on alternate inputs: every digit plane works.
        values = torch.tensor([q * q, 0, 0x2F807F81, 0, 0x00FF01FF, q * q // 3])
        squares = values[torch.arange(c * 15) % len(values)].reshape(1, c, 3, 5)
        expected = torch.einsum("nchw,dc->ndhw", squares, gamma.cpu().long()[:, :, 0, 0]) + beta.cpu().view(1, -1, 1, 1)
        for path in paths:
            got = exact_conv2d.conv3x3_exact(squares.to(device), gamma.to(device), beta.to(device), path)
            if not torch.equal(got.cpu(), expected):
                problems.append(f"computes synthesis GDN {i}'s norms on the {path} path differently from int64 arithmetic")
        bound = q
    roots = floor_sqrt(torch.tensor(SQRT_CASES, dtype=torch.int64, device=device)).cpu().tolist()
    if roots != [math.isqrt(v) for v in SQRT_CASES]:
        problems.append("computes integer square roots differently from Python's math.isqrt")
    return fatal, problems


def export_image_checkpoint(model, qat: ImageHyperpriorQAT, out_dir: Path, name: str, metadata: dict) -> Path:
    """Freeze ``model`` + ``qat`` into ``out_dir/<name>-<sha8>.ckpt`` and its model card."""
    model = model.cpu().eval()
    qat = qat.cpu().eval()
    model.update(force=True)
    tensors = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    tensors.update({f"int.{k}": v for k, v in image_integer_tensors(model, qat).items()})
    metadata = {**metadata, "format_version": IMAGE_FORMAT_VERSION, "architecture": architecture_of(model),
                "channels": [int(model.N), int(model.M)], "quant": asdict(qat.config),
                "contract": {"mean_frac_bits": MEAN_FRAC_BITS, "mean_bound": MEAN_BOUND, "symbol_limit": SYMBOL_LIMIT,
                             "weights": "int8 per output channel", "accumulation": "exact, float64 < 2**53",
                             "requantization": "int64 (acc*m + 2**(s-1)) >> s; LeakyReLU: m*0.01 below zero",
                             "synthesis": ("integer: int8 deconvs, inverse GDN with gamma in [0, 2047], exact norms "
                                           "< 2**53 and floor square roots, 255*2**8 samples per unit"
                                           if qat.synthesis is not None else "CompressAI's float g_s")}}
    records = build_records(_codec_from_tensors(tensors, metadata))
    buf = io.BytesIO()
    torch.save({"tensors": tensors, "metadata": json.dumps(metadata, sort_keys=True), "records": json.dumps(records)}, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    path = Path(out_dir) / f"{name}-{digest[:8]}.ckpt"
    atomic_write_bytes(path, HEADER.pack(MAGIC, IMAGE_FORMAT_VERSION, len(payload), bytes.fromhex(digest)) + payload)
    atomic_write_bytes(path.with_suffix(".md"), model_card(path.name, digest, metadata, tensors, records).encode())
    return path


def _codec_from_tensors(tensors: dict[str, Tensor], metadata: dict) -> IntegerImageCodec:
    architecture = metadata["architecture"]
    if architecture not in IMAGE_MODELS:
        raise UserError(f"unknown image architecture {architecture!r}")
    model = build_image_model(architecture, tuple(metadata["channels"]))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    int_tensors = {k[len("int."):]: v for k, v in tensors.items() if k.startswith("int.")}
    return build_integer_image_codec(model.eval(), int_tensors, QuantConfig(**metadata["quant"]).input_frac_bits).eval()


def load_image_checkpoint(path: str | Path, device: str = "cpu", self_check: bool = True) -> ImageCheckpoint:
    """Verify and load an integer image checkpoint; every failure is one line (:class:`UserError`)."""
    path, version, payload, digest = read_verified_payload(path)
    if version != IMAGE_FORMAT_VERSION:
        raise UserError(f"{path} is a video (ssf2020) integer checkpoint, not an image one: video commands take it "
                        "(`nvc-train encode VIDEO --checkpoint …`)")
    try:
        obj = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        metadata = json.loads(obj["metadata"])
        records = json.loads(obj["records"])
        codec = _codec_from_tensors(obj["tensors"], metadata).to(device)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path} passed its hash check but its content is not a valid image checkpoint ({exc})") from None
    if self_check:
        try:
            problems = self_test_problems(codec, records, device)
        except Exception as exc:  # a re-hashed file with a bad layout code, a missing key, …
            raise UserError(f"{path} passed its hash check but its content is not a valid image checkpoint "
                            f"({type(exc).__name__}: {exc})") from None
        if problems:
            raise UserError(f"{path}: refused on {device}: " + "; ".join(problems)
                            + " — it would mis-decode; `nvc-train conformance` shows every check")
    return ImageCheckpoint(codec, metadata, records, digest.hex())


def model_card(filename: str, digest: str, metadata: dict, tensors: dict[str, Tensor], records: list[dict]) -> str:
    """Markdown model card written beside the checkpoint."""
    from nvc_train.models.architectures import architecture

    bounds = [int(v) for k, v in tensors.items() if k.endswith("acc_bound")]
    arch = metadata["architecture"]
    checks = sum(1 + ("image_md5" in r) if r["kind"] == "small" else sum(1 + len(c["layers_sha256"]) for c in r["checks"])
                 for r in records)
    pixel_exact = any(k.startswith("int.synthesis.") for k in tensors)
    lines = [
        f"# {filename}",
        "",
        *([f"CompressAI `{arch}` ({architecture(arch).summary}) with an integer hyper-decoder and an integer",
           "synthesis (inverse GDN included): the decoded images are bit-identical on every machine, under",
           "nvc-train's integer contract (docs/integer-contract.md in the nvc-train repository, \"Image",
           "architectures\", \"Pixel-exact images\")."] if pixel_exact else
          [f"CompressAI `{arch}` ({architecture(arch).summary}) with an integer hyper-decoder: the decoded",
           "latents are bit-identical on every machine, under nvc-train's integer contract",
           "(docs/integer-contract.md in the nvc-train repository, \"Image architectures\"). The synthesis",
           "is CompressAI's float one: pixels may differ in the last level between machines."]),
        "",
        f"- SHA-256 of the payload: `{digest}`",
        f"- format version: {metadata['format_version']} (integer image checkpoint)",
        f"- channels: N={metadata['channels'][0]}, M={metadata['channels'][1]}",
        f"- quality: {metadata.get('quality')}, lambda: {metadata.get('lmbda')}",
        f"- quantization: {metadata.get('quant')}",
        f"- largest accumulator bound: {max(bounds)} (< 2**53 = {2**53}: exact in float64)",
        f"- training data: {metadata.get('training_data')}",
        *([f"- started from the float weights: {metadata['init_weights']}"] if metadata.get("init_weights") else []),
        f"- packages: {metadata.get('packages')}",
        f"- conformance records: small (a generated {SMALL_SIZE}x{SMALL_SIZE} image) and stress, {checks} checks",
        "",
        f"Check it on your machine: `nvc-train conformance {filename}` (exit status 0 only if every record",
        "decodes to its stored hashes; loading also runs a self-test of every layer and refuses a machine",
        "that does not reproduce it).",
        "",
        *resolved_config_section(metadata),
    ]
    return "\n".join(lines) + "\n"

