"""Encode/decode speed of the integer codec vs CompressAI's float SSF, and streaming memory.

Speed (per resolution, same synthetic clip, same process): every job runs once untimed
(warm-up: first-call allocations, oneDNN primitive creation), then ``--rounds`` timed rounds
(at least 3) whose order alternates (forward, then reversed, …), so a drift of the machine
does not favour the jobs that come first. Each job's median is reported with its spread
(min–max over the rounds) and, per pair, the ratio's range over the rounds; a difference
smaller than that range is not resolved.

- ``float``: stock ``ScaleSpaceFlow.compress`` / ``decompress`` on frames padded to 128;
- ``integer``: ``IntegerSSF.compress`` / ``decompress`` (integer hyper-decoders) on the same
  padded frames;
- ``integer, files``: the ``nvc-train encode/decode`` path, y4m → .nvc → y4m, including
  colour conversion, padding, PSNR, container and file I/O.

Memory (``--memory``): peak RSS of ``encode`` and ``decode`` child processes for a 30- and a
300-frame y4m clip; streaming means the two are equal.

    .venv/bin/python benchmarks/codec_speed.py --checkpoint runs/demo/ssf-int.ckpt [--device cuda]
    .venv/bin/python benchmarks/codec_speed.py --memory
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch

from nvc_train.codec.files import decode_video, encode_video, pad_frame
from nvc_train.io.video import InputOptions, open_video, open_writer
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.quant.export import load_integer_checkpoint

from decode_speed import timed  # benchmarks/ is on sys.path when run as a script

SIZES = {"1080p": (1080, 1920), "720p": (720, 1280)}


def write_y4m(path: Path, height: int, width: int, frames: int, seed: int = 31337, chunk: int = 30) -> None:
    """A synthetic clip as y4m, generated ``chunk`` frames at a time (the 30-frame motion loops)."""
    with open_writer(path, width, height, Fraction(25)) as w:
        for start in range(0, frames, chunk):
            for f in synthetic_clip(seed, min(chunk, frames - start), height, width):
                w.write(f)


def speed(args) -> list[dict]:
    dev = args.device
    ck = load_integer_checkpoint(args.checkpoint, device=dev)
    codec, model = ck.codec.eval(), ck.codec.model.eval()
    rows = []
    for name in args.sizes:
        h, w = SIZES[name]
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src.y4m"
            write_y4m(src, h, w, args.frames)
            with open_video(src, InputOptions()) as reader:
                clip = [pad_frame(f).to(dev) for f in reader]
            state = {}

            def float_enc():
                with torch.no_grad():
                    state["float"] = model.compress(clip)

            def float_dec():
                with torch.no_grad():
                    model.decompress(*state["float"])

            def int_enc():
                state["int"] = codec.compress(clip, gop=32)[0]

            def int_dec():
                codec.decompress(state["int"], dev)

            def file_enc():
                with open_video(src, InputOptions()) as reader:
                    encode_video(reader, Path(tmp) / "c.nvc", ck, gop=32, device=dev, progress=False)

            def file_dec():
                out = Path(tmp) / "d.y4m"
                decode_video(Path(tmp) / "c.nvc", ck, lambda hd: open_writer(out, hd.width, hd.height, Fraction(25)),
                             dev, progress=False)

            jobs = {"float encode": float_enc, "float decode": float_dec, "integer encode": int_enc,
                    "integer decode": int_dec, "integer, files encode": file_enc, "integer, files decode": file_dec}
            for fn in jobs.values():  # warm-up, untimed; also produces the streams the decoders read
                fn()
            times = {k: [] for k in jobs}
            order = list(jobs)
            for r in range(args.rounds):
                for k in (order if r % 2 == 0 else order[::-1]):
                    times[k].append(timed(jobs[k], dev))
            for k, ts in times.items():
                med = statistics.median(ts)
                rows.append({"size": name, "job": k, "seconds": round(med, 3), "fps": round(args.frames / med, 3),
                             "min_s": round(min(ts), 3), "max_s": round(max(ts), 3), "runs": [round(t, 3) for t in ts]})
                print(f"{name:6} {k:24} {args.frames / med:7.3f} frames/s  median {med:.2f} s "
                      f"(min {min(ts):.2f}, max {max(ts):.2f}; {len(ts)} rounds)", flush=True)
            for op in ("encode", "decode"):
                base = times[f"float {op}"]
                for other in (f"integer {op}", f"integer, files {op}"):
                    ratios = [t / b for t, b in zip(times[other], base)]  # same round: same machine state
                    row = {"size": name, "job": f"{other} / float {op}", "time_ratio_median": round(statistics.median(ratios), 4),
                           "time_ratio_min": round(min(ratios), 4), "time_ratio_max": round(max(ratios), 4)}
                    rows.append(row)
                    print(f"{name:6} {other + ' / float':30} time ×{row['time_ratio_median']:.3f} "
                          f"(per-round {row['time_ratio_min']:.3f}–{row['time_ratio_max']:.3f})", flush=True)
    return rows


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def child(args) -> None:
    """Encode or decode one file; print peak RSS (MiB) of the whole process and of the coding
    alone (the peak is reset after loading the checkpoint, whose load dominates otherwise)."""
    ck = load_integer_checkpoint(args.checkpoint)
    loaded = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (Linux ≥ 4.0)
    src, dst = Path(args.child[1]), Path(args.child[2])
    if args.child[0] == "encode":
        with open_video(src, InputOptions()) as reader:
            report = encode_video(reader, dst, ck, progress=False)
    else:
        report = decode_video(src, ck, lambda h: open_writer(dst, h.width, h.height, Fraction(25)), progress=False)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": len(report.frames), "peak_rss_mib": round(peak_mib, 1),
                      "rss_after_load_mib": round(loaded, 1), "peak_rss_while_coding_mib": round(_status_mib("VmHWM"), 1)}))


def memory(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.memory_frames:
            src, nvc, out = Path(tmp) / f"src{n}.y4m", Path(tmp) / f"c{n}.nvc", Path(tmp) / f"d{n}.y4m"
            write_y4m(src, args.memory_size, args.memory_size, n)
            for op, a, b in (("encode", src, nvc), ("decode", nvc, out)):
                t = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--checkpoint", args.checkpoint, "--child", op,
                                       str(a), str(b)], capture_output=True, text=True, check=True)
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append({"op": op, "frames": n, "size": args.memory_size, **res,
                             "seconds": round(time.perf_counter() - t, 1)})
                print(f"{op} {n:4} frames {args.memory_size}x{args.memory_size}: peak RSS {res['peak_rss_mib']} MiB; "
                      f"after loading {res['rss_after_load_mib']} MiB, peak while coding "
                      f"{res['peak_rss_while_coding_mib']} MiB", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="runs/demo/ssf-int.ckpt")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--frames", type=int, default=3, help="frames per clip: I then P (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up, ≥ 3 (default: %(default)s)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory", action="store_true", help="measure peak RSS for --memory-frames clips instead")
    ap.add_argument("--memory-frames", type=int, nargs="+", default=[30, 300])
    ap.add_argument("--memory-size", type=int, default=256)
    ap.add_argument("--child", nargs=3, metavar=("OP", "SRC", "DST"), help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.rounds < 3:
        ap.error("--rounds must be at least 3: a spread needs them")
    rows = memory(args) if args.memory else speed(args)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "threads": torch.get_num_threads(),
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
