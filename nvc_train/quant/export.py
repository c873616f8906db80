"""The integer checkpoint: what it holds, how it is written, and how it is verified on load.

File layout (all integers big-endian)::

    magic        12 bytes  b"NVCTRAIN-INT"
    version       4 bytes  format version (uint32)
    length        8 bytes  payload length in bytes (uint64)
    sha256       32 bytes  SHA-256 of the payload
    payload               torch.save of {"tensors", "metadata", "conformance"}

Format 3 (pixel-exact checkpoints, ``qat.scope: decoder``) adds the integer synthesis
decoders and per-frame MD5s in the clip records. Format 2 (hyperprior scope, still written
as 2) stores three conformance records (:mod:`nvc_train.quant.conformance`)
and runs the stress record's layer-0 self-test on load; format 1 (one 128×128 record, no
self-test) still loads.

``tensors`` holds the float ScaleSpaceFlow state dict (``ssf.*``, entropy-model CDF tables
included, computed once here) and the integer hyper-decoders (``int.*``). Loading checks
magic, version, length and hash before unpickling (with ``weights_only=True``), and never
recomputes a table. Files are named ``<name>-<sha8>.ckpt`` (first 8 hex digits of the
payload hash), as CompressAI's zoo names its weights.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
from compressai.models.video import ScaleSpaceFlow
from torch import Tensor

from nvc_train.io.atomic import atomic_write_bytes
from nvc_train.codec.integer_codec import IntegerSSF, build_integer_ssf
from nvc_train.errors import UserError, require_file
from nvc_train.models.ssf import PARTS, build_ssf, hyperprior, load_ssf_state_dict
from nvc_train.quant.conformance import Conformance, build_records, from_payload, self_test, to_payload
from nvc_train.quant.config import MEAN_BOUND, MEAN_FRAC_BITS, SYMBOL_LIMIT, QuantConfig
from nvc_train.quant.fake_quant import ROLES, HyperpriorQAT, hyper_decoder, input_bound, quantize_medians
from nvc_train.quant.header import FORMAT_VERSION, HYPERPRIOR_FORMAT_VERSION, MAGIC  # noqa: F401 (re-exported)
from nvc_train.quant.header import IMAGE_FORMAT_VERSION, MAX_FORMAT_VERSION
from nvc_train.quant.header import HEADER as _HEADER
from nvc_train.quant.integer import convert_decoder
from nvc_train.quant.integer_warp import COORD_FRAC_BITS, KERNEL_BITS, SAMPLE_FRAC_BITS
from nvc_train.quant.synthesis import DECODERS, MOTION_FRAC_BITS, convert_synthesis


class IntegerCheckpoint(NamedTuple):
    """A loaded integer checkpoint: the codec, its metadata, the conformance data, the hash."""

    codec: IntegerSSF
    metadata: dict
    conformance: Conformance
    sha256: str


def integer_tensors(model: ScaleSpaceFlow, qat: HyperpriorQAT) -> dict[str, Tensor]:
    """Convert the six calibrated hyper-decoders to integer tensors (see ``convert_decoder``).

    ``model.update(force=True)`` must have run, so the scale tables are the stored ones.
    """
    k = qat.config.input_frac_bits
    out: dict[str, Tensor] = {}
    for part in PARTS:
        hp = hyperprior(model, part)
        median_q = quantize_medians(hp.entropy_bottleneck._get_medians(), k)
        out[f"{part}.median_q"] = median_q
        for role in ROLES:
            tensors = convert_decoder(
                hyper_decoder(hp, role), qat.decoder(part, role), input_bound(median_q, k),
                hp.gaussian_conditional.scale_table if role == "scale" else None,
            )
            out.update({f"{part}.{role}.{name}": t for name, t in tensors.items()})
    if qat.synthesis is not None:
        for name, attr in DECODERS.items():
            tensors = convert_synthesis(getattr(model, attr), qat.synthesis.decoders[name])
            out.update({f"synth.{name}.{key}": t for key, t in tensors.items()})
    return out


def export_integer_checkpoint(
    model: ScaleSpaceFlow, qat: HyperpriorQAT, out_dir: Path, name: str, metadata: dict
) -> Path:
    """Freeze ``model`` + ``qat`` into ``out_dir/<name>-<sha8>.ckpt`` and write its model card.

    Computes the entropy tables once (``update(force=True)``), converts the hyper-decoders
    (raising ``ExportError`` if an accumulator could leave the exact range), then builds the
    conformance records on the CPU with the codec *as it will be loaded*.
    """
    model = model.cpu().eval()
    qat = qat.cpu().eval()
    model.update(force=True)
    tensors = {f"ssf.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    tensors.update({f"int.{k}": v for k, v in integer_tensors(model, qat).items()})
    version = FORMAT_VERSION if qat.config.pixel_exact else HYPERPRIOR_FORMAT_VERSION
    metadata = {**metadata, "format_version": version, "quant": asdict(qat.config),
                "flow_reference": getattr(model, "flow_reference", None),
                "contract": {"mean_frac_bits": MEAN_FRAC_BITS, "mean_bound": MEAN_BOUND, "symbol_limit": SYMBOL_LIMIT,
                             "weights": "int8/int16 per output channel", "accumulation": "exact, float64 < 2**53",
                             "requantization": "int64 (acc*m + 2**(s-1)) >> s",
                             **({"pixels": {"sample_frac_bits": SAMPLE_FRAC_BITS, "coord_frac_bits": COORD_FRAC_BITS,
                                            "kernel_bits": KERNEL_BITS, "motion_frac_bits": MOTION_FRAC_BITS,
                                            "rounding": "half up", "frame_md5": "uint8 planes R, G, B"}}
                                if qat.config.pixel_exact else {})}}
    conformance = build_records(_codec_from_tensors(tensors, qat.config, metadata["flow_reference"]))
    buf = io.BytesIO()
    torch.save({"tensors": tensors, "metadata": json.dumps(metadata, sort_keys=True),
                "conformance": to_payload(conformance)}, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    path = Path(out_dir) / f"{name}-{digest[:8]}.ckpt"
    atomic_write_bytes(path, _HEADER.pack(MAGIC, version, len(payload), bytes.fromhex(digest)) + payload)
    atomic_write_bytes(path.with_suffix(".md"), model_card(path.name, digest, metadata, tensors, conformance).encode())
    return path


def _codec_from_tensors(tensors: dict[str, Tensor], config: QuantConfig, flow_reference: int | None) -> IntegerSSF:
    model = build_ssf(flow_reference)
    load_ssf_state_dict(model, {k[4:]: v for k, v in tensors.items() if k.startswith("ssf.")}, "integer checkpoint")
    model.eval()
    int_tensors = {k[4:]: v for k, v in tensors.items() if k.startswith("int.")}
    return build_integer_ssf(model, int_tensors, config.input_frac_bits).eval()


def _float_checkpoint_advice(path: Path) -> str:
    """What to do with a PyTorch file given where an integer checkpoint is needed: a QAT
    training checkpoint is exported, a float model or float training checkpoint is quantized
    first (PTQ, or QAT then export)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 (any unreadable file gets the general advice)
        ckpt = None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if isinstance(hparams, dict) and hparams.get("qat"):
        return (f"{path} is a QAT training checkpoint, not an integer one: "
                f"run `nvc-train export-integer {path} --out-dir checkpoints/` and use the .ckpt it writes")
    kind = "float training checkpoint" if isinstance(hparams, dict) else "float model"
    return (f"{path} is a {kind}, not an integer checkpoint: quantize it with `nvc-train ptq {path} --out-dir DIR`"
            f"{' --quality Q' if hparams is None else ''}, or train with QAT (`nvc-train fit --config "
            f"configs/qat.yaml --model.init_weights {path}`) and `nvc-train export-integer` the result")


