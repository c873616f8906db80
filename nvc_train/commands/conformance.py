"""``nvc-train conformance``: decode a checkpoint's embedded conformance records on this machine."""

from __future__ import annotations

from nvc_train.commands.common import (
    CHECKPOINT_HELP,
    add_device,
    add_quiet,
    add_runtime,
    checked_runtime,
    checkpoint_path,
    device,
    use_runtime,
)


def add_parsers(sub) -> None:
    s = sub.add_parser("conformance", help="decode a checkpoint's embedded conformance bitstream; exit 0 only if exact")
    s.add_argument("checkpoint", help=f"integer checkpoint ({CHECKPOINT_HELP})")
    add_device(s)
    add_runtime(s)
    add_quiet(s, "print only the verdict line (and any difference)")
    s.set_defaults(run=conformance)


def conformance(args) -> int:
    """Decode every conformance record of the checkpoint on ``--device``: one line per record
    and part, exit 1 on any difference (a missing or short record is a difference)."""
    from nvc_train.commands.codec import is_image_checkpoint

    dev = device(args.device)
    path = checkpoint_path(args.checkpoint)
    if is_image_checkpoint(path):
        from nvc_train.commands.image import conformance_image

        return conformance_image(args, path, dev)
    runtime = checked_runtime(args)
    from nvc_train.quant.conformance import run_checks
    from nvc_train.quant.export import load_integer_checkpoint

    ck = use_runtime(args, load_integer_checkpoint(path, device=dev, self_check=False), runtime, self_check=False)
    total = failures = 0
    for check in run_checks(ck.codec, ck.conformance, dev):
        total += 1
        failures += not check.ok
        verdict = "OK" if check.ok else f"MISMATCH expected {check.want or 'a stored hash'}"
        if not getattr(args, "quiet", False) or not check.ok:  # a difference is always named
            print(f"{check.record:<9} {check.item:<24} {check.got or '-'} {verdict}")
    records = ", ".join(r["name"] for r in ck.conformance.records) or "(none)"
    verdict = "PASS" if failures == 0 else f"FAIL ({failures} of {total} checks differ)"
    engine = "" if runtime == "torch" else f" in ONNX Runtime {_onnxruntime_version()}"
    print(f"conformance {verdict}: {total} checks in records {records} of {path.name} on {dev}{engine}")
    return 0 if failures == 0 else 1


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
