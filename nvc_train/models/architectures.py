"""The architectures nvc-train trains, by CompressAI's names: one description each.

A description says what kind of codec an architecture is (video or image) and which
LightningModule trains it; generic tools (``nvc-train fit``, the checkpoint readers) choose
by it instead of naming a model. Imports nothing heavy, so the CLI can choose before torch
is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from nvc_train.errors import UserError


class Architecture(NamedTuple):
    """One architecture.

    Attributes:
        name: CompressAI's name (``ssf2020``, ``bmshj2018-hyperprior``).
        kind: "video" or "image".
        lit_module: ``module:Class`` of its LightningModule.
        summary: one line for help texts and model cards.
    """

    name: str
    kind: str
    lit_module: str
    summary: str


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("ssf2020", "video", "nvc_train.lit.module:SSFLitModule",
                 "Scale-Space Flow video codec (Agustsson et al., CVPR 2020)"),
    Architecture("bmshj2018-hyperprior", "image", "nvc_train.lit.image_module:ImageLitModule",
                 "scale hyperprior image codec (Ballé et al., ICLR 2018)"),
    Architecture("mbt2018-mean", "image", "nvc_train.lit.image_module:ImageLitModule",
                 "mean-scale hyperprior image codec (Minnen et al., NeurIPS 2018)"),
)}

DEFAULT_ARCHITECTURE = "ssf2020"


def architecture(name: str) -> Architecture:
    """The description of ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in ARCHITECTURES:
        raise UserError(f"unknown architecture {name!r}; nvc-train trains {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def lit_module_class(name: str):
    """The LightningModule class that trains architecture ``name`` (imports it)."""
    import importlib

    module, cls = architecture(name).lit_module.split(":")
    return getattr(importlib.import_module(module), cls)


def architecture_in_arguments(args: list[str]) -> str:
    """The architecture a ``fit|validate|test`` command line asks for: the last
    ``--model.architecture`` given, else the last ``model.architecture`` of its ``--config``
    files, else ssf2020 (the order LightningCLI applies them in)."""
    chosen, from_config = None, None
    for i, arg in enumerate(args):
        value = None
        if arg.startswith("--model.architecture="):
            value = arg.split("=", 1)[1]
        elif arg == "--model.architecture" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--config=") or (arg == "--config" and i + 1 < len(args)):
            path = arg.split("=", 1)[1] if "=" in arg else args[i + 1]
            from_config = _config_architecture(path) or from_config
        if value is not None:
            chosen = value
    return chosen or from_config or DEFAULT_ARCHITECTURE


def _config_architecture(path: str) -> str | None:
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None  # LightningCLI reports an unreadable config in its own words
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict):
        value = model.get("architecture", (model.get("init_args") or {}).get("architecture"))
        return value if isinstance(value, str) else None
    return None
