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
    add_overwrite(s, "prepared footage already in --out-dir")
    add_quiet(s)
    s.set_defaults(run=prepare_footage)


def prepare_footage(args) -> int:
    """Index the clips of a footage folder (or Hub dataset) as a training dataset."""
    import warnings

    from nvc_train.data.footage import SkippedFilesWarning
    from nvc_train.data.footage import prepare_footage as prepare
    from nvc_train.data.hub import download_hub_footage, is_hub_name
    from nvc_train.presets import preset

    source = download_hub_footage(args.source) if is_hub_name(args.source) else Path(args.source)
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
