"""The shipped LightningCLI presets, addressable from any working folder.

They are package data (``nvc_train/configs/``, so a wheel carries them); the checkout's
``configs/`` is a link to that folder. ``--config configs/qat.yaml`` (as the README writes
it) or ``--config qat.yaml`` names a preset of this installation when no such file exists
relative to the working folder; runs still land where the preset's relative
``default_root_dir`` says, under the working folder.
"""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_FLAGS = ("--config", "-c")


def resolve_config(text: str) -> str:
    """``text`` if it names a file from here (or is absolute), else the preset it names."""
    path = Path(text)
    if path.is_absolute() or path.exists():
        return text
    name = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) and len(path.parts) > 1 else path
    candidate = CONFIGS / name
    return str(candidate) if candidate.is_file() else text


def resolve_config_args(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config X`` / ``--config=X`` / ``-c X`` resolved."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in CONFIG_FLAGS and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.removeprefix("--config="))
    return out


def preset(name: str) -> str:
    """How to name preset ``name`` (e.g. "finetune/footage.yaml") in a hint: ``configs/NAME``,
    as the README writes it (it names the preset from any folder, :func:`resolve_config`),
    unless another file of that path exists here; then the preset's absolute path."""
    relative = Path("configs") / name
    shipped = CONFIGS / name
    if relative.exists() and shipped.is_file() and relative.resolve() != shipped.resolve():
        return str(shipped)
    return str(relative)


def preset_in_run_dir(config: Path, run_dir: Path, path: Path) -> Path:
    """Preset ``config`` with its run folder moved to ``run_dir``, written to ``path``: the
    presets name one relative run folder three times (the trainer's ``default_root_dir``, the
    W&B logger's ``save_dir`` and the checkpoint callback's ``dirpath``), and all three move."""
    import yaml

    from nvc_train.io.atomic import atomic_write_bytes

    settings = yaml.safe_load(Path(config).read_text())
    run_dir = Path(run_dir).resolve()
    trainer = settings["trainer"]
    trainer["default_root_dir"] = str(run_dir)
    trainer["logger"]["init_args"]["save_dir"] = str(run_dir)
    for callback in trainer.get("callbacks", []):
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(run_dir / "checkpoints")
    atomic_write_bytes(path, yaml.safe_dump(settings, sort_keys=False).encode())
    return path
