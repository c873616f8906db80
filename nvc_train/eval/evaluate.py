"""Rate-distortion evaluation by real encoding and decoding, in CompressAI's results format.

Each model (an integer checkpoint, or a float ScaleSpaceFlow state dict as a baseline) codes
each sequence for real: integer models through the ``nvc-train encode`` path into a .nvc
file and back, float models through CompressAI's ``encode_keyframe/encode_inter`` and
``decode_*`` with the same container overhead counted. Per frame: bytes, PSNR-RGB, PSNR-Y/U/V
and PSNR-YUV (CompressAI's (4·Y + U + V)/6), MS-SSIM-RGB, and for integer models whether
the decoder's latents equal the encoder's (SHA-256 per frame).

Metrics follow CompressAI's ``compressai.utils.video.eval_model``: RGB and Y'CbCr samples are
rounded to the source's integer levels (peak 2^bits − 1, also for RGB) before the MSE; ``bitrate`` is kbit/s at the source
frame rate, ``bpp`` bits per source pixel, both from the whole bitstream.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from pytorch_msssim import ms_ssim
from torch import Tensor

from nvc_train.codec.bitstream import HEADER_BYTES, frame_record_size, iter_frames, read_header
from nvc_train.io.colour import ColourSpec, rgb_to_ycbcr420
from nvc_train.codec.files import encode_video, output_frame, output_md5, pad_frame
from nvc_train.codec.integer_codec import FRAME_PARTS, CodedFrame, CodedLatent, DecodedFrame
from nvc_train.io.video import CONTAINER_SUFFIXES, InputOptions, SourceFrame, open_video
from nvc_train.errors import UserError, require_file
from nvc_train.eval.metrics import MS_SSIM_MIN_SIDE

FAMILIES = ("float", "ptq", "qat", "pixel-exact")
"""One RD curve per kind of model: float, PTQ, QAT integer hyperprior, pixel-exact (whole
decoder integer): integer kinds differ in what they guarantee, so their points never share a line.
Within a kind, one curve per series of parents (:func:`parent_series`)."""
VIDEO_SUFFIXES = CONTAINER_SUFFIXES + (".y4m", ".yuv")


@dataclass
class EvalModel:
    """A model under evaluation: ``family`` is one of :data:`FAMILIES` (one RD curve each)."""

    name: str
    family: str
    path: Path
    integer: object | None = None  # IntegerCheckpoint
    float_model: torch.nn.Module | None = None
    quality: int | None = None
    """CompressAI quality 1..9 (λ preset): the integer checkpoint's record, or a zoo-style
    file name (``ssf2020-mse-3-<sha8>``); None if neither says."""
    series: str | None = None
    """The series of parents the model belongs to (:func:`parent_series`); None: not known."""
    anchor: object | None = None
    """A classical codec at one CRF (:class:`~nvc_train.eval.anchors.AnchorPoint`): family is its name."""


def anchor_models(points) -> list[EvalModel]:
    """Eval models of classical anchor points (:func:`nvc_train.eval.anchors.anchor_points`):
    one curve per codec, its points ordered by rate."""
    return [EvalModel(p.name, p.codec.name, Path(p.codec.encoder), anchor=p, series=p.codec.settings) for p in points]


def parent_series(float_file: str | Path | None = None, zoo_name: str | None = None) -> str | None:
    """Which series of float models a model comes from, so that a curve joins one series'
    qualities and never two fine-tunings of the same quality: ``CompressAI zoo ssf2020-mse``
    for CompressAI's pretrained models (a zoo start, or a zoo file evaluated as float), else the
    folder of the float file (a parent per quality, kept side by side, is one series).

    Args:
        float_file: the float model itself (float kind), or the file an integer checkpoint was
            trained (``init_weights``) or quantized (PTQ ``source``) from.
        zoo_name: the zoo model a run started from (``ssf2020-mse-3``).
    """
    from nvc_train.models.zoo_files import zoo_name_parts

    for name in (zoo_name, Path(float_file).name if float_file else None):
        parts = zoo_name_parts(name) if name else None
        if parts is not None:
            return f"CompressAI zoo ssf2020-{parts[0]}"
    return str(Path(float_file).resolve().parent) if float_file else None


def _integer_series(metadata: dict) -> str | None:
    config = metadata.get("config") or {}
    zoo_name = (config.get("model") or {}).get("pretrained") or None
    source = config.get("source") or metadata.get("init_weights") or None  # PTQ's; QAT's "PATH (SHA-256 …)"
    if source:
        source = re.sub(r" \(SHA-256 [0-9a-f]+\)$", "", str(source))
    return parent_series(source, zoo_name if isinstance(zoo_name, str) else None)


def load_eval_model(path: str | Path, device: str) -> EvalModel:
    """An integer checkpoint (family from its metadata) or a float ScaleSpaceFlow state dict."""
    from nvc_train.models.ssf import read_state_dict, ssf_from_checkpoint
    from nvc_train.quant.export import MAGIC, load_integer_checkpoint

    path = require_file(path, "checkpoint")
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
    if magic == MAGIC:
        ck = load_integer_checkpoint(path, device=device)
        family = "ptq" if "ptq" in (ck.metadata.get("config") or {}) else (
            "pixel-exact" if ck.codec.pixel_exact else "qat")
        quality = ck.metadata.get("quality")
        return EvalModel(path.stem, family, path, integer=ck, quality=int(quality) if quality else None,
                         series=_integer_series(ck.metadata))
    if path.suffix == ".ckpt":
        raise UserError(f"{path} is a Lightning checkpoint: evaluate `nvc-train export-integer` or "
                        "`nvc-train export-float` (float) output")
    record = read_state_dict(path)  # export-float records the quality; zoo files name it
    model = ssf_from_checkpoint(record, None, str(path)).to(device).eval()
    model.update(force=True)
    name = path.name.removesuffix(".tar").removesuffix(".pth")
    return EvalModel(name, "float", path, float_model=model, quality=record.quality, series=parent_series(path))


def collect_sequences(paths: list[str | Path]) -> list[Path]:
    """Video files and PNG folders from files and folders (a folder of videos is expanded;
    a folder prepared by ``prepare-footage`` gives its validation files, never trained on)."""
    from nvc_train.data.footage import MANIFEST, read_manifest

    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"data not found: {p}")
        if p.is_file():
            found.append(p)
        elif (p / MANIFEST).is_file():
            manifest = read_manifest(p)
            held_out = [Path(manifest["source_root"]) / f["source"] for f in manifest["files"] if f["split"] == "validation"]
            if not held_out:
                raise UserError(f"{p} has no validation files: prepare it with --val-fraction above 0")
            found.extend(held_out)
        elif any(c.suffix.lower() == ".png" for c in p.iterdir()):
            found.append(p)
        else:
            videos = sorted(c for c in p.iterdir() if c.suffix.lower() in VIDEO_SUFFIXES
                            or (c.is_dir() and any(g.suffix.lower() == ".png" for g in c.iterdir())))
            if not videos:
                raise UserError(f"{p} holds no video files or PNG folders")
            found.extend(videos)
    names = [s.stem for s in found]
    if len(set(names)) != len(names):
        raise UserError("two sequences share a name: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    return found


# --------------------------------------------------------------------------- metrics

def frame_metrics(x_hat: Tensor, src: SourceFrame, spec: ColourSpec,
                  rec_planes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """CompressAI's per-frame metrics of a reconstruction (3, H, W) against its source.

    Y'CbCr PSNRs compare the source's own 4:2:0 planes where it has them; for other sources
    both sides are converted with ``spec``. ``rec_planes``: the reconstruction's own 4:2:0
    planes at the source's depth (a classical codec's output), measured as they are instead of
    converted back from ``x_hat``.
    """
    bits = src.bits
    peak = 2**bits - 1  # CompressAI's max_val: RGB too is measured at the source's bit depth
    rec = x_hat.detach().float().cpu().clamp(0, 1)
    org_rgb = torch.round(src.rgb * peak)
    rec_rgb = torch.round(rec * peak)
    mse_rgb = torch.mean((org_rgb - rec_rgb) ** 2).item()
    out = {"mse-rgb": mse_rgb, "psnr-rgb": _psnr(mse_rgb, peak)}
    if min(rec.shape[-2:]) >= MS_SSIM_MIN_SIDE:
        out["ms-ssim-rgb"] = float(ms_ssim(org_rgb[None], rec_rgb[None], data_range=peak).item())
    org_planes = src.planes if src.planes is not None else rgb_to_ycbcr420(src.rgb, bits, spec)
    if rec_planes is None:
        rec_planes = rgb_to_ycbcr420(rec, bits, spec)
    for name, o, r in zip("yuv", org_planes, rec_planes):
        out[f"psnr-{name}"] = _psnr(float(np.mean((o.astype(np.float64) - r.astype(np.float64)) ** 2)), peak)
    out["psnr-yuv"] = (4 * out["psnr-y"] + out["psnr-u"] + out["psnr-v"]) / 6
    return out


def _psnr(mse: float, peak: float) -> float:
    return 100.0 if mse == 0 else 10 * math.log10(peak**2 / mse)


# --------------------------------------------------------------------------- coding

@dataclass
class CodedSequence:
    """What an encoder produced: per-frame coded data, encoder latent hashes, timing."""

    frames: list[CodedFrame]
    encoder_hashes: list[str | None]
    file_bytes: int
    seconds: float
    bitstream: Path | None = None
    encoder_md5s: list[str] | None = None  # pixel-exact checkpoints: the encoder's output frames


FrameTick = Callable[[str], None] | None
"""Progress callback: called with "encode" or "decode" after each frame."""


def encode_integer(model: EvalModel, source: Path, options: InputOptions, bitstream: Path, gop: int,
                   device: str, max_frames: int | None, on_frame: FrameTick = None) -> CodedSequence:
    with open_video(source, options) as reader:
        report = encode_video(reader, bitstream, model.integer, gop=gop, device=device, max_frames=max_frames,
                              progress=False, on_frame=on_frame, md5=model.integer.codec.pixel_exact)
    with open(bitstream, "rb") as f:
        frames = list(iter_frames(f, read_header(f)))
    md5s = [fs.md5 for fs in report.frames] if report.pixel_exact else None
    return CodedSequence(frames, [fs.latent_sha256 for fs in report.frames], report.file_bytes, report.seconds,
                         bitstream, md5s)


@torch.no_grad()
def encode_float(model: EvalModel, source: Path, options: InputOptions, gop: int, device: str,
                 max_frames: int | None, on_frame: FrameTick = None) -> CodedSequence:
    """CompressAI's float SSF; the same container (header, per-frame records) is counted."""
    net = model.float_model
    frames: list[CodedFrame] = []
    start = time.perf_counter()
    with open_video(source, options) as reader:
        x_ref = None
        for t, rgb in enumerate(reader):
            if max_frames is not None and t >= max_frames:
                break
            x = pad_frame(rgb).to(device)
            if x_ref is None or (gop and t % gop == 0):
                x_ref, out = net.encode_keyframe(x)
                frames.append(CodedFrame("I", {"keyframe": _latent(out["strings"], out["shape"])}))
            else:
                x_ref, out = net.encode_inter(x, x_ref)
                frames.append(CodedFrame("P", {k: _latent(out["strings"][k], out["shape"][k]) for k in FRAME_PARTS["P"]}))
            if on_frame is not None:
                on_frame("encode")
    seconds = time.perf_counter() - start
    size = HEADER_BYTES + sum(frame_record_size(cf) for cf in frames)
    return CodedSequence(frames, [None] * len(frames), size, seconds)


