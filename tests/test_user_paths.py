"""What a user's paths and files are taken for: a directory is named as one, and a float
Lightning checkpoint starts a fine-tune directly."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from nvc_train.cli import main
from nvc_train.errors import UserError
from nvc_train.lit.module import SSFLitModule
from nvc_train.models.ssf import load_ssf
from nvc_train.quant.config import QuantConfig


@pytest.mark.parametrize("argv", [
    ["conformance", "{d}"],
    ["hashes", "{f}", "--checkpoint", "{d}"],
    ["info", "{d}"],
    ["decode", "{d}", "-o", "{o}", "--checkpoint", "{ck}"],
    ["bdrate", "{d}", "{d}"],
    ["export-float", "{d}", "-o", "{o}"],
])
def test_a_directory_where_a_file_is_expected_is_named_as_one(tmp_path, capsys, argv, request):
    d = tmp_path / "adir"
    d.mkdir()
    f = tmp_path / "a-file"  # an existing file where one is due: the directory is the argument at fault
    f.write_text("x")
    ck = request.getfixturevalue("int_checkpoint") if "{ck}" in argv else None
    code = main([a.format(d=d, f=f, o=tmp_path / "out.y4m", ck=ck) for a in argv])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("nvc-train: error:") and f"{d} is a directory, not a file" in err[0], err


def lightning_checkpoint(path, **kwargs):
    module = SSFLitModule(quality=3, real_coding_clips=0, **kwargs)
    trainer = L.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return module


def test_a_float_run_checkpoint_is_accepted_as_init_weights(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    parent = lightning_checkpoint(ckpt, flow_reference=128)
    child = SSFLitModule(init_weights=str(ckpt), real_coding_clips=0)
    want = parent.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in child.model.state_dict().items())
    assert child.model.flow_reference == 128


def test_a_qat_run_checkpoint_as_init_weights_says_what_to_do(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    lightning_checkpoint(ckpt, qat=QuantConfig())
    with pytest.raises(UserError, match="run `nvc-train export-float` on it first"):
        load_ssf(ckpt)


@pytest.mark.slow  # over 9 s on the 2-core machine: `make test` runs it, `make test-fast` does not
def test_presets_are_named_from_any_folder_and_runs_land_in_it(tmp_path, monkeypatch):
    """The README's `--config configs/…` works outside the checkout (and so does the bare
    name); the preset's relative run folder is under the working folder."""
    import subprocess
    import sys

    from nvc_train.presets import CONFIGS, resolve_config_args

    result = subprocess.run([sys.executable, "-m", "nvc_train.cli", "fit", "--config", "configs/demo/float.yaml",
                             "--print_config"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "default_root_dir: runs/demo/float" in result.stdout
    assert list(tmp_path.iterdir()) == []  # --print_config writes nothing
    monkeypatch.chdir(tmp_path)
    assert resolve_config_args(["fit", "-c", "qat.yaml", "--config=demo/qat.yaml", "--config", "mine.yaml"]) == [
        "fit", "-c", str(CONFIGS / "qat.yaml"), f"--config={CONFIGS / 'demo/qat.yaml'}", "--config", "mine.yaml"]
    (tmp_path / "qat.yaml").write_text("{}")  # a file of that name here wins over the preset
    assert resolve_config_args(["--config", "qat.yaml"]) == ["--config", "qat.yaml"]


def test_the_prepare_footage_hint_names_a_preset_that_exists_from_here(tmp_path, monkeypatch):
    from pathlib import Path

    from nvc_train.presets import preset

    from nvc_train.presets import CONFIGS, resolve_config

    monkeypatch.chdir(tmp_path)
    hint = preset("finetune/footage.yaml")  # from an empty folder: the README's spelling, which resolves
    assert hint == "configs/finetune/footage.yaml"
    assert Path(resolve_config(hint)) == CONFIGS / "finetune/footage.yaml"
    # a file of that path here would win over the preset: the hint then names the preset itself
    (tmp_path / "configs/finetune").mkdir(parents=True)
    (tmp_path / "configs/finetune/footage.yaml").write_text("{}")
    hint = preset("finetune/footage.yaml")
    assert Path(hint).is_absolute() and Path(hint) == CONFIGS / "finetune/footage.yaml"


def test_one_option_moves_a_presets_whole_run_folder(tmp_path, monkeypatch):
    """`--trainer.default_root_dir DIR` moves the W&B folder and the checkpoints with it;
    a logger folder set on its own is left where it was put. Control: without the option,
    the preset's own folder."""
    from nvc_train.lit.cli import make_cli
    from nvc_train.presets import CONFIGS

    monkeypatch.chdir(tmp_path)

    def folders(*extra):
        cli = make_cli(["--config", str(CONFIGS / "demo" / "float.yaml"), *extra], run=False)
        checkpoint = cli.trainer.checkpoint_callback
        return cli.trainer.default_root_dir, cli.trainer.logger.save_dir, checkpoint.dirpath

    preset_checkpoints = str(tmp_path / "runs/demo/float/checkpoints")  # ModelCheckpoint makes its folder absolute
    assert folders() == ("runs/demo/float", "runs/demo/float", preset_checkpoints)
    moved = str(tmp_path / "mine")
    root, wandb_dir, checkpoints = folders("--trainer.default_root_dir", moved)
    assert (root, wandb_dir, checkpoints) == (moved, moved, f"{moved}/checkpoints")
    _, wandb_dir, checkpoints = folders("--trainer.default_root_dir", moved, "--trainer.logger.init_args.save_dir", "w")
    assert (wandb_dir, checkpoints) == ("w", preset_checkpoints)


@pytest.mark.slow
def test_an_installed_wheel_carries_the_presets(tmp_path):
    """A non-editable install (the wheel, unpacked outside the checkout) names its presets
    from an empty folder. Control: the same wheel's package without its configs folder
    no longer resolves them."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(root), "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                              str(site), *map(str, (tmp_path / "wheel").glob("*.whl"))],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    work = tmp_path / "empty"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import nvc_train.presets as p, sys; print(p.__file__); "
             "print(p.resolve_config('configs/demo/float.yaml')); print(p.resolve_config('finetune/footage.yaml'))")

    def resolve():
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=work, env=env,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.splitlines()

    module, demo, footage = resolve()
    assert Path(module).is_relative_to(site)  # the wheel's copy, not the checkout's
    assert Path(demo) == site / "nvc_train/configs/demo/float.yaml" and Path(demo).is_file()
    assert Path(footage) == site / "nvc_train/configs/finetune/footage.yaml" and Path(footage).is_file()
    result = subprocess.run([sys.executable, "-m", "nvc_train.cli", "fit", "--config", "configs/demo/float.yaml",
                             "--print_config"], capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "default_root_dir: runs/demo/float" in result.stdout
    shutil.rmtree(site / "nvc_train/configs")
    assert resolve()[1:] == ["configs/demo/float.yaml", "finetune/footage.yaml"]
