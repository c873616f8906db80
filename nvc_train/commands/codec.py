"""The codec on files: ``encode``, ``decode``, ``info``, ``hashes`` (alias ``verify``) and ``compare``.

``info`` reads a header without importing torch, so it answers at once.
"""

from __future__ import annotations

import json
import math

from nvc_train.commands.common import (
    CHECKPOINT_HELP,
    Deprecated,
    add_device,
    add_input_options,
    add_overwrite,
    add_quiet,
    add_runtime,
    check_gop_frames,
    checked_input_options,
    checked_runtime,
    checkpoint_path,
    device,
    input_options,
    use_runtime,
    warn_deprecated,
)
from nvc_train.errors import UserError, require_file
from nvc_train.io.paths import check_input_path, check_output_path


def add_parsers(sub) -> None:
    s = sub.add_parser("encode", help="video file (or image) → .nvc bitstream (integer checkpoint)",
                       description="Encode a video (.mp4/.mov/.mkv/.avi/.webm, .y4m, raw .yuv, PNG folder) "
                                   "as a keyframe every --gop frames and P-frames between. With an integer image "
                                   "checkpoint (bmshj2018-hyperprior, mbt2018-mean), encode one image (PNG 8/16 "
                                   "bit, JPEG, PPM, BMP) instead.")
    s.add_argument("input", help="video file, .y4m, .yuv or a folder of PNG frames; an image for image checkpoints")
    s.add_argument("-o", "--output", required=True, metavar="FILE", help="output .nvc file")
    s.add_argument("--checkpoint", required=True,
                   help=f"integer checkpoint from `nvc-train export-integer` or `ptq` ({CHECKPOINT_HELP})")
    s.add_argument("--frames", type=int, default=None, help="encode at most N frames")
    s.add_argument("--gop", type=int, default=32, help="keyframe every G frames; 0 = only the first (default: %(default)s)")
    add_md5(s, "the encoder's reconstruction (what a decoder must output)")
    s.add_argument("--drop-alpha", action="store_true",
                   help="image checkpoints: code an RGBA/LA image's colour channels and ignore its alpha "
                        "(without it, an image with alpha is refused)")
    add_device(s)
    add_input_options(s, "input")
    add_overwrite(s)
    add_quiet(s)
    s.set_defaults(run=encode)

    s = sub.add_parser("decode", help=".nvc bitstream → video (y4m, yuv, mp4/mkv/mov, PNG folder) or PNG image",
                       description="Decode a .nvc bitstream. The output format follows the suffix of -o; a path "
                                   "without a suffix becomes a folder of PNG frames. Without -o, decode only "
                                   "(e.g. to measure against --reference). An image stream decodes to one PNG "
                                   "at the source's bit depth.")
    s.add_argument("bitstream")
    s.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="output .y4m, .yuv (yuv420p), .mp4/.mkv/.mov or PNG folder")
    s.add_argument("--checkpoint", required=True,
                   help=f"the integer checkpoint the bitstream was encoded with ({CHECKPOINT_HELP})")
    add_device(s)
    add_runtime(s)
    s.add_argument("--h264-mode", dest="h264_mode", default="lossless", choices=("lossless", "high"),
                   help="H.264 outputs (.mp4, .mkv, .mov): lossless = RGB at QP 0 (exact 8-bit RGB, fewer players); "
                        "high = 4:2:0 CRF 12 (plays everywhere) (default: %(default)s)")
    s.add_argument("--mp4-mode", dest="h264_mode", choices=("lossless", "high"), action=Deprecated, new="--h264-mode")
    s.add_argument("--reference", default=None, help="source video to report PSNR-RGB, MS-SSIM and bpp against")
    add_md5(s, "each decoded frame")
    s.add_argument("--depth", dest="depth", type=int, default=None, choices=(8, 10, 12, 16),
                   help="bits per sample of the output frames (and of --md5): default the source's depth as the "
                        "bitstream records it (8 for H.264 outputs, which are 8-bit only)")
    add_input_options(s, "output", output=True)
    s.add_argument("--reference-matrix", default=None, choices=("bt709", "bt601", "bt2020"),
                   help="Y'CbCr matrix of the --reference (default: its colour tags, else bt709); "
                        "independent of --matrix, which only sets the output's")
    s.add_argument("--reference-range", default=None, choices=("limited", "full"),
                   help="Y'CbCr range of the --reference (default: its colour tags, else limited)")
    add_overwrite(s)
    add_quiet(s)
    s.set_defaults(run=decode)

    s = sub.add_parser("info", help="describe a .nvc bitstream: header, frame types and sizes")
    s.add_argument("bitstream")
    s.add_argument("--per-frame", action="store_true", help="one line per frame: type, bytes, bpp")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--checkpoint", help="an integer checkpoint (file or hf://): say whether the stream was encoded "
                                        "with it and what it decodes (pixel-exact frames, or latents); read "
                                        "from its header, without torch")
    s.set_defaults(run=info)

    s = sub.add_parser("hashes", aliases=["verify"],
                       help="print the SHA-256 of every frame's decoded latents (diff them across machines)",
                       description="Decode the latents of a bitstream and print one line per frame: index, type "
                                   "(I/P) and the SHA-256 of its decoded latents. Run it on two machines and give "
                                   "both outputs to `nvc-train compare`. `verify` is the old name of this command.")
    s.add_argument("bitstream")
    s.add_argument("--checkpoint", required=True, help=f"integer checkpoint ({CHECKPOINT_HELP})")
    add_device(s)
    add_runtime(s)
    s.set_defaults(run=hashes)

    s = sub.add_parser("compare", help="compare two machines' `nvc-train hashes` outputs (and their decodes)",
                       description="Names every frame whose decoded latents or (pixel-exact checkpoints, or "
                                   "`decode --md5` outputs) decoded frames differ between two machines; with "
                                   "--decodes, prints the PSNR between the two decoded videos per frame and its "
                                   "position in the GOP (pixel drift of a float synthesis). Exit 1 if anything differs.")
    s.add_argument("hashes_a", help="`nvc-train hashes` (or `decode --md5`) output of machine A")
    s.add_argument("hashes_b", help="`nvc-train hashes` (or `decode --md5`) output of machine B")
    s.add_argument("--decodes", nargs=2, metavar=("VIDEO_A", "VIDEO_B"), help="the same bitstream decoded on A and B")
    s.set_defaults(run=compare)