def _latent(strings, shape) -> CodedLatent:
    return CodedLatent(strings[0][0], strings[1][0], tuple(int(s) for s in shape))


def decode_frames(model: EvalModel, coded: CodedSequence, device: str
                  ) -> Iterator[tuple[Tensor, str | None, float, DecodedFrame | None]]:
    """(x_hat (1, 3, H', W'), decoder latent hash or None, seconds, the integer codec's
    decoded frame or None) per frame."""
    if model.integer is not None:
        decoder = model.integer.codec.decompress_iter(iter(coded.frames), device)
        while True:
            t = time.perf_counter()
            frame = next(decoder, None)
            if frame is None:
                return
            yield frame.x_hat, frame.latent_sha256, time.perf_counter() - t, frame
    net = model.float_model
    x_ref = None
    with torch.no_grad():
        for cf in coded.frames:
            t = time.perf_counter()
            if cf.frame_type == "I":
                lat = cf.latents["keyframe"]
                x_ref = net.decode_keyframe([[lat.y_string], [lat.z_string]], lat.z_shape)
            else:
                strings = {k: [[v.y_string], [v.z_string]] for k, v in cf.latents.items()}
                x_ref = net.decode_inter(x_ref, strings, {k: v.z_shape for k, v in cf.latents.items()})
            yield x_ref, None, time.perf_counter() - t, None


