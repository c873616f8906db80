"""Model files from training runs: ``export-float``, ``export-integer`` (alias ``export``) and ``ptq``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nvc_train.commands.common import (
    CHECKPOINT_HELP,
    Deprecated,
    add_out_dir,
    add_overwrite,
    add_quiet,
    checkpoint_path,
    warn_deprecated,
)
from nvc_train.errors import UserError, check_output_dir, check_output_file, prepare_output_dir, require_file


def add_parsers(sub) -> None:
    s = sub.add_parser("export-float", help="Lightning checkpoint → float ScaleSpaceFlow state dict (CompressAI-loadable)",
                       description="Write the float model of a `nvc-train fit` run as a ScaleSpaceFlow state dict with "
                                   "its entropy tables computed (-o FILE.pth.tar). With --zoo, the file goes into "
                                   "--out-dir as CompressAI's update_model writes zoo weights, named "
                                   "ssf2020-mse-<quality>-<sha8>.pth.tar, for CompressAI's zoo loader and eval_model.")
    s.add_argument("checkpoint", help="Lightning .ckpt from `nvc-train fit`")
    s.add_argument("legacy_out", nargs="?", default=None, help=argparse.SUPPRESS)  # the positional OUT of 0.1
    s.add_argument("-o", "--output", default=None, metavar="FILE", help="output .pth.tar")
    s.add_argument("--out-dir", default=None, metavar="DIR", help="--zoo: output folder")
    s.add_argument("--zoo", action="store_true", help="CompressAI zoo format and name (flow_reference is not stored)")
    s.add_argument("--quality", type=int, default=None, choices=range(1, 10), metavar="{1..9}",
                   help="--zoo: the quality in the file name (default: the run's)")
    add_overwrite(s, "an existing output file")
    add_quiet(s, "print only the file written")
    s.set_defaults(run=export_float)

    s = sub.add_parser("export-integer", aliases=["export"],
                       help="QAT Lightning checkpoint → integer checkpoint <name>-<sha8>.ckpt + model card",
                       description="Freeze a QAT run into exact integers as it was trained: with qat.scope=hyperprior "
                                   "(configs/qat.yaml, finetune/footage_qat.yaml) the six hyper-decoders (identical "
                                   "latents on every machine); with qat.scope=decoder (configs/qat_decoder.yaml, "
                                   "finetune/footage_qat_decoder.yaml) the whole decoder (pixel-exact: identical frames). "
                                   "It says which before it starts, stores conformance "
                                   "records decoded on this machine, and writes <name>-<sha8>.ckpt with its model card "
                                   "(<name>-<sha8>.md) into --out-dir. The content hash in the name means an export "
                                   "never replaces a different one. An image run (bmshj2018-hyperprior, mbt2018-mean, "
                                   "configs/image/qat.yaml) gives an integer image checkpoint (integer hyper-decoder, "
                                   "identical latents). `export` is the old name of this command.")
    s.add_argument("checkpoint", help="Lightning .ckpt of a QAT run")
    add_out_dir(s, "output folder")
    s.add_argument("--name", default=None, help="file name stem (default: ssf-int, or <architecture>-int for an "
                                                 "image run)")
    add_quiet(s, "print only the files written")
    s.set_defaults(run=export_integer)

    s = sub.add_parser("ptq", help="post-training quantization of a float model (the published baseline), "
                                   "one configuration or the full observer x scheme search")
    s.add_argument("model", help=f"float model: ScaleSpaceFlow .pth.tar or Lightning .ckpt ({CHECKPOINT_HELP})")
    add_out_dir(s, "output folder: report (md, json, W&B) and the integer checkpoint")
    s.add_argument("--name", default="ssf-ptq", help="checkpoint file name stem (default: %(default)s)")
    s.add_argument("--search", action="store_true", help="score all 60 observer x scheme candidates, export the best")
    s.add_argument("--weight-observer", default="PerChannelMinMax")
    s.add_argument("--weight-scheme", default="symmetric", choices=("affine", "symmetric"))
    s.add_argument("--act-observer", default="MinMax")
    s.add_argument("--act-scheme", default="affine", choices=("affine", "symmetric"))
    s.add_argument("--quality", type=int, default=None, choices=range(1, 10), metavar="{1..9}",
                   help="λ preset for the RD cost: required for a .pth.tar (a Lightning .ckpt records its own)")
    s.add_argument("--lmbda", type=float, default=None, help="explicit λ for the RD cost")
    s.add_argument("--calib-clips", type=int, default=4, help="synthetic calibration clips (default: %(default)s)")
    s.add_argument("--val-clips", type=int, default=2, help="synthetic validation clips (default: %(default)s)")
    s.add_argument("--num-frames", dest="frames", type=int, default=3, help="frames per clip (default: %(default)s)")
    s.add_argument("--frames", dest="frames", type=int, action=Deprecated, new="--num-frames")
    s.add_argument("--size", type=int, default=256, help="clip side in pixels, multiple of 128 (default: %(default)s)")
    add_overwrite(s, "the reports and checkpoint of an earlier run in --out-dir")
    add_quiet(s)
    s.set_defaults(run=ptq)


def export_float(args) -> int:
    """Plain ScaleSpaceFlow state dict with entropy tables, loadable by CompressAI's tools."""
    if args.legacy_out is not None:
        if args.output or args.out_dir:
            raise UserError("give the output once: -o FILE (or --out-dir DIR with --zoo), not also as a positional")
        warn_deprecated("the positional OUT", "--out-dir DIR" if args.zoo else "-o/--output FILE")
        args.out_dir, args.output = (args.legacy_out, None) if args.zoo else (None, args.legacy_out)
    if args.zoo and args.output:
        raise UserError("--zoo names the file itself: give the folder with --out-dir, not -o")
    if not args.zoo and args.out_dir:
        raise UserError("--out-dir is for --zoo; a plain export writes one file: -o FILE.pth.tar")
    if not (args.out_dir if args.zoo else args.output):
        raise UserError("export-float: the following arguments are required: "
                        f"{'--out-dir' if args.zoo else '-o/--output'} (see `nvc-train export-float --help`)")
    if not args.zoo:
        check_output_file(args.output, args.overwrite)
    require_file(args.checkpoint, "checkpoint")
    from nvc_train.lit.checkpoints import (
        export_zoo_file,
        lit_module_from_checkpoint,
        save_float_state_dict,
    )

    module, _ = lit_module_from_checkpoint(args.checkpoint)
    if args.zoo:
        path = export_zoo_file(module, Path(args.out_dir), args.quality)
        print(f"wrote {path}" + ("" if args.quiet else f" (CompressAI zoo format, λ={module.lmbda})"))
        return 0
    save_float_state_dict(module.model, Path(args.output), module.hparams.get("quality"), module.lmbda)
    print(f"wrote {args.output}" + ("" if args.quiet else f" ({type(module.model).__name__} state dict, λ={module.lmbda})"))
    return 0


