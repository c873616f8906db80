"""Preparation throughput of clip shards: ``prepare_shards`` over generated 1080p H.264 files with
``--jobs`` 1 and 2, alternating, into a fresh folder each time (nothing resumed). Frames/s counts
every source frame (each is decoded twice: once to count it, once to cut windows).

Sources as in benchmarks/loader_throughput.py (libx264 veryfast CRF 20, 3 B-frames, a keyframe
every 30 frames); windows as its shard rows (448×256, every grid window, WebP lossless).
Results go to benchmarks/shard_prepare_results.json.

    .venv/bin/python benchmarks/shard_prepare.py [--files 4 --frames 90 --rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from nvc_train.data.shards import ShardOptions, prepare_shards

HERE = Path(__file__).resolve().parent


def main() -> None:
    from loader_throughput import write_source

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=str(HERE / "shard_prepare_results.json"))
    args = p.parse_args()
    options = ShardOptions(window=(448, 256), windows_per_minute=600, val_fraction=0.0)
    times: dict[int, list[float]] = {j: [] for j in args.jobs}
    with tempfile.TemporaryDirectory(prefix="nvc-shards-") as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        for i in range(args.files):
            write_source(tmp / "src" / f"cam{i}.mp4", i, args.frames, 30)
        run = 0
        for r in range(args.rounds):
            for jobs in args.jobs if r % 2 == 0 else reversed(args.jobs):
                run += 1
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    start = time.perf_counter()
                    prepare_shards(tmp / "src", tmp / f"out{run}", options, jobs=jobs, progress=False)
                    times[jobs].append(time.perf_counter() - start)
                print(f"round {r + 1}, --jobs {jobs}: {times[jobs][-1]:.1f} s", flush=True)
    frames = args.files * args.frames
    results = [{"jobs": j, "seconds": [round(t, 2) for t in ts], "median_s": round(statistics.median(ts), 2),
                "frames_per_s": round(frames / statistics.median(ts), 1),
                "frames_per_s_per_job": round(frames / statistics.median(ts) / j, 1)} for j, ts in times.items()]
    for row in results:
        print(f"--jobs {row['jobs']}: median {row['median_s']} s ({min(times[row['jobs']]):.1f}–"
              f"{max(times[row['jobs']]):.1f}), {row['frames_per_s']} frames/s")
    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "files": args.files, "frames": args.frames, "size": "1920x1080",
            "windows": "448x256, every grid window, WebP lossless"}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
