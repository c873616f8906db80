"""Implementations of the plain ``nvc-train`` subcommands (everything but fit/validate/test)."""

from __future__ import annotations

import io
import json
import math
import platform
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch

from nvc_train.errors import UserError, check_output_file, prepare_output_dir, require_file

PACKAGES = ("nvc-train", "torch", "compressai", "lightning", "numpy")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


def read_lightning_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as a dict, with one-line errors for missing or foreign files."""
    path = require_file(path, "checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise UserError(f"{path} is not a Lightning checkpoint from `nvc-train fit`")
    return ckpt


def checkpoint_path(text: str) -> Path:
    """A checkpoint argument as a local file: a path, or ``hf://OWNER/NAME[@REV][/FILE]``
    fetched into the Hugging Face cache and checked (:mod:`nvc_train.hf.refs`)."""
    from nvc_train.hf.refs import resolve_checkpoint

    return resolve_checkpoint(text)


def lit_module_from_checkpoint(path: str | Path):
    from nvc_train.lit.module import SSFLitModule

    ckpt = read_lightning_checkpoint(path)
    hparams = {**ckpt["hyper_parameters"], "init_weights": None}  # weights come from the checkpoint
    module = SSFLitModule(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        keys = (missing or unexpected)[:3]
        raise UserError(f"{path} does not match the SSF training module (e.g. {', '.join(keys)})")
    return module.eval(), ckpt


def export_float(args) -> int:
    """Plain ScaleSpaceFlow state dict with entropy tables, loadable by CompressAI's tools."""
    if not args.zoo:
        check_output_file(args.out, args.overwrite)
    module, _ = lit_module_from_checkpoint(args.checkpoint)
    if args.zoo:
        path = export_zoo_file(module, Path(args.out), args.quality)
        print(f"wrote {path} (CompressAI zoo format, λ={module.lmbda})")
        return 0
    save_float_state_dict(module.model, Path(args.out))
    print(f"wrote {args.out} (ScaleSpaceFlow state dict, λ={module.lmbda})")
    return 0


def export_zoo_file(module, out_dir: Path, quality: int | None) -> Path:
    """``out_dir/ssf2020-mse-<q>-<sha8>.pth.tar`` as CompressAI's ``update_model`` writes it."""
    from nvc_train.models.loss import QUALITY_LAMBDAS
    from nvc_train.models.zoo import write_zoo_file

    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--zoo writes into a folder; {out_dir} is a file")
    hp = module.hparams
    if quality is None:
        quality = hp.quality
        if hp.lmbda is not None and float(hp.lmbda) != QUALITY_LAMBDAS.get(quality):
            raise UserError(f"the run trained with λ={hp.lmbda}, no zoo quality: name one with --quality")
    if module.model.flow_reference is not None:
        print(f"nvc-train: warning: the zoo format stores weights only: flow_reference={module.model.flow_reference} "
              f"is dropped, and CompressAI moves by the flow in units of half the frame", file=sys.stderr)
    return write_zoo_file(module.model, out_dir, "mse", quality)


def save_float_state_dict(model, path: Path) -> None:
    """Entropy tables computed (``update``), then the state dict written atomically.

    A model with a flow reference is written as ``{"state_dict", "flow_reference"}``, which
    CompressAI's ``eval_model`` also loads (it reads the state dict and ignores the rest), with
    a warning: CompressAI's stock SSF evaluates it with resolution-dependent flow.
    """
    from nvc_train.codec.atomic import atomic_write_bytes

    model.update(force=True)
    obj = model.state_dict()
    flow_reference = getattr(model, "flow_reference", None)
    if flow_reference is not None:
        obj = {"state_dict": obj, "flow_reference": flow_reference}
        print(f"nvc-train: warning: {path.name} records flow_reference={flow_reference}; CompressAI's stock "
              f"ScaleSpaceFlow ignores it and moves by the flow in units of half the frame, so its results "
              f"differ from nvc-train's except on {flow_reference}×{flow_reference} frames", file=sys.stderr)
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def export(args) -> int:
    """Integer checkpoint from a QAT Lightning checkpoint."""
    out = prepare_output_dir(args.out, True, ())  # names carry the content hash: nothing is lost
    if not args.quiet:
        print(f"exporting {args.checkpoint}: integer hyper-decoders, then the conformance records "
              f"(small, realistic, stress) decoded on this machine …")
    path = export_integer_from_lightning(args.checkpoint, out, args.name)
    print(f"wrote {path}")
    print(f"wrote {path.with_suffix('.md')}")
    return 0