def export_integer(args) -> int:
    """Integer checkpoint from a QAT Lightning checkpoint."""
    if args.command == "export":
        warn_deprecated("`nvc-train export`", "`nvc-train export-integer`")
    require_file(args.checkpoint, "checkpoint")
    # Names carry the content hash, so nothing is lost by writing into a used folder; the folder
    # itself is made by the first write, so a refused checkpoint leaves none behind.
    out = check_output_dir(args.out_dir, True, (), flag="--out-dir")
    from nvc_train.lit.checkpoints import export_integer_from_lightning

    kinds = []

    def announce(kind: bool | str) -> None:
        kinds.append(SCOPE_KINDS[kind])
        if not args.quiet:
            print(f"exporting {args.checkpoint} ({kinds[0][1]}), then the conformance records "
                  f"({kinds[0][2]}) decoded on this machine …")

    path = export_integer_from_lightning(args.checkpoint, out, args.name, announce)
    print(f"wrote {path}" + ("" if args.quiet else f" ({kinds[0][0]} checkpoint)"))
    print(f"wrote {path.with_suffix('.md')}")
    return 0


SCOPE_KINDS = {
    False: ("integer hyperprior",
            "qat.scope=hyperprior: integer hyper-decoders, identical latents everywhere; float synthesis",
            "small, realistic, stress"),
    True: ("pixel-exact", "qat.scope=decoder: the whole decoder integer, identical frames (MD5) everywhere",
           "small, realistic, stress"),
    "image": ("integer image", "image model: integer hyper-decoder, identical latents everywhere; float synthesis",
              "small, stress"),
}
"""What export-integer makes of a run: by whether it was trained with ``qat.scope: decoder``,
or an image architecture's."""