def is_image_checkpoint(path) -> bool:
    """Whether ``path`` is an integer image checkpoint (read from its header, without torch)."""
    from nvc_train.quant.header import read_checkpoint_header

    try:
        return read_checkpoint_header(path).image
    except UserError:
        return False  # the loader says what is wrong with it, in its own words


def is_image_stream(path) -> bool:
    from nvc_train.codec.image_files import is_image_stream as starts_like_one

    return starts_like_one(path)


def add_md5(parser, what: str) -> None:
    parser.add_argument("--md5", action="store_true",
                        help=f"print the MD5 of {what}, one line per frame: index, type (I/P), MD5 of the "
                             "R, G, B planes at the output's bit depth (the source's; one byte per sample at 8 "
                             "bits, two little-endian above), identical on every machine for pixel-exact "
                             "checkpoints. They are the only lines on stdout (the summary goes to stderr), so "
                             "`> a.txt` writes what `nvc-train compare` reads; --quiet keeps them")


def summary_stream(args):
    """Where encode/decode print their human-readable lines: stderr with ``--md5``, so that
    ``decode … --md5 > a.txt`` writes exactly the lines ``nvc-train compare`` reads."""
    import sys

    return sys.stderr if args.md5 else sys.stdout


def print_md5(report, checkpoint_is_pixel_exact: bool) -> None:
    """The per-frame MD5 lines on stdout; a note on stderr when they are not a guarantee."""
    import sys

    if not checkpoint_is_pixel_exact:
        print("nvc-train: note: this checkpoint's synthesis is float (not qat.scope=decoder): these MD5s can "
              "differ between machines", file=sys.stderr)
    print("\n".join(report.md5_lines()))


