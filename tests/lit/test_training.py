"""Training with Lightning: the loss falls, resume is exact, shipped configs instantiate."""

from __future__ import annotations

import glob
from pathlib import Path

import lightning as L
import pytest
import torch

from nvc_train.lit.module import SSFLitModule
from tests.conftest import _fit
from tests.quant.test_export import cli

ROOT = Path(__file__).resolve().parents[2]


def test_rd_loss_falls(float_module):
    losses = float_module.recorded_losses
    assert len(losses) == 25
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses


def test_resume_continues_at_the_same_step_with_the_same_optimizer_state(tmp_path):
    L.seed_everything(0)
    module = SSFLitModule(quality=3, real_coding_clips=0)
    trainer = _fit(module, tmp_path, max_steps=2)
    trainer.save_checkpoint(tmp_path / "interrupted.ckpt")
    saved = torch.load(tmp_path / "interrupted.ckpt", weights_only=False)

    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]
            seen["step"] = trainer.global_step
            seen["adam_steps"] = {float(s["step"]) for s in opt.state.values()}
            first = next(iter(pl_module.model.img_encoder.parameters()))
            seen["exp_avg"] = opt.state[first]["exp_avg"].clone()

    from nvc_train.lit.data import SyntheticClipDataModule

    resumed = SSFLitModule(quality=3, real_coding_clips=0)
    data = SyntheticClipDataModule(crop=128, train_size=160, val_size=128, num_val_clips=1, batch_size=2, num_workers=0)
    t2 = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False, limit_val_batches=0,
                    num_sanity_val_steps=0, enable_checkpointing=False, callbacks=[Probe()], enable_model_summary=False)
    t2.fit(resumed, datamodule=data, ckpt_path=tmp_path / "interrupted.ckpt")
    assert seen["step"] == 2
    assert seen["adam_steps"] == {2.0}
    saved_state = saved["optimizer_states"][0]["state"][0]["exp_avg"]
    assert torch.equal(seen["exp_avg"], saved_state)
    assert t2.global_step == 4


@pytest.mark.parametrize("config", sorted(glob.glob(str(ROOT / "configs" / "**" / "*.yaml"), recursive=True)))
def test_every_shipped_config_instantiates(config, tmp_path, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    from nvc_train.lit.data import SyntheticClipDataModule

    monkeypatch.chdir(tmp_path)
    args = ["--config", config]
    if "init_weights" in Path(config).read_text():  # fine-tuning presets need a float model file
        from compressai.models.video import ScaleSpaceFlow

        torch.save(ScaleSpaceFlow().state_dict(), tmp_path / "float.pth.tar")
        args += ["--model.init_weights", str(tmp_path / "float.pth.tar")]
    cli_obj = LightningCLI(SSFLitModule, L.LightningDataModule, subclass_mode_data=True, run=False, args=args)
    assert isinstance(cli_obj.model, SSFLitModule)
    assert isinstance(cli_obj.datamodule, L.LightningDataModule)
    assert cli_obj.trainer.max_steps > 0
    if isinstance(cli_obj.datamodule, SyntheticClipDataModule):
        cli_obj.datamodule.setup("fit")
        assert cli_obj.datamodule.train_set[0].ndim == 4


def test_fit_cli_writes_wandb_offline_run_and_resolved_config(tmp_path):
    config = str(ROOT / "configs" / "demo" / "float.yaml")
    result = cli("fit", "--config", config, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                 "--data.init_args.val_size", "128", "--data.init_args.num_workers", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "demo" / "float"
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    offline = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert offline, list(run.rglob("*"))[:20]
    assert not (tmp_path / "wandb").exists()  # nothing outside the run folder
    images = sorted(run.glob("wandb/offline-run-*/files/media/images/val/reconstruction_*.png"))
    assert images, "validation must log reconstruction images"
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(images[-1]).convert("RGB"), dtype=np.float64)
    original = pixels[:, : pixels.shape[1] // 2]
    assert original.std() > 10, "the original frame in the logged image must not be blank"
