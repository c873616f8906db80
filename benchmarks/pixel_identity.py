"""Pixel identity across settings and PyTorch releases: every decoded frame's MD5, integer vs float.

Decodes one stream of a pixel-exact checkpoint with 1 and 2 threads and with oneDNN on and
off, twice each: through the pixel-exact decoder, and through the same checkpoint's float
synthesis (its integer hyperprior with float decoders and warp: the control, what the
integer path removes). Prints and writes one JSON record per setting. Run it in a second
Python environment with another PyTorch release on the same stream, then ``--compare`` the
two records.

    .venv/bin/python benchmarks/pixel_identity.py --checkpoint CKPT --stream /tmp/s.nvc --json a.json
    OTHER/bin/python benchmarks/pixel_identity.py --checkpoint CKPT --stream /tmp/s.nvc --json b.json
    .venv/bin/python benchmarks/pixel_identity.py --compare a.json b.json

The stream is encoded (a synthetic 768×512 I P P P clip) if the file does not exist yet.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def decode_all(args) -> dict:
    import torch

    from nvc_train.codec.bitstream import read_bitstream_bytes, write_bitstream_bytes
    from nvc_train.codec.integer_codec import IntegerSSF
    from nvc_train.codec.pixel_decoder import frame_md5
    from nvc_train.quant.export import load_integer_checkpoint

    ck = load_integer_checkpoint(args.checkpoint)
    codec = ck.codec.eval()
    if not codec.pixel_exact:
        raise SystemExit(f"{args.checkpoint} is not pixel-exact")
    stream = Path(args.stream)
    if not stream.exists():
        from nvc_train.data.synthetic import synthetic_clip

        frames = [f.unsqueeze(0) for f in synthetic_clip(4242, 4, 512, 768)]
        coded, _ = codec.compress(frames)
        stream.write_bytes(write_bitstream_bytes(coded, width=768, height=512, checkpoint_sha256=None))
    _, coded = read_bitstream_bytes(stream.read_bytes())
    twin = IntegerSSF(codec.model, dict(codec.hyperpriors)).eval()
    settings = []
    for threads in (1, 2):
        for onednn in (True, False):
            torch.set_num_threads(threads)
            with torch.backends.mkldnn.flags(enabled=onednn):
                integer = [d.md5 for d in codec.decompress(coded)]
                control = [frame_md5((d.x_hat.clamp(0, 1) * 255).round().to(torch.uint8)) for d in twin.decompress(coded)]
            settings.append({"threads": threads, "onednn": onednn, "integer": integer, "float": control})
            print(f"torch {torch.__version__} threads {threads} oneDNN {'on ' if onednn else 'off'}: "
                  f"integer {' '.join(m[:8] for m in integer)} | float {' '.join(m[:8] for m in control)}", flush=True)
    return {"torch": torch.__version__, "checkpoint_sha256": ck.sha256, "settings": settings}


def compare(paths: list[str]) -> None:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    for kind in ("integer", "float"):
        distinct = {tuple(s[kind]) for r in runs for s in r["settings"]}
        where = [f"torch {r['torch']} threads {s['threads']} oneDNN {s['onednn']}" for r in runs for s in r["settings"]]
        print(f"{kind}: {len(distinct)} distinct frame-MD5 sequence(s) over {len(where)} decodes "
              f"({', '.join(sorted({r['torch'] for r in runs}))})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--stream")
    ap.add_argument("--json")
    ap.add_argument("--compare", nargs="+", metavar="JSON")
    args = ap.parse_args()
    if args.compare:
        compare(args.compare)
        return
    record = decode_all(args)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
