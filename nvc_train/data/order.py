"""The order of training samples: deterministic, split between ranks, exactly resumable.

A run's training batches are a pure function of (seed, epoch, world size, batch size, dataset):
not of DataLoader workers, their process seeds, or where the run was interrupted. That is
what lets a SLURM requeue continue with the very batch it would have seen next.

* :class:`ResumableSampler` orders one epoch: blocks of consecutive indices (a shard's samples,
  or single samples) in a seeded permutation, cut into one contiguous part per rank (a rank
  touches about 1/world of the shards), shuffled within the part, truncated to whole batches
  so every rank takes the same number of steps. It yields ``(index, sample_seed)``.
* :class:`SeededSamples` runs a dataset's ``__getitem__`` under ``torch.manual_seed(sample_seed)``
  (its RNG state restored afterwards), so random crops, offsets and flips drawn from torch's
  global RNG belong to the sample's place in the epoch, not to the worker that loads it.
* :class:`ResumableLoader` is a DataLoader with Lightning's ``state_dict``/``load_state_dict``:
  the checkpoint records the epoch and how many batches of it were trained, and a resumed run
  skips exactly those (indices only; no sample is loaded to skip it).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

ORDER_VERSION = 1
"""Changes whenever the same (seed, epoch, ranks) would give another order: a checkpoint
written under another version resumes at the right batch count, with a warning."""


def _seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (SHA-256: no correlation between neighbouring tuples)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def run_seed() -> int:
    """The run's seed: what ``seed_everything`` set (Lightning's ``PL_GLOBAL_SEED``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class ResumableSampler(DistributedSampler):
    """One rank's sample order for an epoch, as ``(index, sample_seed)`` pairs.

    A :class:`~torch.utils.data.DistributedSampler` by type only (none of its code runs), so
    that Lightning leaves it in place under DDP instead of wrapping the loader in its own.

    Args:
        size: samples in the dataset.
        batch_size: samples per batch on each rank; each rank yields a whole number of batches.
        seed: the run's seed.
        num_replicas, rank: world size and this process's global rank.
        blocks: end offsets of blocks of consecutive indices kept together in the split
            between ranks (e.g. the samples of each shard file, for locality); None: every
            sample is its own block.
    """

    def __init__(self, size: int, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 blocks: Sequence[int] | None = None):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside a world of {num_replicas}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.blocks = list(blocks) if blocks is not None else None
        if self.blocks is not None and (not self.blocks or self.blocks[-1] != size):
            raise ValueError(f"block ends must finish at the dataset size {size}")
        self.epoch = 0
        self.start_batch = 0
        """Batches of ``epoch`` to skip on the next iteration (set by a resume, used once)."""

    @property
    def batches_per_epoch(self) -> int:
        return self.size // self.num_replicas // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_batch = 0
        self.epoch = epoch

    def epoch_order(self, epoch: int) -> list[int]:
        """Every index of the epoch in the global order (all ranks' parts, back to back)."""
        g = torch.Generator().manual_seed(_seed_of(self.seed, epoch, ORDER_VERSION))
        if self.blocks is None:
            return torch.randperm(self.size, generator=g).tolist()
        starts = [0, *self.blocks[:-1]]
        order: list[int] = []
        for b in torch.randperm(len(self.blocks), generator=g).tolist():
            order.extend(range(starts[b], self.blocks[b]))
        return order

    def rank_part(self, epoch: int, rank: int) -> list[int]:
        """The indices ``rank`` trains on in ``epoch``, in order (a whole number of batches)."""
        per_rank = self.size // self.num_replicas
        part = self.epoch_order(epoch)[rank * per_rank:(rank + 1) * per_rank]
        if self.blocks is not None:  # blocks kept the part local; now mix its samples
            g = torch.Generator().manual_seed(_seed_of(self.seed, epoch, rank, ORDER_VERSION))
            part = [part[i] for i in torch.randperm(len(part), generator=g).tolist()]
        return part[:self.batches_per_epoch * self.batch_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        part = self.rank_part(self.epoch, self.rank)
        first = self.start_batch * self.batch_size
        self.start_batch = 0  # a resume skips once; the next epoch starts at its beginning
        base = self.rank * (self.size // self.num_replicas)
        for position in range(first, len(part)):
            yield part[position], _seed_of(self.seed, self.epoch, base + position, ORDER_VERSION)

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size


class SeededSamples(Dataset):
    """``dataset[index]`` drawn under ``torch.manual_seed(sample_seed)`` for ``(index, sample_seed)``
    keys (plain integer keys pass through). The caller's RNG state is left as it was."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.dataset[key]
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class ResumableLoader(DataLoader):
    """The training DataLoader, resumable mid-epoch through Lightning's checkpoint.

    ``batches_trained`` gives (epoch, batches of it the model has trained on, batches the loop
    runs per epoch) when a checkpoint is written: the loop's counts, not this loader's, since
    Lightning fetches one batch ahead and ``limit_train_batches`` may end an epoch early. The
    state is small: the epoch, that count, and what the order depends on.
    """

    def __init__(self, dataset: Dataset, sampler: ResumableSampler,
                 batches_trained: Callable[[], tuple[int, int, int]], **kwargs):
        super().__init__(SeededSamples(dataset), batch_size=sampler.batch_size, sampler=sampler, drop_last=True,
                         **kwargs)
        self._batches_trained = batches_trained

    def state_dict(self) -> dict:
        epoch, batches, epoch_batches = self._batches_trained()
        s = self.sampler
        return {"order_version": ORDER_VERSION, "epoch": epoch, "batches": batches, "epoch_batches": epoch_batches,
                "seed": s.seed,
                "world_size": s.num_replicas, "batch_size": s.batch_size, "size": s.size}

    def load_state_dict(self, state: dict) -> None:
        """Continue after ``state["batches"]`` batches of ``state["epoch"]``: the sampler is set to
        that epoch now, because Lightning creates the resumed run's first iterator before it
        calls ``set_epoch``."""
        s = self.sampler
        same = {k: state.get(k) for k in ("order_version", "seed", "world_size", "batch_size", "size")}
        now = {"order_version": ORDER_VERSION, "seed": s.seed, "world_size": s.num_replicas,
               "batch_size": s.batch_size, "size": s.size}
        if same != now:
            changed = ", ".join(f"{k} {same[k]} → {now[k]}" for k in now if same[k] != now[k])
            warnings.warn(f"resuming with a different data order ({changed}): training continues after the same "
                          "number of batches, but not with the batches the interrupted run would have seen",
                          stacklevel=2)
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= min(s.batches_per_epoch, state.get("epoch_batches", s.batches_per_epoch)):
            # saved at the end of an epoch: the next one starts afresh
            epoch, batches = epoch + 1, 0
        s.set_epoch(epoch)
        s.start_batch = batches
