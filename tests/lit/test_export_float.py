"""`nvc-train export-float` output is evaluated by CompressAI's own video eval tool."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nvc_train.data.synthetic import synthetic_clip
from tests.cli_runner import cli


def write_yuv420(path, clip: torch.Tensor) -> None:
    """(T, 3, H, W) RGB in [0, 1] → 8-bit yuv420p raw file, with CompressAI's own conversion."""
    from compressai.transforms.functional import rgb2ycbcr, yuv_444_to_420

    with open(path, "wb") as f:
        for frame in clip:
            y, u, v = yuv_444_to_420(rgb2ycbcr(frame.unsqueeze(0)), mode="avg_pool")
            for plane in (y, u, v):
                f.write((plane.squeeze().clamp(0, 1) * 255).round().to(torch.uint8).numpy().astype(np.uint8).tobytes())


@pytest.mark.slow
def test_compressai_eval_model_loads_and_evaluates_export(tmp_path):
    import lightning as L

    from nvc_train.lit.module import SSFLitModule

    module = SSFLitModule(quality=3)
    trainer = L.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    exported = tmp_path / "ssf.pth.tar"
    result = cli("export-float", str(ckpt), "-o", str(exported))
    assert result.returncode == 0, result.stderr[-2000:]

    seqs = tmp_path / "seqs"
    seqs.mkdir()
    write_yuv420(seqs / "synthetic_256x256_25fps_8bit_420.yuv", synthetic_clip(3, 3, 256, 256))
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "compressai.utils.video.eval_model", "checkpoint", str(seqs), str(out),
                          "-a", "ssf2020", "-p", str(exported), "-d", str(out), "-o", "ssf.json"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "ssf.json").read_text())["results"]
    assert results["bitrate"][0] > 0 and results["psnr-rgb"][0] > 0