def ptq(args) -> int:
    """Post-training quantization of a float model: one configuration or the full search."""
    if args.size <= 0 or args.size % 128:
        raise UserError(f"--size {args.size}: must be a positive multiple of 128 (the model's stride)")
    for name, flag in (("frames", "--num-frames"), ("calib_clips", "--calib-clips"), ("val_clips", "--val-clips")):
        if getattr(args, name) < 1:
            raise UserError(f"{flag} must be ≥ 1")
    import dataclasses

    from tqdm import tqdm

    from nvc_train.data.synthetic import synthetic_clip
    from nvc_train.io.atomic import atomic_write_bytes
    from nvc_train.lit.checkpoints import lit_module_from_checkpoint, package_versions
    from nvc_train.lit.wandb_files import configure_wandb_env, finish_wandb
    from nvc_train.models.loss import quality_to_lambda
    from nvc_train.models.ssf import read_state_dict, ssf_from_checkpoint
    from nvc_train.quant import ptq as P
    from nvc_train.quant.export import export_integer_checkpoint
    from nvc_train.quant.integer import ExportError

    try:
        choices = P.all_choices() if args.search else [P.PTQChoice(args.weight_observer, args.weight_scheme,
                                                                   args.act_observer, args.act_scheme)]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    results = ("ptq_report.md", "ptq_report.json", f"{args.name}-*.ckpt")
    check_output_dir(args.out_dir, args.overwrite, results, flag="--out-dir")
    source = checkpoint_path(args.model)
    if source.suffix == ".ckpt":
        module, _ = lit_module_from_checkpoint(source)
        model, lmbda, quality = module.model, module.lmbda, module.hparams.get("quality")
    else:
        record = read_state_dict(source)  # export-float and zoo-named files record their rate point
        model, quality = ssf_from_checkpoint(record, None, str(source)), record.quality
        lmbda = record.lmbda if record.lmbda is not None else (
            quality_to_lambda(record.quality) if record.quality is not None else None)
    if args.lmbda is None and args.quality is None and lmbda is None:
        raise UserError(f"{source.name} does not record its λ: pass --quality Q (the model's quality, 1..9) "
                        f"or --lmbda, so candidates are ranked by the model's own rate-distortion cost")
    if args.lmbda is not None or args.quality is not None:
        lmbda = args.lmbda if args.lmbda is not None else quality_to_lambda(args.quality)
    out = prepare_output_dir(args.out_dir, args.overwrite, results, flag="--out-dir")  # inputs are good: now create it
    model.eval().update(force=True)

    def clips(first_seed: int, n: int):
        return [[f.unsqueeze(0) for f in synthetic_clip(first_seed + i, args.frames, args.size, args.size)] for i in range(n)]

    calib, val = clips(8_000_000, args.calib_clips), clips(9_000_000, args.val_clips)
    config = P.QuantConfig()
    latents = P.hyper_latents(model, calib, config.input_frac_bits)
    float_point = P.evaluate_float(model, val, lmbda)
    rows = []
    for choice in tqdm(choices, desc="PTQ candidates", disable=args.quiet):
        try:
            rows.append(P.SearchRow(choice, P.evaluate_integer(model, P.ptq_quantizer(model, choice, latents, config), val, lmbda)))
        except (ExportError, ValueError) as exc:
            rows.append(P.SearchRow(choice, None, str(exc)))
    rows = P.search_rows_sorted(rows)
    report = P.report_markdown(float_point, rows, lmbda)
    atomic_write_bytes(out / "ptq_report.md", report.encode())
    table = [{**dataclasses.asdict(r.choice), **(r.point._asdict() if r.point else {}), "error": r.error} for r in rows]
    atomic_write_bytes(out / "ptq_report.json", json.dumps({"lmbda": lmbda, "float": float_point._asdict(),
                                                            "candidates": table}, indent=2).encode())
    # One W&B run (offline unless WANDB_MODE says otherwise) holding the search table.
    configure_wandb_env(out)
    import wandb

    columns = sorted({k for row in table for k in row})
    run = wandb.init(project="nvc-train", dir=str(out), job_type="ptq-search", config={"float": float_point._asdict()})
    run.log({"ptq/search": wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in table])})
    finish_wandb(run)
    if not args.quiet:
        print(report)
    best = rows[0]
    if best.point is None:
        raise UserError("no PTQ candidate could be frozen into exact integers")
    if args.quality is not None or args.lmbda is not None:
        quality = args.quality  # what was asked for, not the file's record
    meta = {"quality": quality, "lmbda": lmbda, "config": {"ptq": dataclasses.asdict(best.choice), "source": str(source)},
            "packages": package_versions(), "training_data": "PTQ calibration: synthetic clips"}
    path = export_integer_checkpoint(model, P.ptq_quantizer(model, best.choice, latents, config), out, args.name, meta)
    print(f"best candidate: {best.choice.name}")
    print(f"wrote {out / 'ptq_report.md'}, {out / 'ptq_report.json'}, {path}")
    return 0
