"""A log of what every training step was fed: one digest per batch and rank.

Proof that a run is reproducible, or that a requeued run continued with the batches it
would have seen: two runs fed the same batches write the same lines. Add it to a run with
``--trainer.callbacks+=nvc_train.lit.batch_log.BatchDigestLog --trainer.callbacks.dirpath DIR``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import torch


def batch_digest(batch: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of a batch's shape, dtype and bytes, as it arrived on the device."""
    data = batch.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(data.shape)}|{data.dtype}|".encode())
    h.update(data.numpy().tobytes() if data.dtype != torch.bfloat16 else data.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


class BatchDigestLog(L.Callback):
    """Append ``global_step epoch batch_idx digest`` for every training batch to
    ``dirpath/batches-rank<R>.tsv`` (one file per global rank; a resumed run appends)."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        line = f"{trainer.global_step}\t{trainer.current_epoch}\t{batch_idx}\t{batch_digest(batch)}\n"
        with open(self.dirpath / f"batches-rank{trainer.global_rank}.tsv", "a") as out:
            out.write(line)


def read_batch_log(path: str | Path) -> dict[int, str]:
    """``global_step → digest`` from one rank's log. A step may be logged twice (fed again after
    a resume from a checkpoint older than the interruption); two different digests for one step
    mean the data order changed, and raise ValueError."""
    steps: dict[int, str] = {}
    for line in Path(path).read_text().splitlines():
        step, _epoch, _idx, digest = line.split("\t")
        if steps.setdefault(int(step), digest) != digest:
            raise ValueError(f"{path}: step {step} was fed two different batches ({steps[int(step)]}, {digest})")
    return steps
