"""Lightning DataModules: clips of N frames, random crops and temporal flips for training,
deterministic windows for validation. Synthetic clips (the built-in default), Vimeo-90k
septuplets, and company footage from video files."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from nvc_train.data.clips import to_unit_float
from nvc_train.data.order import ResumableLoader, ResumableSampler, run_seed
from nvc_train.data.synthetic import SyntheticClips
from nvc_train.models.ssf import MODEL_MULTIPLE


class RandomCropFlip(Dataset):
    """Wraps a clip dataset: random (crop × crop) window, reversed frame order with p = 0.5.

    Randomness comes from torch's global RNG, which the training loader seeds for each sample
    from its place in the epoch (:class:`~nvc_train.data.order.SeededSamples`), so runs are
    reproducible and resumable.
    """

    def __init__(self, clips: Dataset, crop: int, temporal_flip: bool = True):
        self.clips, self.crop, self.temporal_flip = clips, crop, temporal_flip

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Tensor:
        clip = self.clips[index]  # (T, 3, H, W)
        h, w = clip.shape[-2:]
        if h < self.crop or w < self.crop:
            raise ValueError(f"clip {index} is {w}x{h}, smaller than the {self.crop}px crop")
        top = int(torch.randint(0, h - self.crop + 1, ()))
        left = int(torch.randint(0, w - self.crop + 1, ()))
        clip = clip[..., top:top + self.crop, left:left + self.crop]
        if self.temporal_flip and bool(torch.rand(()) < 0.5):
            clip = clip.flip(0)
        return clip.contiguous()


def join_clip_groups(items: list[Tensor]) -> Tensor:
    """Items of N clips each (N, T, 3, H, W) → one batch of clips (len(items)·N, T, 3, H, W)."""
    return torch.cat(items)


class ClipDataModule(L.LightningDataModule):
    """Shared loaders: training batches in the resumable order of :mod:`nvc_train.data.order`
    (each rank its own part, random crops seeded by each sample's place in the epoch, the
    position in the epoch saved in checkpoints), validation one clip at a time in a fixed order
    (under DDP Lightning gives each rank a ``DistributedSampler`` share, padded to equal length
    so per-step metric syncs line up). Batches may arrive as uint8 and become float32 in [0, 1]
    on the device (:mod:`nvc_train.data.clips`).
    """

    train_set: Dataset
    val_set: Dataset

    def _loader_options(self) -> dict:
        workers = self.hparams.num_workers
        return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": torch.cuda.is_available()}

    def train_blocks(self) -> list[int] | None:
        """End offsets of the training set's blocks of consecutive samples kept together between
        ranks (see :class:`~nvc_train.data.order.ResumableSampler`); None: no locality to keep."""
        return None

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        # Items of several clips (FootageClips' clips_per_decode) are joined into one batch of clips.
        per_item = getattr(self.train_set, "clips_per_decode", 1)
        sampler = ResumableSampler(len(self.train_set), self.hparams.batch_size // per_item, run_seed(), world, rank,
                                   self.train_blocks())
        options = self._loader_options() | ({"collate_fn": join_clip_groups} if per_item > 1 else {})
        return ResumableLoader(self.train_set, sampler, self._batches_trained, **options)

    def _batches_trained(self) -> tuple[int, int, int]:
        """(epoch, batches of it trained, batches an epoch runs) as a checkpoint written now records them."""
        trainer = self.trainer
        loop = trainer.fit_loop
        per_epoch = trainer.num_training_batches
        return (loop.epoch_progress.current.completed, loop.epoch_loop.batch_progress.current.processed,
                per_epoch if per_epoch != float("inf") else 2**62)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=1, shuffle=False, **self._loader_options())

    def on_after_batch_transfer(self, batch: Tensor, dataloader_idx: int) -> Tensor:
        return to_unit_float(batch)


class SyntheticClipDataModule(ClipDataModule):
    """The built-in default data: generated clips (nothing to download).

    Args:
        num_frames: frames per clip (the first is a keyframe).
        crop: training crop side in pixels (multiple of 128).
        train_size: side of the generated training clips the crops come from.
        val_size: side of the full validation frames (multiple of 128).
        num_train_clips, num_val_clips: dataset sizes (clips are generated on the fly).
    """

    def __init__(self, num_frames: int = 3, crop: int = 256, train_size: int = 320, val_size: int = 256,
                 num_train_clips: int = 2000, num_val_clips: int = 4, batch_size: int = 8,
                 num_workers: int = 2, seed: int = 0):
        super().__init__()
        for name, side in (("crop", crop), ("val_size", val_size)):
            if side % MODEL_MULTIPLE:
                raise ValueError(f"{name} must be a multiple of {MODEL_MULTIPLE}, got {side}")
        if train_size < crop:
            raise ValueError(f"train_size ({train_size}) must be at least crop ({crop})")
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self.train_set = RandomCropFlip(
            SyntheticClips(hp.num_train_clips, hp.num_frames, hp.train_size, hp.train_size, seed=hp.seed), hp.crop)
        # A different seed range from training: validation clips are never trained on.
        self.val_set = SyntheticClips(hp.num_val_clips, hp.num_frames, hp.val_size, hp.val_size, seed=hp.seed + 10**6)


class VimeoDataModule(ClipDataModule):
    """Vimeo-90k septuplets from a local folder in the published layout (``sequences/``,
    ``sep_trainlist.txt``, ``sep_testlist.txt``): the standard SSF training set.

    Args:
        root: the Vimeo-90k septuplet folder (``vimeo_septuplet``).
        num_frames: frames per clip, 1..7.
        crop: training crop side in pixels (multiple of 128; the frames are 448x256).
        max_interval: training clips take every k-th frame, k random in 1..max_interval (as
            CompressAI's ``VideoFolder(rnd_interval=True)``); 1 = consecutive frames.
        val_crop_limit: cap on the centred validation window's side (None: 384x256).
        max_val_clips: validation uses this many evenly spaced test septuplets (None: all 7,824).
    """

    def __init__(self, root: str, num_frames: int = 3, crop: int = 256, batch_size: int = 8, num_workers: int = 4,
                 temporal_flip: bool = True, max_interval: int = 1, val_crop_limit: int | None = None,
                 max_val_clips: int | None = 64):
        super().__init__()
        if crop % MODEL_MULTIPLE:
            raise ValueError(f"crop must be a multiple of {MODEL_MULTIPLE}, got {crop}")
        self.save_hyperparameters()
        self.hparams["_root_resolved"] = str(Path(root).resolve())  # identifies the data in model cards
        from nvc_train.data.vimeo import read_septuplet_list

        for split in ("train", "test"):  # fail before the logger starts
            read_septuplet_list(Path(root), split)

    def setup(self, stage: str | None = None) -> None:
        from nvc_train.data.vimeo import VimeoSeptuplets

        hp = self.hparams
        self.train_set = VimeoSeptuplets(hp.root, "train", hp.num_frames, hp.crop, hp.temporal_flip, hp.max_interval)
        self.val_set = VimeoSeptuplets(hp.root, "test", hp.num_frames, hp.crop, False,
                                       val_crop_limit=hp.val_crop_limit, max_clips=hp.max_val_clips)


class FootageDataModule(ClipDataModule):
    """Company footage prepared by ``nvc-train prepare-footage`` (see :mod:`nvc_train.data.footage`),
    or a Hugging Face Hub dataset of video files, prepared on first use.

    Frames are decoded with PyAV inside the DataLoader workers (seeking to each clip's start),
    or memory-mapped from the frame cache when the folder has one.

    Args:
        root: the prepared folder, or ``hf://datasets/OWNER/NAME[@REVISION]``.
        num_frames: frames per training clip (at most the prepared clip length).
        crop: training crop side in pixels (multiple of 128); smaller files are left out.
        val_crop_limit: cap on the side of the centred validation window (None: the whole
            frame, each side rounded down to a multiple of 128).
        max_val_clips: validation uses this many evenly spaced clips (None: all).
        use_cache: read the frame cache when the folder has one.
        source_root: where the video files are now, if they moved after preparation.
        hub_cache: where Hub footage is prepared (default ``~/.cache/nvc-train/footage``).
        val_fraction, cache_frames, downscale: how Hub footage is prepared (as the
            ``prepare-footage`` options of the same names).
        clips_per_decode: training clips cut from one decoded run of a file (consecutive clips,
            each with its own crop): the seek to the keyframe is paid once for them, which
            makes decoding several times faster, at the price of batches holding runs of
            neighbouring clips. Must divide ``batch_size``. 1: every clip on its own.
        decode_device: ``cpu``, or ``cuda`` to decode the video files with NVDEC (FFmpeg's CUDA
            hardware decoder; the frames are the software decoder's, bit for bit, and are
            converted to RGB the same way). Workers are then spawned, not forked.
    """

    def __init__(self, root: str, num_frames: int = 3, crop: int = 256, batch_size: int = 8, num_workers: int = 4,
                 temporal_flip: bool = True, val_crop_limit: int | None = None, max_val_clips: int | None = 16,
                 use_cache: bool = True, source_root: str | None = None, hub_cache: str | None = None,
                 val_fraction: float = 0.1, cache_frames: bool = False, downscale: float = 1.0,
                 clips_per_decode: int = 1, decode_device: str = "cpu"):
        super().__init__()
        if decode_device not in ("cpu", "cuda"):
            raise ValueError(f"decode_device must be cpu or cuda, got {decode_device!r}")
        if crop % MODEL_MULTIPLE:
            raise ValueError(f"crop must be a multiple of {MODEL_MULTIPLE}, got {crop}")
        if clips_per_decode < 1 or batch_size % clips_per_decode:
            raise ValueError(f"clips_per_decode must be at least 1 and divide batch_size ({batch_size}), "
                             f"got {clips_per_decode}")
        self.save_hyperparameters()
        from nvc_train.data.footage import MANIFEST, FootageError, not_prepared_message

        # Fail before the logger starts; a Hub name is checked here and fetched in prepare_data.
        if not (self.prepared_root() / MANIFEST).exists() and not root.startswith("hf://"):
            raise FootageError(not_prepared_message(root))
        if not root.startswith("hf://"):  # what identifies the data beyond a relative path (model cards)
            from nvc_train.io.digest import sha256_file

            self.hparams["_root_resolved"] = str(Path(root).resolve())
            self.hparams["_manifest_sha256"] = sha256_file(Path(root) / MANIFEST)

    def prepared_root(self) -> Path:
        """The local prepared folder (for a Hub name: where ``prepare_data`` puts it)."""
        from nvc_train.data.hub import is_hub_name, parse_hub_name

        root = self.hparams.root
        if not is_hub_name(root):
            return Path(root)
        repo_id, revision = parse_hub_name(root)
        base = Path(self.hparams.hub_cache or Path.home() / ".cache" / "nvc-train" / "footage")
        return base / f"{repo_id.replace('/', '--')}--{revision or 'main'}--clip{self.hparams.num_frames}"

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node, before setup(): the place to download.
        from nvc_train.data.footage import MANIFEST, prepare_footage
        from nvc_train.data.hub import download_hub_footage, is_hub_name

        hp = self.hparams
        if is_hub_name(hp.root) and not (self.prepared_root() / MANIFEST).exists():
            prepare_footage(download_hub_footage(hp.root), self.prepared_root(), clip_len=hp.num_frames,
                            val_fraction=hp.val_fraction, cache=hp.cache_frames, downscale=hp.downscale)

    def setup(self, stage: str | None = None) -> None:
        from nvc_train.data.footage import FootageClips, FootageError, load_footage

        hp = self.hparams
        footage = load_footage(self.prepared_root(), hp.source_root)
        try:
            hwaccel = None if hp.decode_device == "cpu" else hp.decode_device
            self.train_set = FootageClips(footage, "train", hp.num_frames, hp.crop, hp.temporal_flip,
                                          use_cache=hp.use_cache, clips_per_decode=hp.clips_per_decode,
                                          hwaccel=hwaccel)
            self.val_set = FootageClips(footage, "validation", hp.num_frames, None, False, hp.val_crop_limit,
                                        hp.max_val_clips, hp.use_cache, hwaccel=hwaccel)
        except ValueError as exc:
            raise FootageError(str(exc)) from None
        if stage in (None, "fit") and len(self.train_set) == 0:
            raise FootageError(f"{footage.root} has no training clip of at least {hp.crop}x{hp.crop} pixels: "
                               "lower --data.crop or prepare more footage")
        if hwaccel and len(self.train_set):  # before any worker starts: one line if it cannot work here
            try:
                self.train_set.frames(self.train_set.rows[0], self.train_set.rows[0]["start"], 1)
            except FootageError as exc:
                raise FootageError(f"--data.decode_device {hwaccel}: {exc} (use --data.decode_device cpu)") from None

    def _loader_options(self) -> dict:
        options = super()._loader_options()
        if self.hparams.decode_device != "cpu" and options["num_workers"] > 0:
            # A CUDA context does not survive fork: NVDEC workers start afresh.
            options["multiprocessing_context"] = "spawn"
        return options


class ShardDataModule(ClipDataModule):
    """Footage cut into clip shards by ``nvc-train prepare-footage … --shards`` (see
    :mod:`nvc_train.data.shards`), from a local or shared folder or an object-store URL.

    Each rank trains on its own contiguous run of shards each epoch (the order of
    :mod:`nvc_train.data.order`: deterministic, resumable mid-epoch after a requeue).

    Args:
        root: the shard folder, or a URL ``fsspec`` opens (``https://…``, ``s3://…`` with s3fs).
        num_frames: frames per training clip (at most the window length the shards were cut with).
        crop: training crop side in pixels (multiple of 128); shards of smaller windows are left out.
        val_crop_limit: cap on the side of the centred validation window (None: whole frames).
        max_val_clips: validation uses this many evenly spaced clips (None: all).
        cache_dir: where a node keeps remote shards (default ``~/.cache/nvc-train/shards``).
        verify: check local shards against the manifest's SHA-256 at setup (unchanged shards are
            not read again: a stamp records their size and time of the last check).
    """

    def __init__(self, root: str, num_frames: int = 3, crop: int = 256, batch_size: int = 8, num_workers: int = 4,
                 temporal_flip: bool = True, val_crop_limit: int | None = None, max_val_clips: int | None = 16,
                 cache_dir: str | None = None, verify: bool = True):
        super().__init__()
        if crop % MODEL_MULTIPLE:
            raise ValueError(f"crop must be a multiple of {MODEL_MULTIPLE}, got {crop}")
        self.save_hyperparameters()
        from nvc_train.data.shards import MANIFEST, is_remote, read_shard_manifest

        self.manifest = read_shard_manifest(root)  # fail before the logger starts
        if not is_remote(root):  # what identifies the data beyond a relative path (model cards)
            from nvc_train.io.digest import sha256_file

            self.hparams["_root_resolved"] = str(Path(root).resolve())
            self.hparams["_manifest_sha256"] = sha256_file(Path(root) / MANIFEST)

    def setup(self, stage: str | None = None) -> None:
        import hashlib

        from nvc_train.data.footage import FootageError
        from nvc_train.data.shards import ShardClips, is_remote, verify_local_shards

        hp = self.hparams
        cache = None
        if is_remote(hp.root):
            base = Path(hp.cache_dir) if hp.cache_dir else Path.home() / ".cache" / "nvc-train" / "shards"
            cache = base / hashlib.sha256(hp.root.encode()).hexdigest()[:16]
        elif hp.verify:
            verify_local_shards(Path(hp.root), self.manifest["shards"])
        try:
            self.train_set = ShardClips(hp.root, self.manifest, "train", hp.num_frames, hp.crop, hp.temporal_flip,
                                        cache_dir=cache)
            self.val_set = ShardClips(hp.root, self.manifest, "validation", hp.num_frames, None, False,
                                      hp.val_crop_limit, hp.max_val_clips, cache_dir=cache)
        except ValueError as exc:
            raise FootageError(str(exc)) from None
        if stage in (None, "fit") and len(self.train_set) == 0:
            raise FootageError(f"{hp.root} has no training window of at least {hp.crop}x{hp.crop} pixels: "
                               "lower --data.crop or cut larger windows")

    def train_blocks(self) -> list[int]:
        return self.train_set.ends