def encode(args) -> int:
    """Video file → .nvc bitstream with an integer checkpoint."""
    check_gop_frames(args)
    checked_input_options(args)  # options before files, and neither needs torch
    check_input_path(args.input)
    out = check_output_path(args.output, args.overwrite)
    if out.suffix != ".nvc":
        raise UserError(f"encode writes a .nvc bitstream, not {out.name}")
    dev = device(args.device)
    checkpoint = checkpoint_path(args.checkpoint)
    if is_image_checkpoint(checkpoint):
        from nvc_train.commands.image import encode_image

        return encode_image(args, checkpoint, out, dev)
    options = input_options(args)  # checks the options, then imports the video module (and torch)
    # Arguments and paths are checked; now the heavy imports (torch, CompressAI).
    from nvc_train.codec.files import encode_video
    from nvc_train.io.video import open_video
    from nvc_train.quant.export import load_integer_checkpoint

    ck = load_integer_checkpoint(checkpoint, device=dev)
    with open_video(args.input, options) as reader:
        if not args.quiet:
            info = reader.info
            print(f"input: {args.input}: {info.width}x{info.height} @ {float(info.fps):.3f} fps, {info.description}",
                  file=summary_stream(args))
        report = encode_video(reader, out, ck, gop=args.gop, device=dev, max_frames=args.frames,
                              progress=not args.quiet, md5=args.md5)
    if not args.quiet:
        print(report.summary(f"encoded {out}:"), file=summary_stream(args))
    if args.md5:
        print_md5(report, report.pixel_exact)
    return 0


def decode(args) -> int:
    """.nvc bitstream → video file (y4m, yuv, mp4/mkv/mov, PNG folder); optional quality report."""
    from dataclasses import replace
    from fractions import Fraction

    bitstream = require_file(args.bitstream, "bitstream")
    if is_image_stream(bitstream):
        from nvc_train.commands.image import decode_image

        return decode_image(args, bitstream, checkpoint_path(args.checkpoint), device(args.device))
    out = check_output_path(args.output, args.overwrite) if args.output else None
    if out is not None and out.suffix == ".nvc":
        raise UserError("decode writes video (.y4m, .yuv, .mp4, .mkv, .mov or a PNG folder), not .nvc")
    if args.reference:
        check_input_path(args.reference, "--reference")
    if out is not None and args.depth and args.depth > 8 and out.suffix.lower() in (".mp4", ".mkv", ".mov"):
        raise UserError(f"--depth {args.depth}: H.264 output is 8-bit; write .y4m, .yuv or a PNG folder")
    dev = device(args.device)
    runtime = checked_runtime(args)
    checkpoint = checkpoint_path(args.checkpoint)
    if is_image_checkpoint(checkpoint):
        raise UserError(f"{checkpoint} is an integer image checkpoint and {bitstream} a video stream: decode it "
                        "with the video checkpoint it was encoded with")
    bits = output_depth(args, bitstream, out)
    # Arguments and paths are checked; now the heavy imports (torch, CompressAI).
    from nvc_train.codec.files import decode_video
    from nvc_train.io.colour import ColourSpec
    from nvc_train.io.video import open_video, open_writer
    from nvc_train.quant.export import load_integer_checkpoint

    # The reference is read with its own tags (or --reference-matrix/-range), never with the
    # output's --matrix/--range: those say how to write the decoded video, not how to read the source.
    reference_options = replace(input_options(args), matrix=args.reference_matrix, range=args.reference_range)
    ck = use_runtime(args, load_integer_checkpoint(checkpoint, device=dev), runtime)

    def make_writer(header):
        tagged = header.colour_spec()
        try:
            spec = ColourSpec(args.matrix or tagged.matrix, args.range or tagged.range)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return open_writer(out, header.width, header.height, Fraction(header.fps_num, header.fps_den), spec,
                           args.h264_mode, bits)

    reference = open_video(args.reference, reference_options) if args.reference else None
    try:
        report = decode_video(bitstream, ck, make_writer if out else None, dev, reference,
                              progress=not args.quiet, md5=args.md5, bits=bits)
    finally:
        if reference is not None:
            reference.close()
    if not args.quiet:
        print(report.summary(f"decoded {args.bitstream}{' → ' + str(out) if out else ''}:"), file=summary_stream(args))
    if args.md5:
        print_md5(report, report.pixel_exact)
    return 0


