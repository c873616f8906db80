"""A folder of real company-like footage written with PyAV: several containers, sizes and frame
rates, B-frames and short GOPs (so reading a clip needs a real seek), a damaged file, a
single-frame file and a stray non-video file."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import lightning as L
import torch

from nvc_train.io.colour import ColourSpec
from nvc_train.io.video import H264Writer, open_writer
from tests.codec.video_fixtures import clip

# (relative path, frames, height, width, fps): every size is at least 128 px, the smallest crop.
FOOTAGE = (
    ("cam_a/day1.mp4", 20, 192, 256, Fraction(25)),
    ("cam_a/day2.mov", 16, 160, 288, Fraction(30000, 1001)),
    ("cam_b/drone.mkv", 14, 144, 208, Fraction(50)),
    ("cam_b/studio.y4m", 9, 136, 176, Fraction(24)),
    ("cam_c/lobby.mp4", 12, 128, 160, Fraction(25)),
    ("cam_c/gate.mov", 10, 176, 144, Fraction(60)),
)
BROKEN = "cam_a/broken.mp4"
SINGLE_FRAME = "cam_b/still.mov"


def write_h264(path: Path, frames: torch.Tensor, fps: Fraction) -> Path:
    """libx264 4:2:0 with 2 B-frames and a keyframe every 4 frames (decode order ≠ display order),
    BT.709 limited range by our own conversion, tagged in the stream."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"crf": "16", "x264-params": "keyint=4:min-keyint=4:bframes=2:b-adapt=0:scenecut=0"}
    with H264Writer(path, frames.shape[-1], frames.shape[-2], fps, ColourSpec(), "high", options) as out:
        for rgb in frames:
            out.write(rgb)
    return path


def write_footage(root: Path) -> Path:
    """The footage tree under ``root`` (see the module doc); returns ``root``."""
    for seed, (rel, frames, height, width, fps) in enumerate(FOOTAGE):
        pixels = clip(seed, frames, height, width)
        path = root / rel
        if path.suffix == ".y4m":
            path.parent.mkdir(parents=True, exist_ok=True)
            with open_writer(path, width, height, fps, ColourSpec()) as out:
                for rgb in pixels:
                    out.write(rgb)
        else:
            write_h264(path, pixels, fps)
    # A real MP4 cut in half: its index (moov) is at the end, so it is gone.
    whole = write_h264(root / BROKEN, clip(99, 12, 128, 128), Fraction(25)).read_bytes()
    (root / BROKEN).write_bytes(whole[: len(whole) // 2])
    write_h264(root / SINGLE_FRAME, clip(98, 1, 128, 128), Fraction(25))
    (root / "cam_a" / "notes.txt").write_text("not a video\n")
    return root


def clips_per_file(frames: int, clip_len: int, stride: int) -> int:
    return 0 if frames < clip_len else (frames - clip_len) // stride + 1


class RecordShards(L.Callback):
    """Writes each rank's training keys ((index, sample seed) pairs) and validation sample indices (first epoch) to
    ``$NVC_TEST_SHARDS/rank<k>.json``: what the DDP test checks for disjoint shards."""

    def on_train_start(self, trainer, pl_module):
        out = Path(os.environ["NVC_TEST_SHARDS"]) / f"rank{trainer.global_rank}.json"
        train, val = trainer.train_dataloader, trainer.val_dataloaders
        out.write_text(json.dumps({"world": trainer.world_size, "sampler": type(train.sampler).__name__,
                                   "train": list(iter(train.sampler)), "train_len": len(train.dataset),
                                   "val": list(iter(val.sampler)), "val_len": len(val.dataset)}))