# --------------------------------------------------------------------------- one sequence

def evaluate_sequence(model: EvalModel, source: Path, options: InputOptions, gop: int, device: str,
                      max_frames: int | None, bitstream_dir: Path, on_frame: FrameTick = None) -> dict:
    """Encode, decode and measure one sequence: ``{"results": {...}, "frames": [...], "first_frame": x_hat}``.

    ``on_frame("encode")`` / ``on_frame("decode")`` is called after each frame (progress).
    """
    if model.anchor is not None:
        from nvc_train.eval.anchors import code_sequence

        return code_sequence(model.anchor, source, options, gop, max_frames, on_frame)
    if model.integer is not None:
        bitstream_dir.mkdir(parents=True, exist_ok=True)
        coded = encode_integer(model, source, options, bitstream_dir / f"{source.stem}.nvc", gop, device, max_frames,
                               on_frame)
    else:
        coded = encode_float(model, source, options, gop, device, max_frames, on_frame)
    per_frame, decode_seconds, first = [], 0.0, None
    with open_video(source, options) as reader:
        info = reader.info
        spec = info.colour or ColourSpec()
        pixels = info.width * info.height
        sources = reader.source_frames()
        for t, (cf, enc_hash, (x_hat, dec_hash, seconds, frame)) in enumerate(
                zip(coded.frames, coded.encoder_hashes, decode_frames(model, coded, device))):
            decode_seconds += seconds
            src = next(sources)
            rec = x_hat[0, :, :info.height, :info.width]
            if frame is not None and frame.samples is not None:  # pixel-exact: the output at the source's depth
                rec = output_frame(frame, info.height, info.width, info.bits)
            if first is None:
                first = (rec.detach().cpu().clamp(0, 1), src.rgb)
            nbytes = frame_record_size(cf)
            row = {"index": t, "type": cf.frame_type, "bytes": nbytes, "bpp": 8 * nbytes / pixels,
                   **frame_metrics(rec, src, spec)}
            for part, lat in cf.latents.items():
                row[f"bpp-{part}"] = 8 * (len(lat.y_string) + len(lat.z_string)) / pixels
            if enc_hash is not None:
                row["encoder_latent_sha256"], row["decoder_latent_sha256"] = enc_hash, dec_hash
                row["latents_match"] = float(enc_hash == dec_hash)
            if coded.encoder_md5s is not None:  # pixel-exact: the decoder must output the encoder's frame
                row["frames_match"] = float(coded.encoder_md5s[t] == output_md5(frame, info.height, info.width,
                                                                                 info.bits))
            per_frame.append(row)
            if on_frame is not None:
                on_frame("decode")
    n = len(per_frame)
    results = {k: float(np.mean([r.get(k, 0.0) for r in per_frame]))
               for k in per_frame[0] if k not in ("index", "type", "bytes") and not k.endswith("sha256")}
    for part in ("keyframe", "motion", "residual"):  # average over all frames, not only those coding the part
        results[f"bpp-{part}"] = float(sum(r.get(f"bpp-{part}", 0.0) for r in per_frame) / n)
    if "ms-ssim-rgb" not in per_frame[0]:
        results.pop("ms-ssim-rgb", None)
    results.update({
        "bpp": 8 * coded.file_bytes / (pixels * n),
        "bitrate": 8 * coded.file_bytes * float(info.fps) / (n * 1000),
        "encoding_time": coded.seconds, "decoding_time": decode_seconds, "frames": n,
    })
    return {"name": model.name, "family": model.family, "sequence": source.stem,
            "description": f"{model.name} on {source.name} ({info.width}x{info.height}, {n} frames, GOP {gop})",
            "results": results, "frames": per_frame, "first_frame": first,
            "bitstream": str(coded.bitstream) if coded.bitstream else None}