def export_integer_from_lightning(checkpoint: str | Path, out_dir: Path, name: str) -> Path:
    from nvc_train.quant.export import export_integer_checkpoint
    from nvc_train.quant.integer import ExportError

    module, ckpt = lit_module_from_checkpoint(checkpoint)
    if module.qat is None:
        raise UserError(f"{checkpoint} was trained without QAT (model.qat is unset): fine-tune it with a qat config first")
    hp = dict(ckpt["hyper_parameters"])
    meta = {
        "quality": hp.get("quality"), "lmbda": module.lmbda, "config": {"model": hp, "data": ckpt.get("datamodule_hyper_parameters")},
        "packages": package_versions(), "global_step": ckpt.get("global_step"),
        "training_data": _describe_data(ckpt),
    }
    try:
        return export_integer_checkpoint(module.model, module.qat, out_dir, name, json.loads(json.dumps(meta, default=str)))
    except ExportError as exc:
        raise UserError(f"export failed: {exc}") from None


def _describe_data(ckpt: dict) -> str:
    hp = ckpt.get("datamodule_hyper_parameters") or {}
    return ", ".join(f"{k}={v}" for k, v in hp.items()) or "unknown"


def conformance(args) -> int:
    """Decode every conformance record of the checkpoint on ``--device``: one line per record
    and part, exit 1 on any difference (a missing or short record is a difference)."""
    from nvc_train.quant.conformance import run_checks
    from nvc_train.quant.export import load_integer_checkpoint

    device = _device(args.device)
    path = checkpoint_path(args.checkpoint)
    ck = load_integer_checkpoint(path, device=device, self_check=False)
    total = failures = 0
    for check in run_checks(ck.codec, ck.conformance, device):
        total += 1
        failures += not check.ok
        verdict = "OK" if check.ok else f"MISMATCH expected {check.want or 'a stored hash'}"
        if not getattr(args, "quiet", False) or not check.ok:  # a difference is always named
            print(f"{check.record:<9} {check.item:<24} {check.got or '-'} {verdict}")
    records = ", ".join(r["name"] for r in ck.conformance.records) or "(none)"
    verdict = "PASS" if failures == 0 else f"FAIL ({failures} of {total} checks differ)"
    print(f"conformance {verdict}: {total} checks in records {records} of {path.name} on {device}")
    return 0 if failures == 0 else 1


def verify(args) -> int:
    """Per-frame latent hashes of a bitstream, one line per frame, for ``diff`` across machines."""
    from nvc_train.codec.bitstream import read_bitstream_bytes
    from nvc_train.codec.files import open_checked
    from nvc_train.quant.export import load_integer_checkpoint

    path = Path(args.bitstream)
    device = _device(args.device)
    ck = load_integer_checkpoint(checkpoint_path(args.checkpoint), device=device)
    open_checked(path, ck)
    _, coded = read_bitstream_bytes(path.read_bytes())
    for t, frame in enumerate(ck.codec.decompress_iter(coded, device)):
        print(f"{t} {coded[t].frame_type} {frame.latent_sha256}")
    return 0


