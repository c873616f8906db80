"""nvc-train's LightningCLI: ``nvc-train fit|validate|test`` with the project's defaults.

Synthetic data unless ``--data`` says otherwise, W&B files inside the run folder, no
abbreviated options, constructor errors as one line, and Slurm requeue at a safe point.
"""

from __future__ import annotations

from nvc_train.lit.wandb_files import configure_wandb_env, remove_if_empty


def run_lightning(args: list[str] | None) -> None:
    """``nvc-train fit|validate|test --config FILE ...`` (LightningCLI)."""
    make_cli(args)


def make_cli(args: list[str] | None, run: bool = True):
    """nvc-train's LightningCLI; ``run=False`` (no subcommand in ``args``) only instantiates
    the model, data and trainer, as tests of the shipped presets do."""
    import sys
    import warnings

    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    if args is not None:  # passed on purpose (the demo, tests): not the mistake Lightning warns about
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within Python")

    from nvc_train.errors import UserError, root_cause
    from nvc_train.models.architectures import architecture, architecture_in_arguments, lit_module_class

    # The architecture decides the LightningModule and the default data (video clips or
    # images); the model's own ``architecture`` argument then accepts only its names.
    chosen = architecture(architecture_in_arguments(list(sys.argv[1:] if args is None else args)))
    lit_module = lit_module_class(chosen.name)
    if chosen.kind == "image":
        from nvc_train.lit.image_data import SyntheticImageDataModule as default_data
    else:
        from nvc_train.lit.data import SyntheticClipDataModule as default_data

    class NVCTrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            from jsonargparse import lazy_instance

            parser.set_defaults({"data": lazy_instance(default_data)})

        def _parse_ckpt_path(self):
            # On --ckpt_path, LightningCLI (2.6) reads the checkpoint's hyper_parameters back as
            # model arguments. The module also records there, under "_"-prefixed keys, which file
            # a run started from (its resolved path and SHA-256, for the model card); they are no
            # arguments, and jsonargparse refused every resume of an --model.init_weights run
            # ("does not accept option model._init_weights_resolved"). The same parse without them.
            from pathlib import Path

            import torch

            if not self.config.get("subcommand"):
                return
            ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
            if not ckpt_path or not Path(ckpt_path).is_file():
                return
            hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
            hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
            if hparams:
                self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)

        def before_instantiate_classes(self):
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            follow_default_root_dir(cfg.trainer)
            created.extend(configure_wandb_env(cfg.trainer.default_root_dir or "runs/default"))

        def instantiate_classes(self):
            # Constructors validate their arguments (quality, QuantConfig, crop sizes);
            # jsonargparse wraps those errors in its own, so report the root cause.
            from lightning.fabric.utilities.exceptions import MisconfigurationException

            try:
                super().instantiate_classes()
            except (ValueError, TypeError, MisconfigurationException) as exc:
                raise UserError(f"invalid configuration: {root_cause(exc)}") from None
            from lightning.pytorch.loggers import WandbLogger

            for logger in self.trainer.loggers:
                # Lightning passes anonymous=None to wandb.init, which warns on every run that
                # the (unused) setting is deprecated; leave it out unless it was asked for.
                if isinstance(logger, WandbLogger) and logger._wandb_init.get("anonymous") is None:
                    logger._wandb_init.pop("anonymous", None)

        def before_fit(self):
            # CompressAI's zoo weights now, before Lightning starts the run: a missing file is
            # reported before the model summary and the W&B run.
            from lightning.pytorch.utilities.rank_zero import rank_zero_only

            self.model.load_zoo_weights(resuming=self.config[self.subcommand].get("ckpt_path") is not None,
                                        progress=rank_zero_only.rank == 0)
            # Every run folder records where the run came from, once per (re)start (issue #7).
            from nvc_train.lit.provenance import RunProvenance

            self.trainer.callbacks.append(RunProvenance())
            # Under SLURM, requeue at a safe point instead of in Lightning's signal handler
            # (a DDP hang, see nvc_train/lit/requeue.py).
            from lightning.fabric.plugins.environments import SLURMEnvironment

            from nvc_train.lit.requeue import SlurmRequeue

            env = self.trainer._accelerator_connector.cluster_environment
            if isinstance(env, SLURMEnvironment) and env.auto_requeue:
                env.auto_requeue = False
                self.trainer.callbacks.append(SlurmRequeue(env.requeue_signal))

    created: list = []  # folders made for this run; a run refused before it starts takes them back
    try:
        return NVCTrainCLI(lit_module, L.LightningDataModule, subclass_mode_data=True, args=args, run=run,
                           save_config_kwargs={"overwrite": True},
                           parser_kwargs={"exit_on_error": False, "allow_abbrev": False}, seed_everything_default=0)
    except BaseException:
        remove_if_empty(created)
        raise


def follow_default_root_dir(trainer) -> None:
    """``--trainer.default_root_dir DIR`` moves the whole run folder of a preset.

    The presets keep a run in one folder R: ``default_root_dir: R``, the logger's
    ``save_dir: R`` and the checkpoint callback's ``dirpath: R/checkpoints``. When
    ``default_root_dir`` names another folder while the other two still agree on R, they
    follow it, so one option chooses where a run lands. A logger folder or checkpoint folder
    set on its own (they no longer agree on R) is left as given.
    """
    from pathlib import Path

    root = trainer.default_root_dir
    logger = trainer.logger
    if not root or isinstance(logger, (bool, list)) or logger is None:
        return
    init_args = getattr(logger, "init_args", None)
    save_dir = getattr(init_args, "save_dir", None) if init_args is not None else None
    if not save_dir or Path(save_dir) == Path(root):
        return
    checkpoints = [cb for cb in trainer.callbacks or [] if getattr(cb, "class_path", "").endswith("ModelCheckpoint")]
    if not checkpoints or any(Path(str(cb.init_args.dirpath)) != Path(save_dir) / "checkpoints" for cb in checkpoints):
        return
    init_args.save_dir = str(root)
    for cb in checkpoints:
        cb.init_args.dirpath = str(Path(root) / "checkpoints")
