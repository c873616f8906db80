"""Training-loader throughput on footage: clips/s of 3 frames, 256×256 crops, with 0, 2 and 4
DataLoader workers, decoding mp4 sources with PyAV (seeking to each clip) vs reading the
frame cache (full size and downscaled ×0.5) vs clip shards (``prepare-footage --shards``:
448×256 windows of WebP frames, lossless and at quality 90), and the bytes each stores.

Sources: generated 1080p H.264 files (libx264 veryfast, CRF 20, 3 B-frames, a keyframe every
``--gop`` frames, as cameras write them), prepared with ``prepare_footage``. The loader is
``FootageDataModule(...).train_dataloader()`` itself, as ``nvc-train fit`` gets it (shuffled
without replacement, batch 8, uint8 clips, persistent workers, epochs following each other).
Steady state: ``--warmup`` batches (worker start, first reads) are not timed, then
``--batches`` batches are. The frame cache is measured twice: warm (the same steady state,
pages in memory) and cold (its files evicted from the page cache with
``posix_fadvise(DONTNEED)`` just before a fresh loader starts, timed from the first request,
worker start included), as the first epoch of a job on a node that never read them; shards
the same way. With ``--rounds R`` every row is measured R times, the rows in alternating order
(forward, then backward), and the median and range are reported.
Results go to benchmarks/loader_throughput_results.json.

    .venv/bin/python benchmarks/loader_throughput.py [--files 3 --frames 90 --gop 30]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
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
from nvc_train.data.shards import ShardOptions, prepare_shards
from nvc_train.lit.data import FootageDataModule, ShardDataModule

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


@contextlib.contextmanager
def every_frame_decoded():
    """The .mp4 path as before reference-only decoding: every frame from the keyframe on is
    decoded (PyAVReader.decoded_frames without its skip), for the before/after rows. The
    workers fork after this, so they run it too."""
    import av as _av

    from nvc_train.io.video import PyAVReader

    original = PyAVReader.decoded_frames

    def decode_all(self, start_pts=None):
        if start_pts is not None:
            self.container.seek(start_pts, stream=self.stream, backward=True, any_frame=False)
        try:
            for frame in self.container.decode(self.stream):
                if start_pts is None or frame.pts is None or frame.pts >= start_pts:
                    yield frame.pts, frame
        except _av.error.FFmpegError as exc:
            raise RuntimeError(exc) from None

    PyAVReader.decoded_frames = decode_all
    try:
        yield
    finally:
        PyAVReader.decoded_frames = original


def clips_per_second(root: Path, use_cache: bool | None, workers: int, batches: int, warmup: int,
                     batch_size: int = 8, clips_per_decode: int = 1) -> float:
    """Clips/s of ``batches`` batches of the DataModule's ``train_dataloader()`` after ``warmup``
    (``use_cache`` None: ``root`` holds clip shards)."""
    if use_cache is None:
        dm = ShardDataModule(str(root), num_frames=3, crop=256, batch_size=batch_size, num_workers=workers)
    else:
        dm = FootageDataModule(str(root), num_frames=3, crop=256, batch_size=batch_size, num_workers=workers,
                               use_cache=use_cache, clips_per_decode=clips_per_decode)
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


def storage_figures(tmp: Path, frames: int, fps: float = 30.0, per_minute: float = 30.0) -> dict:
    """Bytes per 3-frame clip in each form, and per hour of 1080p30 footage: sources at their
    measured bitrate, the raw cache of every frame, shards at ``per_minute`` windows a minute
    (``prepare-footage --shards``'s default)."""
    def size(folder: Path, pattern: str) -> int:
        return sum(p.stat().st_size for p in folder.glob(pattern))
    source_bytes = size(tmp / "src", "*.mp4")
    total_frames = frames * len(list((tmp / "src").glob("*.mp4")))
    cache_frame = size(tmp / "full" / "cache", "*.rgb") / total_frames if (tmp / "full" / "cache").exists() else 1920 * 1080 * 3
    figures, hour_frames = {}, fps * 3600
    figures["sources_per_hour_gb"] = source_bytes / total_frames * hour_frames / 1e9
    figures["cache_per_hour_gb"] = cache_frame * hour_frames / 1e9
    figures["cache_per_clip_mb"] = 3 * cache_frame / 1e6
    for name in ("shards", "shards-q90"):
        manifest = json.loads((tmp / name / "shards.json").read_text())
        per_window = sum(s["bytes"] for s in manifest["shards"]) / manifest["windows"]["train"]
        figures[f"{name}_per_clip_mb"] = per_window / 1e6
        figures[f"{name}_per_hour_gb"] = per_window * per_minute * 60 / 1e9
    lines = [f"{k}: {v:.3f}" for k, v in figures.items()]
    return {"figures": {k: round(v, 4) for k, v in figures.items()}, "lines": lines}


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
    p.add_argument("--sources", nargs="+", default=["mp4", "cache", "shards"], choices=["mp4", "cache", "shards"])
    p.add_argument("--sizes", nargs="+", default=["full", "half"], choices=["full", "half"])
    p.add_argument("--clips-per-decode", type=int, nargs="+", default=[1, 4, 8],
                   help="mp4 rows: clips cut from one decoded run (FootageDataModule's clips_per_decode)")
    p.add_argument("--rounds", type=int, default=1, help="measurements of every row, in alternating order")
    p.add_argument("--before", action="store_true",
                   help="also the mp4 rows as before reference-only decoding (every frame decoded)")
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
            # Every grid window of every frame (the same clips as the cache's): 448×256 windows.
            for name, quality in (("shards", None), ("shards-q90", 90)):
                t0 = time.perf_counter()
                prepare_shards(tmp / "src", tmp / name, ShardOptions(window=(448, 256), windows_per_minute=600,
                                                                     val_fraction=0.0, quality=quality), progress=False)
                prepared[name] = time.perf_counter() - t0
                print(f"prepare --shards ({quality or 'lossless'}): {prepared[name]:.1f} s")
        storage = storage_figures(tmp, args.frames)
        for line in storage["lines"]:
            print(line)
        sources = {"mp4 1080p (PyAV, seek)": ("full", False, "mp4"), "cache 1080p (memmap)": ("full", True, "cache"),
                   "mp4 1080p → 540p (PyAV, seek, resize)": ("half", False, "mp4"),
                   "cache 540p (memmap)": ("half", True, "cache"),
                   "shards 448×256 WebP lossless": ("shards", None, "shards"),
                   "shards 448×256 WebP q90": ("shards-q90", None, "shards")}
        cases = []  # (row, folder, use_cache, workers, clips per decode, before?, cold?, batches)
        for label, (name, use_cache, kind) in sources.items():
            if kind not in args.sources or (name in ("full", "half") and name not in args.sizes):
                continue
            batches = (args.mp4_batches or args.batches) if use_cache is False else args.batches
            variants = [(1, False)]
            if use_cache is False:
                variants = [(1, True)] * args.before + [(n, False) for n in args.clips_per_decode]
            for workers in args.workers:
                for per_decode, before in variants:
                    row = label + (", every frame decoded (before)" if before else "")
                    row += f", {per_decode} clips per decode" if per_decode > 1 else ""
                    cases.append((row, name, use_cache, workers, per_decode, before, False, batches))
                if use_cache is not False:
                    cold = label.replace("(memmap)", "(memmap, cold page cache)") if use_cache else f"{label}, cold"
                    cases.append((cold, name, use_cache, workers, 1, False, True, batches))
        rates: dict[tuple, list[float]] = {case: [] for case in cases}
        for r in range(args.rounds):  # alternating order: drift in the machine's speed hits both ends alike
            for case in cases if r % 2 == 0 else reversed(cases):
                row, name, use_cache, workers, per_decode, before, cold, batches = case
                evicted = evict_from_page_cache(tmp / name / ("cache" if use_cache else "shards")) if cold else 0
                with every_frame_decoded() if before else contextlib.nullcontext():
                    rate = clips_per_second(tmp / name, use_cache, workers, batches, 0 if cold else args.warmup,
                                            clips_per_decode=per_decode)
                rates[case].append(rate)
                print(f"round {r + 1}: {row:40s} workers={workers}: {rate:8.2f} clips/s"
                      + (f" ({evicted / 2**20:.0f} MiB evicted)" if cold else ""), flush=True)
        results = []
        for case, values in rates.items():
            row, _, _, workers, _, _, _, batches = case
            results.append({"source": row, "workers": workers, "clips_per_s": round(statistics.median(values), 2),
                            "min": round(min(values), 2), "max": round(max(values), 2),
                            "runs": [round(v, 2) for v in values], "batches": batches})
            print(f"{row:40s} workers={workers}: median {statistics.median(values):8.2f} clips/s "
                  f"({min(values):.2f}–{max(values):.2f}, {len(values)} runs)")

    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "av": av.__version__, "files": args.files, "frames": args.frames,
            "gop": args.gop, "batch": 8, "clip": "3 frames, 256x256 crop", "warmup_batches": args.warmup,
            "loader": "FootageDataModule / ShardDataModule .train_dataloader()", "prepare_seconds": prepared}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results, "storage": storage["figures"]},
                                         indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
