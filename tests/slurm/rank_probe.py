"""A test-side Lightning callback that records, per rank, what the two-node Slurm test asserts.

``tests/slurm/test_multinode.py`` adds it to the real ``nvc-train fit`` that
``slurm/multinode.sbatch`` starts (``--trainer.callbacks+=tests.slurm.rank_probe.RankProbe``,
importable through ``PYTHONPATH``), so the product code needs no test hooks. Every rank writes
``$NVC_TEST_PROBE_DIR/start<restart>-rank<global rank>.json`` after each event, so what a rank
saw survives Slurm killing it at a requeue:

- who it is: host, ranks, world size as Lightning and torch.distributed see it, the
  rendezvous address and port, the step training started at and its parameters, the W&B run
  it holds (the one process that called ``wandb.init``), if any;
- per training step: a hash of its batch (ranks must get different data, or equal parameters
  would prove nothing) and of all parameters after the optimizer step (equal on every rank
  only if the gradients were averaged);
- every checkpoint file this rank wrote (wraps the strategy's ``CheckpointIO``);
- when the requeue signal reached this rank (chained in front of ``SlurmRequeue``'s handler).

On the first start (``SLURM_RESTART_COUNT`` unset or 0) it holds every rank at the end of
step ``NVC_TEST_HOLD_AT_STEP`` until the signal arrives: Slurm's time-limit warning comes at a
time the test cannot choose (its timer ticks every 30 s), and a step count that depended on it
would make the test depend on the machine's speed. Holding makes the HPC checkpoint's step
known, and a rank the signal never reached stays held until the job is killed, so the test
fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import lightning as L
import torch.distributed as dist

HOLD_TIMEOUT_S = 600  # longer than the test waits: a rank without the signal never goes on


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _wandb_run() -> dict | None:
    """The W&B run this process holds (``wandb.init`` ran here): its id and folder; else None."""
    import wandb

    if wandb.run is None:
        return None
    return {"id": wandb.run.id, "folder": str(Path(wandb.run.dir).parent.resolve())}  # dir: <folder>/files


class RankProbe(L.Callback):
    def __init__(self):
        self.out_dir = Path(os.environ["NVC_TEST_PROBE_DIR"])
        self.restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        self.hold_at = int(os.environ.get("NVC_TEST_HOLD_AT_STEP", "0"))
        self.signalled = False
        self.record: dict = {"steps": [], "checkpoints": [], "signal": None}

    def _write(self) -> None:
        path = self.out_dir / f"start{self.restart}-rank{self.record['global_rank']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=1))
        tmp.replace(path)  # the test never reads half a file

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.record.update(global_rank=trainer.global_rank, host=socket.gethostname())
        io = trainer.strategy.checkpoint_io  # created once and cached by the strategy
        save = io.save_checkpoint

        def recorded_save(checkpoint, path, *args, **kwargs):
            self.record["checkpoints"].append({"path": str(Path(path).resolve()), "step": trainer.global_step})
            self._write()
            return save(checkpoint, path, *args, **kwargs)

        io.save_checkpoint = recorded_save

    def on_train_start(self, trainer, pl_module) -> None:
        self.record.update(
            local_rank=trainer.local_rank, node_rank=trainer.node_rank, world_size=trainer.world_size,
            dist_world_size=dist.get_world_size() if dist.is_initialized() else None,
            dist_rank=dist.get_rank() if dist.is_initialized() else None,
            master_addr=os.environ.get("MASTER_ADDR"), master_port=os.environ.get("MASTER_PORT"),
            slurm={k: os.environ.get(k) for k in ("SLURM_PROCID", "SLURM_NODEID", "SLURMD_NODENAME",
                                                  "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT")},
            start_step=trainer.global_step, params_at_start=_digest(self._params(pl_module)),
            wandb_run=_wandb_run(), default_root_dir=trainer.default_root_dir)
        # SlurmRequeue installed its handler in setup(); run ours first, then it.
        previous = signal.getsignal(signal.SIGUSR1)

        def handler(signum, frame):
            self.signalled = True  # written at the next step end (no file I/O in a handler)
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGUSR1, handler)
        self._write()

    @staticmethod
    def _params(pl_module) -> list:
        return [p for _, p in sorted(pl_module.named_parameters(), key=lambda item: item[0])]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["steps"].append({"step": trainer.global_step, "batch": _digest([batch]),
                                     "params": _digest(self._params(pl_module))})
        if self.restart == 0 and trainer.global_step == self.hold_at:
            deadline = time.monotonic() + HOLD_TIMEOUT_S
            while not self.signalled and time.monotonic() < deadline:
                time.sleep(0.2)
        if self.signalled and self.record["signal"] is None:
            self.record["signal"] = {"step": trainer.global_step, "time": time.time()}
        self._write()

    def on_train_end(self, trainer, pl_module) -> None:
        self.record["finished_step"] = trainer.global_step
        self._write()
