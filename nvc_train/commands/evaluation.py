"""Rate-distortion results: ``nvc-train eval`` (real encode/decode) and ``nvc-train bdrate``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from nvc_train.commands.common import (
    CHECKPOINT_HELP,
    add_device,
    add_input_options,
    add_out_dir,
    add_overwrite,
    add_quiet,
    check_gop_frames,
    checkpoint_path,
    device,
    input_options,
)
from nvc_train.errors import UserError, check_output_dir, prepare_output_dir, require_file


def add_parsers(sub) -> None:
    s = sub.add_parser("eval", help="rate-distortion by real encode/decode: CompressAI JSON, RD plot, W&B run",
                       description="Encode and decode every sequence with every model. Integer checkpoints are "
                                   "grouped as ptq or qat by their metadata; float ScaleSpaceFlow state dicts "
                                   "(.pth.tar) are the float family. One curve per family and series of parents (CompressAI's "
                                   "zoo, or the folder of the float models a family was trained or quantized "
                                   "from): DIR/<family>.json, or <family>-1.json, -2, … for several series "
                                   "(CompressAI format); --anchor adds classical codecs' curves (x264.json, …). Also "
                                   "DIR/sequences/<seq>-<model>.json (per frame), DIR/rd.png, DIR/summary.md.")
    s.add_argument("--checkpoint", nargs="+", default=[],
                   help=f"integer .ckpt and/or float .pth.tar files ({CHECKPOINT_HELP})")
    s.add_argument("--anchor", nargs="+", default=[], metavar="{x264,x265,av1}",
                   help="also code the same frames with classical codecs (PyAV's libx264, libx265, libsvtav1) at a "
                        "CRF ladder, preset medium (SVT-AV1: 8), tuned for PSNR, no B-frames, GOP = --gop: one curve "
                        "each, DIR/<codec>.json")
    s.add_argument("--anchor-crf", nargs="+", type=int, default=None, metavar="CRF",
                   help="the anchors' CRFs (default: x264/x265 22 27 32 37, av1 27 35 43 51)")
    s.add_argument("--data", nargs="+", required=True,
                   help="video files, PNG folders, folders of them, or a prepare-footage folder (its validation files); "
                        "for image models: image files and folders of images (e.g. Kodak)")
    add_out_dir(s, "output folder")
    s.add_argument("--frames", type=int, default=None, help="code at most N frames per sequence")
    s.add_argument("--gop", type=int, default=32, help="keyframe every G frames; 0 = only the first (default: %(default)s)")
    add_device(s)
    add_input_options(s, "inputs")
    s.add_argument("--wandb-project", default="nvc-train", help="W&B project (offline unless WANDB_MODE=online)")
    s.add_argument("--wandb-name", default=None, help="W&B run name")
    add_overwrite(s, "the results of an earlier evaluation in --out-dir")
    add_quiet(s)
    s.set_defaults(run=evaluate)

    s = sub.add_parser("bdrate", help="Bjøntegaard delta rate / PSNR between RD curves (CompressAI results JSON)")
    s.add_argument("anchor", help="results JSON of the anchor, e.g. DIR/float.json")
    s.add_argument("test", nargs="+", help="results JSON(s) to compare, e.g. DIR/qat.json")
    s.add_argument("--metric", default="psnr-rgb", help="quality key (default: %(default)s; ms-ssim keys in dB)")
    s.add_argument("--rate", default="bpp", help="rate key: bpp or bitrate (default: %(default)s)")
    s.set_defaults(run=bdrate)


def evaluate(args) -> int:
    """``nvc-train eval``: real coding of every sequence with every model; JSON, plot, W&B."""
    check_gop_frames(args)
    from nvc_train.eval.anchors import ANCHORS, anchor_points

    if args.anchor_crf and not args.anchor:
        raise UserError("--anchor-crf sets the CRFs of --anchor codecs: name them with --anchor x264 ...")
    if not args.checkpoint and not args.anchor:
        raise UserError("eval: give models to evaluate: --checkpoint FILE ... and/or --anchor CODEC ...")
    results = ("summary.md", "float.json", "qat.json", "ptq.json", "pixel-exact.json", "rd.png", "images.json",
               *(f"{a}.json" for a in ANCHORS))
    check_output_dir(args.out_dir, args.overwrite, results, flag="--out-dir")
    dev = device(args.device)
    checkpoints = [checkpoint_path(p) for p in args.checkpoint]  # every file there before any work
    from nvc_train.eval.images import is_image_model_file

    image_models = [p for p in checkpoints if is_image_model_file(p)]
    if image_models:
        if len(image_models) != len(checkpoints) or args.anchor:
            raise UserError("eval: image models (integer image checkpoints, float image state dicts) are evaluated "
                            "on images, by themselves: give them without video models or --anchor")
        return evaluate_images(args, checkpoints, results, dev)
    points = anchor_points(args.anchor, args.anchor_crf)  # every codec in this FFmpeg build, too
    from tqdm import tqdm

    from nvc_train.eval import evaluate as E
    from nvc_train.io.atomic import atomic_write_bytes

    sequences = E.collect_sequences(args.data)
    # Created only once every input is known good: a failed start leaves no empty folder.
    out = prepare_output_dir(args.out_dir, args.overwrite, results, flag="--out-dir")
    options = input_options(args)
    models = [E.load_eval_model(p, dev) for p in checkpoints] + E.anchor_models(points)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UserError("two checkpoints share a file name; rename one so results stay apart")
    per_sequence: dict[str, list[dict]] = {m.name: [] for m in models}
    pairs = [(m, s) for m in models for s in sequences]
    frames = tqdm(unit=" frames", disable=args.quiet, leave=False, position=1)

    def on_frame(stage: str) -> None:
        frames.set_description(f"{stage:6} {model.name} on {seq.stem}", refresh=False)
        frames.update()

    plural = lambda n, word: f"{n} {word}{'s' * (n != 1)}"  # noqa: E731
    for model, seq in tqdm(pairs, desc=f"eval of {plural(len(models), 'model')} on {plural(len(sequences), 'sequence')}",
                           unit=" runs", disable=args.quiet, position=0):
        frames.reset()
        res = E.evaluate_sequence(model, seq, options, args.gop, dev, args.frames, out / "bitstreams" / model.name,
                                  on_frame)
        per_sequence[model.name].append(res)
        record = {k: res[k] for k in ("name", "description", "results", "frames", "bitstream")}
        atomic_write_bytes(out / "sequences" / f"{seq.stem}-{model.name}.json", json.dumps(record, indent=2).encode())
    frames.close()
    per_model, curves, table = _write_results(out, models, per_sequence)
    _log_eval_to_wandb(out, per_model, per_sequence, curves, args)
    if not args.quiet:
        print(table)
    print(f"wrote {', '.join(str(out / f'{f}.json') for f in curves)}, {out / 'rd.png'}, {out / 'sequences'}/")
    mismatches = [(name, r["sequence"], f["index"]) for name, rs in per_sequence.items() for r in rs
                  for f in r["frames"] if f.get("latents_match") == 0.0]
    for name, seq, t in mismatches:
        print(f"LATENT MISMATCH: {name} on {seq}, frame {t}: the decoder's latents differ from the encoder's")
    frame_mismatches = [(name, r["sequence"], f["index"]) for name, rs in per_sequence.items() for r in rs
                        for f in r["frames"] if f.get("frames_match") == 0.0]
    for name, seq, t in frame_mismatches:
        print(f"FRAME MISMATCH: {name} on {seq}, frame {t}: the decoded frame (MD5) differs from the encoder's")
    return 1 if mismatches or frame_mismatches else 0


def evaluate_images(args, checkpoints: list[Path], results: tuple, dev: str) -> int:
    """``nvc-train eval`` of image models on images: CompressAI results JSON per family, the
    per-image results, RD plot and summary (see :mod:`nvc_train.eval.images`)."""
    from tqdm import tqdm

    from nvc_train.eval import images as I
    from nvc_train.io.atomic import atomic_write_bytes

    for name, default in (("frames", None), ("gop", 32)):
        if getattr(args, name) != default:
            raise UserError(f"eval: --{name} is for video; image models code one picture at a time")
    paths = I.collect_images(args.data)
    out = prepare_output_dir(args.out_dir, args.overwrite, results, flag="--out-dir")
    models = [I.load_image_eval_model(p, dev) for p in checkpoints]
    if len({m.name for m in models}) != len(models):
        raise UserError("two checkpoints share a file name; rename one so results stay apart")
    per_image: dict[str, list[dict]] = {m.name: [] for m in models}
    for model, path in tqdm([(m, p) for m in models for p in paths], desc=f"eval on {len(paths)} images",
                            unit=" images", disable=args.quiet):
        per_image[model.name].append(I.evaluate_image(model, path, dev))
    atomic_write_bytes(out / "images.json", json.dumps(per_image, indent=2).encode())
    _, curves, table = _write_results(out, models, per_image, ("bpp", "psnr-rgb", "ms-ssim-rgb", "coding_time",
                                                               "latents_match"))
    if not args.quiet:
        print(table)
    print(f"wrote {', '.join(str(out / f'{f}.json') for f in curves)}, {out / 'images.json'}, {out / 'rd.png'}")
    mismatches = [(name, r["image"]) for name, rs in per_image.items() for r in rs
                  if r["results"].get("latents_match") == 0.0]
    for name, image in mismatches:
        print(f"LATENT MISMATCH: {name} on {image}: the decoder's latents differ from the encoder's")
    return 1 if mismatches else 0


def _write_results(out: Path, models: list, per_input: dict[str, list[dict]], cols: tuple[str, ...] | None = None):
    """Aggregate each model's results over its inputs and write the family curves (CompressAI
    results JSON), the RD plot and the summary table; returns (per model, curves, table)."""
    from nvc_train.eval import evaluate as E
    from nvc_train.io.atomic import atomic_write_bytes

    per_model = {m.name: {"family": m.family, "quality": m.quality, "series": m.series,
                          "results": E.aggregate(per_input[m.name])} for m in models}
    curves = E.family_curves(per_model)
    for family, curve in curves.items():
        atomic_write_bytes(out / f"{family}.json", json.dumps(curve, indent=2).encode())
    E.plot_rd(curves, out / "rd.png")
    table = _eval_table(per_model, *([cols] if cols else []))
    atomic_write_bytes(out / "summary.md", table.encode())
    return per_model, curves, table


def _eval_table(per_model: dict[str, dict], cols: tuple[str, ...] = (
        "bpp", "bitrate", "psnr-rgb", "psnr-yuv", "ms-ssim-rgb", "encoding_time", "decoding_time", "latents_match",
        "frames_match")) -> str:
    lines = ["| model | family | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, m in per_model.items():
        r = m["results"]
        cells = [f"{r[c]:.4f}" if c in r else "n/a" for c in cols]
        lines.append(f"| {name} | {m['family']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _log_eval_to_wandb(out: Path, per_model: dict, per_sequence: dict, curves: dict, args) -> None:
    """One W&B run per evaluation: RD table, line series per family, RD plot, images, bpp per part."""
    import torch
    import wandb

    from nvc_train.lit.wandb_files import configure_wandb_env, finish_wandb

    configure_wandb_env(out)

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
            keys=[curves[f]["name"] for f in families], title="RD: PSNR-RGB vs bpp", xname="bpp")
    for name, rs in per_sequence.items():
        for r in rs:
            rec, src = r["first_frame"]
            log[f"recon/{r['sequence']}/{name}"] = wandb.Image(torch.cat((src, rec), dim=2).permute(1, 2, 0).mul(255)
                                                                .round().byte().numpy(), caption="source | decoded")
    run.log(log)
    for name, m in per_model.items():
        for k, v in m["results"].items():
            run.summary[f"{name}/{k}"] = v
    finish_wandb(run)


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
    rows = []  # every pair is computed before anything is printed: an error is the only line
    for test in args.test:
        name, tr, tq = load(test)
        try:
            rate, delta = bd_rate(ar, quality(aq), tr, quality(tq)), bd_psnr(ar, quality(aq), tr, quality(tq))
        except ValueError as exc:
            raise UserError(f"{test} vs {args.anchor}: {exc}") from None
        rows.append(f"{name}: BD-rate {rate:+.2f} %  BD-{args.metric} {delta:+.3f} dB  ({test})")
    print(f"anchor: {anchor_name} ({args.anchor}); rate = {args.rate}, quality = {args.metric}"
          f"{' in dB' if 'ms-ssim' in args.metric else ''}")
    print("\n".join(rows))
    return 0