def aggregate(sequence_results: list[dict]) -> dict[str, float]:
    """Mean of each metric over sequences (CompressAI's ``aggregate_results``)."""
    keys = [k for k in sequence_results[0]["results"] if all(k in r["results"] for r in sequence_results)]
    return {k: float(np.mean([r["results"][k] for r in sequence_results])) for k in keys}


def family_curves(per_model: dict[str, dict]) -> dict[str, dict]:
    """CompressAI results files, one per family and series of parents: lists over those models
    sorted by quality (λ preset) where every member's is known, else by rate.

    ``per_model`` maps model name → {"family": ..., "quality": int or None, "series": str or None,
    "results": aggregated metrics}. A family of one series is one curve named after the family
    (``qat``); a family of several has ``qat-1``, ``qat-2``, … in the order of their series,
    each recording its ``series``.
    """
    from nvc_train.eval.anchors import ANCHORS

    curves = {}
    for family in FAMILIES + tuple(ANCHORS):
        series = sorted({m.get("series") for m in per_model.values() if m["family"] == family}, key=str)
        for index, one in enumerate(series, start=1):
            members = [(name, m) for name, m in per_model.items() if m["family"] == family and m.get("series") == one]
            by_quality = all(m.get("quality") is not None for _, m in members)
            members.sort(key=lambda nm: (nm[1]["quality"], nm[1]["results"]["bpp"]) if by_quality
                         else (nm[1]["results"]["bpp"],))
            keys = [k for k in members[0][1]["results"] if all(k in m["results"] for _, m in members)]
            # "q" is the quality, as CompressAI's results files hold it; the file names go under "model".
            results = {"q": [m.get("quality") for _, m in members], "model": [name for name, _ in members]}
            results.update({key: [m["results"][key] for _, m in members] for key in keys})
            name = family if len(series) == 1 else f"{family}-{index}"
            label = family if len(series) == 1 or one is None else f"{family} ({one})"
            what = f"{family} anchor: {one}" if family in ANCHORS else f"{family} models"
            curves[name] = {"name": label, "description": f"nvc-train eval ({what}, real coding)",
                            "family": family, "series": one, "results": results}
    return curves


