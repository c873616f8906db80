"""Decode a checkpoint's conformance records after each precision switch a user might set.

Run in a fresh process (the switches are process-global and PyTorch refuses to read the
legacy TF32 flag once the new ``fp32_precision`` API is used, so they cannot be undone):

    python -m tests.quant.switches_probe CKPT [--device cpu|cuda]

Prints one line per setting: ``<setting> OK`` or ``<setting> FAIL <reason>``, applied
cumulatively in the order below; then whether the legacy ``cudnn.flags()`` context manager
(what the exact path used before) still works under these settings.
"""

from __future__ import annotations

import argparse

import torch

from nvc_train.quant.conformance import run_checks
from nvc_train.quant.export import load_integer_checkpoint


def _legacy_tf32_on():
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def _legacy_tf32_off():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _new_api_ieee():
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"


def _new_api_tf32():
    torch.backends.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.mkldnn.fp32_precision = "bf16"


SETTINGS = [
    ("default", lambda: None),
    ("legacy allow_tf32=True", _legacy_tf32_on),
    ("legacy allow_tf32=False", _legacy_tf32_off),
    ("set_float32_matmul_precision('medium')", lambda: torch.set_float32_matmul_precision("medium")),
    ("fp32_precision='ieee' (cudnn.conv, cuda.matmul)", _new_api_ieee),
    ("fp32_precision='tf32'/'bf16' (global, cudnn, matmul, mkldnn)", _new_api_tf32),
    ("cudnn.benchmark=True", lambda: setattr(torch.backends.cudnn, "benchmark", True)),
    ("cudnn.deterministic=True", lambda: setattr(torch.backends.cudnn, "deterministic", True)),
    ("use_deterministic_algorithms(True)", lambda: torch.use_deterministic_algorithms(True)),
    ("cudnn.enabled=False", lambda: setattr(torch.backends.cudnn, "enabled", False)),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--records", default="small,stress")
    args = ap.parse_args()
    wanted = args.records.split(",")
    for name, apply in SETTINGS:
        try:
            apply()
            ck = load_integer_checkpoint(args.checkpoint, device=args.device)
            conf = ck.conformance._replace(records=[r for r in ck.conformance.records if r["name"] in wanted])
            checks = list(run_checks(ck.codec, conf, args.device))
            bad = [c.item for c in checks if not c.ok]
            print(f"{name} {'OK' if checks and not bad else 'FAIL ' + (', '.join(bad) or 'no checks')}", flush=True)
        except Exception as exc:  # the point is to report it, whatever it is
            print(f"{name} FAIL {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
    try:
        with torch.backends.cudnn.flags(enabled=False):
            pass
        print("legacy cudnn.flags() works")
    except RuntimeError as exc:
        print(f"legacy cudnn.flags() raises: {str(exc)[:60]}")


if __name__ == "__main__":
    main()