def read_verified_payload(path: str | Path) -> tuple[Path, int, bytes, bytes]:
    """(path, format version, payload, SHA-256) of an integer checkpoint file whose magic,
    version, length and hash check out; every failure is a one-line :class:`UserError`."""
    path = require_file(path, "checkpoint")
    data = path.read_bytes()
    if len(data) < _HEADER.size or not data.startswith(MAGIC):
        if data[:2] == b"PK" or data[:1] == b"\x80":
            raise UserError(_float_checkpoint_advice(path))
        raise UserError(f"{path} is not an nvc-train integer checkpoint (bad magic)")
    _, version, length, digest = _HEADER.unpack_from(data)
    if version > MAX_FORMAT_VERSION:
        raise UserError(f"{path} has format version {version}; this nvc-train reads up to {MAX_FORMAT_VERSION}: "
                        "upgrade nvc-train")
    if version < 1:
        raise UserError(f"{path} has an invalid format version {version}")
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise UserError(f"{path} is truncated or padded: payload has {len(payload)} bytes, header says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise UserError(f"{path} failed its SHA-256 check: the file is corrupted or was modified")
    return path, version, payload, digest


def load_integer_checkpoint(path: str | Path, device: str = "cpu", self_check: bool = True) -> IntegerCheckpoint:
    """Verify and load an integer checkpoint; every failure is a one-line :class:`UserError`.

    With ``self_check`` (the default) :func:`nvc_train.quant.conformance.self_test` runs on
    ``device``: accumulator bounds recomputed from the stored integers, every layer at a
    bound-reaching input on every GEMM path the device may use, the stored layer-0 hashes; a
    checkpoint or machine that fails is refused with one line naming the layers
    (``nvc-train conformance`` turns it off to report every check instead).
    """
    path, version, payload, digest = read_verified_payload(path)
    if version == IMAGE_FORMAT_VERSION:
        raise UserError(f"{path} is an integer image checkpoint, not a video (ssf2020) one: encode, decode, hashes, "
                        "info, conformance and eval take it with images (export-onnx, publish, cross-check: not yet)")
    try:
        obj = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        metadata = json.loads(obj["metadata"])
        config = QuantConfig(**metadata["quant"])
        codec = _codec_from_tensors(obj["tensors"], config, metadata.get("flow_reference")).to(device)
        conformance = from_payload(obj["conformance"])
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path} passed its hash check but its content is not a valid integer checkpoint ({exc})") from None
    if self_check:
        self_test(codec, conformance, device, str(path))
    return IntegerCheckpoint(codec, metadata, conformance, digest.hex())


