"""Training with Lightning: the loss falls, resume is exact (parameters equal to an uninterrupted run), shipped configs instantiate."""

from __future__ import annotations

import glob
from pathlib import Path

import lightning as L
import pytest
import torch

from nvc_train.lit.image_module import ImageLitModule
from nvc_train.lit.module import SSFLitModule
from tests.conftest import FLOAT_MODULE_STEPS, _fit
from tests.cli_runner import cli_process as cli

ROOT = Path(__file__).resolve().parents[2]


def test_rd_loss_falls(float_module):
    losses = float_module.recorded_losses
    assert len(losses) == FLOAT_MODULE_STEPS
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses


@pytest.mark.slow
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


class OneFixedBatch(L.LightningDataModule):
    """The same (N, T, 3, H, W) batch at every step: data that cannot differ between runs,
    whatever Lightning's epoch accounting does on resume."""

    def train_dataloader(self):
        batch = torch.rand(2, 3, 3, 128, 128, generator=torch.Generator().manual_seed(5))
        return torch.utils.data.DataLoader([batch], batch_size=None, shuffle=False)


def _fit_steps(module, tmp_path, max_steps: int, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=OneFixedBatch(), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.slow  # over 9 s on the 2-core machine: `make test` runs it, `make test-fast` does not
def test_resume_after_2_steps_ends_where_4_uninterrupted_steps_end(tmp_path):
    """2 steps, a checkpoint, a new process state (`nvc-train fit` seeds every start alike), 2 more
    steps: every parameter equals that of 4 steps in one go. SSF draws its quantization noise
    from torch's generator, whose state the checkpoint carries (nvc_train/lit/rng.py).
    Control: the same resume from a checkpoint without that state ends elsewhere."""
    from nvc_train.lit.rng import KEY

    L.seed_everything(0)
    straight = SSFLitModule(quality=3, real_coding_clips=0)
    _fit_steps(straight, tmp_path, 4)

    L.seed_everything(0)
    _fit_steps(SSFLitModule(quality=3, real_coding_clips=0), tmp_path, 2).save_checkpoint(tmp_path / "two.ckpt")
    saved = torch.load(tmp_path / "two.ckpt", weights_only=True)  # as Lightning loads it
    assert KEY in saved
    del saved[KEY]
    torch.save(saved, tmp_path / "two-no-rng.ckpt")

    def resumed_from(ckpt: str) -> SSFLitModule:
        L.seed_everything(0)  # the restarted job seeds as the first start did
        module = SSFLitModule(quality=3, real_coding_clips=0)
        assert _fit_steps(module, tmp_path, 4, ckpt_path=tmp_path / ckpt).global_step == 4
        return module

    def max_difference(a, b) -> float:
        return max((p.float() - q.float()).abs().max().item() for p, q in zip(a.state_dict().values(), b.state_dict().values())
                   if p.numel())

    assert max_difference(resumed_from("two.ckpt"), straight) == 0.0
    assert max_difference(resumed_from("two-no-rng.ckpt"), straight) > 1e-6


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory) -> dict[str, str]:
    """A --data.root for each DataModule that needs one: prepared footage, clip shards, a Vimeo-90k tree."""
    import warnings

    from nvc_train.data.footage import prepare_footage
    from nvc_train.data.shards import ShardOptions, prepare_shards
    from tests.data.footage_fixtures import write_footage
    from tests.data.test_vimeo import make_vimeo_tree

    base = tmp_path_factory.mktemp("roots")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        footage = write_footage(base / "footage")
        prepare_footage(footage, base / "prepared", val_fraction=0.34, progress=False)
        prepare_shards(footage, base / "shards", ShardOptions(val_fraction=0.34), progress=False)
    return {"FootageDataModule": str(base / "prepared"), "ShardDataModule": str(base / "shards"),
            "VimeoDataModule": str(make_vimeo_tree(base / "vimeo", n_train=2, n_test=1))}


@pytest.mark.parametrize("config", sorted(glob.glob(str(ROOT / "configs" / "**" / "*.yaml"), recursive=True)))
def test_every_shipped_config_instantiates(config, tmp_path, monkeypatch, data_roots):
    from nvc_train.lit.cli import make_cli
    from nvc_train.lit.data import ClipDataModule

    monkeypatch.chdir(tmp_path)
    args = ["--config", config]
    text = Path(config).read_text()
    for name, root in data_roots.items():
        if f"nvc_train.lit.data.{name}" in text:
            args += ["--data.root", root, "--data.crop", "128"]
    from nvc_train.models.architectures import architecture_in_arguments

    image = architecture_in_arguments(args) != "ssf2020"
    if "init_weights" in Path(config).read_text():  # fine-tuning presets need a float model file
        if image:
            from nvc_train.models.image import build_image_model

            model = build_image_model(architecture_in_arguments(args), (32, 48))
        else:
            from compressai.models.video import ScaleSpaceFlow

            model = ScaleSpaceFlow()
        torch.save(model.state_dict(), tmp_path / "float.pth.tar")
        args += ["--model.init_weights", str(tmp_path / "float.pth.tar")]
    cli_obj = make_cli(args, run=False)  # nvc-train's own CLI class, as `nvc-train fit` builds it
    assert isinstance(cli_obj.model, ImageLitModule if image else SSFLitModule)
    assert isinstance(cli_obj.datamodule, L.LightningDataModule)
    assert cli_obj.trainer.max_steps > 0
    assert isinstance(cli_obj.datamodule, ClipDataModule)
    cli_obj.datamodule.setup("fit")
    # video clips (T, 3, H, W), images (3, H, W)
    assert cli_obj.datamodule.train_set[0].ndim == (3 if image else 4)
    assert cli_obj.datamodule.val_set[0].ndim == (3 if image else 4)