def plot_rd(curves: dict[str, dict], path: Path) -> None:
    """PSNR-RGB and MS-SSIM (dB) against bpp, one curve per family; written atomically."""
    import io

    import matplotlib.pyplot as plt

    from nvc_train.io.atomic import atomic_write_bytes

    fig = rd_figure(curves)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def rd_figure(curves: dict[str, dict]):
    """The figure :func:`plot_rd` writes: a panel per metric, the legend below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("psnr-rgb", "PSNR-RGB [dB]")]
    if all("ms-ssim-rgb" in c["results"] for c in curves.values()):
        metrics.append(("ms-ssim-rgb", "MS-SSIM-RGB [dB]"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    styles = {"float": "o-", "ptq": "s--", "qat": "^-", "pixel-exact": "D-", "x264": "x:", "x265": "+:", "av1": "*:"}
    for ax, (metric, label) in zip(axes[0], metrics):
        for key, curve in curves.items():
            ys = np.array(curve["results"][metric])
            if metric.startswith("ms-ssim"):
                ys = -10 * np.log10(np.maximum(1 - ys, 1e-12))
            xs = curve["results"]["bpp"]
            ax.plot(xs, ys, styles.get(curve.get("family", key), "o-"), label=curve.get("name", key), linewidth=1.2,
                    markersize=6)
            for x, y, name in zip(xs, ys, curve["results"].get("model", [])):  # which model each point is
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, alpha=0.8)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.grid(alpha=0.4)
        ax.margins(x=0.12, y=0.15)  # a lone point or a short curve does not sit on the frame
    # One legend for all panels, below them: it never covers a point.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), frameon=False)
    fig.suptitle("Rate-distortion (real coding)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
