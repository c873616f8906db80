"""Training-loader throughput on footage: clips/s of 3 frames, 256×256 crops, with 0, 2 and 4
DataLoader workers, decoding mp4 sources with PyAV (seeking to each clip) vs reading the
frame cache (full size and downscaled ×0.5).

Sources: generated 1080p H.264 files (libx264 veryfast, CRF 20, 3 B-frames, a keyframe every
``--gop`` frames, as cameras write them), prepared with ``prepare_footage``. The loader is
``FootageDataModule(...).train_dataloader()`` itself, as ``nvc-train fit`` gets it (shuffled
without replacement, batch 8, uint8 clips, persistent workers, epochs following each other).
Steady state: ``--warmup`` batches (worker start, first reads) are not timed, then
``--batches`` batches are. The frame cache is measured twice: warm (the same steady state,
pages in memory) and cold (its files evicted from the page cache with
``posix_fadvise(DONTNEED)`` just before a fresh loader starts, timed from the first request,
worker start included), as the first epoch of a job on a node that never read them.
Results go to benchmarks/loader_throughput_results.json.

    .venv/bin/python benchmarks/loader_throughput.py [--files 3 --frames 90 --gop 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from fractions import Fraction
from pathlib import Path

import av
import torch
import torch.nn.functional as F

from nvc_train.data.footage import prepare_footage
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.io.colour import ColourSpec
from nvc_train.io.video import H264Writer
from nvc_train.lit.data import FootageDataModule

HERE = Path(__file__).resolve().parent


def write_source(path: Path, seed: int, frames: int, gop: int, height: int = 1080, width: int = 1920) -> None:
    """A 1080p H.264 file from a synthetic clip rendered at quarter size and upsampled."""
    small = synthetic_clip(seed, frames, height // 2, width // 2)
    options = {"crf": "20", "preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}:bframes=3:scenecut=0"}
    with H264Writer(path, width, height, Fraction(30), ColourSpec(), "high", options) as out:
        for rgb in small:
            out.write(F.interpolate(rgb[None], size=(height, width), mode="bilinear", align_corners=False)[0])


def batches_forever(loader):
    """The DataModule's loader epoch after epoch, as the trainer iterates it."""
    while True:
        yield from loader


def clips_per_second(root: Path, use_cache: bool, workers: int, batches: int, warmup: int,
                     batch_size: int = 8) -> float:
    """Clips/s of ``batches`` batches of ``FootageDataModule(root).train_dataloader()`` after ``warmup``."""
    dm = FootageDataModule(str(root), num_frames=3, crop=256, batch_size=batch_size, num_workers=workers,
                           use_cache=use_cache)
    dm.setup("fit")
    it = batches_forever(dm.train_dataloader())
    start = time.perf_counter()
    for _ in range(warmup):
        next(it)
    if warmup:
        start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        assert batch.shape == (batch_size, 3, 3, 256, 256) and batch.dtype == torch.uint8, batch.shape
    elapsed = time.perf_counter() - start
    del it
    return batches * batch_size / elapsed


def evict_from_page_cache(folder: Path) -> int:
    """Drop every file under ``folder`` from the page cache (clean pages; no root needed); bytes evicted."""
    total = 0
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            total += path.stat().st_size
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=3)
    p.add_argument("--frames", type=int, default=90, help="frames per source file")
    p.add_argument("--gop", type=int, default=30, help="keyframe interval of the sources")
    p.add_argument("--batches", type=int, default=100, help="timed batches of 8 clips (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=10, help="untimed batches first (default: %(default)s)")
    p.add_argument("--mp4-batches", type=int, default=None,
                   help="timed batches for the mp4 sources (default: --batches; they run at ~15 clips/s on 2 cores)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    p.add_argument("--out", default=str(HERE / "loader_throughput_results.json"))
    args = p.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="nvc-loader-") as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        t0 = time.perf_counter()
        for i in range(args.files):
            write_source(tmp / "src" / f"cam{i}.mp4", i, args.frames, args.gop)
        print(f"wrote {args.files} × {args.frames} frames of 1080p in {time.perf_counter() - t0:.0f} s")
        prepared = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, kwargs in (("full", {"cache": True}), ("half", {"cache": True, "downscale": 0.5})):
                t0 = time.perf_counter()
                prepare_footage(tmp / "src", tmp / name, clip_len=3, stride=1, val_fraction=0.0, progress=False, **kwargs)
                prepared[name] = time.perf_counter() - t0
                print(f"prepare --use-cache{' --downscale 0.5' if name == 'half' else ''}: {prepared[name]:.1f} s")
        sources = {"mp4 1080p (PyAV, seek)": ("full", False), "cache 1080p (memmap)": ("full", True),
                   "mp4 1080p → 540p (PyAV, seek, resize)": ("half", False), "cache 540p (memmap)": ("half", True)}
        results = []
        for label, (name, use_cache) in sources.items():
            batches = args.batches if use_cache else (args.mp4_batches or args.batches)
            for workers in args.workers:
                rate = clips_per_second(tmp / name, use_cache, workers, batches, args.warmup)
                results.append({"source": label, "workers": workers, "clips_per_s": round(rate, 2), "batches": batches})
                print(f"{label:40s} workers={workers}: {rate:8.2f} clips/s", flush=True)
                if use_cache:
                    evicted = evict_from_page_cache(tmp / name / "cache")
                    rate = clips_per_second(tmp / name, use_cache, workers, batches, warmup=0)
                    cold = label.replace("(memmap)", "(memmap, cold page cache)")
                    results.append({"source": cold, "workers": workers, "clips_per_s": round(rate, 2),
                                    "batches": batches, "evicted_bytes": evicted})
                    print(f"{cold:40s} workers={workers}: {rate:8.2f} clips/s ({evicted / 2**20:.0f} MiB evicted)",
                          flush=True)

    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "av": av.__version__, "files": args.files, "frames": args.frames,
            "gop": args.gop, "batch": 8, "clip": "3 frames, 256x256 crop", "warmup_batches": args.warmup,
            "loader": "FootageDataModule.train_dataloader()", "prepare_seconds": prepared}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