def ptq(args) -> int:
    """Post-training quantization of a float model: one configuration or the full search."""
    import dataclasses

    from tqdm import tqdm

    from nvc_train.data.synthetic import synthetic_clip
    from nvc_train.models.loss import quality_to_lambda
    from nvc_train.models.ssf import load_ssf
    from nvc_train.quant import ptq as P
    from nvc_train.codec.atomic import atomic_write_bytes
    from nvc_train.quant.export import export_integer_checkpoint
    from nvc_train.quant.integer import ExportError

    if args.size <= 0 or args.size % 128:
        raise UserError(f"--size {args.size}: must be a positive multiple of 128 (the model's stride)")
    for name in ("frames", "calib_clips", "val_clips"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be ≥ 1")
    try:
        choices = P.all_choices() if args.search else [P.PTQChoice(args.weight_observer, args.weight_scheme,
                                                                   args.act_observer, args.act_scheme)]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = prepare_output_dir(args.out, args.overwrite, ("ptq_report.md", "ptq_report.json", f"{args.name}-*.ckpt"))
    source = checkpoint_path(args.model)
    if source.suffix == ".ckpt":
        module, _ = lit_module_from_checkpoint(source)
        model, lmbda = module.model, module.lmbda
    else:
        model, lmbda = load_ssf(source), None
    if args.lmbda is None and args.quality is None and lmbda is None:
        raise UserError(f"{source.name} does not record its λ: pass --quality Q (the model's quality, 1..9) "
                        f"or --lmbda, so candidates are ranked by the model's own rate-distortion cost")
    if args.lmbda is not None or args.quality is not None:
        lmbda = args.lmbda if args.lmbda is not None else quality_to_lambda(args.quality)
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
    _log_ptq_to_wandb(out, table, float_point)
    print(report)
    best = rows[0]
    if best.point is None:
        raise UserError("no PTQ candidate could be frozen into exact integers")
    meta = {"quality": args.quality, "lmbda": lmbda, "config": {"ptq": dataclasses.asdict(best.choice), "source": str(source)},
            "packages": package_versions(), "training_data": "PTQ calibration: synthetic clips"}
    path = export_integer_checkpoint(model, P.ptq_quantizer(model, best.choice, latents, config), out, args.name, meta)
    print(f"best candidate: {best.choice.name}")
    print(f"wrote {out / 'ptq_report.md'}, {out / 'ptq_report.json'}, {path}")
    return 0


def _log_ptq_to_wandb(out: Path, table: list[dict], float_point) -> None:
    """One W&B run (offline unless WANDB_MODE says otherwise) holding the search table."""
    from nvc_train.cli import configure_wandb_env

    configure_wandb_env(out)
    import wandb

    columns = sorted({k for row in table for k in row})
    run = wandb.init(project="nvc-train", dir=str(out), job_type="ptq-search", config={"float": float_point._asdict()})
    run.log({"ptq/search": wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in table])})
    _finish_wandb(run)


def _device(name: str) -> str:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}: use cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available on this machine")
    return name