def output_depth(args, bitstream, out) -> int:
    """Bits per sample of decode's output: --depth, else the source's depth from the
    header, else 8 where the output format is 8-bit only (with a note)."""
    import sys

    from nvc_train.codec.bitstream import read_header

    if args.depth:
        return args.depth
    with open(bitstream, "rb") as f:
        bits = read_header(f).bits
    if out is not None and bits > 8 and out.suffix.lower() in (".mp4", ".mkv", ".mov"):
        if not args.quiet:
            print(f"nvc-train: note: the source was {bits}-bit; H.264 output is 8-bit (.y4m, .yuv and PNG "
                  f"folders keep {bits} bits)", file=sys.stderr)
        return 8
    return bits


def info(args) -> int:
    """Describe a .nvc bitstream (no checkpoint needed, no torch imported)."""
    from nvc_train.codec.bitstream import (
        EMBEDDED,
        frame_record_size,
        iter_frames,
        read_header,
    )

    from nvc_train.quant.header import read_checkpoint_header

    path = require_file(args.bitstream, "bitstream")
    if is_image_stream(path):
        from nvc_train.commands.image import info_image

        return info_image(args, path)
    with open(path, "rb") as f:
        header = read_header(f)
        frames = [(cf.frame_type, frame_record_size(cf)) for cf in iter_frames(f, header)]
    # What the stream needs: the checkpoint of the SHA-256 it records. Its kind is in that
    # checkpoint's header (the stream's format is the same for both kinds).
    needs = "the integer checkpoint of checkpoint_sha256 (--checkpoint CKPT says whether a file is it, and its kind)"
    if args.checkpoint:
        ckpt = checkpoint_path(args.checkpoint)
        ck = read_checkpoint_header(ckpt)
        if header.checkpoint_sha256 not in (EMBEDDED, ck.sha256):
            raise UserError(f"{path} was encoded with checkpoint {header.checkpoint_sha256.hex()[:8]}, not "
                            f"{ck.sha256.hex()[:8]} ({ckpt}): it needs the checkpoint of that SHA-256")
        needs = f"{ckpt}: {ck.kind}, format {ck.version}"
    size = path.stat().st_size
    pixels = header.width * header.height
    summary = {
        "file": str(path), "format_version": header.version, "bytes": size,
        "checkpoint_sha256": None if header.checkpoint_sha256 == EMBEDDED else header.checkpoint_sha256.hex(),
        "width": header.width, "height": header.height, "fps": f"{header.fps_num}/{header.fps_den}",
        "frames": header.frames, "gop": header.gop, "colour": header.colour_name(),
        "source_bits": header.bits, "keyframes": sum(t == "I" for t, _ in frames), "bpp": round(8 * size / (pixels * header.frames), 6),
        "needs": needs,
    }
    if args.json:
        summary["checkpoint_kind"] = None if not args.checkpoint else ("pixel-exact" if ck.pixel_exact else "hyperprior-integer")
        if args.per_frame:
            summary["per_frame"] = [{"index": i, "type": t, "bytes": b, "bpp": round(8 * b / pixels, 6)}
                                    for i, (t, b) in enumerate(frames)]
        print(json.dumps(summary, indent=2))
        return 0
    for key, value in summary.items():
        print(f"{key:18} {value if value is not None else 'embedded conformance stream'}")
    if args.per_frame:
        print("frame type bytes bpp")
        for i, (t, b) in enumerate(frames):
            print(f"{i} {t} {b} {8 * b / pixels:.5f}")
    return 0


