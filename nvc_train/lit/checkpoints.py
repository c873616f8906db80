"""Lightning checkpoints of ``nvc-train fit`` runs: read them, and write what they export
(a float ScaleSpaceFlow state dict, a CompressAI zoo file, an integer checkpoint)."""

from __future__ import annotations

import io
import json
import platform
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Callable

import torch

from nvc_train.errors import UserError, require_file
from nvc_train.quant.export import MAGIC as INTEGER_MAGIC

PACKAGES = ("nvc-train", "torch", "compressai", "lightning", "numpy")


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers, recorded in every export."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


def read_lightning_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as a dict, with one-line errors for missing or foreign files."""
    path = require_file(path, "checkpoint")
    with open(path, "rb") as f:
        if f.read(len(INTEGER_MAGIC)) == INTEGER_MAGIC:
            raise UserError(f"{path} is an integer checkpoint (from `nvc-train export-integer`); this command takes the "
                            "training checkpoint it came from (runs/<preset>/checkpoints/last.ckpt of `nvc-train fit`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise UserError(f"{path} is not a Lightning checkpoint from `nvc-train fit`")
    return ckpt


def lit_module_from_checkpoint(path: str | Path):
    """(the LightningModule in eval mode, the raw checkpoint dict) of a `nvc-train fit`
    checkpoint; the module is the one of the architecture its hyper-parameters record."""
    import inspect

    from nvc_train.models.architectures import DEFAULT_ARCHITECTURE, lit_module_class

    ckpt = read_lightning_checkpoint(path)
    recorded = ckpt["hyper_parameters"]
    cls = lit_module_class(recorded.get("architecture", DEFAULT_ARCHITECTURE))
    # The weights come from the checkpoint, and its hyper-parameters record the rate point and
    # flow reference in effect: no parent to read or to compare with.
    accepted = inspect.signature(cls.__init__).parameters
    hparams = {**recorded, "init_weights": None, **({"pretrained": False} if "pretrained" in accepted else {})}
    module = cls(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        keys = (missing or unexpected)[:3]
        raise UserError(f"{path} does not match the {cls.__name__} training module (e.g. {', '.join(keys)})")
    return module.eval(), ckpt


def export_zoo_file(module, out_dir: Path, quality: int | None) -> Path:
    """``out_dir/ssf2020-mse-<q>-<sha8>.pth.tar`` as CompressAI's ``update_model`` writes it."""
    from nvc_train.models.loss import QUALITY_LAMBDAS
    from nvc_train.models.zoo import write_zoo_file

    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--zoo writes into a folder; {out_dir} is a file")
    hp = module.hparams
    if quality is None:
        quality = hp.quality
        if hp.lmbda is not None and float(hp.lmbda) != QUALITY_LAMBDAS.get(quality):
            raise UserError(f"the run trained with λ={hp.lmbda}, no zoo quality: name one with --quality")
    if module.model.flow_reference is not None:
        print(f"nvc-train: warning: the zoo format stores weights only: flow_reference={module.model.flow_reference} "
              f"is dropped, and CompressAI moves by the flow in units of half the frame", file=sys.stderr)
    return write_zoo_file(module.model, out_dir, "mse", quality)


def save_float_state_dict(model, path: Path, quality: int | None = None, lmbda: float | None = None) -> None:
    """Entropy tables computed (``update``), then the state dict written atomically.

    Written as ``{"state_dict", "flow_reference", "quality", "lmbda"}`` (what is known of the
    three), which CompressAI's ``eval_model`` also loads (it reads the state dict and ignores
    the rest) and from which a fine-tuning run (``--model.init_weights``), ``ptq`` and ``eval``
    take the model's rate point. A model with a flow reference gets a warning: CompressAI's
    stock SSF evaluates it with resolution-dependent flow.
    """
    from nvc_train.io.atomic import atomic_write_bytes

    model.update(force=True)
    obj = model.state_dict()
    flow_reference = getattr(model, "flow_reference", None)
    record = {k: v for k, v in (("flow_reference", flow_reference), ("quality", quality),
                                ("lmbda", None if lmbda is None else float(lmbda))) if v is not None}
    if record:
        obj = {"state_dict": obj, **record}
    if flow_reference is not None:
        print(f"nvc-train: warning: {path.name} records flow_reference={flow_reference}; CompressAI's stock "
              f"ScaleSpaceFlow ignores it and moves by the flow in units of half the frame, so its results "
              f"differ from nvc-train's except on {flow_reference}×{flow_reference} frames", file=sys.stderr)
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def export_integer_from_lightning(checkpoint: str | Path, out_dir: Path, name: str | None,
                                  announce: Callable[[bool | str], None] | None = None) -> Path:
    """``out_dir/<name>-<sha8>.ckpt`` (+ model card) from a QAT run's Lightning checkpoint, an
    integer image checkpoint for an image architecture (``name`` None: ``ssf-int`` or
    ``<architecture>-int``); ``announce(kind)`` is called once the run's kind is known (its
    pixel_exact flag, or "image"), before the export."""
    from nvc_train.quant.export import export_integer_checkpoint
    from nvc_train.quant.integer import ExportError

    module, ckpt = lit_module_from_checkpoint(checkpoint)
    if module.qat is None:
        raise UserError(f"{checkpoint} was trained without QAT (model.qat is unset): fine-tune it with a qat config first")
    hp = dict(ckpt["hyper_parameters"])
    image = hp.get("architecture", "ssf2020") != "ssf2020"
    if announce is not None:
        announce("image" if image else module.qat.config.pixel_exact)
    meta = {
        "quality": hp.get("quality"), "lmbda": module.lmbda, "config": {"model": hp, "data": ckpt.get("datamodule_hyper_parameters")},
        "packages": package_versions(), "global_step": ckpt.get("global_step"),
        "training_data": _describe_data(ckpt), "init_weights": describe_parent(hp),
    }
    meta = json.loads(json.dumps(meta, default=str))
    try:
        if image:
            from nvc_train.quant.image_export import export_image_checkpoint

            return export_image_checkpoint(module.model, module.qat, out_dir, name or f"{hp['architecture']}-int", meta)
        return export_integer_checkpoint(module.model, module.qat, out_dir, name or "ssf-int", meta)
    except ExportError as exc:
        raise UserError(f"export failed: {exc}") from None


def _describe_data(ckpt: dict) -> str:
    """The training data in a model card: what identifies it (absolute folder, manifest hash)
    rather than the relative path the run was started with, then the other settings."""
    hp = dict(ckpt.get("datamodule_hyper_parameters") or {})
    resolved, manifest = hp.pop("_root_resolved", None), hp.pop("_manifest_sha256", None)
    if resolved:
        hp["root"] = resolved + (f" (footage.json SHA-256 {manifest})" if manifest else "")
    return ", ".join(f"{k}={v}" for k, v in hp.items() if not str(k).startswith("_")) or "unknown"


def describe_parent(hparams: dict) -> str | None:
    """The float weights a run started from, by absolute path and SHA-256 (None: not a file)."""
    path, digest = hparams.get("_init_weights_resolved"), hparams.get("_init_weights_sha256")
    return f"{path} (SHA-256 {digest})" if path and digest else None
