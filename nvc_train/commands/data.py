"""Training data from the user's footage: ``nvc-train prepare-footage``."""

from __future__ import annotations

import sys
from pathlib import Path

from nvc_train.commands.common import Deprecated, add_out_dir, add_overwrite, add_quiet


def add_parsers(sub) -> None:
    s = sub.add_parser("prepare-footage", help="index clips of your video files as a training dataset (train/validation by file)",
                       description="Scan SRC (a folder tree of .mp4/.mov/.mkv/.avi/.webm/.y4m files, or "
                                   "hf://datasets/OWNER/NAME[@REV]), decode every file once, and write a Hugging Face "
                                   "dataset of clips (file, start frame, size, fps) to --out-dir with a train/validation "
                                   "split by file (one file alone is split by time instead). Unreadable or too short "
                                   "files are skipped and listed. Train on it with `nvc-train fit --config "
                                   "finetune/footage.yaml --data.root DIR`; --num-frames and --use-cache mean what "
                                   "--data.num_frames and --data.use_cache mean there.")
    s.add_argument("source", metavar="SRC", help="footage folder (or one file), or hf://datasets/OWNER/NAME[@REV]")
    add_out_dir(s, "output folder (dataset/, footage.json, cache/)")
    s.add_argument("--num-frames", dest="clip_len", type=int, default=3, help="frames per clip (default: %(default)s)")
    s.add_argument("--clip-len", dest="clip_len", type=int, action=Deprecated, new="--num-frames")
    s.add_argument("--stride", type=int, default=None, help="frames between clip starts (default: the clip length)")
    s.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of files held out for validation (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="seed of the file split (default: %(default)s)")
    s.add_argument("--use-cache", dest="cache", action="store_true",
                   help="also store every frame as raw RGB (fast loading; 3 bytes per pixel per frame on disk)")
    s.add_argument("--cache", dest="cache", action=Deprecated, new="--use-cache", nargs=0, const=True)
    s.add_argument("--downscale", type=float, default=1.0,
                   help="scale every frame by this factor in (0, 1], e.g. 0.5 for 1080p → 540p (default: %(default)s)")
    s.add_argument("--jobs", type=int, default=1, help="files decoded in parallel (default: %(default)s)")
    g = s.add_argument_group("clip shards (large archives, many nodes)",
                             "With --shards, every file is decoded once and a seeded choice of its windows (K = "
                             "--num-frames consecutive frames, --window pixels) is stored in tar shards of WebP "
                             "frames under --out-dir/shards, with a manifest of their SHA-256; train on them with "
                             "`--config finetune/footage_shards.yaml --data.root DIR` (a folder or an https:// or "
                             "s3:// URL). --stride and --use-cache do not apply.")
    g.add_argument("--shards", action="store_true", help="write clip shards instead of a clip index")
    g.add_argument("--window", type=_window_size, default=(448, 256), metavar="WxH",
                   help="training window in stored pixels (default: 448x256, Vimeo-90k's size)")
    g.add_argument("--windows-per-minute", type=float, default=30.0,
                   help="training windows kept per minute of footage (default: %(default)s)")
    g.add_argument("--shard-quality", type=_quality, default=None, metavar="lossless|Q",
                   help="WebP lossless (default) or lossy at quality Q in 1..100 (about 10x smaller at 90)")
    g.add_argument("--avoid-cuts", type=float, nargs="?", const=40.0, default=None, metavar="LEVELS",
                   help="drop windows whose consecutive frames differ by more than LEVELS of 8-bit luma on "
                        "average (a scene cut; default 40 when given without a value)")
    g.add_argument("--val-windows", type=int, default=2,
                   help="validation clips (whole frames) per held-out file (default: %(default)s)")
    add_overwrite(s, "prepared footage already in --out-dir")
    add_quiet(s)
    s.set_defaults(run=prepare_footage)


def _window_size(text: str) -> tuple[int, int]:
    import argparse

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 448x256, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"window sides must be positive, got {text!r}")
    return w, h


def _quality(text: str) -> int | None:
    import argparse

    if text == "lossless":
        return None
    try:
        q = int(text)
    except ValueError:
        q = 0
    if not 1 <= q <= 100:
        raise argparse.ArgumentTypeError(f"expected lossless or a quality in 1..100, got {text!r}")
    return q


def prepare_footage(args) -> int:
    """Index the clips of a footage folder (or Hub dataset) as a training dataset."""
    import warnings

    from nvc_train.data.footage import SkippedFilesWarning
    from nvc_train.data.footage import prepare_footage as prepare
    from nvc_train.data.hub import download_hub_footage, is_hub_name
    from nvc_train.presets import preset

    source = download_hub_footage(args.source) if is_hub_name(args.source) else Path(args.source)
    if args.shards:
        return _prepare_shards(args, source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = prepare(source, Path(args.out_dir), clip_len=args.clip_len, stride=args.stride,
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
            files = [f.splits()[split] for f in report.files if split in f.splits()]
            by_time = " (the last frames of the one file)" if split == "validation" and any(
                f.val_start is not None for f in report.files) else ""
            print(f"{split:>10}: {len(files)} file{'s' * (len(files) != 1)}{by_time}, {sum(files)} frames, "
                  f"{report.clips[split]} clip{'s' * (report.clips[split] != 1)}")
        print(f"wrote {args.out_dir} (train with: nvc-train fit --config {preset('finetune/footage.yaml')} "
              f"--data.root {Path(args.out_dir).resolve()})")
    return 0


def _prepare_shards(args, source: Path) -> int:
    import warnings

    from nvc_train.data.footage import SkippedFilesWarning
    from nvc_train.data.shards import ShardOptions, prepare_shards
    from nvc_train.presets import preset

    options = ShardOptions(num_frames=args.clip_len, window=args.window, windows_per_minute=args.windows_per_minute,
                           downscale=args.downscale, quality=args.shard_quality, avoid_cuts=args.avoid_cuts,
                           val_fraction=args.val_fraction, val_windows=args.val_windows, seed=args.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = prepare_shards(source, Path(args.out_dir), options, jobs=args.jobs, overwrite=args.overwrite,
                                  progress=not args.quiet)
    for skipped in manifest["skipped"]:
        print(f"nvc-train: warning: skipped {skipped['source']}: {skipped['reason']}", file=sys.stderr)
    for w in caught:
        if not issubclass(w.category, SkippedFilesWarning):
            print(f"nvc-train: warning: {w.message}", file=sys.stderr)
    if not args.quiet:
        for split in ("train", "validation"):
            shards = [s for s in manifest["shards"] if s["split"] == split]
            files = sum(f["split"] == split or (split == "validation" and f["val_start"] is not None)
                        for f in manifest["files"])
            size = sum(s["bytes"] for s in shards) / 2**20
            print(f"{split:>10}: {files} file{'s' * (files != 1)}, {manifest['windows'][split]} windows in "
                  f"{len(shards)} shard{'s' * (len(shards) != 1)} ({size:.1f} MiB)")
        cuts = sum(f["rejected_for_cuts"] for f in manifest["files"])
        if args.avoid_cuts is not None:
            print(f"{cuts} window{'s' * (cuts != 1)} with a scene cut left out")
        print(f"wrote {args.out_dir} (train with: nvc-train fit --config {preset('finetune/footage_shards.yaml')} "
              f"--data.root {Path(args.out_dir).resolve()})")
    return 0
