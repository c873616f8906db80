"""Rows of the cross-check matrix: one environment's decode compared with the reference's.

A row holds, for one checkpoint, how many of the reference's digests the environment
reproduced (conformance checks, latents of every stream frame, pixel-exact frames) and how
many of the float control's frames came out different. The integer columns must be equal
everywhere; the control must differ somewhere, else the row says it did not discriminate
(the environment then changed nothing the float arithmetic notices, and its "identical"
shows less than it seems).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    """One environment against the reference, for one checkpoint. Counts are (same, total)."""

    environment: str
    described: str  # what the worker reported: machine, torch, kernels, threads, oneDNN
    conformance: tuple[int, int]
    conformance_failures: int  # checks that differ from the digests stored in the checkpoint
    latents: tuple[int, int]
    frames: tuple[int, int] | None  # None: not a pixel-exact checkpoint
    control_raw_differ: tuple[int, int]  # float32 reconstructions that differ / total
    control_8bit_differ: tuple[int, int]
    seconds: float
    first_difference: str = ""  # "stream S frame t latents" of the first integer difference

    @property
    def identical(self) -> bool:
        same = [self.conformance, self.latents] + ([self.frames] if self.frames else [])
        return self.conformance_failures == 0 and all(a == b for a, b in same)

    @property
    def control_discriminates(self) -> bool:
        return self.control_raw_differ[0] > 0


def describe(env: dict) -> str:
    where = env.get("gpu") or f"{env['machine']} {env['capability']}"
    engine = f"ONNX Runtime {env['onnxruntime']} (networks), " if env.get("onnxruntime") else ""
    return (f"{where}, {engine}torch {env['torch']}, {env['threads']} thread{'s' * (env['threads'] != 1)}, "
            f"oneDNN {'on' if env['onednn'] else 'off'}")


def _count(a: list, b: list) -> tuple[int, int]:
    return sum(x == y for x, y in zip(a, b)), len(a)


def compare(name: str, reference: dict, record: dict) -> Row:
    """``record`` (one environment's :func:`nvc_train.crosscheck.decode.run`) against ``reference``."""
    if record["checkpoint_sha256"] != reference["checkpoint_sha256"]:
        raise ValueError("records of different checkpoints")
    ref_conf, conf = reference["conformance"], record["conformance"]
    conformance = (sum(conf.get(k) == v for k, v in ref_conf.items()), len(ref_conf))
    latents = [0, 0]
    frames = [0, 0] if reference["pixel_exact"] else None
    raw, eight = [0, 0], [0, 0]
    first = next((f"conformance {k}" for k, v in ref_conf.items() if conf.get(k) != v), "")
    for stream, want in reference["streams"].items():
        if stream not in record["streams"]:
            continue  # a slow row decodes the short stream only
        got = record["streams"][stream]
        pairs = [("latents", latents)] + ([("frames", frames)] if frames is not None else [])
        for key, tally in pairs:
            same, total = _count(want[key], got[key] + [None] * (len(want[key]) - len(got[key])))
            tally[0] += same
            tally[1] += total
            bad = next((t for t, (x, y) in enumerate(zip(want[key], got[key] + [None] * len(want[key]))) if x != y), None)
            if bad is not None and not first:
                first = f"stream {stream} frame {bad} ({want['types'][bad]}) {key}"
        for key, tally in (("control_raw", raw), ("control_8bit", eight)):
            same, total = _count(want[key], got[key] + [None] * (len(want[key]) - len(got[key])))
            tally[0] += total - same
            tally[1] += total
    return Row(name, describe(record["env"]), conformance, record["conformance_failures"], tuple(latents),
               tuple(frames) if frames is not None else None, tuple(raw), tuple(eight), record["seconds"], first)


def _fraction(pair: tuple[int, int]) -> str:
    return f"{pair[0]}/{pair[1]}"


def format_row(row: Row, reference: bool = False) -> str:
    """``environment | conformance | latents | frames | float control | time`` as one line."""
    frames = "n/a" if row.frames is None else _fraction(row.frames)
    if reference:
        control = "(reference)"
    elif row.control_discriminates:
        control = f"differs: {_fraction(row.control_raw_differ)} float32, {_fraction(row.control_8bit_differ)} 8-bit"
    else:
        control = "identical: did not discriminate"
    verdict = "reference" if reference else ("IDENTICAL" if row.identical else f"DIFFERS at {row.first_difference}")
    conformance = f"{_fraction(row.conformance)}" + (f" ({row.conformance_failures} fail)" if row.conformance_failures
                                                      else "")
    return (f"{row.environment:<34} {conformance:>9} {_fraction(row.latents):>9} {frames:>7}  {verdict:<10} "
            f"{control:<38} {row.seconds:>6.0f} s  [{row.described}]")


HEADER = (f"{'environment':<34} {'conform.':>9} {'latents':>9} {'frames':>7}  {'integer':<10} "
          f"{'float control':<38} {'decode':>8}  [what the decoder reported]")


def skipped_row(name: str, why: str) -> str:
    return f"{name:<34} not run: {why}"