def model_card(filename: str, digest: str, metadata: dict, tensors: dict[str, Tensor], conformance: Conformance) -> str:
    """Markdown model card written beside the checkpoint."""
    bounds = {k: int(v) for k, v in tensors.items() if k.endswith("acc_bound")}
    worst = max(bounds.values()) if bounds else 0
    lines = [
        f"# {filename}",
        "",
        *(["Scale-Space Flow (CompressAI `ssf2020` architecture), pixel-exact: integer hyper-decoders,",
            "synthesis decoders, warp and reconstruction, so the decoded frames are identical (MD5) on",
            "every machine, under nvc-train's integer contract (docs/integer-contract.md in the nvc-train",
            "repository)."] if metadata.get("quant", {}).get("scope") == "decoder" else
          ["Scale-Space Flow (CompressAI `ssf2020` architecture) with integer hyper-decoders:",
           "the decoded latents are bit-identical on every machine, under nvc-train's integer",
           "contract (docs/integer-contract.md in the nvc-train repository)."]),
        "",
        f"- SHA-256 of the payload: `{digest}`",
        f"- format version: {metadata.get('format_version')}",
        f"- quality: {metadata.get('quality')}, lambda: {metadata.get('lmbda')}",
        f"- flow reference: {_flow_reference_line(metadata.get('flow_reference'))}",
        f"- quantization: {metadata.get('quant')}",
        f"- largest accumulator bound: {worst} (< 2**53 = {2**53}: exact in float64)",
        f"- training data: {metadata.get('training_data')}",
        *([f"- started from the float weights: {metadata['init_weights']}"] if metadata.get("init_weights") else []),
        f"- packages: {metadata.get('packages')}",
        "",
        f"- conformance records: {conformance.describe()}",
        "",
        "Check it on your machine: `nvc-train conformance " + filename + " [--device cuda]` (exit status 0",
        "only if every record decodes to its stored hashes; loading also runs the stress record's layer-0",
        "self-test and refuses a machine that does not reproduce it).",
        "",
        *resolved_config_section(metadata),
    ]
    return "\n".join(lines) + "\n"


def resolved_config_section(metadata: dict) -> list[str]:
    """A model card's last section: the run's resolved config as JSON."""
    return ["## Resolved config", "```json", json.dumps(metadata.get("config"), indent=2, sort_keys=True, default=str),
            "```"]


def _flow_reference_line(flow_reference: int | None) -> str:
    if flow_reference is None:
        return "none (CompressAI's flow units: half the frame, so motion scales with frame size)"
    return (f"{flow_reference} px (flow rescaled to every frame; decoding uses this value, "
            f"CompressAI's stock SSF does not)")