def hashes(args) -> int:
    """Per-frame latent hashes of a bitstream, one line per frame, for ``diff`` across machines."""
    if args.command == "verify":
        warn_deprecated("`nvc-train verify`", "`nvc-train hashes`")
    path = require_file(args.bitstream, "bitstream")
    dev = device(args.device)
    runtime = checked_runtime(args)
    checkpoint = checkpoint_path(args.checkpoint)
    if is_image_stream(path) or is_image_checkpoint(checkpoint):
        from nvc_train.commands.image import hashes_image

        return hashes_image(args, path, checkpoint, dev)
    from nvc_train.codec.bitstream import read_bitstream_bytes
    from nvc_train.codec.files import open_checked, output_md5
    from nvc_train.quant.export import load_integer_checkpoint

    ck = use_runtime(args, load_integer_checkpoint(checkpoint, device=dev), runtime)
    header = open_checked(path, ck)
    _, coded = read_bitstream_bytes(path.read_bytes())
    for t, frame in enumerate(ck.codec.decompress_iter(coded, dev)):
        # Pixel-exact checkpoints add the frame's MD5: the pixels are part of the contract.
        md5 = f" {output_md5(frame, header.height, header.width, header.bits)}" if ck.codec.pixel_exact else ""
        print(f"{t} {coded[t].frame_type} {frame.latent_sha256}{md5}")
    return 0


def compare(args) -> int:
    """Compare two machines' `nvc-train hashes` (or `decode --md5`) outputs, and optionally
    their decoded videos."""
    a, b = (read_hashes(p) for p in (args.hashes_a, args.hashes_b))
    if not any((x[1] and y[1]) or (x[2] and y[2]) for x, y in zip(a, b)):
        raise UserError("the two files share no column to compare (latent SHA-256 in one, MD5 only in the other?)")
    if len(a) != len(b):
        print(f"frame counts differ: {len(a)} vs {len(b)}")
    n = min(len(a), len(b))
    differing = []
    for column, what in ((1, "latents"), (2, "pixels")):
        pairs = [(t, x[column], y[column]) for t, (x, y) in enumerate(zip(a, b)) if x[column] and y[column]]
        if not pairs:
            continue
        bad = [t for t, x, y in pairs if x != y]
        for t in bad:
            print(f"frame {t} ({a[t][0]}): {what} differ: {a[t][column][:16]}… vs {b[t][column][:16]}…")
        exact = " (bit-exact)" if what == "latents" else " (MD5)"
        print(f"{what}: {len(pairs) - len(bad)} of {n} frames identical" + ("" if bad else exact))
        differing += bad
    if args.decodes:
        import torch

        from nvc_train.io.video import InputOptions, open_video

        readers = [open_video(p, InputOptions()) for p in args.decodes]
        try:
            print("frame type gop_pos psnr_between_decodes_db")
            worst, gop_start = math.inf, 0
            for t, (fa, fb) in enumerate(zip(*readers)):
                ftype = a[t][0] if t < len(a) else "?"
                gop_start = t if ftype == "I" else gop_start
                mse = torch.mean((torch.round(fa * 255) - torch.round(fb * 255)) ** 2).item()
                value = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
                worst = min(worst, value)
                print(f"{t} {ftype} {t - gop_start} {'identical' if mse == 0 else f'{value:.2f}'}")
            print("pixel drift: none (identical decodes)" if worst == math.inf else f"pixel drift: worst {worst:.2f} dB")
        finally:
            for r in readers:
                r.close()
    return 1 if differing or len(a) != len(b) else 0


def read_hashes(path: str) -> list[tuple[str, str, str]]:
    """``nvc-train hashes`` or ``decode --md5`` output → [(frame type, latent SHA-256 or "",
    frame MD5 or "")] in frame order. Lines are ``index type sha256 [md5]`` or ``index type md5``."""
    p = require_file(path, "hashes file")
    rows = []
    for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        digests = parts[2:]
        lengths = [len(d) for d in digests]
        ok = (len(parts) >= 3 and parts[0].isdigit() and parts[1] in ("I", "P") and lengths in ([64], [64, 32], [32])
              and all(c in "0123456789abcdef" for d in digests for c in d))
        if not ok:
            raise UserError(f"{p}:{n}: not a `nvc-train hashes` or `decode --md5` line: {line[:60]!r}")
        if int(parts[0]) != len(rows):
            raise UserError(f"{p}:{n}: frame {parts[0]} out of order")
        sha = digests[0] if lengths[0] == 64 else ""
        md5 = digests[-1] if lengths[-1] == 32 else ""
        rows.append((parts[1], sha, md5))
    if not rows:
        raise UserError(f"{p} is empty")
    return rows
