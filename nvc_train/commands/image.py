"""``encode``, ``decode``, ``hashes``, ``info`` and ``conformance`` for integer image checkpoints.

The codec commands (:mod:`nvc_train.commands.codec`, :mod:`nvc_train.commands.conformance`)
hand over here when the checkpoint's header (or the stream's magic) says it is an image
codec: PNG (8/16 bit), JPEG, PPM or BMP in, an ``NVCI`` ``.nvc`` stream between, PNG out.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nvc_train.errors import UserError

VIDEO_ONLY_OPTIONS = {"frames": None, "gop": 32, "runtime": None, "onnx": None, "reference": None}
"""Options of the shared parsers that only video streams have, with their defaults."""


def refuse_video_options(args, command: str) -> None:
    for name, default in VIDEO_ONLY_OPTIONS.items():
        if getattr(args, name, default) != default:
            raise UserError(f"{command}: --{name.replace('_', '-')} is for video checkpoints; this checkpoint codes images")


def _load(checkpoint: Path, dev: str, self_check: bool = True):
    from nvc_train.quant.image_export import load_image_checkpoint

    return load_image_checkpoint(checkpoint, device=dev, self_check=self_check)


def encode_image(args, checkpoint: Path, out: Path, dev: str) -> int:
    """Image file → ``.nvc`` image stream."""
    from nvc_train.codec.image_codec import pad_image
    from nvc_train.codec.image_files import ImageStream, write_stream
    from nvc_train.eval.metrics import psnr
    from nvc_train.io.images import image_md5, read_image, to_unit_float

    refuse_video_options(args, "encode")
    from nvc_train.codec.image_files import MAX_SIDE

    image = read_image(args.input, drop_alpha=getattr(args, "drop_alpha", False))
    _, height, width = image.levels.shape
    if max(height, width) > MAX_SIDE:
        raise UserError(f"{args.input} is {width}x{height}: image streams hold at most {MAX_SIDE} pixels a side")
    ck = _load(checkpoint, dev)
    x = to_unit_float(image.levels, image.bits).unsqueeze(0).to(dev)
    coded, decoded = ck.codec.compress(pad_image(x))
    size = write_stream(out, ImageStream(bytes.fromhex(ck.sha256), width, height, image.bits, coded))
    x_hat = decoded.x_hat[..., :height, :width]
    stream = sys.stderr if args.md5 else sys.stdout
    if not args.quiet:
        note = " (alpha dropped)" if image.alpha_dropped else ""
        print(f"encoded {args.input}{note} → {out}: {width}x{height}, {image.bits}-bit, {size} bytes, "
              f"{8 * size / (width * height):.4f} bpp, PSNR {float(psnr(x_hat.clamp(0, 1), x)):.2f} dB "
              f"(the encoder's reconstruction)", file=stream)
    if args.md5:
        print(f"0 I {image_md5(decoded.levels(image.bits, height, width), image.bits)}")
        _float_note(ck.codec)
    return 0


def _float_note(codec) -> None:
    if not codec.pixel_exact:
        print("nvc-train: note: this checkpoint decodes pixels with CompressAI's float synthesis: these MD5s can "
              "differ between machines (the latents cannot: `nvc-train hashes`); a checkpoint trained with "
              "model.qat.scope=decoder decodes identical pixels everywhere", file=sys.stderr)


def _decode(bitstream: Path, checkpoint: Path, dev: str):
    from nvc_train.codec.image_files import read_stream

    stream = read_stream(bitstream)
    ck = _load(checkpoint, dev)
    if stream.checkpoint_sha256.hex() != ck.sha256:
        raise UserError(f"{bitstream} was encoded with checkpoint {stream.checkpoint_sha256.hex()[:8]}, not "
                        f"{ck.sha256[:8]} ({checkpoint}): decode it with the checkpoint of that SHA-256")
    decoded = ck.codec.decompress(stream.coded, dev)
    return stream, decoded, ck.codec


def decode_image(args, bitstream: Path, checkpoint: Path, dev: str) -> int:
    """``.nvc`` image stream → PNG (at the source's bit depth, or ``--depth``)."""
    from nvc_train.errors import check_output_file
    from nvc_train.io.images import image_md5, write_image

    refuse_video_options(args, "decode")
    out = Path(args.output) if args.output else None
    if out is not None:
        if out.suffix.lower() != ".png":
            raise UserError(f"decode writes an image stream as one PNG (-o FILE.png), not {out.name}")
        check_output_file(out, args.overwrite)
    stream, decoded, codec = _decode(bitstream, checkpoint, dev)
    bits = args.depth or stream.bits
    levels = decoded.levels(bits, stream.height, stream.width)
    if out is not None:
        write_image(out, levels, bits, overwrite=args.overwrite)
    if not args.quiet:
        print(f"decoded {bitstream}{' → ' + str(out) if out else ''}: {stream.width}x{stream.height}, "
              f"{bits}-bit, latent SHA-256 {decoded.latent_sha256}", file=sys.stderr if args.md5 else sys.stdout)
    if args.md5:
        print(f"0 I {image_md5(levels, bits)}")
        _float_note(codec)
    return 0


def hashes_image(args, bitstream: Path, checkpoint: Path, dev: str) -> int:
    """One line, as ``hashes`` prints for a frame: index, type, SHA-256 of the decoded latent
    and, for a pixel-exact checkpoint, the MD5 of the image at the source's depth (the
    pixels are then part of the contract)."""
    from nvc_train.io.images import image_md5

    refuse_video_options(args, "hashes")
    stream, decoded, codec = _decode(bitstream, checkpoint, dev)
    md5 = f" {image_md5(decoded.levels(stream.bits, stream.height, stream.width), stream.bits)}" \
        if codec.pixel_exact else ""
    print(f"0 I {decoded.latent_sha256}{md5}")
    return 0


def info_image(args, path: Path) -> int:
    import json

    from nvc_train.codec.image_files import read_stream

    stream = read_stream(path)
    size = path.stat().st_size
    summary = {"file": str(path), "kind": "image", "bytes": size, "checkpoint_sha256": stream.checkpoint_sha256.hex(),
               "width": stream.width, "height": stream.height, "source_bits": stream.bits,
               "bpp": round(8 * size / (stream.width * stream.height), 6),
               "y_bytes": len(stream.coded.y_string), "z_bytes": len(stream.coded.z_string)}
    if args.checkpoint:
        from nvc_train.commands.common import checkpoint_path
        from nvc_train.quant.header import read_checkpoint_header

        ckpt = checkpoint_path(args.checkpoint)
        header = read_checkpoint_header(ckpt)
        if header.sha256 != stream.checkpoint_sha256:
            raise UserError(f"{path} was encoded with checkpoint {stream.checkpoint_sha256.hex()[:8]}, not "
                            f"{header.sha256.hex()[:8]} ({ckpt}): it needs the checkpoint of that SHA-256")
        summary["needs"] = f"{ckpt}: {header.kind}, format {header.version}"
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:18} {value}")
    return 0