@pytest.mark.slow  # over 9 s on the 2-core machine: `make test` runs it, `make test-fast` does not
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
    noise = result.stdout + result.stderr
    for library_noise in ("litlogger", "LeafSpec", "anonymous setting"):  # nothing a user can act on
        assert library_noise not in noise, noise[-3000:]
    images = sorted(run.glob("wandb/offline-run-*/files/media/images/val/reconstruction_*.png"))
    assert images, "validation must log reconstruction images"
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(images[-1]).convert("RGB"), dtype=np.float64)
    original = pixels[:, : pixels.shape[1] // 2]
    assert original.std() > 10, "the original frame in the logged image must not be blank"



@pytest.mark.slow
def test_a_run_started_from_init_weights_resumes_from_its_last_checkpoint(float_weights, tmp_path):
    """`fit --ckpt_path last.ckpt` of a QAT run started with --model.init_weights: LightningCLI
    reads the checkpoint's hyper-parameters back as arguments, and the parent's provenance
    records stored beside them (``_init_weights_resolved``) made every such resume fail."""
    from tests.cli_runner import cli as cli_here

    config = str(ROOT / "configs" / "demo" / "qat.yaml")
    tiny = ["--data.init_args.val_size", "128", "--data.init_args.train_size", "160", "--data.init_args.crop", "128",
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "1", "--model.real_coding_clips", "0",
            "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]
    last = tmp_path / "runs" / "demo" / "qat" / "checkpoints" / "last.ckpt"
    first = cli_here("fit", "--config", config, "--model.init_weights", float_weights, "--trainer.max_steps", "1",
                     "--trainer.val_check_interval", "1", *tiny, cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert first.returncode == 0, first.stderr[-3000:]
    assert torch.load(last, weights_only=False)["hyper_parameters"]["_init_weights_resolved"]
    resumed = cli_here("fit", "--config", config, "--model.init_weights", float_weights, "--trainer.max_steps", "2",
                       "--trainer.val_check_interval", "1", *tiny, "--ckpt_path", last, cwd=tmp_path,
                       env={"WANDB_MODE": "offline"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, weights_only=False)["global_step"] == 2

@pytest.mark.parametrize("name", ["VimeoDataModule", "FootageDataModule"])
def test_training_steps_on_real_data_get_float_batches(name, data_roots, tmp_path):
    """uint8 clips leave the DataLoader and reach the module as float32 in [0, 1]."""
    from nvc_train.lit import data as lit_data

    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((batch.dtype, float(batch.min()), float(batch.max()), tuple(batch.shape)))

    dm = getattr(lit_data, name)(data_roots[name], num_frames=2, crop=128, batch_size=2, num_workers=0,
                                 max_val_clips=1, val_crop_limit=128)
    module = SSFLitModule(quality=3, real_coding_clips=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path), limit_val_batches=1,
                        num_sanity_val_steps=1, callbacks=[Probe()], enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    assert len(seen) == 2
    for dtype, low, high, shape in seen:
        assert dtype == torch.float32 and 0 <= low < high <= 1 and shape == (2, 2, 3, 128, 128)
    assert torch.isfinite(torch.tensor(float(trainer.callback_metrics["train/loss"])))


@pytest.mark.slow
def test_loggers_get_every_metric_on_the_steps_they_write(tmp_path):
    """The per-part bpp, aux loss and QAT flag are logged only on the steps the loggers
    write (Lightning's ``log_every_n_steps`` rule), the progress-bar metrics every step;
    what a logger receives is the same as before: every metric on every written step."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    from nvc_train.lit.data import SyntheticClipDataModule

    L.seed_everything(0)
    module = SSFLitModule(quality=3, real_coding_clips=0)
    data = SyntheticClipDataModule(crop=128, train_size=160, val_size=128, num_train_clips=100, num_val_clips=1,
                                   batch_size=1, num_workers=0)
    logger = CSVLogger(tmp_path, name="csv")
    shown = []

    class PerStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            shown.append(sorted(trainer.progress_bar_metrics))

    trainer = L.Trainer(accelerator="cpu", max_steps=5, logger=logger, log_every_n_steps=2, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        enable_checkpointing=False, callbacks=[PerStep()])
    trainer.fit(module, datamodule=data)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    steps = [int(row["step"]) for row in rows]
    assert steps == [1, 3], steps  # every 2nd step (0-based)
    wanted = {"train/loss", "train/bpp", "train/psnr", "train/mse", "train/aux_loss", "train/qat",
              *(f"train/bpp.{part}.{latent}" for part in ("keyframe", "motion", "residual") for latent in "yz")}
    for row in rows:
        assert wanted <= set(row), sorted(wanted - set(row))
        # The parts come from the same step as the total (a stale value from an earlier step
        # would still fill the column).
        parts = sum(float(row[k]) for k in wanted if k.startswith("train/bpp."))
        assert parts == pytest.approx(float(row["train/bpp"]), rel=1e-5), row
    assert shown == [["train/bpp", "train/loss", "train/mse", "train/psnr"]] * 5