def prepare_footage(args) -> int:
    """Index the clips of a footage folder (or Hub dataset) as a training dataset."""
    import warnings

    from nvc_train.data.footage import SkippedFilesWarning
    from nvc_train.data.footage import prepare_footage as prepare
    from nvc_train.data.hub import download_hub_footage, is_hub_name

    source = download_hub_footage(args.source) if is_hub_name(args.source) else Path(args.source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = prepare(source, Path(args.out), clip_len=args.clip_len, stride=args.stride,
                         val_fraction=args.val_fraction, seed=args.seed, cache=args.cache,
                         downscale=args.downscale, overwrite=args.overwrite, progress=not args.quiet,
                         jobs=args.jobs)
    for source_name, reason in report.skipped:
        print(f"nvc-train: warning: skipped {source_name}: {reason}", file=sys.stderr)
    for w in caught:  # skipped files were printed one per line above
        if not issubclass(w.category, SkippedFilesWarning):
            print(f"nvc-train: warning: {w.message}", file=sys.stderr)
    if not args.quiet:
        for split in ("train", "validation"):
            files = [f for f in report.files if f.split == split]
            frames = sum(f.frames for f in files)
            print(f"{split:>10}: {len(files)} files, {frames} frames, {report.clips[split]} clips")
        from nvc_train.presets import preset

        print(f"wrote {args.out} (train with: nvc-train fit --config {preset('finetune/footage.yaml')} "
              f"--data.root {Path(args.out).resolve()})")
    return 0


def publish(args) -> int:
    """Integer checkpoint (+ float parent, card, manifest) → a Hugging Face Hub model repository."""
    from nvc_train.hf import publish as P

    if not args.dry_run:
        P.preflight(args.repo, args.revision)
    if not args.quiet:
        print(f"checking {args.checkpoint}: loading and decoding its conformance records on this machine …")
    plan = P.prepare(Path(args.checkpoint), args.repo, args.revision,
                     Path(args.float_parent) if args.float_parent else None,
                     Path(args.eval_dir) if args.eval_dir else None, args.license, args.base_model, args.dataset)
    if not args.quiet:
        print(f"conformance PASS: {plan.conformance_checks} checks")
    if args.dry_run:
        for path in P.write_folder(plan, Path(args.dry_run), args.overwrite):
            print(f"wrote {path}")
        return 0
    url, changed = P.upload(plan, private=args.private, overwrite=args.overwrite)
    ref = f"hf://{args.repo}{'@' + args.revision if args.revision else ''}"
    if not changed:
        print(f"{ref} already holds these files; nothing uploaded")
        return 0
    print(f"published {', '.join(changed)} to {ref} ({url})")
    print(f"decode with: nvc-train decode CLIP.nvc -o CLIP.y4m --checkpoint {ref}")
    return 0


def demo(args) -> int:
    from nvc_train.demo import run_demo

    return run_demo(Path("runs/demo"), Path(args.checkpoints), args.float_steps, args.qat_steps)


def _check_gop_frames(args) -> None:
    if args.gop < 0:
        raise UserError(f"--gop {args.gop}: must be ≥ 0 (0: only the first frame is a keyframe)")
    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames {args.frames}: must be ≥ 1")


def _input_options(args):
    from fractions import Fraction

    from nvc_train.codec.video_io import InputOptions

    width = height = None
    if getattr(args, "size", None):
        try:
            width, height = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise UserError(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 1920x1080") from None
        if width <= 0 or height <= 0:
            raise UserError(f"--size {args.size!r}: sides must be positive")
    fps = None
    if getattr(args, "fps", None):
        try:
            fps = Fraction(args.fps)
        except (ValueError, ZeroDivisionError):
            raise UserError(f"--fps {args.fps!r}: expected a number or a ratio like 30000/1001") from None
        if fps <= 0:
            raise UserError(f"--fps {args.fps!r}: must be positive")
    return InputOptions(width, height, fps, getattr(args, "bits", None), args.matrix, args.range)


def encode(args) -> int:
    """Video file → .nvc bitstream with an integer checkpoint."""
    from nvc_train.codec.files import encode_video
    from nvc_train.codec.video_io import check_output_path, open_video
    from nvc_train.quant.export import load_integer_checkpoint

    _check_gop_frames(args)
    out = check_output_path(args.output, args.overwrite)
    if out.suffix != ".nvc":
        raise UserError(f"encode writes a .nvc bitstream, not {out.name}")
    device = _device(args.device)
    options = _input_options(args)
    ck = load_integer_checkpoint(checkpoint_path(args.checkpoint), device=device)
    with open_video(args.input, options) as reader:
        if not args.quiet:
            info = reader.info
            print(f"input: {args.input}: {info.width}x{info.height} @ {float(info.fps):.3f} fps, {info.description}")
        report = encode_video(reader, out, ck, gop=args.gop, device=device, max_frames=args.frames,
                              progress=not args.quiet)
    if not args.quiet:
        print(report.summary(f"encoded {out}:"))
    return 0


def decode(args) -> int:
    """.nvc bitstream → video file (y4m, yuv, mp4/mkv/mov, PNG folder); optional quality report."""
    from dataclasses import replace

    from nvc_train.codec.colour import ColourSpec
    from nvc_train.codec.files import decode_video
    from nvc_train.codec.video_io import check_output_path, open_video, open_writer
    from nvc_train.quant.export import load_integer_checkpoint

    out = check_output_path(args.output, args.overwrite) if args.output else None
    if out is not None and out.suffix == ".nvc":
        raise UserError("decode writes video (.y4m, .yuv, .mp4, .mkv, .mov or a PNG folder), not .nvc")
    device = _device(args.device)
    ck = load_integer_checkpoint(checkpoint_path(args.checkpoint), device=device)

    def make_writer(header):
        from fractions import Fraction

        tagged = header.colour_spec()
        try:
            spec = ColourSpec(args.matrix or tagged.matrix, args.range or tagged.range)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return open_writer(out, header.width, header.height, Fraction(header.fps_num, header.fps_den), spec, args.mp4_mode)

    # The reference is read with its own tags (or --reference-matrix/-range), never with the
    # output's --matrix/--range: those say how to write the decoded video, not how to read the source.
    reference_options = replace(_input_options(args), matrix=args.reference_matrix, range=args.reference_range)
    reference = open_video(args.reference, reference_options) if args.reference else None
    try:
        report = decode_video(Path(args.bitstream), ck, make_writer if out else None, device, reference,
                              progress=not args.quiet)
    finally:
        if reference is not None:
            reference.close()
    if not args.quiet:
        print(report.summary(f"decoded {args.bitstream}{' → ' + str(out) if out else ''}:"))
    return 0


def info(args) -> int:
    """Describe a .nvc bitstream (no checkpoint needed)."""
    from nvc_train.codec.bitstream import EMBEDDED, frame_record_size, iter_frames, read_header

    path = require_file(args.bitstream, "bitstream")
    with open(path, "rb") as f:
        header = read_header(f)
        frames = [(cf.frame_type, frame_record_size(cf)) for cf in iter_frames(f, header)]
    size = path.stat().st_size
    pixels = header.width * header.height
    summary = {
        "file": str(path), "format_version": header.version, "bytes": size,
        "checkpoint_sha256": None if header.checkpoint_sha256 == EMBEDDED else header.checkpoint_sha256.hex(),
        "width": header.width, "height": header.height, "fps": f"{header.fps_num}/{header.fps_den}",
        "frames": header.frames, "gop": header.gop, "colour": str(header.colour_spec()),
        "keyframes": sum(t == "I" for t, _ in frames), "bpp": round(8 * size / (pixels * header.frames), 6),
    }
    if args.json:
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


def evaluate(args) -> int:
    """``nvc-train eval``: real coding of every sequence with every model; JSON, plot, W&B."""
    from tqdm import tqdm

    from nvc_train.eval import evaluate as E
    from nvc_train.codec.atomic import atomic_write_bytes

    _check_gop_frames(args)
    device = _device(args.device)
    out = prepare_output_dir(args.out, args.overwrite, ("summary.md", "float.json", "qat.json", "ptq.json", "rd.png"))
    sequences = E.collect_sequences(args.data)
    models = [E.load_eval_model(checkpoint_path(p), device) for p in args.checkpoint]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UserError("two checkpoints share a file name; rename one so results stay apart")
    options = _input_options(args)
    per_sequence: dict[str, list[dict]] = {m.name: [] for m in models}
    pairs = [(m, s) for m in models for s in sequences]
    frames = tqdm(unit="frame", disable=args.quiet, leave=False, position=1)

    def on_frame(stage: str) -> None:
        frames.set_description(f"{stage:6} {model.name} on {seq.stem}", refresh=False)
        frames.update()

    for model, seq in tqdm(pairs, desc="eval", unit="model×sequence", disable=args.quiet, position=0):
        frames.reset()
        res = E.evaluate_sequence(model, seq, options, args.gop, device, args.frames, out / "bitstreams" / model.name,
                                  on_frame)
        per_sequence[model.name].append(res)
        record = {k: res[k] for k in ("name", "description", "results", "frames", "bitstream")}
        atomic_write_bytes(out / "sequences" / f"{seq.stem}-{model.name}.json", json.dumps(record, indent=2).encode())
    frames.close()
    per_model = {m.name: {"family": m.family, "results": E.aggregate(per_sequence[m.name])} for m in models}
    curves = E.family_curves(per_model)
    for family, curve in curves.items():
        atomic_write_bytes(out / f"{family}.json", json.dumps(curve, indent=2).encode())
    E.plot_rd(curves, out / "rd.png")
    table = _eval_table(per_model)
    atomic_write_bytes(out / "summary.md", table.encode())
    _log_eval_to_wandb(out, per_model, per_sequence, curves, args)
    print(table)
    print(f"wrote {', '.join(str(out / f'{f}.json') for f in curves)}, {out / 'rd.png'}, {out / 'sequences'}/")
    mismatches = [(name, r["sequence"], f["index"]) for name, rs in per_sequence.items() for r in rs
                  for f in r["frames"] if f.get("latents_match") == 0.0]
    for name, seq, t in mismatches:
        print(f"LATENT MISMATCH: {name} on {seq}, frame {t}: the decoder's latents differ from the encoder's")
    return 1 if mismatches else 0


def _eval_table(per_model: dict[str, dict]) -> str:
    cols = ("bpp", "bitrate", "psnr-rgb", "psnr-yuv", "ms-ssim-rgb", "encoding_time", "decoding_time", "latents_match")
    lines = ["| model | family | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, m in per_model.items():
        r = m["results"]
        cells = [f"{r[c]:.4f}" if c in r else "n/a" for c in cols]
        lines.append(f"| {name} | {m['family']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _log_eval_to_wandb(out: Path, per_model: dict, per_sequence: dict, curves: dict, args) -> None:
    """One W&B run per evaluation: RD table, line series per family, RD plot, images, bpp per part."""
    from nvc_train.cli import configure_wandb_env

    configure_wandb_env(out)
    import wandb

    columns = ["model", "family", "sequence", "frames", "bpp", "bitrate", "psnr-rgb", "psnr-yuv", "ms-ssim-rgb",
               "bpp-keyframe", "bpp-motion", "bpp-residual", "encoding_time", "decoding_time", "latents_match"]
    rows = [[name, r["family"], r["sequence"], *[r["results"].get(c) for c in columns[3:]]]
            for name, rs in per_sequence.items() for r in rs]
    run = wandb.init(project=args.wandb_project, dir=str(out), job_type="eval", name=args.wandb_name,
                     config={"checkpoints": list(args.checkpoint), "data": list(args.data), "gop": args.gop,
                             "frames": args.frames, "device": args.device})
    log = {"eval/sequences": wandb.Table(columns=columns, data=rows),
           "eval/rd_plot": wandb.Image(str(out / "rd.png"))}
    if curves:
        families = list(curves)
        log["eval/rd_psnr_rgb"] = wandb.plot.line_series(
            xs=[curves[f]["results"]["bpp"] for f in families], ys=[curves[f]["results"]["psnr-rgb"] for f in families],
            keys=families, title="RD: PSNR-RGB vs bpp", xname="bpp")
    for name, rs in per_sequence.items():
        for r in rs:
            rec, src = r["first_frame"]
            log[f"recon/{r['sequence']}/{name}"] = wandb.Image(torch.cat((src, rec), dim=2).permute(1, 2, 0).mul(255)
                                                                .round().byte().numpy(), caption="source | decoded")
    run.log(log)
    for name, m in per_model.items():
        for k, v in m["results"].items():
            run.summary[f"{name}/{k}"] = v
    _finish_wandb(run)


def _finish_wandb(run) -> None:
    """Finish the run and stop W&B's service: wandb.init exports WANDB_SERVICE, and child
    processes started later (Lightning fits, srun jobs) would otherwise attach to this
    process's service instead of their own."""
    import wandb

    run.finish()
    wandb.teardown()


def bdrate(args) -> int:
    """BD-rate and BD-PSNR of each test curve against the anchor (CompressAI results JSON)."""
    from nvc_train.eval.bdrate import bd_psnr, bd_rate

    def load(path: str) -> tuple[str, list[float], list[float]]:
        p = require_file(path, "results file")
        try:
            data = json.loads(p.read_text())
            results = data.get("results", data)
            return data.get("name", p.stem), [float(v) for v in results[args.rate]], [float(v) for v in results[args.metric]]
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{p} is not a JSON results file") from None
        except KeyError as exc:
            raise UserError(f"{p} has no {exc.args[0]!r} results (CompressAI format: {{\"results\": {{\"bpp\": [...], "
                            f"\"psnr-rgb\": [...]}}}})") from None
        except (TypeError, ValueError):
            raise UserError(f"{p}: {args.rate} and {args.metric} must be lists of numbers") from None

    anchor_name, ar, aq = load(args.anchor)
    quality = (lambda q: [-10 * math.log10(max(1 - v, 1e-12)) for v in q]) if "ms-ssim" in args.metric else (lambda q: q)
    print(f"anchor: {anchor_name} ({args.anchor}); rate = {args.rate}, quality = {args.metric}"
          f"{' in dB' if 'ms-ssim' in args.metric else ''}")
    for test in args.test:
        name, tr, tq = load(test)
        try:
            rate, delta = bd_rate(ar, quality(aq), tr, quality(tq)), bd_psnr(ar, quality(aq), tr, quality(tq))
        except ValueError as exc:
            raise UserError(f"{test} vs {args.anchor}: {exc}") from None
        print(f"{name}: BD-rate {rate:+.2f} %  BD-{args.metric} {delta:+.3f} dB  ({test})")
    return 0


def compare(args) -> int:
    """Compare two machines' `nvc-train verify` outputs, and optionally their decoded videos."""
    from nvc_train.codec.video_io import InputOptions, open_video

    a, b = (_read_verify(p) for p in (args.hashes_a, args.hashes_b))
    if len(a) != len(b):
        print(f"frame counts differ: {len(a)} vs {len(b)}")
    differing = [t for t, (x, y) in enumerate(zip(a, b)) if x != y]
    for t in differing:
        print(f"frame {t} ({a[t][0]}): latents differ: {a[t][1][:16]}… vs {b[t][1][:16]}…")
    n = min(len(a), len(b))
    print(f"latents: {n - len(differing)} of {n} frames identical" + ("" if differing else " (bit-exact)"))
    if args.decodes:
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


def _read_verify(path: str) -> list[tuple[str, str]]:
    """``nvc-train verify`` output → [(frame type, latent SHA-256)] in frame order."""
    p = require_file(path, "verify output")
    rows = []
    for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in ("I", "P") or len(parts[2]) != 64:
            raise UserError(f"{p}:{n}: not a `nvc-train verify` line: {line[:60]!r}")
        if int(parts[0]) != len(rows):
            raise UserError(f"{p}:{n}: frame {parts[0]} out of order")
        rows.append((parts[1], parts[2]))
    if not rows:
        raise UserError(f"{p} is empty")
    return rows