def conformance_image(args, checkpoint: Path, dev: str) -> int:
    """Every record and the self-test of an image checkpoint on ``dev``; exit 1 on any difference."""
    from nvc_train.quant.image_export import run_records, self_test_problems

    refuse_video_options(args, "conformance")
    ck = _load(checkpoint, dev, self_check=False)
    try:
        results = run_records(ck.codec, ck.records, dev)
        layer_problems = [p for p in self_test_problems(ck.codec, ck.records, dev)
                          if not p.startswith("fails the")]  # the stress records are already above
    except Exception as exc:  # a re-hashed file with malformed records or tensors
        raise UserError(f"{checkpoint}: its records or tensors are malformed ({type(exc).__name__}: {exc})") from None
    results.append(("self-test: bounds, every layer on every GEMM path vs int64", not layer_problems))
    for problem in layer_problems:
        print(f"self-test: {problem}")
    failures = sum(not ok for _, ok in results)
    for description, ok in results:
        if not args.quiet or not ok:
            print(f"{description:<60} {'OK' if ok else 'MISMATCH'}")
    verdict = "PASS" if failures == 0 else f"FAIL ({failures} of {len(results)} checks differ)"
    print(f"conformance {verdict}: {len(results)} checks of {checkpoint.name} ({ck.metadata['architecture']}) on {dev}")
    return 0 if failures == 0 else 1
