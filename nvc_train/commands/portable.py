"""``nvc-train export-onnx``: an integer checkpoint's networks as integer ONNX graphs."""

from __future__ import annotations

from pathlib import Path

from nvc_train.commands.common import CHECKPOINT_HELP, add_overwrite, add_quiet, checkpoint_path
from nvc_train.errors import UserError


def add_parsers(sub) -> None:
    s = sub.add_parser("export-onnx", help="integer checkpoint → ONNX graphs for ONNX Runtime (decoding without PyTorch)",
                       description="Write the integer networks of a checkpoint as ONNX graphs that use integer operators "
                                   "only: the six hyper-decoders and, for a pixel-exact checkpoint, the three synthesis "
                                   "decoders, the scale-space warp, reconstruction and output levels; plus onnx.json "
                                   "(graphs, inputs, outputs, operators, the checkpoint's SHA-256) and entropy.json (the "
                                   "entropy tables). `decode`, `hashes` and `conformance` run them with --runtime onnx "
                                   "--onnx DIR; examples/onnx_decode.py decodes an .nvc file with them and no PyTorch.")
    s.add_argument("checkpoint", help=f"integer checkpoint ({CHECKPOINT_HELP})")
    s.add_argument("--out-dir", required=True, metavar="DIR", help="the folder to write (created; whole or not at all)")
    add_overwrite(s, "an existing folder")
    add_quiet(s, "print only the folder written")
    s.set_defaults(run=export_onnx)


def check_onnx_out_dir(path: str, overwrite: bool) -> Path:
    """The folder export-onnx replaces as a whole: refused if it is a file, or a non-empty
    folder without ``--overwrite``; its parent must exist or be creatable."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out-dir {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out-dir {out} already exists and is not empty: pass --overwrite to replace it, "
                        "or choose another folder")
    try:
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out-dir {out}: {exc.strerror or exc}") from None
    return out


def export_onnx(args) -> int:
    checkpoint = checkpoint_path(args.checkpoint)
    out = check_onnx_out_dir(args.out_dir, args.overwrite)
    from nvc_train.portable.export import export_onnx as write_folder
    from nvc_train.quant.export import load_integer_checkpoint

    ck = load_integer_checkpoint(checkpoint)
    kind = "pixel-exact" if ck.codec.pixel_exact else "integer hyperprior"
    if not args.quiet:
        print(f"exporting the integer networks of {checkpoint.name} ({kind}) to ONNX …")
    try:
        manifest = write_folder(ck, out, overwrite=True)
    except OSError as exc:
        raise UserError(f"cannot write --out-dir {out}: {exc.strerror or exc}") from None
    if not args.quiet:
        print(f"{len(manifest['graphs'])} graphs, opset {manifest['opset']}, operators: {', '.join(manifest['operators'])}")
    print(f"wrote {out}")
    return 0
