"""Peak memory (RSS) and time of one whole decode, in a fresh process, with the frame MD5s.

Run it once per implementation on the same stream (e.g. this checkout and a ``git worktree``
of an earlier commit, with the same interpreter) and compare: the MD5s must agree, the peak
RSS and the time are the figures. The checkpoint's self-test is skipped so that an older
checkout can load a newer checkpoint; the stream is read from a ``.nvc`` file.

    .venv/bin/python benchmarks/decode_peak_rss.py --checkpoint CKPT --stream clip.nvc [--source DIR]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--stream", required=True, help=".nvc bitstream to decode")
    ap.add_argument("--source", default=None, help="nvc-train checkout to import (default: the installed one)")
    args = ap.parse_args()
    if args.source:
        sys.path.insert(0, args.source)
    from nvc_train.codec.bitstream import read_bitstream_bytes
    from nvc_train.quant.export import load_integer_checkpoint

    ck = load_integer_checkpoint(args.checkpoint, self_check=False)
    with open(args.stream, "rb") as f:
        _, coded = read_bitstream_bytes(f.read())
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    start = time.perf_counter()
    md5s = [frame.md5 for frame in ck.codec.decompress_iter(coded)]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"{args.source or 'installed'}: decode {seconds:.2f} s, peak RSS {peak} MiB (after loading {loaded} MiB)")
    print("frame MD5s: " + " ".join(md5s))


if __name__ == "__main__":
    main()
